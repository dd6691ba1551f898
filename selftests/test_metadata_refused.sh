#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Metadata that does not describe the migration is refused with its reason, never guessed past:
# the metadata of another pair of devices, a damaged superblock copy (either one), a metadata
# device too small for the bitmaps, one of another target length or region size, one that holds
# something else, a blank destination or one rolled back to an earlier point of the copy, and the
# origin or destination named as the metadata device. Metadata of the right pair is accepted
# again afterwards, with its progress.
. "$(dirname "$0")/lib.sh"
load_migrate
make_loop origin 16
make_loop dest 16
make_loop other_origin 16
make_loop other_dest 16
make_metadata meta
make_loop tiny 1
len=$(sectors "$origin")
table="0 $len migrate $origin $dest 4 metadata $meta rate 2048"
# Half a copy recorded on the metadata device (the removal commits it).
dm_create mig "$table" || fail "create failed"
until [ "$(migrate_field mig 2 | cut -d/ -f1)" -ge 64 ]; do sleep 0.1; done
dmsetup remove "$DEV_PREFIX-mig" || fail "remove failed"
snapshot "$meta" "$TEST_TMP/meta.good"
restore_meta() { dd if="$TEST_TMP/meta.good" of="$meta" bs=4k oflag=direct status=none; }

expect_reject "0 $len migrate $other_origin $other_dest 2 metadata $meta" \
	"Metadata is for another pair: a region it says is copied differs"
# The right origin with a blank destination: a copied region blank on one side only could be a
# discard, but not when no copied region holds the same data on both.
make_loop blank 16
dd if=/dev/zero of="$blank" bs=1M count=16 oflag=direct status=none || fail "cannot zero $blank"
expect_reject "0 $len migrate $origin $blank 2 metadata $meta" \
	"Metadata is for another pair: a region it says is copied differs"
# A destination rolled back to when the copy had done its first 1 MiB: blank beyond it.
dd if="$dest" of="$blank" bs=64k count=16 iflag=direct oflag=direct status=none ||
	fail "cannot copy $dest"
expect_reject "0 $len migrate $origin $blank 2 metadata $meta" \
	"Metadata is for another pair: a region it says is copied differs"
expect_reject "0 $((len / 2)) migrate $origin $dest 2 metadata $meta" \
	"Metadata is for a target of another length"
expect_reject "0 $len migrate $origin $dest 4 metadata $meta region_size 256" \
	"Metadata is for another region size"
for copy in 0 1; do
	restore_meta
	# One byte of the generation field of superblock copy N.
	printf '\xff' | dd of="$meta" bs=1 seek=$((copy * 4096 + 17)) conv=notrunc status=none
	expect_reject "$table" "Metadata superblock copy $copy fails its checksum"
done
restore_meta
# A truncated metadata device: the superblocks are there, the bitmaps are not.
dd if="$TEST_TMP/meta.good" of="$tiny" bs=4k count=2 oflag=direct status=none
tiny_dm="0 16 linear $tiny 0"
dm_create tiny "$tiny_dm" || fail "cannot create the truncated device"
expect_reject "0 $len migrate $origin $dest 2 metadata $(dm_path tiny)" \
	"Metadata device too small for this migration"
# Something else: random bytes.
expect_reject "0 $len migrate $origin $dest 2 metadata $other_dest" "Metadata device holds something else"
expect_reject "0 $len migrate $origin $dest 2 metadata $origin" \
	"Metadata device is the origin or the destination"
expect_reject "0 $len migrate $origin $dest 2 metadata $(devnum "$dest")" \
	"Metadata device is the origin or the destination"
expect_reject "0 $len migrate $origin $dest 2 commit_interval 100" \
	"commit_interval needs a metadata device"
# None of the refusals wrote to it: the right pair resumes where it was.
cmp "$meta" "$TEST_TMP/meta.good" >/dev/null || fail "a refused table changed the metadata"
log_mark
dm_create mig "$table" || fail "the right pair was refused"
copied=$(migrate_field mig 2 | cut -d/ -f1)
[ "$copied" -ge 64 ] || fail "the right pair resumed at $copied regions, not at 64 or more"
log_since | grep -q "Metadata: resuming the copy" || fail "no resume in the log: $(log_since | tail -3)"
dmsetup message "$DEV_PREFIX-mig" 0 rate 0 || fail "rate failed"
wait_state mig switched
dmsetup remove "$DEV_PREFIX-mig" || fail "remove failed"
same_bytes "$origin" "$dest"
# Switched metadata: the origin is frozen from the switch on, and must be the one it left.
expect_reject "0 $len migrate $other_origin $other_dest 2 metadata $meta" \
	"Metadata is for another pair: it switched away from another origin"
dm_create mig "$table" || fail "the right pair was refused after the switch"
[ "$(migrate_state mig)" = switched ] || fail "not switched: $(dmsetup status "$DEV_PREFIX-mig")"
pass
