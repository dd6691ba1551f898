#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Malformed messages, 23 of them, each fail with EINVAL and their documented reason in the
# kernel log, change nothing, and leave the target healthy: it then copies, switches, and the
# destination equals the origin. `cancel` after the switch is refused the same way.
. "$(dirname "$0")/lib.sh"
load_migrate
make_loop origin 8
make_loop dest 8
len=$(sectors "$origin")
name=$DEV_PREFIX-msg
dm_create msg "0 $len migrate $origin $dest 2 rate 1" || fail "create failed"
wait_field msg 2 "32/128"
dmsetup message "$name" 0 pause || fail "pause failed"
before=$(dmsetup status "$name")
unknown="Unsupported message"
count="Wrong number of message arguments"
rate="Invalid rate"
depth="Invalid depth (1 to 16)"
mirror="Invalid mirror mode (sync or async)"
lag="Invalid mirror_lag (1 to 1048576 KiB)"
cases=(
	"frobnicate|$unknown|frobnicate"
	"frobnicate now|$unknown|frobnicate"
	"switch|$unknown|switch"
	"pause now|$count|pause"
	"resume 1|$count|resume"
	"cancel now|$count|cancel"
	"rate|$count|rate"
	"rate 1 2|$count|rate"
	"rate x|$rate|rate"
	"rate +1|$rate|rate"
	"rate 0x10|$rate|rate"
	"rate 1.5|$rate|rate"
	"rate 18446744073709551616|$rate|rate"
	"depth|$count|depth"
	"depth 0|$depth|depth"
	"depth 17|$depth|depth"
	"depth x|$depth|depth"
	"depth 1 2|$count|depth"
	"mirror|$count|mirror"
	"mirror later|$mirror|mirror"
	"mirror_lag 0|$lag|mirror_lag"
	"mirror_lag 1048577|$lag|mirror_lag"
	"mirror_lag 8M|$lag|mirror_lag"
)
for c in "${cases[@]}"; do
	IFS='|' read -r words reason verb <<<"$c"
	log_mark
	# shellcheck disable=SC2086
	out=$(dmsetup message "$name" 0 $words 2>&1) && fail "message '$words' accepted"
	echo "$out" | grep -q 'Invalid argument' || fail "'$words': unexpected error: $out"
	log_since | grep -qF "$reason \"$verb\"" ||
		fail "'$words': no '$reason \"$verb\"' in the kernel log: $(log_since | tail -2)"
	[ "$(dmsetup status "$name")" = "$before" ] || fail "'$words' changed the status"
done
diag "${#cases[@]} malformed messages refused"
dmsetup message "$name" 0 rate 0 && dmsetup message "$name" 0 resume || fail "resume failed"
wait_state msg switched 60
log_mark
dmsetup message "$name" 0 cancel 2>/dev/null && fail "cancel accepted after the switch"
log_since | grep -qF 'Migration already switched "cancel"' || fail "no reason for the refused cancel"
dmsetup remove "$name" || fail "remove failed"
same_bytes "$origin" "$dest"
pass
