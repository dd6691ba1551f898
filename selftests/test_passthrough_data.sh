#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Data written through the target lands byte for byte on the origin, reads come from the origin,
# and the destination is not written at all.
. "$(dirname "$0")/lib.sh"
load_migrate
make_loop origin 32
make_loop dest 32
snapshot "$dest" "$TEST_TMP/dest.before"
dm_create data "0 $(sectors "$origin") migrate $origin $dest" || fail "create failed"
dev=$(dm_path data)

# Reads see what the origin holds.
same_bytes "$dev" "$origin"
# Writes, aligned and not to regions, buffered and direct, reach the origin.
head -c $((32 << 20)) /dev/urandom >"$TEST_TMP/data"
dd if="$TEST_TMP/data" of="$dev" bs=1M oflag=direct status=none || fail "direct write failed"
dd if=/dev/urandom of="$TEST_TMP/data" bs=512 seek=12345 count=77 conv=notrunc status=none
dd if="$TEST_TMP/data" of="$dev" bs=512 skip=12345 seek=12345 count=77 status=none conv=fsync ||
	fail "buffered write failed"
same_bytes "$dev" "$TEST_TMP/data"
same_bytes "$origin" "$TEST_TMP/data"
same_bytes "$dest" "$TEST_TMP/dest.before"
pass
