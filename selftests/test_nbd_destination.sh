#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# A destination on another host: an NBD export served by qemu-nbd in a second network namespace,
# reached over a veth pair whose link the test cuts. Every case runs a verifying writer (fio
# crc32c) on the disk, and ends with every byte compared.
#  1. dmmig move to nbd://, with the link cut for longer than the NBD request timeout in the
#     middle of the copy: the keeper reconnects once the link is back, and the move completes on
#     the NBD device; the export holds every byte.
#  2. dmmig move to nbd://, with the link cut for good during the copy: the migration fails, the
#     disk is back on its original table with every write, and the move leaves no NBD device.
#  3. The mirror phase (a migrate table with no_switch, in sync, under the writer): a short cut
#     reconnects and the destination ends identical to the origin; a long cut fails the
#     migration, and the origin has every write.
. "$(dirname "$0")/lib.sh"
DMMIG=${DMMIG:-$REPO_ROOT/target/debug/dmmig}
[ -x "$DMMIG" ] || skip "dmmig is not built ($DMMIG)"
command -v fio >/dev/null || skip "fio is not installed"
command -v qemu-nbd >/dev/null || skip "qemu-nbd is not installed (Debian: qemu-utils)"
command -v ip >/dev/null || skip "ip is not installed (Debian: iproute2)"
[ -e /sys/block/nbd0 ] || kmodprobe nbd 2>/dev/null || [ -e /sys/block/nbd0 ] ||
	skip "the kernel has no NBD client (CONFIG_BLK_DEV_NBD)"
load_migrate

ns=ksft-migrate-nbd-$$
server_ip=10.199.0.2
port=10809
# Short timeouts keep the cuts short: a request is called dead after 2 s, and held 20 s for a
# reconnect (3 s in the cases where the cut is for good).
nbd_timeout=2

