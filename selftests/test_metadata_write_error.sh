#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# A metadata device that fails writes fails the migration safely, like a destination error: the
# state says failed with metadata_write_error, the guest sees no error (also a write that was
# waiting for its intent bit), and everything is on the origin.
. "$(dirname "$0")/lib.sh"
command -v fio >/dev/null || skip "fio is not installed"
load_migrate
make_loop origin 32
make_loop dest 32
make_metadata meta
len=$(sectors "$origin")
mlen=$(sectors "$meta")
dm_create md "0 $mlen linear $meta 0" || fail "cannot create the metadata device"
dm_create mig "0 $len migrate $origin $dest 6 metadata $(dm_path md) commit_interval 100 rate 4096" ||
	fail "create failed"
until [ "$(migrate_field mig 2 | cut -d/ -f1)" -ge 64 ]; do sleep 0.1; done
# Writes to copied regions wait for intent bits, which from now on cannot be written.
flakey_set md "$meta" 0 1 error_writes
fio_verify_write "$(dm_path mig)" 32 "$TEST_TMP/fio.log"
wait_state mig failed 30
[ "$(migrate_field mig 8)" = metadata_write_error ] ||
	fail "reason: $(dmsetup status "$DEV_PREFIX-mig")"
log_since | grep -q "Migration failed (metadata_write_error)" || fail "no failure in the log"
fio_verify_only "$(dm_path mig)" 32 "$TEST_TMP/verify.log"
dmsetup remove "$DEV_PREFIX-mig" || fail "remove failed"
fio_verify_only "$origin" 32 "$TEST_TMP/verify-origin.log"
pass
