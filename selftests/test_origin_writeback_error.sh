#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# A write-back error of the origin that a flush of the target takes is reported to the guest's
# next flush. The origin is a loop device over a file on a filesystem (ext4 without a journal)
# on a dm-flakey device: a guest write lands in the file's page cache and is acknowledged; the
# flakey device then fails every write, so the file's write-back fails, and a loop device
# reports that to one fsync only, the first to come: a metadata commit's flush of the origin
# (every 100 ms). The guest's own flush must fail then, as it would have without the migration;
# a flush that said "done" would leave the guest believing in a write the origin lost. The next
# flush succeeds again (an error is reported once).
. "$(dirname "$0")/lib.sh"
command -v mkfs.ext4 >/dev/null || skip "mkfs.ext4 is not installed"
grep -qw ext4 /proc/filesystems || skip "the kernel has no ext4"
load_migrate
kmodprobe dm-flakey || skip "dm-flakey is not available"
make_loop raw 64
make_loop dest 8
make_metadata meta
flakey_create fsdev "$raw" 3600 0
mkfs.ext4 -q -F -O ^has_journal "$(dm_path fsdev)" || fail "mkfs failed"
mnt=$TEST_TMP/mnt
mkdir -p "$mnt"
mount -t ext4 "$(dm_path fsdev)" "$mnt" || fail "mount failed"
head -c $((8 << 20)) /dev/urandom >"$mnt/origin.img" && sync || fail "cannot write the image"
origin=$(losetup -f --show "$mnt/origin.img") || fail "losetup failed"
# The filesystem goes before lib.sh's cleanup, which cannot remove a mounted fsdev: first what
# holds the image (the migrate device, then the loop device), then the mount.
cleanup_fs() {
	dmsetup resume "$DEV_PREFIX-fsdev" 2>/dev/null
	dmsetup remove "$DEV_PREFIX-mig" 2>/dev/null
	losetup -d "$origin" 2>/dev/null
	umount "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null
}
trap 'cleanup_fs; cleanup' EXIT
len=$(sectors "$origin")
# 512 KiB/s in 64 KiB regions: every commit (100 ms) has progress to record, and flushes.
dm_create mig "0 $len migrate $origin $dest 6 metadata $meta commit_interval 100 rate 512" ||
	fail "create failed"
dev=$(dm_path mig)
sleep 1
fsync_dev() { python3 -c 'import os, sys; fd = os.open(sys.argv[1], os.O_WRONLY); os.fsync(fd)' "$1"; }
fsync_dev "$dev" || fail "a flush failed before any error"
# The flakey device fails every write from now on; the guest's write goes to the page cache
# (flakey_set does not freeze the filesystem, which would write the page cache back first).
flakey_set fsdev "$raw" 0 1 error_writes
log_mark
# iflag=fullblock: a short read from the pipe would make dd write a short last block, for which
# it turns O_DIRECT off and calls fsync at the end; that fsync would take the error itself.
head -c $((64 << 10)) /dev/urandom |
	dd of="$dev" bs=64k count=1 seek=100 iflag=fullblock oflag=direct status=none ||
	fail "the guest's write failed at once"
start=$SECONDS
until log_since | grep -qF "Flushing the origin failed"; do
	[ $((SECONDS - start)) -lt 20 ] ||
		fail "no commit's origin flush failed: $(dmsetup status "$DEV_PREFIX-mig")"
	sleep 0.2
done
flakey_set fsdev "$raw" 3600 0
if fsync_dev "$dev" 2>/dev/null; then
	fail "the guest's flush succeeded after the origin lost a write-back to a commit's flush"
fi
fsync_dev "$dev" || fail "the flush after the reported error failed too"
diag "state: $(dmsetup status "$DEV_PREFIX-mig")"
dmsetup remove "$DEV_PREFIX-mig" || fail "remove failed"
pass
