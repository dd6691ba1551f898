#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# A migrate target that starts at a non-zero sector of a two-segment table maps its first sector
# to the origin's first sector (on both devices), and a target shorter than the origin uses only
# their start.
. "$(dirname "$0")/lib.sh"
load_migrate
make_loop front 4
make_loop origin 8
make_loop dest 8
snapshot "$origin" "$TEST_TMP/expect"
snapshot "$dest" "$TEST_TMP/dest.before"
front_len=$(sectors "$front")
len=$(( $(sectors "$origin") - 2048 ))
printf '0 %s linear %s 0\n%s %s migrate %s %s\n' "$front_len" "$front" "$front_len" "$len" "$origin" "$dest" |
	dmsetup create "$DEV_PREFIX-offset" || fail "create failed"
dev=$(dm_path offset)
[ "$(sectors "$dev")" = $((front_len + len)) ] || fail "wrong device size"
head -c $((len * 512)) /dev/urandom >"$TEST_TMP/data"
dd if="$TEST_TMP/data" of="$dev" bs=512k oflag=direct,seek_bytes seek=$((front_len * 512)) \
	status=none || fail "write failed"
dd if="$TEST_TMP/data" of="$TEST_TMP/expect" bs=512k conv=notrunc status=none
wait_state offset switched
# The destination holds the data from sector 0, and its tail beyond the target is untouched.
dd if="$TEST_TMP/dest.before" of="$TEST_TMP/expect" bs=512 skip="$len" seek="$len" conv=notrunc status=none
same_bytes "$dest" "$TEST_TMP/expect"
# Reads through the target return the same bytes.
dd if="$dev" of="$TEST_TMP/back" bs=512k iflag=direct,skip_bytes skip=$((front_len * 512)) status=none
same_bytes "$TEST_TMP/back" "$TEST_TMP/data"
pass
