# SPDX-License-Identifier: GPL-2.0
# The NBD tests' shared set-up, sourced after lib.sh: an NBD export served by qemu-nbd in a
# second network namespace, reached over a veth pair whose link a test cuts, and guest-writer on
# the disk: a verifying writer whose every 4 KiB block carries its index and a generation unique
# to each write, so that a block holding older data than the last acknowledged write is a
# mismatch. It verifies every block when it stops, and again on the server's own image where
# that is the copy.
# Reconnecting before the switch would not be safe: a copy write from the dead connection could
# reach the server after a newer mirrored write (see tools/dmmig/src/nbd/mod.rs).
DMMIG=${DMMIG:-$REPO_ROOT/target/debug/dmmig}
WRITER_BIN=${WRITER_BIN:-$REPO_ROOT/target/debug/guest-writer}
[ -x "$DMMIG" ] || skip "dmmig is not built ($DMMIG)"
[ -x "$WRITER_BIN" ] || skip "guest-writer is not built ($WRITER_BIN)"
command -v qemu-nbd >/dev/null || skip "qemu-nbd is not installed (Debian: qemu-utils)"
command -v ip >/dev/null || skip "ip is not installed (Debian: iproute2)"
[ -e /sys/block/nbd0 ] || kmodprobe nbd 2>/dev/null || [ -e /sys/block/nbd0 ] ||
	skip "the kernel has no NBD client (CONFIG_BLK_DEV_NBD)"
load_migrate

ns=ksft-migrate-nbd-$$
server_ip=10.199.0.2
port=10809
# Short timeouts keep the cuts short: a request is called dead after 2 s (TCP gives up on the
# socket after 1 s), and is held 20 s for a reconnect.
nbd_timeout=2
dead_conn_timeout=20

_nbd_devices=()
_qemu_nbd=()
# In the order they hold each other: the writer (waited for), the dm devices on the NBD
# devices, the NBD devices (their keepers then exit), the servers.
nbd_cleanup() {
	local dev pid pass
	[ -n "${WRITER:-}" ] && kill "$WRITER" 2>/dev/null && wait "$WRITER" 2>/dev/null
	for pass in 1 2; do
		for dev in $(test_devices); do
			dmsetup resume "$dev" >/dev/null 2>&1
			dmsetup remove "$dev" >/dev/null 2>&1
		done
	done
	for dev in "${_nbd_devices[@]}"; do
		"$DMMIG" nbd disconnect "$dev" >/dev/null 2>&1
	done
	for pid in "${_qemu_nbd[@]}"; do
		kill "$pid" 2>/dev/null
	done
	ip link del veth-ksft 2>/dev/null
	ip netns del "$ns" 2>/dev/null
	cleanup
}
trap nbd_cleanup EXIT

# The server's side: a network namespace with one end of the veth pair.
ip netns add "$ns" || fail "ip netns add failed"
ip link add veth-ksft type veth peer name veth-srv netns "$ns" || fail "cannot make a veth pair"
ip addr add 10.199.0.1/24 dev veth-ksft
ip link set veth-ksft up
ip -n "$ns" addr add "$server_ip/24" dev veth-srv
ip -n "$ns" link set veth-srv up
ip -n "$ns" link set lo up
cut_link() { ip link set veth-ksft down; }
restore_link() { ip link set veth-ksft up; }

# serve NAME MIB: an export NAME of MIB MiB of zeros, served by qemu-nbd in the namespace.
serve() {
	local image=$TEST_TMP/server-$1.img pid start=$SECONDS
	truncate -s "$2M" "$image"
	# --shared: a reconnect may come while the server still holds the dead connection.
	ip netns exec "$ns" qemu-nbd -f raw -x "$1" -b "$server_ip" -p "$port" --persistent \
		--shared=8 "$image" >"$TEST_TMP/qemu-nbd-$1.log" 2>&1 &
	pid=$!
	_qemu_nbd+=("$pid")
	until ip netns exec "$ns" ss -ltn 2>/dev/null | grep -q "$server_ip:$port"; do
		kill -0 "$pid" 2>/dev/null || { diag_file "$TEST_TMP/qemu-nbd-$1.log"; fail "qemu-nbd failed"; }
		[ $((SECONDS - start)) -lt 30 ] || fail "qemu-nbd does not listen"
		sleep 0.2
	done
	SERVER_PID=$pid
	SERVER_IMAGE=$image
}

stop_server() {
	kill "$SERVER_PID" 2>/dev/null
	wait "$SERVER_PID" 2>/dev/null
}

# make_disk NAME: 32 MiB of zeros (the writer checks that blocks it never wrote read as zeros) on
# a loop device under a linear dm device.
make_disk() {
	local image=$TEST_TMP/$1.img
	truncate -s 32M "$image"
	image_disk "$1" "$image" --direct-io=on
	DISK_ORIGIN=$DISK_LOOP
	DISK_IMAGE=$image
}

