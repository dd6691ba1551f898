#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# An NBD destination (nbd_lib.sh) whose link is cut during the copy: the keeper cancels the
# migration and disconnects the device; dmmig move fails back onto the original table, quickly
# (not after the 20-s dead-connection timeout), and the disk has every write.
. "$(dirname "$0")/lib.sh"
. "$SELFTEST_DIR/nbd_lib.sh"

# --- 1. A cut during the copy: the keeper cancels, the move fails onto the origin.
serve one 32
make_disk one
original=$(dmsetup table "$DEV_PREFIX-one")
start_writer one
"$DMMIG" move "$DEV_PREFIX-one" "nbd://$server_ip/one" --max-rate 2048 --min-rate 0 --no-progress \
	--nbd-timeout $nbd_timeout --nbd-dead-conn-timeout $dead_conn_timeout >"$TEST_TMP/move-one.log" 2>&1 &
mover=$!
wait_migrate_table "$DEV_PREFIX-one"
wait_copied one 4
cut_link
cut_at=$SECONDS
wait $mover && fail "the move succeeded with the link cut"
# The held requests would fail on their own only after the request and dead-connection timeouts.
[ $((SECONDS - cut_at)) -lt $dead_conn_timeout ] ||
	fail "the move failed $((SECONDS - cut_at)) s after the cut: the keeper did not act"
diag_file "$TEST_TMP/move-one.log"
grep -q "the keeper gave up the migration" "$TEST_TMP/move-one.log" ||
	{ log_since | grep -E 'dmmig|dm_migrate' | tail -8 | diag_lines; false; } ||
	fail "the keeper did not give up the migration (the NBD requests timed out instead?)"
[ "$(dmsetup table "$DEV_PREFIX-one")" = "$original" ] ||
	fail "one is not back on its origin: $(dmsetup table "$DEV_PREFIX-one")"
[ -e "$DISK_IMAGE" ] || fail "the origin image of one is gone"
moved_to one
wait_keeper_gone one
disconnected "$NBD"
restore_link
stop_writer one
stop_server
diag "1. the link cut during the copy: cancelled onto the origin, every block verified"

pass
