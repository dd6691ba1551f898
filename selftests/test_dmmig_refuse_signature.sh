#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# dmmig move never overwrites a destination that holds data without being told to: a device
# with an ext4 filesystem (nobody holds it open, so O_EXCL passes) is refused with a usage error
# (exit 2) that names what it holds; the disk stays a linear on its origin, the filesystem is
# untouched, and nothing is left behind. With --force the same move goes ahead, and the
# destination then holds every byte of the disk.
. "$(dirname "$0")/lib.sh"
need_dmmig
command -v mkfs.ext4 >/dev/null || skip "mkfs.ext4 is not installed"
load_migrate
make_loop origin 8
make_loop dest 8
len=$(sectors "$origin")
dd if=/dev/urandom of="$origin" bs=1M count=8 oflag=direct status=none || fail "cannot fill $origin"
mkfs.ext4 -q -F "$dest" || fail "mkfs.ext4 failed"
snapshot "$dest" "$TEST_TMP/dest-before"
disk=$DEV_PREFIX-disk
dmsetup create "$disk" --table "0 $len linear $origin 0" || fail "create failed"
table="0 $len linear $(devnum "$origin") 0"
loops_before=$(losetup -a | wc -l)
out=$("$DMMIG" move "$disk" "$dest" --no-progress --keep-source 2>&1)
rc=$?
diag "dmmig move $disk $dest -> $rc: $out"
[ "$rc" = 2 ] || fail "a move onto an ext4 filesystem exited $rc, not 2 (usage): $out"
echo "$out" | grep -q "holds an ext2/ext3/ext4 filesystem" || fail "the refusal does not say what $dest holds: $out"
echo "$out" | grep -q -- "--force" || fail "the refusal does not say how to go ahead: $out"
[ "$(dmsetup table "$disk")" = "$table" ] || fail "the disk changed: $(dmsetup table "$disk")"
[ "$(losetup -a | wc -l)" = "$loops_before" ] || fail "a loop device was left: $(losetup -a)"
[ -z "$(ls -A "$DMMIG_STATE_DIR" 2>/dev/null)" ] || fail "a record was left: $(ls "$DMMIG_STATE_DIR")"
same_bytes "$TEST_TMP/dest-before" "$dest"
# Told to, the move overwrites the filesystem with the disk.
"$DMMIG" move "$disk" "$dest" --force --no-progress --keep-source >"$TEST_TMP/move.log" 2>&1 ||
	fail "--force was refused: $(cat "$TEST_TMP/move.log")"
[ "$(dmsetup table "$disk")" = "0 $len linear $(devnum "$dest") 0" ] ||
	fail "the disk is not on $dest after the move: $(dmsetup table "$disk")"
dmsetup remove "$disk" || fail "remove failed"
same_bytes "$origin" "$dest"
pass
