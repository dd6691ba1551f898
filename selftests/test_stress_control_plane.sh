#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# fio (crc32c, blocks of 512 B to 128 KiB, two jobs on separate halves) writes during a
# rate-limited copy with 4 KiB regions while a loop runs suspend/resume, pause/resume, rate,
# depth, identical-table reloads, status and sysfs reads at random; then the switch, a swap to a
# linear on the destination, and every byte verified through the device and on the destination
# alone.
. "$(dirname "$0")/lib.sh"
command -v fio >/dev/null || skip "fio is not installed"
load_migrate
make_loop origin 64
make_loop dest 64
len=$(sectors "$origin")
name=$DEV_PREFIX-st
table="0 $len migrate $origin $dest 4 region_size 8 rate 512"
dm_create st "$table" || fail "create failed"
sysfs=$(dm_sysfs st)/migrate
m() { dmsetup message "$name" 0 "$@"; }
control() {
	local ops=0
	while :; do
		case $((RANDOM % 7)) in
		0) dmsetup suspend "$name" && sleep 0.1 && dmsetup resume "$name" ;;
		1) m pause && sleep 0.2 && m resume ;;
		2) m rate $((RANDOM % 768 + 256)) ;;
		3) m depth $((RANDOM % 16 + 1)) ;;
		4) dmsetup load "$name" --table "$table" && dmsetup suspend "$name" &&
			dmsetup resume "$name" ;;
		5) dmsetup status "$name" >/dev/null ;;
		6) cat "$sysfs"/* >/dev/null 2>&1 ;;
		esac || { echo "control operation failed" >"$TEST_TMP/control.err"; exit 1; }
		ops=$((ops + 1))
		echo $ops >"$TEST_TMP/control.ops"
		sleep 0.05
	done
}
control &
controller=$!
job=(--bsrange=512-128k --numjobs=2 --iodepth=8)
fio --name=stress "${fio_job[@]}" "${job[@]}" --size=32M --offset_increment=32M \
	--filename="$(dm_path st)" --output="$TEST_TMP/fio.log" || {
	diag_file "$TEST_TMP/fio.log"
	fail "fio write+verify failed"
}
kill $controller
wait $controller 2>/dev/null
[ -e "$TEST_TMP/control.err" ] && fail "a control operation failed"
dmsetup resume "$name" 2>/dev/null
diag "control operations: $(cat "$TEST_TMP/control.ops"); $(dmsetup status "$name")"
[ "$(cat "$TEST_TMP/control.ops")" -ge 5 ] || fail "too few control operations"
[ "$(migrate_state st)" != switched ] || fail "switched before the writes ended: the test is void"
m resume && m rate 0 || fail "resume/rate failed"
wait_state st switched 300
dm_reload st "0 $len linear $dest 0"
verify=(--name=stress "${fio_job[@]}" "${job[@]}" --size=32M --offset_increment=32M --verify_only)
fio "${verify[@]}" --filename="$(dm_path st)" --output="$TEST_TMP/verify.log" || {
	diag_file "$TEST_TMP/verify.log"
	fail "the device does not verify after the move"
}
dmsetup remove "$name" || fail "remove failed"
fio "${verify[@]}" --filename="$dest" --output="$TEST_TMP/verify-dest.log" || {
	diag_file "$TEST_TMP/verify-dest.log"
	fail "the destination alone does not verify"
}
pass
