#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# A cancel never waits for the destination, and no interleaving of a cancel, a commit, a
# destination failure and the switch loses a write or switches past the failure. In every other
# round the destination holds every flush 60 s (dm-delay), so a metadata commit (every 50 ms) is
# nearly always in its destination flush, and so is the switch; in the others it holds them
# 0.2 s, so that the switch is reached. A dm-flakey below each fails writes one second in four.
# Each round starts a migration of 1 MiB with a writer of random 4 KiB blocks behind it, cancels
# at a random moment, and checks: the cancel returned in under 1 s, 4 s on the debug kernel (one
# that waited for a held flush would take up to 60 s; the usual figure, printed at the end, is
# tens of milliseconds, hundreds on the debug kernel: mostly the start of dmsetup under TCG);
# no round that logged a failure switched; and the device
# the migration ended on (the origin unless switched) holds every acknowledged write. A suspend
# of dm-delay sends the flushes it holds on at once, which ends each round. The rounds must end
# cancelled, failed and switched at least once each. MIGRATE_ROUNDS sets the number of rounds
# (120; 50 on the debug kernel, which runs everything about 4 times slower). About 1.3 s a round.
# ksft-timeout=600
. "$(dirname "$0")/lib.sh"
load_migrate
kmodprobe dm-delay || skip "dm-delay is not available"
kmodprobe dm-flakey || skip "dm-flakey is not available"
rounds=${MIGRATE_ROUNDS:-120}
limit_ms=${CANCEL_LIMIT_MS:-1000}
if [ -e /sys/kernel/debug/kmemleak ]; then
	rounds=${MIGRATE_ROUNDS:-50}
	limit_ms=${CANCEL_LIMIT_MS:-4000}
fi
make_loop origin 1
make_loop slow_disk 1
make_loop fast_disk 1
make_metadata meta
len=$(sectors "$origin")
for stack in slow fast; do
	disk_var=${stack}_disk
	flakey_create "$stack-flaky" "${!disk_var}" 3 1 error_writes
	delay_ms=60000
	[ "$stack" = fast ] && delay_ms=200
	flaky=$(dm_path "$stack-flaky")
	dm_create "$stack" "0 $len delay $flaky 0 0 $flaky 0 0 $flaky 0 $delay_ms" || fail "delay failed"
done
name=$DEV_PREFIX-mig
dev=$(dm_path mig)
counts="" slowest=0 total_ms=0
# The writer: one process for the whole test (starting one per round would cost most of a
# round). For each round it waits for $TEST_TMP/go (the device), writes random 4 KiB blocks until
# $TEST_TMP/stop exists, and answers with $TEST_TMP/stopped; each acknowledged write goes into the
# expected image. A write that fails ends its round (only after a switch can one fail: on the
# destination alone): its block is undefined from then on, and is left out of the comparison.
python3 - "$TEST_TMP" "$((len / 8))" <<'PY' &
import mmap, os, random, sys, time
tmp, blocks = sys.argv[1], int(sys.argv[2])
buf = mmap.mmap(-1, 4096)
while not os.path.exists(f"{tmp}/quit"):
    if not os.path.exists(f"{tmp}/go"):
        time.sleep(0.005)
        continue
    with open(f"{tmp}/go") as f:
        dev = f.read().strip()
    os.unlink(f"{tmp}/go")
    fd = os.open(dev, os.O_WRONLY | os.O_DIRECT)
    out = os.open(f"{tmp}/expected", os.O_WRONLY)
    while not os.path.exists(f"{tmp}/stop"):
        block = random.randrange(blocks)
        data = os.urandom(4096)
        buf.seek(0)
        buf.write(data)
        try:
            os.pwritev(fd, [buf], block * 4096)
        except OSError:
            with open(f"{tmp}/write-failed", "w") as f:
                f.write(str(block))
            break
        os.pwrite(out, data, block * 4096)
    os.close(fd)
    os.close(out)
    open(f"{tmp}/stopped", "w").close()
