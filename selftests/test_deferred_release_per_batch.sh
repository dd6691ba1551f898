#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# A write deferred behind a batch copy goes on when that batch lands, not when the whole round
# does. The first round copies regions 0 and 1 (copy_depth 2, 512 KiB regions); the destination
# takes 3 s to write region 0 and 12 s to write region 1 (dm-delay on writes only). A write to
# region 0 made while both are in flight must complete while region 1 is still being written (the
# slot region 0 freed goes on with the regions after it meanwhile).
. "$(dirname "$0")/lib.sh"
load_migrate
kmodprobe dm-delay || skip "dm-delay is not available"
make_loop origin 8
make_loop disk 8
len=$(sectors "$origin")
printf '%s\n' "0 1024 delay $disk 0 0 $disk 0 3000 $disk 0 0" \
	"1024 1024 delay $disk 1024 0 $disk 1024 12000 $disk 1024 0" \
	"2048 $((len - 2048)) linear $disk 2048" | dmsetup create "$DEV_PREFIX-dst" ||
	fail "dst failed"
dm_create mig "0 $len migrate $origin $(dm_path dst) 4 region_size 1024 copy_depth 2" ||
	fail "create failed"
created=$SECONDS
sleep 0.5
# status_field N: INFO field N (1 = state) of the status line last read.
status_field() { awk -v n="$1" '$3 == "migrate" { print $(n + 3) }' <<<"$status"; }
status=$(dmsetup status "$DEV_PREFIX-mig")
[ "$(status_field 2)" = 0/16 ] && [ "$(status_field 4)" = 2 ] ||
	fail "the first round is not in flight: $status"
head -c 4096 /dev/urandom >"$TEST_TMP/w"
dd if="$TEST_TMP/w" of="$(dm_path mig)" bs=4k count=1 oflag=direct conv=notrunc status=none ||
	fail "the write failed"
status=$(dmsetup status "$DEV_PREFIX-mig")
diag "when the write completed: $status"
copied=$(status_field 2)
copied=${copied%/*}
[ "$copied" -ge 1 ] && [ "$copied" -lt 16 ] && [ "$(status_field 4)" -ge 1 ] ||
	fail "the write waited for region 1's batch (or region 0 did not land first): $status"
[ $((SECONDS - created)) -lt 10 ] || fail "the write took until region 1 could have landed: $status"
wait_state mig switched 60
cmp -n 4096 "$TEST_TMP/w" "$disk" || fail "the write is not on the destination"
same_bytes "$origin" "$disk"
pass
