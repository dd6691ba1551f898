# SPDX-License-Identifier: GPL-2.0
# shellcheck shell=bash
#
# Simulated host crashes for the dm-migrate selftests, sourced after lib.sh.
#
# The migrate target runs on three dm devices stacked on loop devices: origin (lo), destination
# (ld) and metadata (lm). The destination is a dm-delay (writes take CRASH_DELAY_MS) over ldi,
# so that at a crash mirrored writes have landed on the origin and not yet on the destination;
# the metadata device is one too (writes take CRASH_META_DELAY_MS) over lmi, so that a write
# that went out before its intent bit was durable would be caught in the act.
# A crash suspends lo, ldi and lmi at once: each stops where its completed writes are, which is a
# state a power cut can leave. The writers' logs are cut there (a write acknowledged after it is
# not one the crash may keep); then the three drop every write (dm-flakey drop_writes) while the
# old table is torn down, as if the host were gone, and come back as they were, as after a
# reboot. The same table is loaded again on them and must finish the move with every
# acknowledged write on the destination, and with the destination holding exactly what the
# device held when it came back: a region a write was in flight to is copied again.
#
# What the device holds when it comes back is read from the device the metadata names as
# holding the truth (the origin while copying, the destination once switched), before the table
# is loaded: read through the migrate device, it would be whatever the target chose to show.
# Every crash point starts from a destination of fresh random bytes and a new writer seed, so
# neither an earlier round's copy nor its writes can pass for this round's.

DMMIG=${DMMIG:-$REPO_ROOT/target/debug/dmmig}
[ -x "$DMMIG" ] || fail "dmmig is not built ($DMMIG): the crash tests read the metadata with it"
# What the recoveries found, counted by the tests' summaries: "PHASE:METADATA" per crash.
crash_outcomes=()

CRASH_MIB=${CRASH_MIB:-8}
CRASH_DELAY_MS=${CRASH_DELAY_MS:-50}
CRASH_META_DELAY_MS=${CRASH_META_DELAY_MS:-100}
# The mirror's mode for the crash points' tables (sync or async); the target's default if empty.
CRASH_MIRROR=${CRASH_MIRROR:-}

# crash_setup: the loop devices and the origin's initial content.
crash_setup() {
	make_loop crash_origin "$CRASH_MIB"
	make_loop crash_dest "$CRASH_MIB"
	make_loop crash_meta 1
	crash_len=$(sectors "$crash_origin")
	crash_blocks=$((crash_len / 8))
	snapshot "$crash_origin" "$TEST_TMP/initial"
}

# crash_lower NAME DEV TABLE_KIND: (re)loads a lower device as linear or as dropping writes.
crash_lower() {
	local name=$1 dev=$2 kind=$3 len table
	len=$(sectors "$dev")
	case $kind in
	linear) table="0 $len linear $dev 0" ;;
	drop) table="0 $len flakey $dev 0 0 1 1 drop_writes" ;;
	esac
	if dmsetup info "$DEV_PREFIX-$name" >/dev/null 2>&1; then
		dmsetup load "$DEV_PREFIX-$name" --table "$table" || fail "load $name failed"
	else
		dm_create "$name" "$table" || fail "create $name failed"
	fi
}

# crash_begin: a fresh start: the origin back to its initial content, the destination new
# random bytes, the metadata blank, the lower devices linear.
crash_begin() {
	dd if="$TEST_TMP/initial" of="$crash_origin" bs=1M oflag=direct status=none ||
		fail "cannot restore the origin"
	dd if=/dev/urandom of="$crash_dest" bs=1M count="$(($(sectors "$crash_dest") / 2048))" \
		oflag=direct status=none || fail "cannot refill the destination"
	dd if=/dev/zero of="$crash_meta" bs=1M count=1 oflag=direct status=none ||
		fail "cannot zero $crash_meta"
	crash_lower lo "$crash_origin" linear
	crash_lower ldi "$crash_dest" linear
	crash_lower lmi "$crash_meta" linear
	if ! dmsetup info "$DEV_PREFIX-ld" >/dev/null 2>&1; then
		dm_create ld "0 $crash_len delay $(dm_path ldi) 0 0 $(dm_path ldi) 0 $CRASH_DELAY_MS" ||
			fail "cannot create the delayed destination"
		dm_create lm "0 $(sectors "$crash_meta") delay $(dm_path lmi) 0 0 $(dm_path lmi) 0 \
$CRASH_META_DELAY_MS" || fail "cannot create the delayed metadata device"
	fi
	rm -f "$TEST_TMP"/writer.*
	writer_pids=()
	crash_table="0 $crash_len migrate $(dm_path lo) $(dm_path ld) 2 metadata $(dm_path lm)"
}

