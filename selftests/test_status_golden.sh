#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# `dmsetup status` prints the documented INFO line once switched; regions follow region_size,
# the last one partial.
. "$(dirname "$0")/lib.sh"
load_migrate
make_loop origin 8
make_loop dest 8
LEN=$(sectors "$origin")
REGIONS=$((LEN / 128))
dm_create status1 "0 $LEN migrate $origin $dest" || fail "create failed"
BYTES=$((LEN * 512))
wait_state status1 switched
golden status_default.txt "$(dmsetup status "$DEV_PREFIX-status1")"
# 8 MiB minus 4 KiB in 64 KiB regions: 128 regions, the last one partial.
LEN=$((LEN - 8))
REGIONS=128
dm_create status2 "0 $LEN migrate $origin $dest 2 region_size 128" || fail "create failed"
BYTES=$((LEN * 512))
wait_state status2 switched
golden status_partial.txt "$(dmsetup status "$DEV_PREFIX-status2")"
pass
