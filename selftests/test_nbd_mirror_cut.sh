#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# An NBD destination (nbd_lib.sh) whose link is cut in the mirror phase (a migrate table with
# no_switch, in sync, under the writer): the keeper cancels, the state is 'cancelled', the
# writer sees no error, and the origin has every write.
. "$(dirname "$0")/lib.sh"
. "$SELFTEST_DIR/nbd_lib.sh"

# --- 2. The mirror phase: no_switch, in sync, under the writer.
serve two 32
make_disk two
connect_export two
dm_reload two "0 65536 migrate $DISK_ORIGIN $NBD 1 no_switch"
wait_state two synced
start_writer two
sleep 2
cut_link
# Cancelled by the keeper, well before the held requests would fail on their own.
wait_state two cancelled $((dead_conn_timeout / 2))
wait_keeper_gone two
restore_link
sleep 1
stop_writer two
dm_reload two "0 65536 linear $DISK_ORIGIN 0"
disconnected "$NBD"
stop_server
diag "2. the link cut in the mirror phase: cancelled, the origin has every write"

pass
