#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# /sys/block/dm-N/migrate/ has one read-only value per file that follows the copy, and goes away
# with the target.
. "$(dirname "$0")/lib.sh"
load_migrate
make_loop origin 32
make_loop dest 32
len=$(sectors "$origin")
dm_create sys "0 $len migrate $origin $dest 2 rate 1" || fail "create failed"
dir=$(dm_sysfs sys)/migrate
wait_field sys 2 "32/$((len / 128))"
[ -d "$dir" ] || fail "no $dir"
for f in state total_bytes copied_bytes pending_regions inflight rate_kibps errors mirror behind_bytes \
	behind_max_bytes behind_writes capped_writes intent_chunks intent_plane_waits; do
	[ -f "$dir/$f" ] || fail "no $dir/$f"
	[ "$(stat -c %a "$dir/$f")" = 444 ] || fail "$f is not read-only"
	echo x >"$dir/$f" 2>/dev/null && fail "$f accepted a write"
	diag "$f: $(cat "$dir/$f")"
done
[ "$(cat "$dir/state")" = copying ] || fail "state: $(cat "$dir/state")"
[ "$(cat "$dir/total_bytes")" = $((len * 512)) ] || fail "total_bytes"
# The first round of 4 batches of 512 KiB is copied; the rest waits for the rate limit.
[ "$(cat "$dir/copied_bytes")" = $((2 << 20)) ] || fail "copied_bytes: $(cat "$dir/copied_bytes")"
[ "$(cat "$dir/pending_regions")" = $(((len - 4096) / 128)) ] || fail "pending_regions"
[ "$(cat "$dir/errors")" = 0 ] || fail "errors"
[ "$(cat "$dir/mirror")" = sync ] || fail "mirror: $(cat "$dir/mirror")"
# Without a metadata device there is no write-intent state.
[ "$(cat "$dir/intent_chunks")" = 0 ] || fail "intent_chunks: $(cat "$dir/intent_chunks")"
dmsetup message "$DEV_PREFIX-sys" 0 rate 0 || fail "rate 0 failed"
wait_state sys switched
[ "$(cat "$dir/state")" = switched ] || fail "state after switch: $(cat "$dir/state")"
[ "$(cat "$dir/copied_bytes")" = $((len * 512)) ] || fail "copied_bytes after switch"
[ "$(cat "$dir/pending_regions")" = 0 ] || fail "pending_regions after switch"
# A table reload keeps the folder (the new target creates it), and removal deletes it.
dm_reload sys "0 $len migrate $origin $dest"
[ -f "$dir/state" ] || fail "folder gone after reload"
sysdir=$(dm_sysfs sys)
dmsetup remove "$DEV_PREFIX-sys" || fail "remove failed"
[ -e "$sysdir/migrate" ] && fail "$sysdir/migrate still exists"
pass
