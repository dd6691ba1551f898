#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# A cancel returns in bounded time whatever the destination does, and no interleaving of a
# cancel, a commit, a destination failure and the switch loses a write or switches past the
# failure. The destination holds every flush 1.2 s (dm-delay), so a metadata commit (every 50 ms)
# is nearly always in its destination flush; a dm-flakey below it fails writes and flushes one
# second in four. Each round copies 1 MiB (about 0.5 s), writes random blocks for a random time,
# cancels, and then checks: the cancel returned within 1 s (cancelled, or refused because the
# migration had switched or failed already); no round that logged a failure switched; and the
# device the migration ended on (the origin unless switched) holds every acknowledged write.
# MIGRATE_ROUNDS sets the number of rounds (200; 50 on the debug kernel, which runs everything
# about 4 times slower, and where a cancel may take 4 s).
. "$(dirname "$0")/lib.sh"
load_migrate
kmodprobe dm-delay || skip "dm-delay is not available"
kmodprobe dm-flakey || skip "dm-flakey is not available"
rounds=${MIGRATE_ROUNDS:-200}
limit_ms=1000
if [ -e /sys/kernel/debug/kmemleak ]; then
	rounds=${MIGRATE_ROUNDS:-50}
	limit_ms=4000
fi
make_loop origin 1
make_loop disk 1
make_metadata meta
len=$(sectors "$origin")
dm_create flaky "0 $len flakey $disk 0 3 1 1 error_writes" || fail "flakey failed"
flaky=$(dm_path flaky)
dm_create dst "0 $len delay $flaky 0 0 $flaky 0 0 $flaky 0 1200" || fail "delay failed"
name=$DEV_PREFIX-mig
dev=$(dm_path mig)
counts=""
slowest=0
for round in $(seq 1 "$rounds"); do
	# A blank metadata device each round: a switched one would start the next round switched.
	dd if=/dev/zero of="$meta" bs=64k count=16 oflag=direct status=none || fail "cannot zero $meta"
	snapshot "$origin" "$TEST_TMP/expected"
	log_mark
	dm_create mig "0 $len migrate $origin $(dm_path dst) 6 metadata $meta commit_interval 50 rate 2048" ||
		fail "round $round: create failed"
	# Random 4 KiB writes for up to 0.6 s; an acknowledged one goes into the expected image.
	stop=$(($(date +%s%N) + RANDOM % 600 * 1000000))
	while [ "$(date +%s%N)" -lt "$stop" ]; do
		block=$((RANDOM % (len / 8)))
		head -c 4096 /dev/urandom >"$TEST_TMP/w"
		if dd if="$TEST_TMP/w" of="$dev" bs=4k seek="$block" oflag=direct status=none 2>/dev/null; then
			dd if="$TEST_TMP/w" of="$TEST_TMP/expected" bs=4k seek="$block" conv=notrunc status=none
		else
			# Only after the switch can a write fail (on the destination alone): its block is
			# undefined from then on, and the round ends here.
			diag "round $round: a write failed in state $(migrate_state mig)"
			break
		fi
	done
	start=$(date +%s%N)
	dmsetup message "$name" 0 cancel 2>/dev/null &
	cancel_pid=$!
	# Where a slow cancel waits: its stack and the target's threads', taken while it waits.
	rm -f "$TEST_TMP/stacks"
	(
		sleep 0.8
		kill -0 "$cancel_pid" 2>/dev/null || exit 0
		for pid in "$cancel_pid" $(pgrep dm-migrate); do
			echo "== $pid $(cat "/proc/$pid/comm" 2>/dev/null)"
			cat "/proc/$pid/stack" 2>/dev/null
		done >"$TEST_TMP/stacks"
	) &
	stack_pid=$!
	wait "$cancel_pid"
	took_ms=$((($(date +%s%N) - start) / 1000000))
	wait "$stack_pid"
	[ "$took_ms" -gt "$slowest" ] && slowest=$took_ms
	if [ "$took_ms" -ge "$limit_ms" ]; then
		[ -f "$TEST_TMP/stacks" ] && diag "$(cat "$TEST_TMP/stacks")"
		fail "round $round: the cancel took $took_ms ms: $(dmsetup status "$name")"
	fi
	until state=$(migrate_state mig); [ "$state" = cancelled ] || [ "$state" = failed ] || [ "$state" = switched ]; do
		sleep 0.05
	done
	failures=$(log_since | grep -c "$name: Migration failed")
	[ "$state" != switched ] || [ "$failures" = 0 ] ||
		fail "round $round: switched after a failure: $(log_since | grep -E 'Migration failed|Switched' | tail -3)"
	# A suspend of dm-delay sends the flushes it holds on at once: the commit in flight ends.
	dmsetup suspend "$DEV_PREFIX-dst" && dmsetup resume "$DEV_PREFIX-dst" || fail "round $round: delay suspend failed"
	dmsetup remove "$name" || fail "round $round: remove failed"
	blockdev --flushbufs "$origin"
	blockdev --flushbufs "$disk"
	if [ "$state" = switched ]; then
		survivor=$disk
	else
		survivor=$origin
	fi
	cmp "$TEST_TMP/expected" "$survivor" >/dev/null ||
		fail "round $round ($state): acknowledged writes lost on $survivor: $(cmp "$TEST_TMP/expected" "$survivor" 2>&1)"
	# The next round copies from what the guest last saw.
	[ "$state" = switched ] && dd if="$disk" of="$origin" bs=64k iflag=direct oflag=direct status=none
	counts="$counts $state"
done
diag "$rounds rounds, the slowest cancel $slowest ms; ends:$(echo "$counts" | tr ' ' '\n' | sort | uniq -c | tr '\n' ' ')"
for want in cancelled failed; do
	echo "$counts" | grep -qw "$want" || fail "no round ended $want: the windows were not reached"
done
pass
