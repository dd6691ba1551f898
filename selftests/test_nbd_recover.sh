#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# dmmig recover finishes a move to an NBD destination (nbd_lib.sh) after the host went down:
# dmmig, the dm device, the NBD connection and the loop devices are gone. The record holds the
# export's URL, not only the /dev/nbdN it had (which a reboot disconnects), so recover attaches
# the URL again, resumes the copy onto it, and swaps the disk to a linear on the new device;
# the disk, and then the server's own image, hold every byte the disk held. A recover that fails
# first (the disk runs another table) disconnects the device it attached.
. "$(dirname "$0")/lib.sh"
. "$SELFTEST_DIR/nbd_lib.sh"

serve rec 32
make_disk rec
disk=$DEV_PREFIX-rec
head -c $((32 << 20)) /dev/urandom | dd of="$(dm_path rec)" bs=1M oflag=direct status=none ||
	fail "cannot fill the disk"
snapshot "$(dm_path rec)" "$TEST_TMP/disk"
"$DMMIG" move "$disk" "nbd://$server_ip/rec" --max-rate 2048 --min-rate 0 --no-progress \
	--nbd-timeout $nbd_timeout --nbd-dead-conn-timeout $dead_conn_timeout >"$TEST_TMP/move-rec.log" 2>&1 &
mover=$!
wait_migrate_table "$disk"
wait_copied rec 4
# The host goes down: dmmig dies, the device goes, the NBD connection and the loop devices go.
kill -9 $mover
wait $mover 2>/dev/null
moved_to rec
old_nbd=$NBD
dmsetup remove "$disk" || fail "remove failed"
"$DMMIG" nbd disconnect "$old_nbd" || fail "dmmig nbd disconnect failed"
wait_keeper_gone rec
disconnected "$old_nbd"
for file in "$DISK_IMAGE" "$DMMIG_STATE_DIR/$disk.meta"; do
	losetup -j "$file" | cut -d: -f1 | xargs -r -n1 losetup -d
done
[ -f "$DMMIG_STATE_DIR/$disk.json" ] || fail "move left no record"
grep -q "nbd://$server_ip:$port/rec" "$DMMIG_STATE_DIR/$disk.json" ||
	fail "the record does not hold the URL: $(cat "$DMMIG_STATE_DIR/$disk.json")"
# A recover that fails (the disk runs another table) lets go of the export it attached again:
# no NBD device and no keeper are left over.
dmsetup create "$disk" --table "0 65536 error" || fail "cannot create the other table"
"$DMMIG" recover "$disk" --no-progress >"$TEST_TMP/recover-refused.log" 2>&1 &&
	fail "recover went ahead over another table"
diag_file "$TEST_TMP/recover-refused.log"
refused_nbd=$(sed -n 's/.*attached it again as \(\/dev\/nbd[0-9]*\)$/\1/p' "$TEST_TMP/recover-refused.log")
[ -b "$refused_nbd" ] || fail "the refused recover attached nothing (the test tells nothing)"
_nbd_devices+=("$refused_nbd")
wait_keeper_gone rec
disconnected "$refused_nbd"
dmsetup remove "$disk" || fail "remove failed"
"$DMMIG" recover "$disk" --no-progress >"$TEST_TMP/recover.log" 2>&1 ||
	{ diag_file "$TEST_TMP/recover.log"; fail "dmmig recover failed"; }
diag_file "$TEST_TMP/recover.log"
NBD=$(sed -n 's/.*attached it again as \(\/dev\/nbd[0-9]*\)$/\1/p' "$TEST_TMP/recover.log")
[ -b "$NBD" ] || fail "recover did not attach the export again"
_nbd_devices+=("$NBD")
grep -q "nbd://$server_ip:$port/rec" "/sys/block/${NBD#/dev/}/backend" ||
	fail "$NBD's backend is '$(cat "/sys/block/${NBD#/dev/}/backend")'"
[ "$(dmsetup table "$disk")" = "0 65536 linear $(devnum "$NBD") 0" ] ||
	fail "the disk is not on $NBD: $(dmsetup table "$disk")"
[ -e "$DMMIG_STATE_DIR/$disk.json" ] && fail "the record is still there"
same_bytes "$(dm_path rec)" "$TEST_TMP/disk"
dmsetup remove "$disk" || fail "remove failed"
"$DMMIG" nbd disconnect "$NBD" || fail "dmmig nbd disconnect failed"
wait_keeper_gone rec
stop_server
same_bytes "$SERVER_IMAGE" "$TEST_TMP/disk"
pass
