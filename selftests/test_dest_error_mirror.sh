#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# A destination that starts failing writes once the copy is done and writes are mirrored
# (no_switch) fails the migration without an I/O error for the writer; the origin holds every
# write.
. "$(dirname "$0")/lib.sh"
command -v fio >/dev/null || skip "fio is not installed"
load_migrate
kmodprobe dm-flakey || skip "dm-flakey is not available"
# The same with each mirror mode: with `async` the failing write is the copy behind, which
# the guest no longer waits for.
for mode in sync async; do
	make_loop origin 64
	make_loop disk 64
	len=$(sectors "$origin")
	flakey_create flaky "$disk" 3600 0
	dm_create mig "0 $len migrate $origin $(dm_path flaky) 3 no_switch mirror $mode" ||
		fail "create failed"
	wait_state mig synced 120
	# Now every destination write fails.
	flakey_set flaky "$disk" 0 1 error_writes
	fio_verify_write "$(dm_path mig)" 64 "$TEST_TMP/fio-$mode.log"
	wait_state mig failed 30
	[ "$(migrate_field mig 8)" = destination_write_error ] ||
		fail "$mode: reason: $(dmsetup status "$DEV_PREFIX-mig")"
	dmsetup remove "$DEV_PREFIX-mig" || fail "remove failed"
	dmsetup remove "$DEV_PREFIX-flaky" || fail "remove flaky failed"
	fio_verify_only "$origin" 64 "$TEST_TMP/verify-origin-$mode.log"
done
pass
