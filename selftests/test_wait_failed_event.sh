#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# A destination failure seen by a mirrored write under continuous guest writes raises exactly
# the `failed` event: `dmsetup wait` and `dmmig wait` return, the state is failed with
# destination_write_error, and the writer saw no error.
. "$(dirname "$0")/lib.sh"
load_migrate
kmodprobe dm-flakey || skip "dm-flakey is not available"
dmmig=$REPO_ROOT/target/debug/dmmig
[ -x "$dmmig" ] || fail "dmmig is not built ($dmmig)"
make_loop origin 8
make_loop disk 8
len=$(sectors "$origin")
flakey_create flaky "$disk" 3600 0
dm_create mig "0 $len migrate $origin $(dm_path flaky) 1 no_switch" || fail "create failed"
wait_state mig synced 60
event=$(dm_events mig)
timeout 20 dmsetup wait "$DEV_PREFIX-mig" "$event" &
waiter=$!
timeout 20 "$dmmig" wait "$DEV_PREFIX-mig" "$event" >/dev/null &
dmmig_waiter=$!
head -c $((1 << 20)) /dev/urandom >"$TEST_TMP/d"
writer() {
	while :; do
		dd if="$TEST_TMP/d" of="$(dm_path mig)" bs=64k oflag=direct status=none || exit 1
	done
}
writer &
writer_pid=$!
sleep 0.5
flakey_set flaky "$disk" 0 1 error_writes
wait $waiter || fail "dmsetup wait did not return: no event for the failure"
wait "$dmmig_waiter" || fail "dmmig wait did not return"
sleep 0.5
kill -0 $writer_pid 2>/dev/null || fail "the writer saw an error"
kill $writer_pid
wait $writer_pid 2>/dev/null
[ "$(migrate_state mig)" = failed ] || fail "state: $(dmsetup status "$DEV_PREFIX-mig")"
[ "$(migrate_field mig 8)" = destination_write_error ] || fail "reason: $(migrate_field mig 8)"
events=$(dm_events mig)
[ "$events" = $((event + 1)) ] || fail "events: $events, expected $((event + 1))"
same_bytes "$origin" "$TEST_TMP/d" $((1 << 20))
pass
