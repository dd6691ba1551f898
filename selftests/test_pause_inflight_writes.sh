#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Pause/resume cycles while the origin's writes are slow (dm-delay, 150 ms on writes only) never
# let the copier read a region under a write still in flight: after the switch every block fio
# wrote verifies through the device and on the destination alone.
. "$(dirname "$0")/lib.sh"
command -v fio >/dev/null || skip "fio is not installed"
load_migrate
kmodprobe dm-delay || skip "dm-delay is not available"
make_loop disk 64
make_loop dest 64
len=$(sectors "$disk")
dmsetup create "$DEV_PREFIX-slow" --table "0 $len delay $disk 0 0 $disk 0 150" ||
	fail "delay failed"
# 256 KiB/s keeps the copy running across the whole write phase, also on the debug kernel.
dm_create mig "0 $len migrate $(dm_path slow) $dest 4 region_size 128 rate 256" ||
	fail "create failed"
m() { dmsetup message "$DEV_PREFIX-mig" 0 "$@"; }
# Each cycle that paused and resumed adds a line to cycles.log; a failed message ends the cycler
# with its status, which the test reads.
cycles() {
	while :; do
		m pause || exit 1
		sleep 0.3
		m resume || exit 2
		echo cycle >>"$TEST_TMP/cycles.log"
		sleep 0.15
	done
}
cycles &
cycler=$!
# Blocks of 16 to 64 KiB: each write sits 150 ms on the origin, so many are always in flight.
job=(--bsrange=16k-64k --iodepth=16)
fio_verify_write "$(dm_path mig)" 64 "$TEST_TMP/fio.log" "${job[@]}"
if ! kill -0 $cycler 2>/dev/null; then
	wait $cycler
	fail "the pause/resume cycler ended during the writes (exit $?): a message failed"
fi
kill $cycler
wait $cycler 2>/dev/null
done_cycles=$(wc -l <"$TEST_TMP/cycles.log" 2>/dev/null || echo 0)
diag "$done_cycles pause/resume cycles during the writes"
[ "$done_cycles" -ge 3 ] || fail "only $done_cycles pause/resume cycles during the writes"
diag "after the writes: $(dmsetup status "$DEV_PREFIX-mig")"
[ "$(migrate_state mig)" != switched ] || fail "switched before the writes ended: the test is void"
m resume && m rate 0 || fail "resume/rate failed"
wait_state mig switched 300
fio_verify_only "$(dm_path mig)" 64 "$TEST_TMP/verify.log" "${job[@]}"
dmsetup remove "$DEV_PREFIX-mig" || fail "remove failed"
fio_verify_only "$dest" 64 "$TEST_TMP/verify-dest.log" "${job[@]}"
pass
