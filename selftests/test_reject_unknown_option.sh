#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Unknown and repeated options are refused.
. "$(dirname "$0")/lib.sh"
load_migrate
make_loop origin 4
make_loop dest 4
t="0 $(sectors "$origin") migrate $origin $dest"
expect_reject "$t 1 no_such_option" "Unknown optional argument"
expect_reject "$t 2 region_sizes 128" "Unknown optional argument"
expect_reject "$t 4 region_size 128 region_size 256" "Duplicate optional argument"
pass
