#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Discard, write-zeroes and synchronous writes during a migration reach the origin, and the
# destination after the switch.
. "$(dirname "$0")/lib.sh"
load_migrate
make_loop origin 16
make_loop dest 16
dm_create dz "0 $(sectors "$origin") migrate $origin $dest 4 region_size 256 rate 1" || fail "create failed"
# A 1 KiB/s limit holds the copy after its first round (see test_data_switch.sh).
dev=$(dm_path dz)
[ "$(cat "$(dm_sysfs dz)"/queue/discard_max_bytes)" -gt 0 ] || fail "the target does not advertise discard"
snapshot "$origin" "$TEST_TMP/expect"
# Write-zeroes over 1 MiB at 2 MiB.
blkdiscard -z -o $((2 << 20)) -l $((1 << 20)) "$dev" || fail "write-zeroes failed"
dd if=/dev/zero of="$TEST_TMP/expect" bs=1M seek=2 count=1 conv=notrunc status=none
# Discard over 1 MiB at 5 MiB: a loop device punches a hole, which reads back as zeroes.
blkdiscard -o $((5 << 20)) -l $((1 << 20)) "$dev" || fail "discard failed"
dd if=/dev/zero of="$TEST_TMP/expect" bs=1M seek=5 count=1 conv=notrunc status=none
# A synchronous write and a flush.
dd if=/dev/urandom of="$TEST_TMP/chunk" bs=64k count=1 status=none
dd if="$TEST_TMP/chunk" of="$dev" bs=64k seek=100 oflag=direct,dsync status=none || fail "dsync write failed"
dd if="$TEST_TMP/chunk" of="$TEST_TMP/expect" bs=64k seek=100 conv=notrunc status=none
blockdev --flushbufs "$dev" || fail "flush failed"
same_bytes "$origin" "$TEST_TMP/expect"
[ "$(migrate_state dz)" = copying ] || fail "copy not held by the rate limit"
dmsetup message "$DEV_PREFIX-dz" 0 rate 0 || fail "rate 0 failed"
wait_state dz switched
same_bytes "$dest" "$TEST_TMP/expect"
pass
