#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# dmmig move attaches a new image with direct I/O, as `losetup --direct-io=on` does: after the
# move a VM with cache=none must not run through the host's page cache, and a write the loop
# device acknowledged must be in the image file, not only in that cache. The image goes on an
# ext4 filesystem (on a loop device of the VM's), which can do direct I/O; the test reads the
# destination loop device's dio flag, and compares the image with the disk byte for byte.
. "$(dirname "$0")/lib.sh"
need_dmmig
command -v mkfs.ext4 >/dev/null || skip "mkfs.ext4 is not installed"
load_migrate
make_loop fsdev 64 --direct-io=on
mkfs.ext4 -q -F "$fsdev" || fail "mkfs.ext4 failed"
mkdir "$TEST_TMP/mnt" && mount "$fsdev" "$TEST_TMP/mnt" || fail "cannot mount $fsdev"
new=""
disk=$DEV_PREFIX-disk
# The disk holds the new loop device, which holds the filesystem: released in that order.
trap 'dmsetup remove "$disk" 2>/dev/null; [ -n "$new" ] && losetup -d "$new" 2>/dev/null
	umount "$TEST_TMP/mnt" 2>/dev/null; cleanup' EXIT
make_loop origin 8
len=$(sectors "$origin")
dmsetup create "$disk" --table "0 $len linear $origin 0" || fail "create failed"
env -u DMMIG_ALLOW_VOLATILE "$DMMIG" move "$disk" "$TEST_TMP/mnt/new.img" --no-progress \
	--keep-source >"$TEST_TMP/move.log" 2>&1 || fail "the move failed: $(cat "$TEST_TMP/move.log")"
diag "$(cat "$TEST_TMP/move.log")"
new=$(losetup -j "$TEST_TMP/mnt/new.img" | cut -d: -f1)
[ -n "$new" ] || fail "the new image is not attached"
dio=$(cat "/sys/block/${new#/dev/}/loop/dio")
[ "$dio" = 1 ] || fail "$new over the new image has dio=$dio: it runs through the page cache"
[ "$(dmsetup table "$disk")" = "0 $len linear $(devnum "$new") 0" ] ||
	fail "the disk is not on $new: $(dmsetup table "$disk")"
dmsetup remove "$disk" || fail "remove failed"
same_bytes "$origin" "$new"
pass
