#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# The demo `make demo` runs inside the VM: a "guest disk" (dm linear over a loop-backed image)
# moves to a new image with `dmmig move` while a verifying writer runs on it, with a progress
# bar; dmmig swaps the table to a linear over the new image and unlinks the old one, and every
# byte the writer wrote is verified on the new image alone.
set -eu
MODULE=${MODULE:-$REPO_ROOT/dm-migrate.ko}
DMMIG=${DMMIG:-$REPO_ROOT/target/debug/dmmig}
step() { printf '\n==> %s\n' "$*"; }
scratch=${TMPDIR:-/tmp}
cd "$scratch"
# dmmig move records the move for dmmig recover in /var/lib/dmmig, read-only in the VM.
export DMMIG_STATE_DIR=$scratch/dmmig-state
# The VM's scratch space is a tmpfs: a test rig, where an image in memory is fine.
export DMMIG_ALLOW_VOLATILE=1

step "Loading dm-migrate"
insmod "$MODULE"
dmsetup targets | grep migrate

step "The guest disk: /dev/mapper/guest-disk, a linear table over old.img (256 MiB)"
truncate -s 256M "$scratch/old.img"
old=$(losetup -f --show --direct-io=on "$scratch/old.img")
size=$(blockdev --getsz "$old")
dmsetup create guest-disk --table "0 $size linear $old 0"
dmsetup table guest-disk

step "A verifying writer on the guest disk: fio, 4 jobs of random 4 KiB-1 MiB writes, crc32c"
fio --name=guest --filename=/dev/mapper/guest-disk --ioengine=libaio --direct=1 --iodepth=8 \
	--numjobs=4 --size=64M --offset_increment=64M --bsrange=4k-1m --rw=randwrite \
	--verify=crc32c --verify_fatal=1 --group_reporting --eta=never --output=$scratch/fio.log &
writer=$!
sleep 1

step "dmmig move guest-disk -> new.img, while the writer keeps going"
"$DMMIG" move guest-disk "$scratch/new.img" --rate 65536
dmsetup table guest-disk
new=$(losetup -j "$scratch/new.img" | cut -d: -f1)
ls -l "$scratch"/*.img
[ ! -e "$scratch/old.img" ] && echo "old.img is gone"

step "Waiting for the writer; it verified every block it wrote"
wait $writer && grep -E 'err=|WRITE:' $scratch/fio.log

step "Verifying every byte the writer wrote on new.img alone"
dmsetup remove guest-disk
fio --name=guest --filename="$new" --ioengine=libaio --direct=1 --iodepth=8 --numjobs=4 \
	--size=64M --offset_increment=64M --bsrange=4k-1m --rw=randwrite --verify=crc32c \
	--verify_fatal=1 --verify_only --group_reporting --eta=never --output=$scratch/verify.log
grep -E 'err=' $scratch/verify.log
losetup -d "$new"
rmmod dm_migrate
echo "demo complete: the disk moved to new.img under a live writer, with no error and no lost write"
