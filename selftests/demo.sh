#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# The demo `make demo` runs inside the VM: a migrate device over two loop-backed image files,
# data written and read back through it, and its status and table.
set -eu
cd "$(dirname "$0")"
MODULE=${MODULE:-$REPO_ROOT/dm-migrate.ko}
step() { printf '\n==> %s\n' "$*"; }

step "Loading dm-migrate"
insmod "$MODULE"
dmsetup targets | grep migrate

step "Creating two 64 MiB image files on loop devices: the guest disk and its new home"
truncate -s 64M /tmp/origin.img /tmp/destination.img
origin=$(losetup -f --show /tmp/origin.img)
destination=$(losetup -f --show /tmp/destination.img)
echo "origin: $origin  destination: $destination"

step "Creating /dev/mapper/guest-disk as a migrate target"
table="0 $(blockdev --getsz "$origin") migrate $origin $destination"
echo "table: $table"
dmsetup create guest-disk --table "$table"

step "Writing 32 MiB of random data through the target and reading it back"
head -c 32M /dev/urandom >/tmp/data
dd if=/tmp/data of=/dev/mapper/guest-disk bs=1M oflag=direct status=none
cmp -n $((32 << 20)) /tmp/data /dev/mapper/guest-disk && echo "read back through the target: identical"
cmp -n $((32 << 20)) /tmp/data "$origin" && echo "origin holds the data: identical"

step "dmsetup status and table"
dmsetup status guest-disk
dmsetup table guest-disk

step "Cleaning up"
dmsetup remove guest-disk
losetup -d "$origin" "$destination"
rmmod dm_migrate
echo "demo complete"
