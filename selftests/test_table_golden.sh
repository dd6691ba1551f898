#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# `dmsetup table` re-emits the constructor arguments: without options, and with region_size.
. "$(dirname "$0")/lib.sh"
load_migrate
make_loop origin 8
make_loop dest 8
LEN=$(sectors "$origin") ORIGIN_NUM=$(devnum "$origin") DEST_NUM=$(devnum "$dest")
dm_create table1 "0 $LEN migrate $origin $dest" || fail "create failed"
golden table_default.txt "$(dmsetup table "$DEV_PREFIX-table1")"
# Options are re-emitted in canonical form, whatever case they were given in.
dm_create table2 "0 $LEN migrate $ORIGIN_NUM $DEST_NUM 2 REGION_SIZE 256" || fail "create failed"
golden table_region_size.txt "$(dmsetup table "$DEV_PREFIX-table2")"
pass
