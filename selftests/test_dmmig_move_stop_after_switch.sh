#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# dmmig move told to stop (SIGTERM) after the target has switched must not roll back to the
# origin, which misses the writes made since the switch: it finishes the move. dmmig is held
# (SIGSTOP) while the target switches and a write lands on the destination alone.
. "$(dirname "$0")/lib.sh"
need_dmmig
load_migrate
make_loop old 16
make_loop new 16
len=$(sectors "$old")
disk=$DEV_PREFIX-disk
dmsetup create "$disk" --table "0 $len linear $old 0" || fail "create failed"
"$DMMIG" move "$disk" "$new" --no-progress --keep-source --rate 4096 >"$TEST_TMP/move.log" 2>&1 &
mover=$!
wait_migrate_table "$disk"
kill -STOP $mover
dmsetup message "$disk" 0 rate 0 || fail "rate failed"
start=$SECONDS
until dmsetup status "$disk" | grep -q ' switched '; do
	[ $((SECONDS - start)) -lt 60 ] || fail "no switch: $(dmsetup status "$disk")"
	sleep 0.1
done
head -c $((1 << 20)) /dev/urandom >"$TEST_TMP/w"
dd if="$TEST_TMP/w" of="/dev/mapper/$disk" bs=64k oflag=direct status=none || fail "write failed"
kill -TERM $mover
kill -CONT $mover
wait $mover
rc=$?
diag_file "$TEST_TMP/move.log"
[ "$(dmsetup table "$disk")" = "0 $len linear $(devnum "$new") 0" ] ||
	fail "not on the destination (rc $rc): $(dmsetup table "$disk")"
[ $rc -eq 0 ] || fail "dmmig move exited $rc after finishing the move"
same_bytes "/dev/mapper/$disk" "$TEST_TMP/w" $((1 << 20))
pass
