#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# A mirrored write that succeeded on the origin and failed on the destination leaves its region
# dirty for good: the migration fails (recorded on the metadata device) before any commit could
# mark the region clean. Here the copier is held in a slow origin read when the write fails, and
# the device is removed at once, so the last commit (postsuspend) is the first to see it: the
# same table loaded again must copy the region again, and the destination must end up with the
# write.
. "$(dirname "$0")/lib.sh"
load_migrate
make_loop origin 16
make_loop dest 16
make_metadata meta
len=$(sectors "$origin")
# Origin reads take 2 s (the copier's), writes none; the destination can be made to fail.
dm_create lo "0 $len delay $origin 0 2000 $origin 0 0" || fail "cannot create the slow origin"
dm_create ld "0 $len linear $dest 0" || fail "cannot create the destination"
table="0 $len migrate $(dm_path lo) $(dm_path ld) 4 metadata $meta copy_depth 1"
dm_create mig "$table" || fail "create failed"
wait_field mig 2 "8/256" 20
flakey_set ld "$dest" 0 1 error_writes
# Region 0 is copied: this write is mirrored, and only its origin half lands.
head -c 4096 /dev/urandom >"$TEST_TMP/block"
dd if="$TEST_TMP/block" of="$(dm_path mig)" bs=4096 oflag=direct status=none ||
	fail "the guest saw the destination's error"
dmsetup load "$DEV_PREFIX-ld" --table "0 $len linear $dest 0" &&
	dmsetup suspend "$DEV_PREFIX-ld" && dmsetup resume "$DEV_PREFIX-ld" || fail "cannot heal"
dmsetup remove "$DEV_PREFIX-mig" || fail "remove failed"
dm_reload lo "0 $len linear $origin 0"
log_mark
dm_create mig "$table" || fail "the table was refused: $(log_since | tail -2)"
diag "$(log_since | grep Metadata)"
wait_state mig switched 60
dmsetup remove "$DEV_PREFIX-mig" || fail "remove failed"
cmp -n 4096 "$TEST_TMP/block" "$dest" >/dev/null ||
	fail "the destination lost the write: its region was recorded clean"
same_bytes "$origin" "$dest"
pass
