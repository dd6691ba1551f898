#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# A switched migrate table onto an NBD destination (nbd_lib.sh), before userspace swaps it: the
# keeper's cancel is refused, so it reconnects; the server's image holds every last write.
. "$(dirname "$0")/lib.sh"
. "$SELFTEST_DIR/nbd_lib.sh"

# --- 4. A switched migration, before userspace swaps the table: the cancel is refused.
serve four 32
make_disk four
connect_export four
dm_reload four "0 65536 migrate $DISK_ORIGIN $NBD 0"
wait_state four switched
start_writer four
cut_and_reconnect "$NBD"
[ "$(migrate_state four)" = switched ] || fail "four is '$(migrate_state four)' after the reconnect"
end_on_server four "$NBD"
diag "4. a cut of $((nbd_timeout + 3)) s after the switch: reconnected, the server has every last write"
pass
