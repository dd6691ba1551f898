#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# pause stops the copy and resume restarts it; rate limits it; depth and copy_depth set how much
# one round copies; cancel keeps all I/O on the origin; bad messages fail with EINVAL.
. "$(dirname "$0")/lib.sh"
load_migrate
make_loop origin 32
make_loop dest 32
len=$(sectors "$origin")
# With a 1 KiB/s limit the copier stops after its first round: copy_depth batches of 512 KiB.
dm_create depth "0 $len migrate $origin $dest 4 copy_depth 3 rate 1" || fail "create failed"
wait_field depth 2 "24/512"
sleep 1
[ "$(migrate_field depth 2)" = "24/512" ] || fail "copy_depth 3: $(dmsetup status "$DEV_PREFIX-depth")"
dmsetup remove "$DEV_PREFIX-depth"

dm_create msg "0 $len migrate $origin $dest 2 rate 1" || fail "create failed"
m() { dmsetup message "$DEV_PREFIX-msg" 0 "$@"; }
wait_field msg 2 "32/512"
# pause holds the copy even without a rate limit.
m pause && m rate 0 || fail "pause/rate failed"
sleep 1
[ "$(migrate_state msg)" = paused ] || fail "not paused: $(migrate_state msg)"
[ "$(migrate_field msg 2)" = "32/512" ] || fail "copied while paused"
[ "$(migrate_field msg 6)" = 0 ] || fail "a paused copy reports a rate"
# A rate limit of 2 MiB/s: in 2 s about 4 MiB (64 regions), far from the 512.
m depth 1 && m rate 2048 && m resume || fail "depth/rate/resume failed"
sleep 2
copied=$(migrate_field msg 2); copied=${copied%/*}
[ "$copied" -gt 32 ] && [ "$copied" -lt 256 ] || fail "rate 2048 copied $copied regions in 2 s"
# Bad arguments.
for bad in "rate fast" "rate" "depth 0" "depth 17" "pause now" "frobnicate"; do
	# shellcheck disable=SC2086
	m $bad 2>/dev/null && fail "message '$bad' accepted"
done
# cancel: the copy stops for good and everything stays on the origin.
m cancel || fail "cancel failed"
[ "$(migrate_state msg)" = cancelled ] || fail "not cancelled: $(migrate_state msg)"
snapshot "$dest" "$TEST_TMP/dest"
dd if=/dev/urandom of="$TEST_TMP/d" bs=1M count=32 status=none
dd if="$TEST_TMP/d" of="$(dm_path msg)" bs=1M oflag=direct status=none || fail "write after cancel failed"
same_bytes "$origin" "$TEST_TMP/d"
same_bytes "$dest" "$TEST_TMP/dest"
m resume && sleep 1
[ "$(migrate_state msg)" = cancelled ] || fail "resume undid cancel"
# After a switch there is nothing to cancel.
dm_create done "0 $len migrate $origin $dest" || fail "create failed"
wait_state done switched
dmsetup message "$DEV_PREFIX-done" 0 cancel 2>/dev/null && fail "cancel accepted after the switch"
pass
