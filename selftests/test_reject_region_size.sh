#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Region sizes must be powers of two within range and multiples of both logical block sizes.
. "$(dirname "$0")/lib.sh"
load_migrate
make_loop origin 8 --sector-size 4096
make_loop dest 8
len=$(sectors "$origin")
table="0 $len migrate $origin $dest 2 region_size"
expect_reject "$table 100" "Region size is not a power of two"
expect_reject "$table 0" "Region size is not a power of two"
expect_reject "$table 4194304" "Region size out of range (1 to 2097152 sectors)"
# 2 KiB regions cannot hold whole 4 KiB blocks of the origin.
expect_reject "$table 4" "Region size is not a multiple of the logical block size"
dm_create region8 "$table 8" || fail "8-sector regions on a 4 KiB-block origin were refused"
pass
