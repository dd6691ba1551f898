#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# The demo `make demo` runs inside the VM: a "guest disk" (dm linear over a loop-backed image)
# moves to a new image while a verifying writer runs on it, with progress from sysfs; then the
# table is swapped to a linear over the new image, the old image is unlinked, and every byte the
# writer wrote is verified on the new image alone.
set -eu
MODULE=${MODULE:-$REPO_ROOT/dm-migrate.ko}
step() { printf '\n==> %s\n' "$*"; }
scratch=${TMPDIR:-/tmp}
cd "$scratch"

step "Loading dm-migrate"
insmod "$MODULE"
dmsetup targets | grep migrate

step "The guest disk: /dev/mapper/guest-disk, a linear table over old.img (256 MiB)"
truncate -s 256M $scratch/old.img $scratch/new.img
old=$(losetup -f --show --direct-io=on $scratch/old.img)
new=$(losetup -f --show --direct-io=on $scratch/new.img)
size=$(blockdev --getsz "$old")
dmsetup create guest-disk --table "0 $size linear $old 0"
dmsetup table guest-disk

step "A verifying writer on the guest disk: fio, 4 jobs of random 4 KiB-1 MiB writes, crc32c"
fio --name=guest --filename=/dev/mapper/guest-disk --ioengine=libaio --direct=1 --iodepth=8 \
	--numjobs=4 --size=64M --offset_increment=64M --bsrange=4k-1m --rw=randwrite \
	--verify=crc32c --verify_fatal=1 --group_reporting --eta=never --output=$scratch/fio.log &
writer=$!
sleep 1

step "Live migration: load a migrate table over old -> new and resume (the writer keeps going)"
table="0 $size migrate $old $new 2 rate 65536"
echo "table: $table"
dmsetup load guest-disk --table "$table"
dmsetup suspend guest-disk
dmsetup resume guest-disk
dir=/sys/block/$(dmsetup info -c --noheadings -o blkdevname guest-disk)/migrate
while :; do
	state=$(cat "$dir/state")
	printf '  %-9s %4d / %d MiB copied  %6d KiB/s  %3d regions pending  errors %d\n' "$state" \
		$(($(cat "$dir/copied_bytes") >> 20)) $(($(cat "$dir/total_bytes") >> 20)) \
		"$(cat "$dir/rate_kibps")" "$(cat "$dir/pending_regions")" "$(cat "$dir/errors")"
	case $state in switched | failed | cancelled) break ;; esac
	sleep 0.5
done
dmsetup status guest-disk
[ "$state" = switched ]

step "Switched: swap the table to a linear over new.img, detach and unlink old.img"
dmsetup load guest-disk --table "0 $size linear $new 0"
dmsetup suspend guest-disk
dmsetup resume guest-disk
dmsetup table guest-disk
losetup -d "$old"
rm $scratch/old.img
ls -l $scratch/*.img

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
