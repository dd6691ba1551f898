#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# dmmig move to a new image keeps it sparse: a 1 GiB image holding 100 MiB of data moves into a
# file with about 100 MiB allocated, byte-identical to the old image.
. "$(dirname "$0")/lib.sh"
need_dmmig
load_migrate
old_img=$TEST_TMP/old.img new_img=$TEST_TMP/new.img
truncate -s 1G "$old_img"
# Ten runs of 10 MiB of random data, one every 100 MiB.
for i in $(seq 0 9); do
	head -c $((10 << 20)) /dev/urandom |
		dd of="$old_img" bs=1M seek=$((i * 100 + 7)) conv=notrunc status=none
done
image_disk disk "$old_img"
disk=$DEV_PREFIX-disk
"$DMMIG" move "$disk" "$new_img" --no-progress --keep-source >"$TEST_TMP/move.log" 2>&1 ||
	{ diag_file "$TEST_TMP/move.log"; fail "dmmig move failed"; }
diag_file "$TEST_TMP/move.log"
new=$(losetup -j "$new_img" | cut -d: -f1)
[ -n "$new" ] || fail "the new image is not attached"
_loops+=("$new")
dmsetup remove "$disk"
same_bytes "$old_img" "$new_img"
allocated=$(du -B1 "$new_img" | cut -f1)
diag "new image: $allocated bytes allocated for 100 MiB of data"
[ "$allocated" -le $(((100 << 20) * 11 / 10)) ] || fail "$allocated bytes allocated"
pass
