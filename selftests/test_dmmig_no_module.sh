#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# dmmig move without the migrate target (dm-migrate.ko not loaded, and no modprobe that can load
# it: the likeliest first-run mistake) is refused before anything is created, saying why: no new
# image, metadata file, loop device or record is left, the disk is still the linear on its
# origin, and nothing tells the user to "recover" a move that never began. The kernel's module
# helper is pointed at /bin/false for the test, so that neither dmmig nor the kernel can load the
# module; the module is loaded again at the end.
. "$(dirname "$0")/lib.sh"
need_dmmig
load_migrate
make_loop origin 8
len=$(sectors "$origin")
disk=$DEV_PREFIX-disk
dmsetup create "$disk" --table "0 $len linear $origin 0" || fail "create failed"
table="0 $len linear $(devnum "$origin") 0"
helper=$(cat /proc/sys/kernel/modprobe)
restore() {
	echo "$helper" >/proc/sys/kernel/modprobe
	grep -q '^dm_migrate ' /proc/modules || insmod "$MODULE"
}
trap 'restore; cleanup' EXIT
rmmod dm_migrate || skip "dm-migrate cannot be unloaded (a migrate target exists)"
echo /bin/false >/proc/sys/kernel/modprobe
loops_before=$(losetup -a | wc -l)
out=$("$DMMIG" move "$disk" "$TEST_TMP/new.img" --no-progress 2>&1)
rc=$?
diag "dmmig move -> $rc: $out"
[ "$rc" = 1 ] || fail "the move exited $rc, not 1: $out"
echo "$out" | grep -q "no 'migrate' target" || fail "no reason given: $out"
echo "$out" | grep -q "recover" && fail "told to recover a move that never began: $out"
[ ! -e "$TEST_TMP/new.img" ] || fail "the new image was left"
[ ! -e "$TEST_TMP/new.img.dmmig-meta" ] || fail "the metadata file was left"
[ "$(losetup -a | wc -l)" = "$loops_before" ] || fail "a loop device was left: $(losetup -a)"
[ -z "$(ls -A "$DMMIG_STATE_DIR" 2>/dev/null)" ] || fail "a record was left: $(ls "$DMMIG_STATE_DIR")"
[ "$(dmsetup table "$disk")" = "$table" ] || fail "the disk changed: $(dmsetup table "$disk")"
restore
# With the module back, the same move goes ahead.
"$DMMIG" move "$disk" "$TEST_TMP/new.img" --no-progress --keep-source >"$TEST_TMP/move.log" 2>&1 ||
	fail "the move failed with the module loaded: $(cat "$TEST_TMP/move.log")"
new=$(losetup -j "$TEST_TMP/new.img" | cut -d: -f1)
[ -n "$new" ] || fail "the new image is not attached"
_loops+=("$new")
dmsetup remove "$disk" || fail "remove failed"
same_bytes "$origin" "$TEST_TMP/new.img"
pass
