#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Reloading the same table never rolls back: during the copy the new table continues where the
# old one was (copied regions are not copied again), and after the switch it stays switched, so
# the writes made since the switch, which only the destination has, survive the reload.
. "$(dirname "$0")/lib.sh"
command -v fio >/dev/null || skip "fio is not installed"
load_migrate
make_loop origin 32
make_loop dest 32
len=$(sectors "$origin")
name=$DEV_PREFIX-rl
# reload: loads the device's own table again.
reload() { dm_reload rl "$(dmsetup table "$name")"; }
# 1 KiB/s: each copier copies one round of 4 batches (2 MiB, 32 regions), then waits. The new
# table's copier copies the next round: 64 regions if it continued, 32 if it started over.
dm_create rl "0 $len migrate $origin $dest 2 rate 1" || fail "create failed"
wait_field rl 2 "32/512"
reload
sleep 1
[ "$(migrate_field rl 2)" = "64/512" ] ||
	fail "the reload did not continue: $(dmsetup status "$name")"
[ "$(migrate_state rl)" = copying ] || fail "state after reload: $(migrate_state rl)"
# A paused copy stays paused across a reload, and copies nothing.
dmsetup message "$name" 0 pause || fail "pause failed"
reload
sleep 1
[ "$(migrate_state rl)" = paused ] || fail "pause lost by the reload: $(migrate_state rl)"
[ "$(migrate_field rl 2)" = "64/512" ] || fail "copied while paused: $(dmsetup status "$name")"
# rate and copy_depth are the new table's (rate 1 again); the pause was the migration's.
dmsetup message "$name" 0 resume && dmsetup message "$name" 0 rate 0 || fail "resume failed"
wait_state rl switched
# Writes after the switch live on the destination alone.
fio_verify_write "$(dm_path rl)" 32 "$TEST_TMP/fio.log"
reload
[ "$(migrate_state rl)" = switched ] || fail "state after reload: $(dmsetup status "$name")"
# A reload with another region size, and one after a suspend with I/O queued, stay switched too.
dm_reload rl "0 $len migrate $origin $dest 2 region_size 1024"
[ "$(migrate_state rl)" = switched ] || fail "state after reload: $(dmsetup status "$name")"
sleep 1
fio_verify_only "$(dm_path rl)" 32 "$TEST_TMP/verify.log"
dmsetup remove "$name" || fail "remove failed"
fio_verify_only "$dest" 32 "$TEST_TMP/verify-dest.log"
pass
