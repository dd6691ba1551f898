#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# dmmig move to an NBD destination (nbd_lib.sh) that completes; then the link is cut for longer
# than the request timeout under the writer: the keeper reconnects, the held writes complete,
# and the server's image holds every last write.
. "$(dirname "$0")/lib.sh"
. "$SELFTEST_DIR/nbd_lib.sh"

# --- 3. After the move: the disk is a linear on the NBD device, its only copy.
serve three 32
make_disk three
start_writer three
"$DMMIG" move "$DEV_PREFIX-three" "nbd://$server_ip/three" --max-rate 8192 --min-rate 0 --no-progress \
	--nbd-timeout $nbd_timeout --nbd-dead-conn-timeout $dead_conn_timeout >"$TEST_TMP/move-three.log" 2>&1 ||
	{ diag_file "$TEST_TMP/move-three.log"; fail "the move to nbd:// failed"; }
moved_to three
[ "$(dmsetup table "$DEV_PREFIX-three")" = "0 65536 linear $(devnum "$NBD") 0" ] ||
	fail "three is not on $NBD: $(dmsetup table "$DEV_PREFIX-three")"
[ -e "$DISK_IMAGE" ] && fail "the old image of three is still there"
sleep 1
cut_and_reconnect "$NBD"
end_on_server three "$NBD"
diag "3. a cut of $((nbd_timeout + 3)) s after the move: reconnected, the server has every last write"

pass
