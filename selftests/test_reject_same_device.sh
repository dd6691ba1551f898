#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Origin and destination must differ, also when one is named by path and the other by number.
. "$(dirname "$0")/lib.sh"
load_migrate
make_loop origin 4
len=$(sectors "$origin")
expect_reject "0 $len migrate $origin $origin" "Origin and destination are the same device"
expect_reject "0 $len migrate $origin $(devnum "$origin")" "Origin and destination are the same device"
pass
