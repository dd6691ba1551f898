#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# dmmig move moves a loop-backed "guest disk" to a new image file under fio --verify=crc32c: the
# old image is gone, the device is a linear on the new image, and every write verifies.
. "$(dirname "$0")/lib.sh"
need_dmmig
command -v fio >/dev/null || skip "fio is not installed"
load_migrate
old_img=$TEST_TMP/old.img new_img=$TEST_TMP/new.img
head -c $((64 << 20)) /dev/urandom >"$old_img"
image_disk disk "$old_img"
len=$(sectors "$DISK_LOOP")
disk=$DEV_PREFIX-disk
# 2 MiB/s per job: the writes go on for 8 s, longer than the move's copy (4 s at 16 MiB/s).
fio --name=guest "${fio_job[@]}" --size=16M --offset_increment=16M --filename="/dev/mapper/$disk" \
	--rate=2m --output="$TEST_TMP/fio.log" &
writer=$!
sleep 1
"$DMMIG" move "$disk" "$new_img" --no-progress --rate 16384 >"$TEST_TMP/move.log" 2>&1 &
mover=$!
# The guest's writes overlap the copy: the disk completes writes while the migrate table copies.
wait_migrate_table "$disk"
writes() { awk '{ print $5 }' "/sys/block/$(dmsetup info -c --noheadings -o blkdevname "$disk")/stat"; }
# Within 5 s: the debug kernel once completed none in the first 0.5 s (the first mirrored
# writes wait for their intent bits, and everything there runs several times slower).
before=$(writes)
start=$SECONDS
sleep 0.5
until after=$(writes); [ "$after" -gt "$before" ] || [ $((SECONDS - start)) -ge 5 ]; do
	sleep 0.25
done
state=$(dmsetup status "$disk" | awk '$3 == "migrate" { print $4 }')
diag "writes completed in $((SECONDS - start)) s of the copy: $((after - before)) (state '$state')"
[ "$after" -gt "$before" ] && [ "$state" = copying ] || {
	diag "table: $(dmsetup table "$disk"); move so far:"
	diag_file "$TEST_TMP/move.log"
	fail "the guest's writes did not overlap the copy"
}
wait $mover || { diag_file "$TEST_TMP/move.log"; fail "dmmig move failed"; }
diag_file "$TEST_TMP/move.log"
wait $writer || { diag_file "$TEST_TMP/fio.log"; fail "fio failed during the move"; }
grep -q 'err= 0' "$TEST_TMP/fio.log" || fail "fio reported errors"
[ -e "$old_img" ] && fail "the old image is still there"
[ -e "$new_img.dmmig-meta" ] && fail "the metadata file is still there"
[ -n "$(ls -A "$DMMIG_STATE_DIR" 2>/dev/null)" ] && fail "the record of the move is still there"
losetup -a | grep -q "$old_img" && fail "the old image is still attached"
new=$(losetup -j "$new_img" | cut -d: -f1)
[ -n "$new" ] || fail "the new image is not attached"
_loops+=("$new")
[ "$(dmsetup table "$disk")" = "0 $len linear $(devnum "$new") 0" ] || fail "table: $(dmsetup table "$disk")"
fio_verify_only "/dev/mapper/$disk" 64 "$TEST_TMP/verify.log"
dmsetup remove "$disk"
fio_verify_only "$new" 64 "$TEST_TMP/verify-new.log"
pass
