#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# A copier thread stopped before it first ran leaks nothing: the target's devices are put and its
# memory freed (on the debug kernel, kmemleak checks the latter after the suite).
#
# The window is made wide on purpose (hold_cpus): while no new kernel thread can run, this
# script creates, suspends, resumes, reloads and removes migrate devices, so that anything the
# target starts in one callback and stops in the next is stopped before it ever ran.
. "$(dirname "$0")/lib.sh"
load_migrate
make_loop origin 16
make_loop dest 16
make_loop origin2 16
len=$(sectors "$origin")
hog_seconds=10

log_mark
hold_cpus $hog_seconds
start=$SECONDS
# Create (construct + resume) and suspend at once; then resume, suspend and remove again.
dm_create early "0 $len migrate $origin $dest 2 rate 1024" || fail "create failed"
suspended_at=$((SECONDS - start))
dmsetup suspend "$DEV_PREFIX-early" || fail "suspend failed"
diag "suspend issued ${suspended_at} s into the window; copied by then: $(migrate_field early 2)"
dmsetup resume "$DEV_PREFIX-early" || fail "resume failed"
dmsetup remove "$DEV_PREFIX-early" || fail "remove failed"
# An inactive table is constructed and destroyed without ever being resumed.
dmsetup create "$DEV_PREFIX-idle" --notable || fail "create --notable failed"
dmsetup load "$DEV_PREFIX-idle" --table "0 $len migrate $origin2 $dest 2 rate 1024" || fail "load failed"
dmsetup clear "$DEV_PREFIX-idle" || fail "clear failed"
dmsetup remove "$DEV_PREFIX-idle" || fail "remove of the idle device failed"
diag "the control steps took $((SECONDS - start)) s of the ${hog_seconds} s window"
release_cpus

if log_since | grep -q "dm_put_device call missing"; then
	log_since | grep "dm_put_device call missing" | diag_lines
	fail "a target was destroyed without putting its devices: its state leaked"
fi
# The devices are free: nothing holds the loop devices open.
for dev in "$origin" "$origin2" "$dest"; do
	[ -z "$(ls "/sys/block/${dev#/dev/}/holders")" ] || fail "$dev still has holders"
done
# A target on the same devices works as before.
dm_create after "0 $len migrate $origin $dest" || fail "create after the window failed"
wait_state after switched 60
same_bytes "$origin" "$dest"
pass
