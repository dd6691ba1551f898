#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# dmmig recover finishes a move whose dmmig and dm device are gone (the host went down): from
# the record and the metadata dmmig move left, it loads the migrate table again, which resumes
# the copy where the metadata says (not from the start), swaps to the new image, unlinks the old
# one and removes the metadata and the record. A move that had switched gets its linear table on
# the destination at once, also from paths given on the command line. Every write verifies.
. "$(dirname "$0")/lib.sh"
need_dmmig
command -v fio >/dev/null || skip "fio is not installed"
load_migrate
old_img=$TEST_TMP/old.img new_img=$TEST_TMP/new.img
head -c $((64 << 20)) /dev/urandom >"$old_img"
image_disk disk "$old_img"
len=$(sectors "$DISK_LOOP")
disk=$DEV_PREFIX-disk
fio_verify_write "/dev/mapper/$disk" 64 "$TEST_TMP/fio.log"
# fio's verify accepts any intact block of any fio run; the bytes themselves are the disk.
snapshot "/dev/mapper/$disk" "$TEST_TMP/disk1"
"$DMMIG" move "$disk" "$new_img" --no-progress --rate 8192 >"$TEST_TMP/move.log" 2>&1 &
mover=$!
until [ "$(migrate_field disk 2 2>/dev/null | cut -d/ -f1)" -ge 256 ] 2>/dev/null; do
	kill -0 $mover 2>/dev/null || { diag_file "$TEST_TMP/move.log"; fail "move ended early"; }
	sleep 0.1
done
# The host goes down: dmmig dies, the device goes, the loop devices go.
kill -9 $mover
wait $mover 2>/dev/null
copied=$(migrate_field disk 2 | cut -d/ -f1)
dmsetup remove "$disk" || fail "remove failed"
for img in "$old_img" "$new_img" "$new_img.dmmig-meta"; do
	losetup -j "$img" | cut -d: -f1 | xargs -r -n1 losetup -d
done
[ -f "$DMMIG_STATE_DIR/$disk.json" ] || fail "move left no record"
"$DMMIG" inspect "$new_img.dmmig-meta" | diag_lines
"$DMMIG" --json inspect "$new_img.dmmig-meta" >"$TEST_TMP/inspect.json" || fail "inspect failed"
grep -q '"phase": "copying"' "$TEST_TMP/inspect.json" || fail "inspect: $(cat "$TEST_TMP/inspect.json")"
log_mark
"$DMMIG" recover "$disk" --no-progress >"$TEST_TMP/recover.log" 2>&1 ||
	{ diag_file "$TEST_TMP/recover.log"; fail "dmmig recover failed"; }
diag_file "$TEST_TMP/recover.log"
resumed=$(log_since | sed -n 's/.*Metadata: resuming the copy, \([0-9]*\)\/.*/\1/p' | head -1)
diag "copied $copied regions before the crash, resumed at ${resumed:-?}"
[ -n "$resumed" ] && [ "$resumed" -ge $((copied - 64)) ] || fail "did not resume: $(log_since | tail -5)"
new=$(losetup -j "$new_img" | cut -d: -f1)
_loops+=("$new")
[ "$(dmsetup table "$disk")" = "0 $len linear $(devnum "$new") 0" ] || fail "table: $(dmsetup table "$disk")"
[ -e "$old_img" ] && fail "the old image is still there"
[ -e "$new_img.dmmig-meta" ] && fail "the metadata is still there"
[ -e "$DMMIG_STATE_DIR/$disk.json" ] && fail "the record is still there"
fio_verify_only "/dev/mapper/$disk" 64 "$TEST_TMP/verify.log"
same_bytes "/dev/mapper/$disk" "$TEST_TMP/disk1"
dmsetup remove "$disk" || fail "remove failed"

# A switched move, from paths: the disk comes back on the destination with no copy.
head -c $((16 << 20)) /dev/urandom >"$old_img"
o=$(losetup -f --show "$old_img") && d=$(losetup -f --show "$new_img") || fail "losetup failed"
_loops+=("$o" "$d")
meta=$TEST_TMP/meta
truncate -s 1M "$meta"
m=$(losetup -f --show "$meta") || fail "losetup failed"
_loops+=("$m")
len=$(sectors "$o")
dmsetup create "$disk" --table "0 $len migrate $o $d 2 metadata $m" || fail "create failed"
wait_state disk switched
fio_verify_write "/dev/mapper/$disk" 16 "$TEST_TMP/fio2.log"
# The destination held the first move's fio blocks, which fio's verify would accept: compare bytes.
snapshot "/dev/mapper/$disk" "$TEST_TMP/disk2"
dmsetup remove "$disk" || fail "remove failed"
losetup -d "$o" "$m"
"$DMMIG" inspect "$meta" | grep -q "phase switched" || fail "inspect: $("$DMMIG" inspect "$meta")"
"$DMMIG" recover "$disk" --origin "$old_img" --dest "$d" --metadata "$meta" --no-progress \
	>"$TEST_TMP/recover2.log" 2>&1 || { diag_file "$TEST_TMP/recover2.log"; fail "recover failed"; }
[ "$(dmsetup table "$disk")" = "0 $len linear $(devnum "$d") 0" ] || fail "table: $(dmsetup table "$disk")"
[ -e "$old_img" ] && fail "the old image is still there"
fio_verify_only "/dev/mapper/$disk" 16 "$TEST_TMP/verify2.log"
same_bytes "/dev/mapper/$disk" "$TEST_TMP/disk2"
pass
