#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# An origin that fails reads (dm-flakey error_reads) is retried a bounded number of times, then
# the migration fails with origin_read_error; writes still reach the origin, none the destination
# alone.
. "$(dirname "$0")/lib.sh"
load_migrate
kmodprobe dm-flakey || skip "dm-flakey is not available"
make_loop disk 16
make_loop dest 16
len=$(sectors "$disk")
dmsetup create "$DEV_PREFIX-badread" --table "0 $len flakey $disk 0 0 1 1 error_reads" ||
	fail "flakey failed"
dm_create mig "0 $len migrate $(dm_path badread) $dest" || fail "create failed"
wait_state mig failed 60
[ "$(migrate_field mig 8)" = origin_read_error ] || fail "reason: $(dmsetup status "$DEV_PREFIX-mig")"
# The first read and its 3 retries.
[ "$(migrate_field mig 7)" = 4 ] || fail "errors: $(migrate_field mig 7), expected 4"
[ "$(migrate_field mig 2)" = "0/$((len / 128))" ] || fail "regions copied from a failing origin"
snapshot "$dest" "$TEST_TMP/dest"
dd if=/dev/urandom of="$TEST_TMP/d" bs=64k count=16 status=none
dd if="$TEST_TMP/d" of="$(dm_path mig)" bs=64k oflag=direct status=none || fail "write failed"
same_bytes "$disk" "$TEST_TMP/d" $((1 << 20))
same_bytes "$dest" "$TEST_TMP/dest"
pass
