#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# A suspend that fails after the target's presuspend (interrupted while a write is held 10 s by
# dm-delay on the origin) restarts the copier: the copy finishes and switches, and the
# destination holds every write.
. "$(dirname "$0")/lib.sh"
load_migrate
kmodprobe dm-delay || skip "dm-delay is not available"
make_loop disk 8
make_loop dest 8
len=$(sectors "$disk")
dmsetup create "$DEV_PREFIX-slow" --table "0 $len delay $disk 0 0 $disk 0 10000" ||
	fail "delay failed"
dm_create mig "0 $len migrate $(dm_path slow) $dest 2 rate 1024" || fail "create failed"
# The copier pauses first: a round would wait for the held write too (its epoch drain), and
# presuspend waits for the round uninterruptibly. Then only the core's wait for the write, which
# a signal interrupts, stands between the suspend and its end.
dmsetup message "$DEV_PREFIX-mig" 0 pause || fail "pause failed"
sleep 0.5
head -c 4096 /dev/urandom >"$TEST_TMP/w"
dd if="$TEST_TMP/w" of="$(dm_path mig)" bs=4k seek=1000 oflag=direct status=none &
writer=$!
sleep 1
kill -0 $writer 2>/dev/null || fail "the write is not held: the test is void"
# The suspend waits for the held write (10 s): it is surely waiting when it is killed.
dmsetup suspend "$DEV_PREFIX-mig" &
suspender=$!
sleep 2
kill -KILL $suspender
wait $suspender 2>/dev/null && fail "the suspend was not interrupted: the test is void"
dmsetup info "$DEV_PREFIX-mig" | grep -q '^State: *ACTIVE' || fail "device left suspended"
wait $writer || fail "write failed"
dmsetup message "$DEV_PREFIX-mig" 0 rate 0 && dmsetup message "$DEV_PREFIX-mig" 0 resume ||
	fail "rate/resume failed"
wait_state mig switched 60
dd if="$(dm_path mig)" of="$TEST_TMP/r" bs=4k skip=1000 count=1 iflag=direct status=none
cmp -s "$TEST_TMP/w" "$TEST_TMP/r" || fail "the write is lost"
dmsetup remove "$DEV_PREFIX-mig" || fail "remove failed"
dmsetup remove "$DEV_PREFIX-slow"
same_bytes "$disk" "$dest"
pass
