#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# `dmsetup wait` returns when the migration switches (dm_table_event), and not before.
. "$(dirname "$0")/lib.sh"
load_migrate
make_loop origin 16
make_loop dest 16
dm_create ev "0 $(sectors "$origin") migrate $origin $dest 2 rate 1" || fail "create failed"
events=$(dm_events ev)
dmsetup wait "$DEV_PREFIX-ev" "$events" &
waiter=$!
sleep 1
kill -0 $waiter 2>/dev/null || fail "dmsetup wait returned before the switch"
[ "$(migrate_state ev)" = copying ] || fail "not copying: $(migrate_state ev)"
dmsetup message "$DEV_PREFIX-ev" 0 rate 0 || fail "rate 0 failed"
for _ in $(seq 100); do kill -0 $waiter 2>/dev/null || break; sleep 0.2; done
kill -0 $waiter 2>/dev/null && { kill $waiter; fail "dmsetup wait did not return on the switch"; }
wait $waiter || fail "dmsetup wait failed"
[ "$(migrate_state ev)" = switched ] || fail "event without switch: $(migrate_state ev)"
[ "$(dm_events ev)" -gt "$events" ] || fail "event count unchanged"
pass
