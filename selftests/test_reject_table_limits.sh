#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Tables the target cannot run safely are refused with their reason and leave nothing behind: a
# read-only table (the copy writes the destination), two migrate targets in one table, and a
# region count whose bitmap would be too large (1-sector regions on a 16 TiB null_blk pair).
. "$(dirname "$0")/lib.sh"
load_migrate
make_loop origin 8
make_loop dest 8
make_loop origin2 8
make_loop dest2 8
len=$(sectors "$origin")

log_mark
dmsetup create --readonly "$DEV_PREFIX-ro" --table "0 $len migrate $origin $dest" 2>/dev/null &&
	fail "read-only table accepted"
log_since | grep -qF "migrate: Read-only table: the copy writes the destination" ||
	fail "no reason logged for the read-only table: $(log_since | tail -3)"

log_mark
printf '0 %d migrate %s %s\n%d %d migrate %s %s\n' "$len" "$origin" "$dest" "$len" "$len" \
	"$origin2" "$dest2" | dmsetup create "$DEV_PREFIX-two" 2>/dev/null &&
	fail "two migrate targets accepted"
log_since | grep -qF "migrate: Only one migrate target per table" ||
	fail "no reason logged for two targets: $(log_since | tail -3)"
dmsetup ls | grep -q "^$DEV_PREFIX-two" && fail "refused table left a device behind"
# The refusal left no trace in the registry: a single target of the same devices works.
dm_create one "0 $len migrate $origin2 $dest2" || fail "create after refusal failed"
wait_state one switched 60
dmsetup remove "$DEV_PREFIX-one" || fail "remove failed"

grep -q '^null_blk ' /proc/modules && skip "null_blk is in use"
kmodprobe null_blk nr_devices=2 gb=16384 || skip "null_blk is not available"
trap 'cleanup; rmmod null_blk 2>/dev/null' EXIT
huge=$(sectors /dev/nullb0)
[ "$huge" = $((1 << 35)) ] || fail "null_blk has $huge sectors"
expect_reject "0 $huge migrate /dev/nullb0 /dev/nullb1 2 region_size 1" \
	"Too many regions: use a larger region_size"
# The default regions fit: 2^28 of them, a 32 MiB bitmap.
dm_create huge "0 $huge migrate /dev/nullb0 /dev/nullb1 1 no_switch" || fail "16 TiB refused"
dmsetup message "$DEV_PREFIX-huge" 0 pause || fail "pause failed"
dmsetup remove "$DEV_PREFIX-huge" || fail "remove failed"
pass
