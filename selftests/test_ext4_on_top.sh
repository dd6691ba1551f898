#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# An ext4 filesystem on a disk being moved is written during the copy (files copied in, sync,
# half deleted, more copied in); after the move, fsck -fn is clean on the destination alone and
# every file's checksum matches.
. "$(dirname "$0")/lib.sh"
command -v mkfs.ext4 >/dev/null || skip "mkfs.ext4 is not installed"
grep -qw ext4 /proc/filesystems || skip "the kernel has no ext4"
load_migrate
make_loop origin 96
make_loop dest 96
len=$(sectors "$origin")
name=$DEV_PREFIX-fs
# 4 KiB regions at 512 KiB/s: the copy outlasts the write phase, also on the debug kernel.
dm_create fs "0 $len migrate $origin $dest 4 region_size 8 rate 512" || fail "create failed"
mkfs.ext4 -q -F -b 4096 "$(dm_path fs)" || fail "mkfs failed"
mnt=$TEST_TMP/mnt src=$TEST_TMP/src
mkdir -p "$mnt" "$src"
mount -t ext4 "$(dm_path fs)" "$mnt" || fail "mount failed"
for i in $(seq 1 120); do
	head -c $(((RANDOM % 256 + 1) * 1024)) /dev/urandom >"$src/f$i"
done
cp -r "$src" "$mnt/a" && sync || fail "copy a failed"
rm -f "$mnt"/a/f*[02468]
sync
cp -r "$src" "$mnt/b" && sync || fail "copy b failed"
(cd "$mnt" && find a b -type f -print0 | sort -z | xargs -0 sha256sum) >"$TEST_TMP/sums"
umount "$mnt" || fail "umount failed"
[ "$(migrate_state fs)" != switched ] || fail "switched before the writes ended: the test is void"
dmsetup message "$name" 0 rate 0 || fail "rate failed"
wait_state fs switched 300
dmsetup remove "$name" || fail "remove failed"
fsck.ext4 -fn "$dest" >"$TEST_TMP/fsck.log" 2>&1 || {
	diag_file "$TEST_TMP/fsck.log"
	fail "fsck found errors on the destination"
}
mount -t ext4 -o ro "$dest" "$mnt" || fail "mount of the destination failed"
(cd "$mnt" && sha256sum --quiet -c "$TEST_TMP/sums") || { umount "$mnt"; fail "checksums differ"; }
[ "$(wc -l <"$TEST_TMP/sums")" -eq 180 ] || fail "files missing: $(wc -l <"$TEST_TMP/sums")"
umount "$mnt"
pass