# crash_writers N: starts N verifying writers on the migrate device "mg", each on its own part
# of the first half (the second half stays clean, so a recovery has copied regions to keep).
# Each writer's seed is new to this crash point (the seed picks its sequence numbers).
crash_writers() {
	local n=$1 i part
	part=$((crash_blocks / 2 / n))
	writer_pids=()
	for ((i = 0; i < n; i++)); do
		crash_seed=$((${crash_seed:-0} + 1 + RANDOM % 64))
		python3 "$SELFTEST_DIR/crashwriter.py" write "$(dm_path mg)" $((i * part)) "$part" \
			"$crash_seed" "$TEST_TMP/writer.$i.log" 2>"$TEST_TMP/writer.$i.err" &
		writer_pids+=($!)
	done
}

# crash_writers_alive: every writer still writes; one that ended (an I/O error, a short write)
# fails the test with what it said.
crash_writers_alive() {
	local i
	for i in "${!writer_pids[@]}"; do
		kill -0 "${writer_pids[$i]}" 2>/dev/null && continue
		wait "${writer_pids[$i]}"
		fail "writer $i ended before the crash (exit $?): $(cat "$TEST_TMP/writer.$i.err")"
	done
}

# crash_now: the crash. Afterwards the migrate device is gone and the lower devices are back.
crash_now() {
	local d pid f i status suspends=()
	crash_writers_alive
	for d in lo ldi lmi; do
		dmsetup suspend --noflush "$DEV_PREFIX-$d" &
		suspends+=($!)
	done
	wait "${suspends[@]}"
	for d in lo ldi lmi; do
		while [ "$(dmsetup info -c --noheadings -o suspended "$DEV_PREFIX-$d")" != Suspended ]; do
			sleep 0.05
		done
	done
	# Nothing acknowledged from here on counts: cut the logs.
	for f in "$TEST_TMP"/writer.*.log; do
		[ -f "$f" ] && cp "$f" "$f.crash"
	done
	for pid in "${writer_pids[@]}"; do
		kill -9 "$pid" 2>/dev/null
	done
	crash_lower lo "$crash_origin" drop
	crash_lower ldi "$crash_dest" drop
	crash_lower lmi "$crash_meta" drop
	for d in lo ldi lmi; do
		dmsetup resume "$DEV_PREFIX-$d" || fail "resume of $d after the crash failed"
	done
	# Each writer must end by the kill, not by an error of its own (exit 137 is SIGKILL's).
	for i in "${!writer_pids[@]}"; do
		wait "${writer_pids[$i]}" 2>/dev/null
		status=$?
		[ $status -eq 137 ] ||
			fail "writer $i ended with $status, not by the kill: $(cat "$TEST_TMP/writer.$i.err")"
		[ -s "$TEST_TMP/writer.$i.log.crash" ] || fail "writer $i has no log"
		grep -q '^[0-9]' "$TEST_TMP/writer.$i.log.crash" ||
			fail "writer $i had no write acknowledged before the crash"
	done
	crash_writers_started=${#writer_pids[@]}
	writer_pids=()
	dmsetup remove "$DEV_PREFIX-mg" || fail "cannot remove the crashed device"
	# The reboot: the devices as they were.
	for d in lo:"$crash_origin" ldi:"$crash_dest" lmi:"$crash_meta"; do
		crash_lower "${d%%:*}" "${d#*:}" linear
		dmsetup suspend "$DEV_PREFIX-${d%%:*}" && dmsetup resume "$DEV_PREFIX-${d%%:*}" ||
			fail "cannot bring ${d%%:*} back"
	done
}

# crash_verify DEV: every write acknowledged before the crash is on DEV, and nothing else
# changed (with no writers in this round, DEV holds the initial content).
crash_verify() {
	local logs=() i
	for ((i = 0; i < ${crash_writers_started:-0}; i++)); do
		[ -f "$TEST_TMP/writer.$i.log.crash" ] || fail "writer $i's log is missing"
		logs+=("$TEST_TMP/writer.$i.log.crash")
	done
	[ ${#logs[@]} -gt 0 ] || logs=(/dev/null)
	[ -b "$1" ] && blockdev --flushbufs "$1" 2>/dev/null
	python3 "$SELFTEST_DIR/crashwriter.py" verify "$1" "$crash_blocks" "$TEST_TMP/initial" \
		"${logs[@]}" || fail "$1 lost acknowledged writes"
}

# crash_recover EXPECT: loads the same table again (without no_switch or a rate) and checks
# that it starts in EXPECT (copying or switched) with the copy done so far, finishes, and holds
# every acknowledged write, on the device and on the destination alone.
crash_recover() {
	local expect=$1 table loaded truth
	table="0 $crash_len migrate $(dm_path lo) $(dm_path ld) 2 metadata $(dm_path lm)"
	# Which device holds the disk, as the metadata says, read before the target sees it.
	crash_metadata=$("$DMMIG" inspect "$(dm_path lm)" --json |
		python3 -c 'import json, sys; print(json.load(sys.stdin)["phase"])') ||
		fail "cannot inspect the metadata"
	case $crash_metadata in
	copying) truth=lo ;;
	switched) truth=ld ;;
	*) fail "the metadata says '$crash_metadata' after a crash of a running migration" ;;
	esac
	# What the device holds when it comes back, before anything else writes to it.
	snapshot "$(dm_path $truth)" "$TEST_TMP/recovered"
	crash_verify "$TEST_TMP/recovered"
	log_mark
	dm_create mg "$table" || fail "the table was refused after the crash: $(log_since | tail -2)"
	recovered_status=$(dmsetup status "$DEV_PREFIX-mg")
	# What the metadata gave the target, before its copier went on.
	recovered_copied=$(log_since | sed -n 's/.*Metadata: [a-z ]*, \([0-9]*\)\/.*/\1/p' | tail -1)
	loaded=$(log_since | sed -n 's/.*Metadata: \([a-z ]*\), [0-9]*\/.*/\1/p' | tail -1)
	case $crash_metadata:$loaded in
	"copying:resuming the copy" | "switched:switched already") ;;
	*) fail "the metadata says '$crash_metadata', the target loaded '$loaded'" ;;
	esac
	[ "$expect" = switched ] && [ "$crash_metadata" != switched ] &&
		fail "not switched after a crash after the switch: $recovered_status"
	crash_outcomes+=("${crash_phase:-once}:$crash_metadata")
	wait_state mg switched 60
	finished_status=$(dmsetup status "$DEV_PREFIX-mg")
	crash_verify "$(dm_path mg)"
	dmsetup remove "$DEV_PREFIX-mg" || fail "remove failed"
	crash_verify "$(dm_path ld)"
	# The switch changed nothing the device shows: regions whose mirrored writes were cut by the
	# crash were copied again.
	same_bytes "$(dm_path ld)" "$TEST_TMP/recovered"
}

