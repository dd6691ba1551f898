#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# An origin that fails every read (dm-flakey error_reads) is retried per batch, each failed batch
# READ_RETRIES (4) times with a growing wait, then the migration fails with origin_read_error:
# at copy_depth 2 that is 2 x (1 + 4) failed reads and one `failed` event. Writes still reach the
# origin, none the destination alone.
. "$(dirname "$0")/lib.sh"
load_migrate
kmodprobe dm-flakey || skip "dm-flakey is not available"
make_loop disk 16
make_loop dest 16
len=$(sectors "$disk")
flakey_create badread "$disk" 0 1 error_reads
dm_create mig "0 $len migrate $(dm_path badread) $dest 2 copy_depth 2" || fail "create failed"
event=$(dm_events mig)
wait_state mig failed 60
[ "$(migrate_field mig 8)" = origin_read_error ] || fail "reason: $(dmsetup status "$DEV_PREFIX-mig")"
[ "$(migrate_field mig 7)" = 10 ] || fail "errors: $(migrate_field mig 7), expected 2 batches x 5 reads"
[ "$(dm_events mig)" = $((event + 1)) ] ||
	fail "expected exactly one event for the failure"
[ "$(migrate_field mig 2)" = "0/$((len / 128))" ] || fail "regions copied from a failing origin"
snapshot "$dest" "$TEST_TMP/dest"
dd if=/dev/urandom of="$TEST_TMP/d" bs=64k count=16 status=none
dd if="$TEST_TMP/d" of="$(dm_path mig)" bs=64k oflag=direct status=none || fail "write failed"
same_bytes "$disk" "$TEST_TMP/d" $((1 << 20))
same_bytes "$dest" "$TEST_TMP/dest"
pass
