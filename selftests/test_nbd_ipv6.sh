#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# dmmig move to an NBD destination named by an IPv6 literal, nbd://[::1]:PORT/EXPORT: the URL
# parses, the handshake and the kernel's connection go over IPv6, the disk ends as a linear on
# the NBD device, and both it and the server's image hold every byte of the disk.
. "$(dirname "$0")/lib.sh"
need_dmmig
command -v qemu-nbd >/dev/null || skip "qemu-nbd is not installed (Debian: qemu-utils)"
[ -e /sys/block/nbd0 ] || kmodprobe nbd 2>/dev/null || [ -e /sys/block/nbd0 ] ||
	skip "the kernel has no NBD client (CONFIG_BLK_DEV_NBD)"
load_migrate
ip link set lo up 2>/dev/null
[ -e /proc/net/if_inet6 ] || fail "the kernel has no IPv6 (CONFIG_IPV6)"
port=10811
nbd="" server=""
nbd_cleanup() {
	[ -n "$nbd" ] && "$DMMIG" nbd disconnect "$nbd" >/dev/null 2>&1
	[ -n "$server" ] && kill "$server" 2>/dev/null
	cleanup
}
trap nbd_cleanup EXIT
truncate -s 16M "$TEST_TMP/server.img"
qemu-nbd -f raw -x v6 -b ::1 -p $port --persistent --shared=1 "$TEST_TMP/server.img" \
	>"$TEST_TMP/qemu-nbd.log" 2>&1 &
server=$!
start=$SECONDS
until ss -ltn 2>/dev/null | grep -q "\[::1\]:$port"; do
	kill -0 "$server" 2>/dev/null || fail "qemu-nbd failed: $(cat "$TEST_TMP/qemu-nbd.log")"
	[ $((SECONDS - start)) -lt 30 ] || fail "qemu-nbd does not listen on [::1]:$port"
	sleep 0.2
done
make_loop origin 16
len=$(sectors "$origin")
disk=$DEV_PREFIX-disk
dmsetup create "$disk" --table "0 $len linear $origin 0" || fail "create failed"
"$DMMIG" move "$disk" "nbd://[::1]:$port/v6" --no-progress --keep-source >"$TEST_TMP/move.log" 2>&1 ||
	fail "the move to nbd://[::1]:$port/v6 failed: $(cat "$TEST_TMP/move.log")"
diag_file "$TEST_TMP/move.log"
nbd=$(sed -n 's/.* is \(\/dev\/nbd[0-9]*\)$/\1/p' "$TEST_TMP/move.log")
[ -b "$nbd" ] || fail "move printed no NBD device"
grep -q "nbd://\[::1\]:$port/v6" "/sys/block/${nbd#/dev/}/backend" ||
	fail "$nbd's backend is '$(cat "/sys/block/${nbd#/dev/}/backend")'"
[ "$(dmsetup table "$disk")" = "0 $len linear $(devnum "$nbd") 0" ] ||
	fail "the disk is not on $nbd: $(dmsetup table "$disk")"
same_bytes "/dev/mapper/$disk" "$origin"
dmsetup remove "$disk" || fail "remove failed"
"$DMMIG" nbd disconnect "$nbd" || fail "dmmig nbd disconnect failed"
nbd=""
kill "$server"
wait "$server" 2>/dev/null
server=""
same_bytes "$TEST_TMP/server.img" "$origin"
pass
