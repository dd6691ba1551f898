#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Metadata whose copied regions the guest then discarded is still accepted: a discarded block may
# read differently on the two devices (zeroes on one, old or undefined bytes on the other), and
# that does not make them another pair. Half a copy is recorded, the guest discards copied
# regions, the device is removed, and the destination's discarded blocks then read as other
# bytes (what a device without deterministic reads after a discard may return). The create from
# the metadata must resume the copy where it was, and the copy ends with every byte the guest did
# not discard as the guest last read it. (test_metadata_refused.sh checks that another pair and a
# blank destination are still refused.)
. "$(dirname "$0")/lib.sh"
load_migrate
make_loop origin 8
make_loop dest 8
make_metadata meta
len=$(sectors "$origin")
# 1 KiB/s: the copier copies its first batch (regions 0-7, 512 KiB) and waits.
table="0 $len migrate $origin $dest 8 metadata $meta commit_interval 100 copy_depth 1 rate 1"
dm_create mig "$table" || fail "create failed"
wait_field mig 2 "8/128" 30
# The guest discards regions 0-2 of the 8 copied: on both devices.
discarded=$((192 << 10))
blkdiscard -o 0 -l "$discarded" "$(dm_path mig)" || fail "discard failed"
snapshot "$(dm_path mig)" "$TEST_TMP/guest"
dmsetup remove "$DEV_PREFIX-mig" || fail "remove failed"
# The destination's discarded blocks read as other bytes than the origin's (zeroes).
head -c "$discarded" /dev/urandom | dd of="$dest" bs=64k oflag=direct status=none ||
	fail "cannot write the destination"
log_mark
dm_create mig "$table" ||
	fail "the right pair refused after discards: $(log_since | grep -i metadata | tail -2)"
copied=$(migrate_field mig 2 | cut -d/ -f1)
[ "$copied" -ge 8 ] || fail "the recorded progress was not kept: $(dmsetup status "$DEV_PREFIX-mig")"
dmsetup message "$DEV_PREFIX-mig" 0 rate 0 || fail "rate 0 failed"
wait_state mig switched 120
dmsetup remove "$DEV_PREFIX-mig" || fail "remove failed"
# Every byte the guest did not discard.
blockdev --flushbufs "$dest"
cmp -i "$discarded" "$TEST_TMP/guest" "$dest" >/dev/null ||
	fail "the destination differs from what the guest read: $(cmp -i "$discarded" "$TEST_TMP/guest" "$dest" 2>&1)"
pass
