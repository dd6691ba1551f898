#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# A device that does not exist is refused, named as origin or destination.
. "$(dirname "$0")/lib.sh"
load_migrate
make_loop origin 4
make_loop dest 4
len=$(sectors "$origin")
expect_reject "0 $len migrate /dev/does-not-exist $dest" "Error opening origin device"
expect_reject "0 $len migrate $origin /dev/does-not-exist" "Error opening destination device"
expect_reject "0 $len migrate $origin 250:250" "Error opening destination device"
pass
