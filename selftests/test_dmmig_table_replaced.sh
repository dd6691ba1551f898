#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# dmmig says where a disk is only from its table read back. During a move an admin swaps the
# disk's table for a linear on another device (a mistake, or another tool): dmmig must notice
# that the migration it follows is gone, end (exit 1) within seconds, and name the device the
# disk is on now, not claim that it "stays on its origin". It leaves the images in place: the
# origin's and the new one.
. "$(dirname "$0")/lib.sh"
need_dmmig
load_migrate
make_loop origin 8
make_loop other 8
len=$(sectors "$origin")
disk=$DEV_PREFIX-disk
dmsetup create "$disk" --table "0 $len linear $origin 0" || fail "create failed"
"$DMMIG" move "$disk" "$TEST_TMP/new.img" --no-progress --max-rate 64 --min-rate 0 \
	>"$TEST_TMP/move.log" 2>&1 &
mover=$!
start=$SECONDS
until [ "$(dmsetup table "$disk" | awk '{ print $3 }')" = migrate ]; do
	[ $((SECONDS - start)) -lt 20 ] || fail "no migrate table: $(cat "$TEST_TMP/move.log")"
	sleep 0.1
done
sleep 1
# The admin's swap.
dmsetup load "$disk" --table "0 $len linear $other 0" && dmsetup suspend "$disk" &&
	dmsetup resume "$disk" || fail "the admin's swap failed"
start=$SECONDS
while kill -0 "$mover" 2>/dev/null; do
	if [ $((SECONDS - start)) -ge 20 ]; then
		kill "$mover"
		wait "$mover"
		diag_file "$TEST_TMP/move.log"
		fail "dmmig went on following a migration that is gone"
	fi
	sleep 0.2
done
wait "$mover"
rc=$?
diag_file "$TEST_TMP/move.log"
[ "$rc" = 1 ] || fail "dmmig exited $rc, not 1"
grep -q "stays on its origin" "$TEST_TMP/move.log" && fail "dmmig claimed the disk stays on its origin"
grep -qF "the disk is a linear on $(devnum "$other")" "$TEST_TMP/move.log" ||
	fail "dmmig did not say where the disk is"
[ "$(dmsetup table "$disk")" = "0 $len linear $(devnum "$other") 0" ] ||
	fail "dmmig changed the admin's table: $(dmsetup table "$disk")"
[ -e "$TEST_TMP/new.img" ] || fail "the new image was removed"
for image in "$TEST_TMP/new.img" "$TEST_TMP/new.img.dmmig-meta"; do
	loop=$(losetup -j "$image" | cut -d: -f1)
	[ -n "$loop" ] && _loops+=("$loop")
done
pass
