#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# An NBD keeper in a PID namespace (a container; nbd_lib.sh): `dmmig nbd connect` run under
# `unshare -p -f` leaves a keeper that knows its device by the backend identifier it set, not
# by the pid in /sys/block/nbdN/pid (the initial namespace's), so it stays; a link cut under the
# writer is then reconnected, and the server's image holds every last write.
. "$(dirname "$0")/lib.sh"
. "$SELFTEST_DIR/nbd_lib.sh"
command -v unshare >/dev/null || skip "unshare is not installed"

serve pn 32
make_disk pn
# The namespace's first process stays (sleep), so that the keeper is not killed with it.
unshare -p -f --kill-child sh -c "'$DMMIG' nbd connect nbd://$server_ip/pn --timeout $nbd_timeout \
	--dead-conn-timeout $dead_conn_timeout; exec sleep 1000" >"$TEST_TMP/connect.log" 2>&1 &
# The namespace goes with its first process: killed with the servers at the end.
_qemu_nbd+=($!)
start=$SECONDS
until NBD=$(grep -o '^/dev/nbd[0-9]*$' "$TEST_TMP/connect.log"); do
	[ $((SECONDS - start)) -lt 30 ] || fail "dmmig nbd connect in a PID namespace: $(cat "$TEST_TMP/connect.log")"
	sleep 0.2
done
_nbd_devices+=("$NBD")
sleep 3
pgrep -f "dmmig nbd keep .*/pn\$" >/dev/null ||
	{ log_since | grep dmmig | tail -3 | diag_lines; fail "the keeper in a PID namespace exited"; }
dm_reload pn "0 65536 linear $NBD 0"
start_writer pn
sleep 1
cut_and_reconnect "$NBD"
end_on_server pn "$NBD"
pass
