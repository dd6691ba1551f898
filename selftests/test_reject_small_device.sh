#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# A destination smaller than the target is refused; a larger one is accepted; an origin smaller
# than the target is refused.
. "$(dirname "$0")/lib.sh"
load_migrate
make_loop origin 8
make_loop small 4
make_loop large 16
len=$(sectors "$origin")
expect_reject "0 $len migrate $origin $small" "Destination device too small"
expect_reject "0 $(sectors "$large") migrate $origin $large" "Origin device too small"
dm_create larger "0 $len migrate $origin $large" || fail "a larger destination was refused"
pass
