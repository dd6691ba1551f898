#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# The NBD keeper is supervised (nbd_lib.sh): a disk that lives on an NBD device alone (a linear
# on it, as after a move) loses its keeper (killed); `dmmig nbd keep /dev/nbdN` gives the device a
# new one, in the background, and a second is refused; a link cut after that is reconnected
# and the server's image holds every last write of the writer. A keeper stopped by SIGTERM says
# so in the kernel log and leaves the device connected.
. "$(dirname "$0")/lib.sh"
. "$SELFTEST_DIR/nbd_lib.sh"

serve ka 32
make_disk ka
connect_export ka
dm_reload ka "0 65536 linear $NBD 0"
first=$(pgrep -f "dmmig nbd keep .*/ka\$") || fail "dmmig nbd connect left no keeper"
kill -9 $first
wait_keeper_gone ka
out=$("$DMMIG" nbd keep "$NBD" 2>&1) || fail "dmmig nbd keep $NBD failed: $out"
[ "$out" = "$NBD" ] || fail "dmmig nbd keep printed '$out', not $NBD"
keeper=$(pgrep -f "dmmig nbd keep .*$NBD\$") || fail "no keeper of $NBD runs"
out=$("$DMMIG" nbd keep "$NBD" 2>&1)
rc=$?
diag "a second keeper: $rc: $out"
[ "$rc" != 0 ] || fail "a second keeper of $NBD was started"
echo "$out" | grep -q "already has a keeper" || fail "a second keeper: '$out'"
[ "$(pgrep -f "dmmig nbd keep .*$NBD\$" | wc -l)" = 1 ] || fail "two keepers of $NBD run"
start_writer ka
sleep 1
cut_and_reconnect "$NBD"
diag "a cut after the keeper was re-attached: reconnected"
stops=$(count_log "keeper stopped by a signal")
kill -TERM "$keeper"
wait_log "keeper stopped by a signal" "$stops" 10
# Still served: a read goes to the server (a disconnected device fails it).
dd if="$NBD" of=/dev/null bs=4k count=1 iflag=direct status=none ||
	fail "the stopped keeper disconnected $NBD"
end_on_server ka "$NBD"
pass
