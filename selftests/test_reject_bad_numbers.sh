#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Numbers with trailing garbage, signs, hex or overflow are refused, not half-parsed.
. "$(dirname "$0")/lib.sh"
load_migrate
make_loop origin 4
make_loop dest 4
t="0 $(sectors "$origin") migrate $origin $dest"
expect_reject "$t 2 region_size 128x" "Invalid region size"
expect_reject "$t 2 region_size +128" "Invalid region size"
expect_reject "$t 2 region_size 0x80" "Invalid region size"
expect_reject "$t 2 region_size 18446744073709551616" "Invalid region size"
expect_reject "$t 2x region_size 128" "Invalid number of optional arguments"
expect_reject "$t 18446744073709551618 region_size 128" "Invalid number of optional arguments"
pass
