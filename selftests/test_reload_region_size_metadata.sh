#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# With a metadata device, a reload with another region size continues only the switch, as
# without one: while copying, the copy starts over in the new region size (the metadata is
# rewritten for it); once switched, it stays switched, and the metadata says so in the new region
# size, so that a create from the last table after a reboot finds the switch. Every write the
# guest made on the way is on the destination at the end. A create (no live table) with another
# region size is still refused (test_metadata_refused.sh).
. "$(dirname "$0")/lib.sh"
load_migrate
make_loop a 16
make_loop b 16
make_metadata meta
len=$(sectors "$a")
name=$DEV_PREFIX-mig
dev=$(dm_path mig)
snapshot "$a" "$TEST_TMP/expected"
# guest_write OFFSET_MIB: 1 MiB of new data through the device, also into the expected image.
guest_write() {
	head -c $((1 << 20)) /dev/urandom >"$TEST_TMP/w"
	dd if="$TEST_TMP/w" of="$dev" bs=64k seek=$(($1 * 16)) oflag=direct status=none ||
		fail "write at $1 MiB failed"
	dd if="$TEST_TMP/w" of="$TEST_TMP/expected" bs=64k seek=$(($1 * 16)) conv=notrunc status=none
}
dm_create mig "0 $len migrate $a $b 4 metadata $meta rate 512" || fail "create failed"
until [ "$(migrate_field mig 2 | cut -d/ -f1)" -ge 32 ]; do sleep 0.1; done
guest_write 1
log_mark
# While copying: the copy starts over in 128 KiB regions.
dmsetup load "$name" --table "0 $len migrate $a $b 6 metadata $meta region_size 256 rate 512" ||
	fail "a reload with another region size was refused: $(log_since | grep -i metadata | tail -2)"
dmsetup suspend "$name" && dmsetup resume "$name" || fail "the reload did not resume: $(log_since | tail -3)"
log_since | grep -qF "Reloaded: starting the copy over" || fail "not started over: $(log_since | tail -3)"
[ "$(migrate_field mig 2 | cut -d/ -f2)" = 128 ] || fail "not in 128 KiB regions: $(dmsetup status "$name")"
guest_write 9
dmsetup message "$name" 0 rate 0 || fail "rate 0 failed"
wait_state mig switched 120
guest_write 3
# Once switched: it stays switched, in 32 KiB regions.
line="0 $len migrate $a $b 4 metadata $meta region_size 64"
dmsetup load "$name" --table "$line" || fail "a reload after the switch was refused"
dmsetup suspend "$name" && dmsetup resume "$name" || fail "the switched reload did not resume"
[ "$(migrate_state mig)" = switched ] || fail "not switched after the reload: $(dmsetup status "$name")"
guest_write 12
# A reboot: the device made again from the last line finds the switch on the metadata device.
dmsetup remove "$name" || fail "remove failed"
log_mark
dm_create mig "$line" || fail "create from the last line failed: $(log_since | grep -i metadata | tail -2)"
[ "$(migrate_state mig)" = switched ] || fail "the create did not find the switch: $(dmsetup status "$name")"
snapshot "$dev" "$TEST_TMP/read"
cmp "$TEST_TMP/expected" "$TEST_TMP/read" >/dev/null ||
	fail "the device reads wrong after the create: $(cmp "$TEST_TMP/expected" "$TEST_TMP/read" 2>&1)"
dmsetup remove "$name" || fail "remove failed"
same_bytes "$b" "$TEST_TMP/expected"
pass
