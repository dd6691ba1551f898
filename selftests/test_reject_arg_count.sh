#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Tables with a wrong number of arguments are refused with a specific message.
. "$(dirname "$0")/lib.sh"
load_migrate
make_loop origin 4
make_loop dest 4
len=$(sectors "$origin")
expect_reject "0 $len migrate" "Invalid argument count"
expect_reject "0 $len migrate $origin" "Invalid argument count"
expect_reject "0 $len migrate $origin $dest 1 region_size 8" \
	"Number of optional arguments does not match the words given"
expect_reject "0 $len migrate $origin $dest 3 region_size 8" \
	"Number of optional arguments does not match the words given"
expect_reject "0 $len migrate $origin $dest $origin" "Invalid number of optional arguments"
expect_reject "0 $len migrate $origin $dest 1 region_size" "Missing value for optional argument"
pass