_nbd_devices=()
_qemu_nbd=()
nbd_cleanup() {
	local dev pid
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
		kill -0 "$pid" 2>/dev/null || { sed 's/^/# /' "$TEST_TMP/qemu-nbd-$1.log"; fail "qemu-nbd failed"; }
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

# make_disk NAME: 32 MiB of random bytes on a loop device under a linear dm device; the image's
# first bytes are kept in $TEST_TMP/NAME.expected, to compare the half no writer touches.
make_disk() {
	local image=$TEST_TMP/$1.img dev
	head -c $((32 << 20)) /dev/urandom >"$image"
	cp "$image" "$TEST_TMP/$1.expected"
	dev=$(losetup -f --show --direct-io=on "$image") || fail "losetup failed"
	_loops+=("$dev")
	dm_create "$1" "0 $(sectors "$dev") linear $dev 0"
	DISK_ORIGIN=$dev
	DISK_IMAGE=$image
}

# The writer: fio over the first 16 MiB of a disk, for a while; the second half is never written.
start_writer() {
	fio --name=guest "${fio_job[@]}" --size=4M --offset_increment=4M --filename="$(dm_path "$1")" \
		--time_based --runtime="$2" --output="$TEST_TMP/fio-$1.log" &
	WRITER=$!
}

wait_writer() {
	wait "$WRITER" || { sed 's/^/# /' "$TEST_TMP/fio-$1.log"; fail "fio failed on $1"; }
	grep -q 'err= 0' "$TEST_TMP/fio-$1.log" || fail "fio reported errors on $1"
}

# verify_disk NAME DEVICE: the writer's half of DEVICE verifies, the other half is as it was.
verify_disk() {
	fio_verify_only "$2" 16 "$TEST_TMP/verify-$1.log" --size=4M --offset_increment=4M
	cmp -i $((16 << 20)) "$TEST_TMP/$1.expected" "$2" >/dev/null ||
		fail "$1: the unwritten half of $2 differs from the original"
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

# --- 1. A cut longer than the request timeout during the copy: reconnect, and the move ends.
serve one 32
make_disk one
start_writer one 30
"$DMMIG" move "$DEV_PREFIX-one" "nbd://$server_ip/one" --max-rate 2048 --min-rate 0 --no-progress \
	--nbd-timeout $nbd_timeout --nbd-dead-conn-timeout 20 >"$TEST_TMP/move-one.log" 2>&1 &
mover=$!
wait_migrate_table "$DEV_PREFIX-one"
wait_copied one 4
cut_link
sleep $((nbd_timeout + 3))
restore_link
wait $mover || { sed 's/^/# /' "$TEST_TMP/move-one.log"; fail "the move to nbd:// failed after a cut"; }
sed 's/^/# /' "$TEST_TMP/move-one.log"
wait_writer one
nbd=$(sed -n 's/.* is \(\/dev\/nbd[0-9]*\)$/\1/p' "$TEST_TMP/move-one.log")
[ -b "$nbd" ] || fail "move printed no NBD device"
_nbd_devices+=("$nbd")
[ "$(dmsetup table "$DEV_PREFIX-one")" = "0 65536 linear $(devnum "$nbd") 0" ] ||
	fail "one is not on $nbd: $(dmsetup table "$DEV_PREFIX-one")"
[ -e "$DISK_IMAGE" ] && fail "the old image of one is still there"
grep -q reconnected "$TEST_TMP/move-one.log" || diag "(the keeper's messages went elsewhere)"
verify_disk one "$(dm_path one)"
# And on the server's own image, after the client has let go of the export.
dmsetup remove "$DEV_PREFIX-one"
"$DMMIG" nbd disconnect "$nbd" || fail "dmmig nbd disconnect failed"
stop_server
verify_loop=$(losetup -f --show "$SERVER_IMAGE") || fail "losetup failed"
_loops+=("$verify_loop")
verify_disk one "$verify_loop"
diag "1. a cut of $((nbd_timeout + 3)) s during the copy: reconnected, moved, every byte there"

# --- 2. The link cut for good during the copy: the move fails onto the origin.
serve two 32
make_disk two
original=$(dmsetup table "$DEV_PREFIX-two")
start_writer two 20
"$DMMIG" move "$DEV_PREFIX-two" "nbd://$server_ip/two" --max-rate 2048 --min-rate 0 --no-progress \
	--nbd-timeout $nbd_timeout --nbd-dead-conn-timeout 3 >"$TEST_TMP/move-two.log" 2>&1 &
mover=$!
wait_migrate_table "$DEV_PREFIX-two"
wait_copied two 4
cut_link
wait $mover && fail "the move succeeded with the link cut"
sed 's/^/# /' "$TEST_TMP/move-two.log"
wait_writer two
[ "$(dmsetup table "$DEV_PREFIX-two")" = "$original" ] ||
	fail "two is not back on its origin: $(dmsetup table "$DEV_PREFIX-two")"
[ -e "$DISK_IMAGE" ] || fail "the origin image of two is gone"
nbd=$(sed -n 's/.* is \(\/dev\/nbd[0-9]*\)$/\1/p' "$TEST_TMP/move-two.log")
[ -n "$nbd" ] || fail "move printed no NBD device"
_nbd_devices+=("$nbd")
[ -e "/sys/block/${nbd#/dev/}/pid" ] && fail "the failed move left $nbd connected"
verify_disk two "$(dm_path two)"
restore_link
stop_server
diag "2. the link cut for good during the copy: failed onto the origin, every byte there"

# --- 3. The mirror phase: no_switch, in sync, under the writer.
serve three 32
make_disk three
nbd=$("$DMMIG" nbd connect "nbd://$server_ip/three" --timeout $nbd_timeout --dead-conn-timeout 20) ||
	fail "dmmig nbd connect failed"
_nbd_devices+=("$nbd")
[ "$(sectors "$nbd")" = 65536 ] || fail "$nbd has $(sectors "$nbd") sectors, not 65536"
grep -q "nbd://$server_ip:$port/three" "/sys/block/${nbd#/dev/}/backend" ||
	fail "$nbd's backend is '$(cat "/sys/block/${nbd#/dev/}/backend")'"
dm_reload three "0 65536 migrate $DISK_ORIGIN $nbd 1 no_switch"
wait_state three synced
start_writer three 25
sleep 3
cut_link
sleep $((nbd_timeout + 3))
restore_link
wait_writer three
[ "$(migrate_state three)" = synced ] || fail "three is '$(migrate_state three)' after a short cut"
# In sync and idle: the destination is the origin, byte for byte.
same_bytes "$DISK_ORIGIN" "$nbd"
verify_disk three "$(dm_path three)"
diag "3a. a cut of $((nbd_timeout + 3)) s in the mirror phase: reconnected, destination identical"

# Now for good: the requests wait 20 s for a reconnect, then fail, and so does the migration.
start_writer three 40
sleep 3
cut_link
wait_state three failed 90
wait_writer three
restore_link
verify_disk three "$DISK_ORIGIN"
dm_reload three "0 65536 linear $DISK_ORIGIN 0"
diag "3b. the link cut for good in the mirror phase: the migration failed, the origin has every write"
pass
