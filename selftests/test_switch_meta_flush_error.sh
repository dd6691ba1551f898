#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# A metadata commit whose destination flush fails while a switch waits for the phase lock ends
# the migration failed: the switch, next to take the lock, must not switch past that failure.
# The origin holds flushes 3 s (dm-delay), so a commit holds the lock that long; the switch
# flushes a healthy destination and waits; the destination (dm-flakey) then fails the commit's
# flush, and is healthy again before the end. (On this kernel, without preemption, the failing
# thread always took the lock back first even when it let go of it before failing; with that
# window widened by a 200 ms sleep, that code switched.)
. "$(dirname "$0")/lib.sh"
load_migrate
kmodprobe dm-delay || skip "dm-delay is not available"
kmodprobe dm-flakey || skip "dm-flakey is not available"
make_loop odisk 1
make_loop disk 1
make_metadata meta
len=$(sectors "$odisk")
dm_create origin "0 $len delay $odisk 0 0 $odisk 0 0 $odisk 0 3000" || fail "origin failed"
flakey_create dst "$disk" 3600 0
# 1 KiB/s: the copier copies its first batch (regions 0-7) and waits.
dm_create mig "0 $len migrate $(dm_path origin) $(dm_path dst) 8 metadata $meta commit_interval 100 copy_depth 1 rate 1" ||
	fail "create failed"
dev=$(dm_path mig)
wait_field mig 2 "8/16" 30
# The commit of the first batch flushes the origin: let it end.
sleep 4
# Region 0 is copied: this write waits for its intent bit, and the second commit after it clears
# the bit, flushing the origin (3 s) with the phase lock held.
head -c 4096 /dev/urandom >"$TEST_TMP/w"
dd if="$TEST_TMP/w" of="$dev" bs=4k oflag=direct status=none || fail "write failed"
# dm-delay's status counts the flushes it holds: the commit's is the only one yet.
held_flushes() { dmsetup status "$DEV_PREFIX-origin" | awk '{ print $6 }'; }
start=$SECONDS
until [ "$(held_flushes)" = 1 ]; do
	[ $((SECONDS - start)) -lt 2 ] || fail "no commit flushes the origin: $(dmsetup status "$DEV_PREFIX-origin")"
	sleep 0.05
done
# The last round copies to a healthy destination, and the switch flushes it and waits.
dmsetup message "$DEV_PREFIX-mig" 0 rate 0 || fail "rate 0 failed"
sleep 1
[ "$(migrate_state mig)" = synced ] || fail "not waiting to switch: $(dmsetup status "$DEV_PREFIX-mig")"
# The commit's destination flush comes next, and fails.
flakey_set dst "$disk" 0 1 error_writes
sleep 2.5
flakey_set dst "$disk" 3600 0
start=$SECONDS
until state=$(migrate_state mig); [ "$state" = switched ] || [ "$state" = failed ]; do
	[ $((SECONDS - start)) -lt 30 ] || fail "no end state: $(dmsetup status "$DEV_PREFIX-mig")"
	sleep 0.2
done
diag "state: $(dmsetup status "$DEV_PREFIX-mig")"
diag "$(log_since | grep -E 'Migration failed|Switched' | sed 's/^\[[^]]*\] //')"
dd if="$dev" of="$TEST_TMP/r" bs=4k count=1 iflag=direct status=none || fail "read failed"
cmp -s "$TEST_TMP/w" "$TEST_TMP/r" || fail "acknowledged write lost after '$state'"
[ "$state" = failed ] || fail "switched although a commit's destination flush failed"
[ "$(migrate_field mig 8)" = destination_flush_error ] ||
	fail "reason: $(dmsetup status "$DEV_PREFIX-mig")"
same_bytes "$odisk" "$TEST_TMP/w" 4096
pass
