#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# dmmig move never puts a disk on storage that a reboot loses: a destination path under /dev that
# does not exist (a mistyped /dev/sdx, an rbd device not mapped yet) is refused, not created as
# a file in devtmpfs; a new image on a tmpfs is refused unless the caller says it is a test rig
# (--allow-volatile, or DMMIG_ALLOW_VOLATILE=1 as the rest of the suite runs). Each refusal is a
# usage error (exit 2) with its reason, and leaves the disk a linear on its origin with nothing
# created: no file, no loop device, no record.
. "$(dirname "$0")/lib.sh"
need_dmmig
load_migrate
make_loop origin 8
len=$(sectors "$origin")
disk=$DEV_PREFIX-disk
dmsetup create "$disk" --table "0 $len linear $origin 0" || fail "create failed"
table="0 $len linear $(devnum "$origin") 0"
loops_before=$(losetup -a | wc -l)
# refused DESTINATION PATTERN: the move is refused with PATTERN, and changes nothing.
refused() {
	local out rc
	out=$(env -u DMMIG_ALLOW_VOLATILE "$DMMIG" move "$disk" "$1" --no-progress 2>&1)
	rc=$?
	diag "dmmig move $disk $1 -> $rc: $out"
	[ "$rc" = 2 ] || fail "a move to $1 exited $rc, not 2 (usage): $out"
	echo "$out" | grep -q "$2" || fail "a move to $1 said '$out', not '$2'"
	[ ! -e "$1" ] || fail "$1 was created"
	[ "$(dmsetup table "$disk")" = "$table" ] || fail "the disk changed: $(dmsetup table "$disk")"
	[ "$(losetup -a | wc -l)" = "$loops_before" ] || fail "a loop device was left: $(losetup -a)"
	[ -z "$(ls -A "$DMMIG_STATE_DIR" 2>/dev/null)" ] || fail "a record was left: $(ls "$DMMIG_STATE_DIR")"
}
name=sdx-$RANDOM
refused "/dev/$name" "is under /dev, where no such device exists"
[ "$(stat -f -c %T "$TEST_TMP")" = tmpfs ] || skip "the scratch folder is not a tmpfs"
refused "$TEST_TMP/new.img" "in memory (tmpfs or ramfs)"
# The rig's own override: the move goes ahead (and the disk is on the new image afterwards).
env -u DMMIG_ALLOW_VOLATILE "$DMMIG" move "$disk" "$TEST_TMP/new.img" --allow-volatile \
	--no-progress --keep-source >"$TEST_TMP/move.log" 2>&1 || fail "--allow-volatile refused: $(cat "$TEST_TMP/move.log")"
new=$(losetup -j "$TEST_TMP/new.img" | cut -d: -f1)
[ -n "$new" ] || fail "the new image is not attached"
_loops+=("$new")
dmsetup remove "$disk" || fail "remove failed"
same_bytes "$origin" "$TEST_TMP/new.img"
pass
