#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# A destination that fails writes during the copy (dm-flakey) fails the migration: state
# "failed", no I/O error for the writer, and the origin holds every write. A `cancel` after the
# failure changes nothing: the state stays failed and no `cancelled` event is raised.
. "$(dirname "$0")/lib.sh"
command -v fio >/dev/null || skip "fio is not installed"
load_migrate
kmodprobe dm-flakey || skip "dm-flakey is not available"
make_loop origin 64
make_loop disk 64
len=$(sectors "$origin")
flakey_create bad "$disk" 0 1 error_writes
dm_create mig "0 $len migrate $origin $(dm_path bad)" || fail "create failed"
fio_verify_write "$(dm_path mig)" 64 "$TEST_TMP/fio.log"
wait_state mig failed 60
[ "$(migrate_field mig 8)" = destination_write_error ] || fail "reason: $(dmsetup status "$DEV_PREFIX-mig")"
[ "$(migrate_field mig 7)" -gt 0 ] || fail "no error counted"
events=$(dm_events mig)
dmsetup message "$DEV_PREFIX-mig" 0 cancel || fail "cancel after the failure was refused"
[ "$(migrate_state mig)" = failed ] || fail "cancel changed the state: $(migrate_state mig)"
[ "$(dm_events mig)" = "$events" ] ||
	fail "cancel after the failure raised an event"
fio_verify_only "$(dm_path mig)" 64 "$TEST_TMP/verify.log"
dmsetup remove "$DEV_PREFIX-mig" || fail "remove failed"
fio_verify_only "$origin" 64 "$TEST_TMP/verify-origin.log"
pass