# start_writer NAME: guest-writer on NAME's dm device, with a control disk of its own for the
# "stop" and the table of what each block holds.
start_writer() {
	local start=$SECONDS
	truncate -s 1M "$TEST_TMP/control-$1.img"
	CONTROL=$(losetup -f --show "$TEST_TMP/control-$1.img") || fail "losetup failed"
	_loops+=("$CONTROL")
	"$WRITER_BIN" write "$(dm_path "$1")" "$CONTROL" >"$TEST_TMP/writer-$1.log" 2>&1 &
	WRITER=$!
	until grep -q 'writes=[1-9]' "$TEST_TMP/writer-$1.log"; do
		kill -0 "$WRITER" 2>/dev/null || { diag_file "$TEST_TMP/writer-$1.log"; fail "the writer on $1 stopped"; }
		[ $((SECONDS - start)) -lt 30 ] || fail "the writer on $1 does not write"
		sleep 0.5
	done
}

# stop_writer NAME: the writer stops, verifies every block of the disk and stores its table; it
# fails on any I/O error or mismatch.
stop_writer() {
	printf stop | dd of="$CONTROL" bs=4096 conv=sync oflag=direct status=none
	wait "$WRITER" || { diag_file "$TEST_TMP/writer-$1.log"; fail "the writer on $1 saw errors or mismatches"; }
	WRITER=
	grep 'writer: result' "$TEST_TMP/writer-$1.log" | diag_lines
}

# verify_image NAME IMAGE: every block of IMAGE holds what the writer last wrote there.
verify_image() {
	local dev
	dev=$(losetup -f --show "$2") || fail "losetup failed"
	_loops+=("$dev")
	"$WRITER_BIN" verify "$dev" "$CONTROL" >"$TEST_TMP/verify-$1.log" 2>&1 ||
		{ diag_file "$TEST_TMP/verify-$1.log"; fail "$1: $2 does not hold every last write"; }
	diag_file "$TEST_TMP/verify-$1.log"
}

# wait_copied NAME MIB: waits until the migration of NAME has copied at least MIB MiB.
wait_copied() {
	local start=$SECONDS copied
	while :; do
		copied=$(migrate_field "$1" 5)
		[ "${copied:-0}" -ge $(($2 << 20)) ] && return 0
		[ $((SECONDS - start)) -lt 60 ] || fail "$1 copied only ${copied:-0} bytes"
		sleep 0.2
	done
}

# The keeper logs to the kernel log; count_log TEXT counts its lines with TEXT.
count_log() { log_since | grep -c -- "$1"; }

# wait_log TEXT COUNT SECONDS: waits until the kernel log has more than COUNT lines with TEXT.
wait_log() {
	local start=$SECONDS
	until [ "$(count_log "$1")" -gt "$2" ]; do
		[ $((SECONDS - start)) -lt "$3" ] || { log_since | grep dmmig | tail -5 | diag_lines; fail "no '$1' in the kernel log"; }
		sleep 0.5
	done
}

# wait_keeper_gone EXPORT: waits until the keeper of EXPORT has exited.
wait_keeper_gone() {
	local start=$SECONDS
	while pgrep -f "dmmig nbd keep .*/$1\$" >/dev/null; do
		[ $((SECONDS - start)) -lt 15 ] || fail "the keeper of $1 still runs"
		sleep 0.5
	done
}

# disconnected NBD: the device has no configuration left (its pid file goes with the last
# reference: the disconnect, and the last close).
disconnected() { [ ! -e "/sys/block/${1#/dev/}/pid" ] || fail "$1 is still connected"; }

# connect_export NAME: NBD=the device `dmmig nbd connect` made of export NAME, checked for its
# size and backend.
connect_export() {
	NBD=$("$DMMIG" nbd connect "nbd://$server_ip/$1" --timeout $nbd_timeout \
		--dead-conn-timeout $dead_conn_timeout) || fail "dmmig nbd connect failed"
	_nbd_devices+=("$NBD")
	[ "$(sectors "$NBD")" = 65536 ] || fail "$NBD has $(sectors "$NBD") sectors, not 65536"
	grep -q "nbd://$server_ip:$port/$1" "/sys/block/${NBD#/dev/}/backend" ||
		fail "$NBD's backend is '$(cat "/sys/block/${NBD#/dev/}/backend")'"
}

# moved_to NAME: NBD=the device dmmig move NAME said it attached.
moved_to() {
	NBD=$(sed -n 's/.* is \(\/dev\/nbd[0-9]*\)$/\1/p' "$TEST_TMP/move-$1.log")
	[ -b "$NBD" ] || fail "move printed no NBD device"
	_nbd_devices+=("$NBD")
}

# cut_and_reconnect NBD: the link is down longer than the request timeout, then back; the
# keeper of NBD must log a reconnect.
cut_and_reconnect() {
	local reconnects
	reconnects=$(count_log "${1#/dev/}: reconnected")
	cut_link
	sleep $((nbd_timeout + 3))
	restore_link
	wait_log "${1#/dev/}: reconnected" "$reconnects" $dead_conn_timeout
}

# end_on_server NAME NBD: the writer stops and verifies, the disk and NBD let go of the export,
# and the server's own image holds every block the writer last wrote.
end_on_server() {
	sleep 1
	stop_writer "$1"
	dmsetup remove "$DEV_PREFIX-$1"
	"$DMMIG" nbd disconnect "$2" || fail "dmmig nbd disconnect failed"
	wait_keeper_gone "$1"
	disconnected "$2"
	stop_server
	verify_image "$1" "$SERVER_IMAGE"
}

