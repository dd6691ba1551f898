#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# A reload's hand-over that cannot be written to the metadata device does not take effect without
# it: table A (no metadata) has switched; table B, the same devices plus a blank metadata device,
# must record "switched" there at its resume; that write fails (the metadata device is an `error`
# table for the moment), so B is refused. The same line loaded again (C) must write the hand-over
# now, not go live switched with metadata that still says "copying" with nothing copied: the next
# create from that metadata would then read the stale origin and copy it over the destination,
# losing every write since the switch.
. "$(dirname "$0")/lib.sh"
load_migrate
make_loop a 8
make_loop b 8
make_metadata mraw
len=$(sectors "$a")
mlen=$(sectors "$mraw")
name=$DEV_PREFIX-sw
dm_create meta "0 $mlen linear $mraw 0" || fail "metadata linear failed"
meta=$(dm_path meta)
dm_create sw "0 $len migrate $a $b" || fail "create failed"
wait_state sw switched 60
line="0 $len migrate $a $b 2 metadata $meta"
# B: its constructor formats the blank metadata device; its resume then cannot write to it.
dmsetup load "$name" --table "$line" || fail "load of B failed"
dm_reload meta "0 $mlen error"
log_mark
dmsetup suspend "$name" || fail "suspend failed"
dmsetup resume "$name" 2>/dev/null && fail "B went live although its hand-over was not written"
log_since | grep -qF "cannot record the reload" || fail "no reason logged: $(log_since | tail -3)"
dm_reload meta "0 $mlen linear $mraw 0"
# C: the same line, once the metadata device works again.
dmsetup load "$name" --table "$line" || fail "load of C failed"
dmsetup resume "$name" || fail "C refused with a working metadata device"
[ "$(migrate_state sw)" = switched ] || fail "C: $(dmsetup status "$name")"
head -c $((1 << 20)) /dev/urandom >"$TEST_TMP/w"
dd if="$TEST_TMP/w" of="$(dm_path sw)" bs=64k oflag=direct status=none || fail "write failed"
# What a reboot does: the device made again from the same line, from its metadata.
dmsetup remove "$name" || fail "remove failed"
dm_create sw "$line" || fail "create from the metadata failed"
diag "after the create: $(dmsetup status "$name")"
dd if="$(dm_path sw)" of="$TEST_TMP/r" bs=64k count=16 iflag=direct status=none ||
	fail "read failed"
cmp -s "$TEST_TMP/w" "$TEST_TMP/r" || fail "the write since the switch reads back wrong after the create"
[ "$(migrate_state sw)" = switched ] || fail "the create did not find the switch: $(dmsetup status "$name")"
dmsetup remove "$name" || fail "remove failed"
same_bytes "$b" "$TEST_TMP/w" $((1 << 20))
pass
