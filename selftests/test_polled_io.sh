#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Polled I/O (io_uring with IOPOLL, REQ_POLLED bios) on a migrating device whose disks both serve
# polled I/O (null_blk with a poll queue), so the dm device does too. The core polls only its own
# clone of a polled bio; a mirror clone that kept REQ_POLLED would sit in the destination's poll
# queue with nobody to poll it, and the guest's write would never complete. Writes during the copy
# and while synced (every write mirrored) must all complete and verify, on the device and on the
# destination alone, and the two disks must end identical.
. "$(dirname "$0")/lib.sh"
command -v fio >/dev/null || skip "fio is not installed"
load_migrate
make_nullb origin 64
make_nullb dest 64
len=$(sectors "$origin")
# 16 MiB/s: the first round of writes meets copied, in-copy and pending regions alike.
dm_create poll "0 $len migrate $origin $dest 5 region_size 2048 rate 16384 no_switch" ||
	fail "create failed"
dev=$(dm_path poll)
[ "$(cat "$(dm_sysfs poll)/queue/io_poll")" = 1 ] ||
	fail "the dm device does not serve polled I/O, so this test would test nothing"

# polled_fio LOG [fio options...]: polled, verified random writes over the whole device; a write
# that never completes shows as fio killed by the timeout.
polled_fio() {
	local log=$1
	shift
	timeout -s KILL 240 fio --name=polled --filename="$dev" --output="$log" --ioengine=io_uring \
		--hipri=1 --direct=1 --iodepth=8 --numjobs=2 --size=32M --offset_increment=32M \
		--bsrange=4k-256k --rw=randwrite --verify=crc32c --verify_fatal=1 --randrepeat=0 \
		--group_reporting "$@"
	local rc=$?
	[ $rc -eq 137 ] && fail "polled writes did not complete within 240 s (fio killed)"
	[ $rc -eq 0 ] || { diag_file "$log"; fail "polled fio failed (rc $rc)"; }
	grep -q 'err= 0' "$log" || fail "fio reported errors"
}

polled_fio "$TEST_TMP/copying.log"
diag "during the copy: $(dmsetup status "$DEV_PREFIX-poll")"
wait_state poll synced 120
polled_fio "$TEST_TMP/synced.log" --randseed=7
[ "$(migrate_state poll)" = synced ] || fail "not synced after the writes: $(migrate_state poll)"
# Suspending flushes the destination; both disks now hold every write.
dmsetup suspend "$DEV_PREFIX-poll" || fail "suspend failed"
same_bytes "$origin" "$dest"
dmsetup resume "$DEV_PREFIX-poll" || fail "resume failed"
dmsetup remove "$DEV_PREFIX-poll" || fail "remove failed"
fio --name=polled --filename="$dest" --output="$TEST_TMP/verify.log" --ioengine=libaio --direct=1 \
	--iodepth=8 --numjobs=2 --size=32M --offset_increment=32M --bsrange=4k-256k --rw=randwrite \
	--verify=crc32c --verify_fatal=1 --randrepeat=0 --randseed=7 --verify_only ||
	fail "the destination alone does not verify"
pass
