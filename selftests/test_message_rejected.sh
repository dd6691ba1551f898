#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Messages the target does not know fail with EINVAL and a kernel log line, and change nothing.
. "$(dirname "$0")/lib.sh"
load_migrate
make_loop origin 4
make_loop dest 4
dm_create msg "0 $(sectors "$origin") migrate $origin $dest" || fail "create failed"
before=$(dmsetup status "$DEV_PREFIX-msg")
log_mark
out=$(dmsetup message "$DEV_PREFIX-msg" 0 frobnicate now 2>&1) && fail "unknown message accepted"
echo "$out" | grep -q 'Invalid argument' || fail "unexpected error: $out"
log_since | grep -q 'Unsupported message "frobnicate"' || fail "no kernel log line for the bad message"
[ "$(dmsetup status "$DEV_PREFIX-msg")" = "$before" ] || fail "status changed"
pass
