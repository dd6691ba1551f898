#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# dmmig move of a whole VM's disks in one command. Three loop-backed disks under fio
# --verify=crc32c move to new images in one folder with --switch-together: all end on their new
# images, the old images are gone, every write verifies, and a sampler of the three targets'
# states never sees one disk switched while another is still copying. Then three disks whose
# third destination fails its writes after a second (dm-flakey): the move fails, and every disk
# is back on its original linear table with every byte it had (compared) and nothing of the move
# left behind.
. "$(dirname "$0")/lib.sh"
need_dmmig
command -v fio >/dev/null || skip "fio is not installed"
load_migrate

# make_disk NAME [MIB]: an image of MIB (32) MiB of random bytes on a loop device under a linear
# dm device $DEV_PREFIX-NAME; sets ORIGIN_<NAME> and IMAGE_<NAME>.
make_disk() {
	local image=$TEST_TMP/$1.img
	head -c $((${2:-32} << 20)) /dev/urandom >"$image"
	image_disk "$1" "$image" --direct-io=on
	printf -v "ORIGIN_$1" '%s' "$DISK_LOOP"
	printf -v "IMAGE_$1" '%s' "$image"
}

# 1. Switched together, under writers. The data disk is a quarter of the others: moved on its
# own, it would be on its new image long before they are.
disks=(root data log)
make_disk root
make_disk data 8
make_disk log
mkdir "$TEST_TMP/new"
writers=()
for d in "${disks[@]}"; do
	fio --name=guest "${fio_job[@]}" --size=2M --offset_increment=2M --filename="$(dm_path "$d")" \
		--output="$TEST_TMP/fio-$d.log" &
	writers+=($!)
done
# Where each disk is, every 50 ms until the move ends: "origin" (its linear table), the state of
# its migrate target, or "moved" (a linear table on another device).
for d in "${disks[@]}"; do
	origin=ORIGIN_$d
	printf -v "LINEAR_$d" '%s' "0 $(sectors "${!origin}") linear $(devnum "${!origin}") 0"
done
(
	while :; do
		line=
		for d in "${disks[@]}"; do
			table=$(dmsetup table "$DEV_PREFIX-$d" 2>/dev/null)
			linear=LINEAR_$d
			case $table in
			"${!linear}") line+=origin, ;;
			*" migrate "*) line+="$(migrate_state "$d")," ;;
			*) line+=moved, ;;
			esac
		done
		echo "$line"
		sleep 0.05
	done
) >"$TEST_TMP/states" 2>/dev/null &
sampler=$!
# 12 MiB/s in all, 4 MiB/s a disk: the data disk is in sync after about 2 s and is held there
# about 6 s until the others are, long enough for the sampler on the debug kernel too (one of its
# rounds, three dmsetup calls, took over a second there, and a 3-s window was once missed).
"$DMMIG" move "${disks[@]/#/$DEV_PREFIX-}" --to "$TEST_TMP/new" --switch-together --no-progress \
	--max-rate 12288 >"$TEST_TMP/move.log" 2>&1 || { diag_file "$TEST_TMP/move.log"; fail "dmmig move failed"; }
kill $sampler
wait $sampler 2>/dev/null
diag_file "$TEST_TMP/move.log"
for w in "${writers[@]}"; do wait "$w" || fail "fio failed during the move"; done
for d in "${disks[@]}"; do
	grep -q 'err= 0' "$TEST_TMP/fio-$d.log" || fail "fio reported errors on $d"
	image=IMAGE_$d
	[ -e "${!image}" ] && fail "the old image of $d is still there"
	new=$(losetup -j "$TEST_TMP/new/$DEV_PREFIX-$d.img" | cut -d: -f1)
	[ -n "$new" ] || fail "the new image of $d is not attached"
	_loops+=("$new")
	[ "$(dmsetup table "$DEV_PREFIX-$d")" = "0 $(sectors "$new") linear $(devnum "$new") 0" ] ||
		fail "$d: $(dmsetup table "$DEV_PREFIX-$d")"
	fio_verify_only "$(dm_path "$d")" 8 "$TEST_TMP/verify-$d.log" --size=2M --offset_increment=2M
