#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Writes before a suspend, I/O queued while suspended and writes after resume all survive a
# suspend in the middle of a copy (limited to 512 KiB/s: 16 s for the 8 MiB), and the
# destination holds them after the switch.
. "$(dirname "$0")/lib.sh"
load_migrate
make_loop origin 8
make_loop dest 8
dm_create sr "0 $(sectors "$origin") migrate $origin $dest 2 rate 512" || fail "create failed"
dev=$(dm_path sr)
head -c $((8 << 20)) /dev/urandom >"$TEST_TMP/data"
dd if="$TEST_TMP/data" of="$dev" bs=1M count=4 oflag=direct status=none || fail "write failed"
dmsetup suspend "$DEV_PREFIX-sr" || fail "suspend failed"
dmsetup info "$DEV_PREFIX-sr" | grep -q '^State: *SUSPENDED' || fail "not suspended"
# A write issued while suspended waits for the resume.
dd if="$TEST_TMP/data" of="$dev" bs=1M skip=4 seek=4 count=4 oflag=direct status=none &
writer=$!
sleep 1
kill -0 $writer 2>/dev/null || fail "write completed while the device was suspended"
dmsetup resume "$DEV_PREFIX-sr" || fail "resume failed"
wait $writer || fail "write queued during suspend failed"
same_bytes "$origin" "$TEST_TMP/data"
[ "$(migrate_state sr)" = copying ] || fail "copy not in progress after resume: $(migrate_state sr)"
dmsetup message "$DEV_PREFIX-sr" 0 rate 0 || fail "rate failed"
wait_state sr switched
same_bytes "$dest" "$TEST_TMP/data"
pass
