#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Zero-aware copy: chunks of the origin that read as zeros go to the destination as write-zeroes,
# so a sparse image file stays sparse (about the origin's data allocated), its content equals the
# origin's byte for byte, and the status line and sysfs count the bytes; no_skip_zeroes writes
# them as data and allocates the whole file.
. "$(dirname "$0")/lib.sh"
load_migrate
size=64
data_mib=6
# A sparse origin image with six random MiB at scattered places, holes elsewhere.
origin_img=$TEST_TMP/origin.img
truncate -s ${size}M "$origin_img"
for mib in 3 10 11 29 40 63; do
	head -c $((1 << 20)) /dev/urandom | dd of="$origin_img" bs=1M seek=$mib conv=notrunc status=none
done
origin=$(losetup -f --show "$origin_img") || fail "losetup failed"
_loops+=("$origin")
len=$(sectors "$origin")
# copy NAME OPTIONS...: copies the origin onto a new sparse image file with OPTIONS; prints the
# image's allocated bytes.
copy() {
	local name=$1 img=$TEST_TMP/$1.img dest
	shift
	truncate -s ${size}M "$img"
	dest=$(losetup -f --show "$img") || fail "losetup failed"
	_loops+=("$dest")
	dm_create "$name" "0 $len migrate $origin $dest $*" || fail "create $name failed"
	wait_state "$name" switched
	status=$(dmsetup status "$DEV_PREFIX-$name")
	zeroed=$(cat "$(dm_sysfs "$name")/migrate/zeroed_bytes")
	dmsetup remove "$DEV_PREFIX-$name" || fail "remove failed"
	same_bytes "$origin_img" "$img"
	diag "$name: $status; zeroed_bytes $zeroed; $(du -B1 "$img" | cut -f1) bytes allocated"
}
copy sparse 0
zero_bytes=$(((size - data_mib) << 20))
[ "$zeroed" = $zero_bytes ] || fail "zeroed_bytes $zeroed, not $zero_bytes"
[ "$(echo "$status" | awk '{ print $NF }')" = $zero_bytes ] || fail "status: $status"
allocated=$(du -B1 "$TEST_TMP/sparse.img" | cut -f1)
[ "$allocated" -le $(((data_mib << 20) * 11 / 10)) ] ||
	fail "the destination has $allocated bytes allocated for $data_mib MiB of data"
copy dense 1 no_skip_zeroes
[ "$zeroed" = 0 ] || fail "no_skip_zeroes: zeroed_bytes $zeroed"
allocated=$(du -B1 "$TEST_TMP/dense.img" | cut -f1)
[ "$allocated" -ge $((size << 20)) ] || fail "no_skip_zeroes allocated only $allocated bytes"
pass
