#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Discard, write-zeroes, flush and FUA writes pass through to the origin; the destination keeps
# its bytes.
. "$(dirname "$0")/lib.sh"
load_migrate
make_loop origin 16
make_loop dest 16
snapshot "$dest" "$TEST_TMP/dest.before"
dm_create dz "0 $(sectors "$origin") migrate $origin $dest" || fail "create failed"
dev=$(dm_path dz)
[ "$(cat "$(dm_sysfs dz)"/queue/discard_max_bytes)" -gt 0 ] ||
	fail "the target does not advertise discard"
snapshot "$origin" "$TEST_TMP/expect"
# Write-zeroes over 1 MiB at 2 MiB.
blkdiscard -z -o $((2 << 20)) -l $((1 << 20)) "$dev" || fail "write-zeroes failed"
dd if=/dev/zero of="$TEST_TMP/expect" bs=1M seek=2 count=1 conv=notrunc status=none
same_bytes "$origin" "$TEST_TMP/expect"
# Discard over 1 MiB at 5 MiB: a loop device punches a hole, which reads back as zeroes.
blkdiscard -o $((5 << 20)) -l $((1 << 20)) "$dev" || fail "discard failed"
dd if=/dev/zero of="$TEST_TMP/expect" bs=1M seek=5 count=1 conv=notrunc status=none
same_bytes "$origin" "$TEST_TMP/expect"
# A flush (fsync of the block device) and FUA-ish synchronous writes complete without error.
dd if=/dev/urandom of="$TEST_TMP/chunk" bs=64k count=1 status=none
dd if="$TEST_TMP/chunk" of="$dev" bs=64k seek=100 oflag=direct,dsync status=none || fail "dsync write failed"
dd if="$TEST_TMP/chunk" of="$TEST_TMP/expect" bs=64k seek=100 conv=notrunc status=none
sync "$dev" 2>/dev/null || blockdev --flushbufs "$dev" || fail "flush failed"
same_bytes "$origin" "$TEST_TMP/expect"
same_bytes "$dest" "$TEST_TMP/dest.before"
pass
