#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Regions larger than one copy buffer (512 KiB) and than one bio (1 MiB) copy correctly: 4 MiB
# regions over a disk that ends in a partial region, and the largest region size (1 GiB), one
# region bigger than the whole disk. The copier moves such a region through its buffer in pieces.
. "$(dirname "$0")/lib.sh"
load_migrate
make_loop origin 38
make_loop dest 38
for region in 8192 2097152; do
	blkdiscard "$dest" 2>/dev/null || dd if=/dev/zero of="$dest" bs=1M count=38 status=none
	dm_create big "0 $(sectors "$origin") migrate $origin $dest 2 region_size $region" ||
		fail "create with region_size $region failed"
	wait_state big switched 120
	[ "$(migrate_field big 7)" = 0 ] || fail "errors: $(dmsetup status "$DEV_PREFIX-big")"
	same_bytes "$origin" "$dest"
	dmsetup remove "$DEV_PREFIX-big" || fail "remove failed"
done
pass
