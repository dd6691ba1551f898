#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# After a switch, a migrate table that neither continues that migration nor copies away from
# its destination is refused at resume (the device stays suspended, nothing is read from the
# stale origin), with the reason in the kernel log; the switched table itself is still accepted
# (switched), a table that moves the data on from the destination too, and the data written
# since the switch survives it all.
. "$(dirname "$0")/lib.sh"
load_migrate
make_loop a 8
make_loop b 8
make_loop c 8
len=$(sectors "$a")
name=$DEV_PREFIX-sw
dm_create sw "0 $len migrate $a $b" || fail "create failed"
wait_state sw switched 60
head -c $((1 << 20)) /dev/urandom >"$TEST_TMP/w"
dd if="$TEST_TMP/w" of="$(dm_path sw)" bs=64k oflag=direct status=none || fail "write failed"
log_mark
dmsetup load "$name" --table "0 $len migrate $a $c" || fail "load failed"
dmsetup suspend "$name" || fail "suspend failed"
dmsetup resume "$name" 2>/dev/null && fail "a table copying the stale origin was resumed"
log_since | grep -qF "The device's last migration switched to other devices" ||
	fail "no reason logged: $(log_since | tail -3)"
dmsetup info "$name" | grep -q '^State: *SUSPENDED' || fail "not left suspended"
# Going back to the switched table keeps it switched (the refusal did not forget the switch).
dmsetup load "$name" --table "0 $len migrate $a $b" && dmsetup resume "$name" ||
	fail "the switched table itself was refused"
[ "$(migrate_state sw)" = switched ] || fail "state: $(dmsetup status "$name")"
dd if="$(dm_path sw)" of="$TEST_TMP/r" bs=64k count=16 iflag=direct status=none
cmp -s "$TEST_TMP/w" "$TEST_TMP/r" || fail "the write since the switch is lost"
# Moving on from the destination is a new move.
dm_reload sw "0 $len migrate $b $c"
wait_state sw switched 60
dd if="$(dm_path sw)" of="$TEST_TMP/r" bs=64k count=16 iflag=direct status=none
cmp -s "$TEST_TMP/w" "$TEST_TMP/r" || fail "the write since the first switch is lost"
same_bytes "$c" "$TEST_TMP/w" $((1 << 20))
pass
