#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Loading a new table into a live device (another region size) takes effect at resume and copies
# again, and a bad reload leaves the running table in place.
. "$(dirname "$0")/lib.sh"
load_migrate
make_loop origin 8
make_loop dest 8
len=$(sectors "$origin")
dm_create reload "0 $len migrate $origin $dest" || fail "create failed"
dmsetup load "$DEV_PREFIX-reload" --table "0 $len migrate $origin $dest 2 region_size 1024" ||
	fail "load failed"
dmsetup suspend "$DEV_PREFIX-reload" && dmsetup resume "$DEV_PREFIX-reload" || fail "swap failed"
dmsetup table "$DEV_PREFIX-reload" | grep -q ' 2 region_size 1024$' || fail "new table not live"
wait_state reload switched
dmsetup status "$DEV_PREFIX-reload" | grep -q " $((len / 1024))/$((len / 1024)) " || fail "region count not updated"
dmsetup load "$DEV_PREFIX-reload" --table "0 $len migrate $origin $origin" 2>/dev/null &&
	fail "bad reload accepted"
dmsetup table "$DEV_PREFIX-reload" | grep -q ' 2 region_size 1024$' || fail "live table changed by a failed load"
dd if=/dev/urandom of="$TEST_TMP/d" bs=1M count=1 status=none
dd if="$TEST_TMP/d" of="$(dm_path reload)" bs=1M oflag=direct status=none || fail "write failed"
same_bytes "$dest" "$TEST_TMP/d" $((1 << 20))
pass
