#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# An NBD destination reached through another layer (nbd_lib.sh): the migrate target writes to a
# dm linear over the NBD device (as an LV or a LUKS mapping would be), so the NBD device's direct
# holder is the linear, not the migration. A link cut during the copy must still make the keeper
# cancel the migration and disconnect (a reconnect before the switch is the one thing it must
# not do); the move fails back onto the original table and the disk has every write. A move
# straight onto the export, attached already, is refused.
. "$(dirname "$0")/lib.sh"
. "$SELFTEST_DIR/nbd_lib.sh"

serve lv 32
connect_export lv
dm_create lv "0 $(sectors "$NBD") linear $NBD 0" || fail "the linear over $NBD failed"
make_disk one
original=$(dmsetup table "$DEV_PREFIX-one")
# The export is attached already: a move onto it again (spelt otherwise) is refused, as a usage
# error, with nothing changed: two devices writing one export overwrite each other's writes.
"$DMMIG" move "$DEV_PREFIX-one" "nbd://$server_ip:$port/lv" --no-progress >"$TEST_TMP/again.log" 2>&1
status=$?
diag_file "$TEST_TMP/again.log"
[ "$status" = 2 ] || fail "a second move onto an attached export exited $status, not 2"
grep -q "attached already" "$TEST_TMP/again.log" || fail "the refusal does not say why"
[ "$(dmsetup table "$DEV_PREFIX-one")" = "$original" ] || fail "the refused move changed the disk"
start_writer one
log_mark
"$DMMIG" move "$DEV_PREFIX-one" "$(dm_path lv)" --force --max-rate 2048 --min-rate 0 \
	--no-progress >"$TEST_TMP/move-one.log" 2>&1 &
mover=$!
wait_migrate_table "$DEV_PREFIX-one"
wait_copied one 4
reconnects=$(count_log "${NBD#/dev/}: reconnected")
cut_link
cut_at=$SECONDS
wait $mover && fail "the move succeeded with the link cut"
diag_file "$TEST_TMP/move-one.log"
log_since | grep -E 'dmmig' | tail -4 | diag_lines
[ "$(count_log "${NBD#/dev/}: reconnected")" = "$reconnects" ] ||
	fail "the keeper reconnected before the switch"
[ "$(count_log "gave up the migration of $DEV_PREFIX-one")" -gt 0 ] ||
	fail "the keeper did not give up the migration through the linear"
[ $((SECONDS - cut_at)) -lt $dead_conn_timeout ] ||
	fail "the move failed $((SECONDS - cut_at)) s after the cut: the keeper did not act"
[ "$(dmsetup table "$DEV_PREFIX-one")" = "$original" ] ||
	fail "one is not back on its origin: $(dmsetup table "$DEV_PREFIX-one")"
restore_link
stop_writer one
dmsetup remove "$DEV_PREFIX-lv" || fail "cannot remove the linear over $NBD"
stop_server
diag "the link cut under a linear over the NBD device: cancelled onto the origin, every block verified"
pass
