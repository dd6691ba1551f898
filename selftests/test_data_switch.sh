#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Writes before the switch land on the origin, the switch leaves the destination byte-identical,
# and writes after it land on the destination only.
. "$(dirname "$0")/lib.sh"
load_migrate
make_loop origin 32
make_loop dest 32
dm_create data "0 $(sectors "$origin") migrate $origin $dest 2 rate 1" || fail "create failed"
# A 1 KiB/s limit holds the copy after its first round, so the writes below meet copied and
# pending regions alike.
dev=$(dm_path data)
snapshot "$origin" "$TEST_TMP/data"
# Writes, aligned and not to regions, direct and buffered, over copied and pending regions.
head -c $((8 << 20)) /dev/urandom >"$TEST_TMP/chunk"
dd if="$TEST_TMP/chunk" of="$TEST_TMP/data" bs=1M seek=3 conv=notrunc status=none
dd if="$TEST_TMP/chunk" of="$dev" bs=1M seek=3 oflag=direct status=none || fail "direct write failed"
dd if=/dev/urandom of="$TEST_TMP/data" bs=512 seek=12345 count=77 conv=notrunc status=none
dd if="$TEST_TMP/data" of="$dev" bs=512 skip=12345 seek=12345 count=77 conv=fsync status=none ||
	fail "buffered write failed"
same_bytes "$dev" "$TEST_TMP/data"
same_bytes "$origin" "$TEST_TMP/data"
[ "$(migrate_state data)" = copying ] || fail "copy not held by the rate limit"
dmsetup message "$DEV_PREFIX-data" 0 rate 0 || fail "rate 0 failed"
wait_state data switched
same_bytes "$dest" "$TEST_TMP/data"
same_bytes "$dev" "$TEST_TMP/data"
# After the switch, writes go to the destination only.
snapshot "$origin" "$TEST_TMP/origin.at-switch"
dd if=/dev/urandom of="$TEST_TMP/data" bs=64k seek=7 count=3 conv=notrunc status=none
dd if="$TEST_TMP/data" of="$dev" bs=64k skip=7 seek=7 count=3 oflag=direct status=none || fail "write failed"
same_bytes "$dest" "$TEST_TMP/data"
same_bytes "$origin" "$TEST_TMP/origin.at-switch"
pass