# crash_summary: how many recoveries loaded copying and how many switched, per crash phase.
crash_summary() {
	diag "recoveries (phase:metadata at the crash): $(printf '%s\n' "${crash_outcomes[@]}" |
		sort | uniq -c | awk '{ printf "%s%s x%s", sep, $2, $1; sep = ", " }')"
}

# crash_point PHASE: one crash in PHASE and its recovery.
#   early:   in the first second of the copy, under writes.
#   mid:     between 30% and 80% of the copy, under writes.
#   switch:  around the end of the copy, under writes: just before or just after the switch.
#   after:   after the switch, while writes go to the destination alone.
#   synced:  in sync with no_switch, writes mirrored.
crash_point() {
	local phase=$1 total copied expect=any options="rate 1024"
	crash_phase=$phase
	crash_begin
	[ "$phase" = synced ] && options="rate 4096 no_switch"
	[ -n "$CRASH_MIRROR" ] && options+=" mirror $CRASH_MIRROR"
	local words=$((2 + $(wc -w <<<"$options")))
	dm_create mg "0 $crash_len migrate $(dm_path lo) $(dm_path ld) $words metadata $(dm_path lm) $options" ||
		fail "create failed"
	total=$(migrate_field mg 2 | cut -d/ -f2)
	crash_writers 2
	case $phase in
	early)
		# Once the writers write (python starts slowly in the VM).
		until grep -qs '^[0-9]' "$TEST_TMP/writer.0.log" && grep -qs '^[0-9]' "$TEST_TMP/writer.1.log"; do
			sleep 0.05
		done
		sleep "0.$((RANDOM % 5))"
		;;
	mid)
		until copied=$(migrate_field mg 2 | cut -d/ -f1) && [ "$copied" -ge $((total * 3 / 10)) ]; do
			sleep 0.1
		done
		sleep "$((RANDOM % 2)).$((RANDOM % 10))"
		;;
	switch)
		until copied=$(migrate_field mg 2 | cut -d/ -f1) && [ "$copied" -ge $((total * 3 / 4)) ]; do
			sleep 0.1
		done
		sleep "$((RANDOM % 3)).$((RANDOM % 10))"
		;;
	after)
		wait_state mg switched 60
		expect=switched
		sleep "0.$((RANDOM % 10))"
		;;
	synced)
		wait_state mg synced 60
		sleep "0.$((RANDOM % 10))"
		;;
	esac
	# Every writer has had a write acknowledged (python starts slowly in a busy VM): a crash
	# before that would test no write.
	local start=$SECONDS
	until grep -qs '^[0-9]' "$TEST_TMP/writer.0.log" && grep -qs '^[0-9]' "$TEST_TMP/writer.1.log"; do
		[ $((SECONDS - start)) -lt 60 ] || fail "the writers acknowledged no write in 60 s"
		sleep 0.05
	done
	crash_status=$(dmsetup status "$DEV_PREFIX-mg")
	crash_now
	diag "$phase: crashed at [${crash_status#*migrate }]"
	crash_recover "$expect"
	diag "$phase: recovered from [${recovered_status#*migrate }]"
}
