#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# A mirrored write whose destination half fails while the target switches is never acknowledged
# and lost: the switch waits for mirrored writes in flight, sees the failure and stays on the
# origin. The copy's last round is slow (the origin's last region reads in 6 s, dm-delay); during
# it a write goes to the first region, whose destination sits behind dm-delay (6 s on writes)
# over a dm-flakey that fails writes for that moment only, healthy again for the switch's flush.
. "$(dirname "$0")/lib.sh"
load_migrate
kmodprobe dm-delay || skip "dm-delay is not available"
kmodprobe dm-flakey || skip "dm-flakey is not available"
make_loop odisk 1
make_loop disk 1
len=$(sectors "$odisk")
last=$((len - 128))
printf '0 %d linear %s 0\n%d 128 delay %s %d 6000 %s %d 0\n' \
	"$last" "$odisk" "$last" "$odisk" "$last" "$odisk" "$last" |
	dmsetup create "$DEV_PREFIX-origin" || fail "origin failed"
origin=$(dm_path origin)
dmsetup create "$DEV_PREFIX-dst0" --table "0 128 flakey $disk 0 3600 0" || fail "flakey failed"
printf '0 128 delay %s 0 0 %s 0 6000\n128 %d linear %s 128\n' \
	"$(dm_path dst0)" "$(dm_path dst0)" $((len - 128)) "$disk" |
	dmsetup create "$DEV_PREFIX-dst" || fail "dst failed"
# 1 KiB/s: the copier copies its first batch (regions 0-7) and waits.
dm_create mig "0 $len migrate $origin $(dm_path dst) 4 copy_depth 1 rate 1" || fail "create failed"
wait_field mig 2 "8/16" 30
flakey() { dm_reload dst0 "0 128 flakey $disk 0 $1"; }
# The last round (regions 8-15) starts now and takes 6 s.
dmsetup message "$DEV_PREFIX-mig" 0 rate 0 || fail "rate 0 failed"
sleep 0.5
[ "$(migrate_field mig 4)" = 8 ] || fail "the last round is not in flight: $(dmsetup status "$DEV_PREFIX-mig")"
head -c 4096 /dev/urandom >"$TEST_TMP/w"
dd if="$TEST_TMP/w" of="$(dm_path mig)" bs=4k oflag=direct status=none &
writer=$!
# The write's destination half waits 6 s in dm-delay, then meets a device that fails writes for
# a moment: healthy again before the switch's flush, which waits 6 s in dm-delay too.
sleep 0.5
flakey "0 3600 1 error_writes"
wait $writer || fail "the write failed: the guest must see the origin's status"
flakey "3600 0"
start=$SECONDS
until state=$(migrate_state mig); [ "$state" = switched ] || [ "$state" = failed ]; do
	[ $((SECONDS - start)) -lt 30 ] || fail "no end state: $(dmsetup status "$DEV_PREFIX-mig")"
	sleep 0.2
done
diag "state: $(dmsetup status "$DEV_PREFIX-mig")"
# Whatever the target chose, the acknowledged write must read back.
dd if="$(dm_path mig)" of="$TEST_TMP/r" bs=4k count=1 iflag=direct status=none || fail "read failed"
cmp -s "$TEST_TMP/w" "$TEST_TMP/r" || fail "acknowledged write lost after '$state'"
[ "$state" = failed ] || fail "switched although the destination missed a write"
[ "$(migrate_field mig 8)" = destination_write_error ] ||
	fail "reason: $(dmsetup status "$DEV_PREFIX-mig")"
same_bytes "$odisk" "$TEST_TMP/w" 4096
dmsetup remove "$DEV_PREFIX-mig" || fail "remove failed"
dmsetup remove "$DEV_PREFIX-dst" || fail "remove dst failed"

# With no_switch the synced state must not be reported once the destination missed a write,
# not even for a moment.
dm_create sync "0 128 migrate $odisk $(dm_path dst0) 1 no_switch" || fail "create failed"
wait_state sync synced 30
flakey "0 3600 1 error_writes"
dd if="$TEST_TMP/w" of="$(dm_path sync)" bs=4k oflag=direct status=none || fail "write failed"
state=$(migrate_state sync)
[ "$state" != synced ] || fail "synced reported right after a lost destination write"
pass
