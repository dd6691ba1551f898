#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# A reload that continues the same migration takes the new table's options: adding no_switch
# holds the switch (the copy ends in synced, mirrored, and stays there), and a reload without it
# lets the target switch. The copied regions carry over both times.
. "$(dirname "$0")/lib.sh"
load_migrate
make_loop origin 32
make_loop dest 32
len=$(sectors "$origin")
name=$DEV_PREFIX-ns
dm_create ns "0 $len migrate $origin $dest 2 rate 1" || fail "create failed"
wait_field ns 2 "32/512"
dm_reload ns "0 $len migrate $origin $dest 1 no_switch"
wait_state ns synced 60
sleep 1
[ "$(migrate_state ns)" = synced ] || fail "no_switch of the reload ignored: $(dmsetup status "$name")"
head -c $((1 << 20)) /dev/urandom >"$TEST_TMP/d"
dd if="$TEST_TMP/d" of="$(dm_path ns)" bs=64k oflag=direct status=none || fail "write failed"
same_bytes "$dest" "$TEST_TMP/d" $((1 << 20))
dm_reload ns "0 $len migrate $origin $dest"
wait_state ns switched 30
dmsetup remove "$name" || fail "remove failed"
same_bytes "$origin" "$dest"
pass
