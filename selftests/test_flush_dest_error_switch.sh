#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# A guest flush that fails on the destination keeps the disk on the origin, also when its origin
# half is still in flight while the copy ends and the target would switch. The origin holds
# flushes 3 s (dm-delay); the destination (dm-flakey) fails writes and flushes just for the
# guest's flush and is healthy again before the last round copies and the switch flushes it.
. "$(dirname "$0")/lib.sh"
load_migrate
kmodprobe dm-delay || skip "dm-delay is not available"
kmodprobe dm-flakey || skip "dm-flakey is not available"
command -v python3 >/dev/null || skip "python3 is not installed"
make_loop odisk 1
make_loop disk 1
len=$(sectors "$odisk")
dm_create origin "0 $len delay $odisk 0 0 $odisk 0 0 $odisk 0 3000" || fail "origin failed"
flakey_create dst "$disk" 3600 0
# 1 KiB/s: the copier copies its first batch (regions 0-7) and waits.
dm_create mig "0 $len migrate $(dm_path origin) $(dm_path dst) 4 copy_depth 1 rate 1" ||
	fail "create failed"
dev=$(dm_path mig)
wait_field mig 2 "8/16" 30
# Region 0 is copied: this write is mirrored, and both halves land.
head -c 4096 /dev/urandom >"$TEST_TMP/w"
dd if="$TEST_TMP/w" of="$dev" bs=4k oflag=direct status=none || fail "write failed"
flakey_set dst "$disk" 0 1 error_writes
# The flush's destination half fails at once; its origin half waits 3 s in dm-delay.
python3 -c 'import os, sys; os.fsync(os.open(sys.argv[1], os.O_WRONLY))' "$dev" &
flusher=$!
# dm-delay's status counts the flushes it holds; the destination's half is sent right after.
start=$SECONDS
until [ "$(dmsetup status "$DEV_PREFIX-origin" | awk '{ print $6 }')" = 1 ]; do
	[ $((SECONDS - start)) -lt 5 ] || fail "the flush is not held: $(dmsetup status "$DEV_PREFIX-origin")"
	sleep 0.05
done
sleep 0.2
flakey_set dst "$disk" 3600 0
# The last round (regions 8-15) copies now, to a healthy destination, and the target is in sync
# well before the flush's origin half lands.
dmsetup message "$DEV_PREFIX-mig" 0 rate 0 || fail "rate 0 failed"
states="" start=$SECONDS
while :; do
	state=$(migrate_state mig)
	[ "$state" = "${states##* }" ] || states="$states $state"
	case $state in
	failed | switched | cancelled) kill -0 $flusher 2>/dev/null || break ;;
	esac
	[ $((SECONDS - start)) -lt 30 ] || fail "no end state: $(dmsetup status "$DEV_PREFIX-mig")"
	sleep 0.1
done
wait $flusher || fail "the flush failed: the guest must see the origin's status"
diag "states:$states; $(dmsetup status "$DEV_PREFIX-mig")"
# Whatever the target chose, the acknowledged write must read back.
dd if="$dev" of="$TEST_TMP/r" bs=4k count=1 iflag=direct status=none || fail "read failed"
cmp -s "$TEST_TMP/w" "$TEST_TMP/r" || fail "acknowledged write lost after '$state'"
case "$states " in
*" switched "*) fail "switched although a flush failed on the destination" ;;
esac
[ "$state" = failed ] || fail "ended '$state', not failed"
[ "$(migrate_field mig 8)" = destination_write_error ] ||
	fail "reason: $(dmsetup status "$DEV_PREFIX-mig")"
same_bytes "$odisk" "$TEST_TMP/w" 4096
pass