done
# No disk may be on its destination (switched, or moved) while another is still on its origin
# or copying. A sample reads the disks one after the other, and a disk only moves forward
# (origin, copying, synced, switched, moved): a disk found ahead before one found behind was
# ahead while that one was behind. (Found behind before, the other may have caught up since.)
ahead=$(awk -F, '{
	done = 0
	for (i = 1; i <= 3; i++) {
		if ($i == "switched" || $i == "moved") done = 1
		else if (done && ($i == "origin" || $i == "copying")) { print NR ": " $0; exit }
	}
}' "$TEST_TMP/states")
[ -z "$ahead" ] || fail "a disk was on its destination while another was copying: sample $ahead"
grep -q synced "$TEST_TMP/states" || fail "the sampler never saw a disk held in sync"
diag "switched together: $(grep -c . "$TEST_TMP/states") samples, none with a disk ahead of another"
for d in "${disks[@]}"; do dmsetup remove "$DEV_PREFIX-$d" || fail "remove $d failed"; done

# 2. One destination fails: every disk stays on its origin.
kmodprobe dm-flakey 2>/dev/null
disks=(a b c)
for d in "${disks[@]}"; do make_disk "$d"; done
make_loop dest_a 32
make_loop dest_b 32
make_loop dest_c_raw 32
# Writes to the third destination fail from the first second on.
dmsetup create "$DEV_PREFIX-bad" --table "0 65536 flakey $dest_c_raw 0 1 3600 1 error_writes" ||
	skip "dm-flakey is not available"
for d in "${disks[@]}"; do
	origin=ORIGIN_$d
	echo "0 65536 linear $(devnum "${!origin}") 0" >"$TEST_TMP/table-$d"
	snapshot "$(dm_path "$d")" "$TEST_TMP/before-$d"
done
# Two disks onto one device, and a disk onto another disk of the move, are refused up front.
"$DMMIG" move "$DEV_PREFIX-a" "$DEV_PREFIX-b" --to "$dest_a" "$dest_a" 2>"$TEST_TMP/dup.log"
rc=$?
[ $rc -eq 2 ] && grep -q "same destination" "$TEST_TMP/dup.log" ||
	fail "one destination for two disks: exit $rc, $(cat "$TEST_TMP/dup.log")"
"$DMMIG" move "$DEV_PREFIX-a" "$DEV_PREFIX-b" --to "$(dm_path b)" "$dest_b" 2>"$TEST_TMP/dup.log"
rc=$?
[ $rc -eq 2 ] && grep -q "is the disk" "$TEST_TMP/dup.log" ||
	fail "a disk of the move as a destination: exit $rc, $(cat "$TEST_TMP/dup.log")"
"$DMMIG" move "${disks[@]/#/$DEV_PREFIX-}" --to "$dest_a" "$dest_b" "$(dm_path bad)" --no-progress \
	--max-rate 6144 >"$TEST_TMP/fail.log" 2>&1 && { diag_file "$TEST_TMP/fail.log"; fail "the move did not fail"; }
diag_file "$TEST_TMP/fail.log"
# Each disk's whereabouts, as read back after the failure.
for d in "${disks[@]}"; do
	grep -q "$DEV_PREFIX-$d: the disk stays on its origin" "$TEST_TMP/fail.log" ||
		fail "no word that $d stays on its origin"
done
for d in "${disks[@]}"; do
	[ "$(dmsetup table "$DEV_PREFIX-$d")" = "$(cat "$TEST_TMP/table-$d")" ] ||
		fail "$d is not back on its origin: $(dmsetup table "$DEV_PREFIX-$d")"
	same_bytes "$(dm_path "$d")" "$TEST_TMP/before-$d"
	image=IMAGE_$d
	[ -e "${!image}" ] || fail "the image of $d is gone"
done
[ -z "$(ls -A "$DMMIG_STATE_DIR" 2>/dev/null | grep -v '\.meta$')" ] ||
	fail "records left: $(ls "$DMMIG_STATE_DIR")"
pass