PY
writer_pid=$!
trap 'touch "$TEST_TMP/quit" 2>/dev/null; kill "$writer_pid" 2>/dev/null; wait "$writer_pid" 2>/dev/null; cleanup' EXIT
for round in $(seq 1 "$rounds"); do
	# Every other round the destination holds flushes 60 s (a cancel then never waits for one);
	# the others hold them 0.2 s, so that the switch is reached too.
	if [ $((round % 2)) = 1 ]; then dst=slow disk=$slow_disk; else dst=fast disk=$fast_disk; fi
	# A blank metadata device each round: a switched one would start the next round switched.
	dd if=/dev/zero of="$meta" bs=64k count=1 oflag=direct status=none || fail "cannot zero $meta"
	snapshot "$origin" "$TEST_TMP/expected"
	rm -f "$TEST_TMP/stop" "$TEST_TMP/stopped" "$TEST_TMP/write-failed"
	log_mark
	dm_create mig "0 $len migrate $origin $(dm_path "$dst") 6 metadata $meta commit_interval 50 rate 2048" ||
		fail "round $round: create failed"
	# Written aside and renamed, so that the writer never reads a "go" that is still empty.
	echo "$dev" >"$TEST_TMP/go.tmp" && mv "$TEST_TMP/go.tmp" "$TEST_TMP/go"
	if [ "$dst" = slow ]; then sleep "0.$((RANDOM % 4))"; else sleep "0.$((RANDOM % 8))"; fi
	start=$(date +%s%N)
	dmsetup message "$name" 0 cancel 2>/dev/null
	took_ms=$((($(date +%s%N) - start) / 1000000))
	total_ms=$((total_ms + took_ms))
	[ "$took_ms" -gt "$slowest" ] && slowest=$took_ms
	[ "$took_ms" -lt "$limit_ms" ] ||
		fail "round $round: the cancel took $took_ms ms: $(dmsetup status "$name")"
	until state=$(migrate_state mig); [ "$state" = cancelled ] || [ "$state" = failed ] || [ "$state" = switched ]; do
		sleep 0.05
	done
	touch "$TEST_TMP/stop"
	until [ -e "$TEST_TMP/stopped" ]; do
		kill -0 "$writer_pid" 2>/dev/null || fail "round $round: the writer died"
		sleep 0.01
	done
	if [ "$state" = switched ]; then
		failures=$(log_since | grep -c "$name: Migration failed")
		[ "$failures" = 0 ] ||
			fail "round $round: switched after a failure: $(log_since | grep -E 'Migration failed|Switched' | tail -3)"
	fi
	dmsetup suspend "$DEV_PREFIX-$dst" && dmsetup resume "$DEV_PREFIX-$dst" ||
		fail "round $round: delay suspend failed"
	dmsetup remove "$name" || fail "round $round: remove failed"
	if [ "$state" = switched ]; then
		survivor=$disk
	else
		survivor=$origin
	fi
	snapshot "$survivor" "$TEST_TMP/survivor"
	if [ -e "$TEST_TMP/write-failed" ]; then
		for image in expected survivor; do
			dd if=/dev/zero of="$TEST_TMP/$image" bs=4k seek="$(cat "$TEST_TMP/write-failed")" \
				count=1 conv=notrunc status=none
		done
	fi
	cmp "$TEST_TMP/expected" "$TEST_TMP/survivor" >/dev/null ||
		fail "round $round ($state, $dst): acknowledged writes lost on $survivor: $(cmp "$TEST_TMP/expected" "$TEST_TMP/survivor" 2>&1)"
	# The next round copies from what the guest last saw.
	[ "$state" = switched ] && cp "$TEST_TMP/survivor" "$TEST_TMP/origin-next" &&
		dd if="$TEST_TMP/origin-next" of="$origin" bs=64k oflag=direct status=none
	counts="$counts $state"
done
touch "$TEST_TMP/quit"
wait "$writer_pid"
diag "$rounds rounds; cancel: mean $((total_ms / rounds)) ms, slowest $slowest ms; ends: $(echo $counts | tr ' ' '\n' | sort | uniq -c | tr -s ' \n' ' ')"
for want in cancelled failed switched; do
	echo "$counts" | grep -qw "$want" || fail "no round ended $want: the windows were not reached"
done
pass
