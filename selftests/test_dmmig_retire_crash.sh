#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# A crash while dmmig retires a finished move (the disk on a linear over the new image) never
# leaves the old image without the move's record: an old image nothing marks as stale is what a
# boot script or a person would bring the disk back up on, losing every write since the switch.
# dmmig goes in one order, for move, recover and finish: the old image, the record, then the
# metadata. DMMIG_CRASH_AT=retire:image and retire:record end dmmig (abort) right after each
# step, in `move` and in `recover`; after each crash the old image must be gone if the record
# is, a `recover` that has a record must finish the move on the new image, and the disk must
# hold its bytes. An old image another device still maps is kept, with its record.
. "$(dirname "$0")/lib.sh"
need_dmmig
load_migrate
old_img=$TEST_TMP/old.img new_img=$TEST_TMP/new.img
disk=$DEV_PREFIX-disk
record=$DMMIG_STATE_DIR/$disk.json

# check_after_crash POINT: what a crash right after POINT may leave.
check_after_crash() {
	[ -e "$record" ] || [ ! -e "$old_img" ] ||
		fail "$1: the old image outlived the move's record"
	[ "$(dmsetup table "$disk" | awk '{ print $3 }')" = linear ] ||
		fail "$1: the disk is not on a linear: $(dmsetup table "$disk")"
	same_bytes "/dev/mapper/$disk" "$TEST_TMP/bytes"
}

# finish_by_recover POINT: a recover with a record finishes on the new image and leaves nothing.
finish_by_recover() {
	if [ -e "$record" ]; then
		"$DMMIG" recover "$disk" --no-progress >"$TEST_TMP/recover.log" 2>&1 ||
			{ diag_file "$TEST_TMP/recover.log"; fail "$1: recover failed"; }
	fi
	new=$(losetup -j "$new_img" | cut -d: -f1)
	[ "$(dmsetup table "$disk")" = "0 $len linear $(devnum "$new") 0" ] ||
		fail "$1: the disk is not on the new image: $(dmsetup table "$disk")"
	[ -e "$old_img" ] && fail "$1: the old image is still there"
	[ -e "$record" ] && fail "$1: the record is still there"
	same_bytes "/dev/mapper/$disk" "$TEST_TMP/bytes"
	# The metadata goes last: a crash after the record may leave its file, named by nothing.
	if [ ! -e "$record" ] && [ -e "$new_img.dmmig-meta" ]; then
		diag "$1: the metadata file is left (no record names it)"
		losetup -j "$new_img.dmmig-meta" | cut -d: -f1 | xargs -r -n1 losetup -d
		rm -f "$new_img.dmmig-meta"
	fi
}

# fresh_disk: the disk on a new old.img of random bytes, nothing else left.
fresh_disk() {
	dmsetup remove "$disk" 2>/dev/null
	for img in "$old_img" "$new_img" "$new_img.dmmig-meta"; do
		losetup -j "$img" 2>/dev/null | cut -d: -f1 | xargs -r -n1 losetup -d
	done
	rm -f "$old_img" "$new_img" "$new_img.dmmig-meta" "$record"
	head -c $((8 << 20)) /dev/urandom >"$old_img"
	image_disk disk "$old_img"
	len=$(sectors "$DISK_LOOP")
	snapshot "/dev/mapper/$disk" "$TEST_TMP/bytes"
}

for point in retire:image retire:record; do
	# In move: the crash comes after the swap to the linear on the new image.
	fresh_disk
	DMMIG_CRASH_AT=$point "$DMMIG" move "$disk" "$new_img" --no-progress >"$TEST_TMP/move.log" 2>&1
	status=$?
	[ "$status" = 134 ] || { diag_file "$TEST_TMP/move.log"; fail "move with a crash at $point: exit $status"; }
	check_after_crash "move, $point"
	finish_by_recover "move, $point"
	diag "move, crash after $point: $([ -e "$record" ] && echo "record kept" || echo "finished")"

	# In recover: a move that died while copying, recovered with a crash at POINT, recovered again.
	fresh_disk
	"$DMMIG" move "$disk" "$new_img" --no-progress --rate 2048 >"$TEST_TMP/move.log" 2>&1 &
	mover=$!
	wait_migrate_table "$disk"
	sleep 0.5
	# The host goes down: dmmig dies, the device goes, the loop devices go.
	kill -9 $mover
	wait $mover 2>/dev/null
	[ -e "$record" ] || fail "the killed move left no record"
	dmsetup remove "$disk" || fail "remove failed"
	for img in "$old_img" "$new_img" "$new_img.dmmig-meta"; do
		losetup -j "$img" | cut -d: -f1 | xargs -r -n1 losetup -d
	done
	DMMIG_CRASH_AT=$point "$DMMIG" recover "$disk" --no-progress >"$TEST_TMP/recover.log" 2>&1
	status=$?
	[ "$status" = 134 ] ||
		{ diag_file "$TEST_TMP/recover.log"; fail "recover with a crash at $point: exit $status"; }
	check_after_crash "recover, $point"
	finish_by_recover "recover, $point"
done

# An old image that another device still maps (here a second dm device on its other half) is
# kept, and so is the record that says it is stale; once that device is gone, recover retires
# both.
fresh_disk
dmsetup remove "$disk" || fail "remove failed"
dm_create disk "0 8192 linear $DISK_LOOP 0" || fail "the disk on half the image failed"
dm_create other "0 8192 linear $DISK_LOOP 8192" || fail "the other half failed"
snapshot "/dev/mapper/$disk" "$TEST_TMP/bytes"
snapshot "$(dm_path other)" "$TEST_TMP/other"
"$DMMIG" move "$disk" "$new_img" --no-progress >"$TEST_TMP/move.log" 2>&1 ||
	{ diag_file "$TEST_TMP/move.log"; fail "the move of half the image failed"; }
diag_file "$TEST_TMP/move.log"
[ -e "$old_img" ] || fail "the old image was removed while another device maps it"
[ -e "$record" ] || fail "the record went while the stale image stays"
same_bytes "$(dm_path other)" "$TEST_TMP/other"
dmsetup remove "$DEV_PREFIX-other" || fail "remove failed"
"$DMMIG" recover "$disk" --no-progress >"$TEST_TMP/recover.log" 2>&1 ||
	{ diag_file "$TEST_TMP/recover.log"; fail "recover after the other device went failed"; }
[ -e "$old_img" ] && fail "recover left the old image"
[ -e "$record" ] && fail "recover left the record"
same_bytes "/dev/mapper/$disk" "$TEST_TMP/bytes"
dmsetup remove "$disk" || fail "remove failed"
pass
