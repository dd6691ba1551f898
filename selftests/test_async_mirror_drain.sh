#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# With `mirror async` (set by message) a guest write to a copied region completes while its copy is still on
# its way to a slow destination (dm-delay holds destination writes 1 s), a second write to the
# same sectors waits for the first copy to land before its own goes out, and a suspend returns
# only once every write behind is on the destination: read there directly right after the
# suspend, it holds the guest's last write, byte for byte.
. "$(dirname "$0")/lib.sh"
load_migrate
kmodprobe dm-delay || skip "dm-delay is not available"
make_loop origin 16
make_loop disk 16
len=$(sectors "$origin")
dm_create slow "0 $len delay $disk 0 0" || fail "cannot create the delay device"
dm_create mig "0 $len migrate $origin $(dm_path slow) 1 no_switch" || fail "create failed"
wait_state mig synced 120
sys=$(dm_sysfs mig)/migrate
# The mode of a running migration changes by message.
[ "$(cat "$sys/mirror")" = sync ] || fail "mirror: $(cat "$sys/mirror")"
dmsetup message "$DEV_PREFIX-mig" 0 mirror async || fail "the mirror message failed"
[ "$(cat "$sys/mirror")" = async ] || fail "mirror after the message: $(cat "$sys/mirror")"
# From now on every destination write takes 1 s (reads and flushes none).
dmsetup load "$DEV_PREFIX-slow" --table "0 $len delay $disk 0 0 $disk 0 1000 $disk 0 0" ||
	fail "cannot load the write delay"
dmsetup suspend "$DEV_PREFIX-slow" && dmsetup resume "$DEV_PREFIX-slow" || fail "cannot reload slow"

# write_block FILE: writes FILE (4 KiB) at 1 MiB + 4 KiB of the migrating device.
write_block() {
	dd if="$1" of="$(dm_path mig)" bs=4096 seek=257 count=1 oflag=direct conv=notrunc \
		status=none || fail "the guest's write failed"
}
head -c 4096 /dev/urandom >"$TEST_TMP/a"
head -c 4096 /dev/urandom >"$TEST_TMP/b"

write_block "$TEST_TMP/a"
behind=$(cat "$sys/behind_bytes")
[ "$behind" = 4096 ] ||
	fail "the write completed with $behind bytes behind, not 4096: it did not go behind"
# The same sectors again: this write must wait until a's copy has landed, so that the two
# copies cannot land in the other order; then only its own 4 KiB are behind.
write_block "$TEST_TMP/b"
behind=$(cat "$sys/behind_bytes")
[ "$behind" = 4096 ] ||
	fail "after the overlapping write $behind bytes were behind, not 4096: it did not wait for the first"
cmp -s <(dd if="$disk" bs=4096 skip=257 count=1 iflag=direct status=none) "$TEST_TMP/a" ||
	fail "the destination does not hold the first write while the second is behind"

dmsetup suspend "$DEV_PREFIX-mig" || fail "suspend failed"
# Read at once, below the delay device: the suspend must have waited for the write behind.
cmp -s <(dd if="$disk" bs=4096 skip=257 count=1 iflag=direct status=none) "$TEST_TMP/b" ||
	fail "right after the suspend the destination does not hold the guest's last write"
dmsetup resume "$DEV_PREFIX-mig" || fail "resume failed"
[ "$(cat "$sys/behind_bytes")" = 0 ] || fail "bytes still behind after the suspend"
[ "$(migrate_state mig)" = synced ] || fail "state: $(dmsetup status "$DEV_PREFIX-mig")"
dmsetup remove "$DEV_PREFIX-mig" || fail "remove failed"
dmsetup remove "$DEV_PREFIX-slow" || fail "remove slow failed"
same_bytes "$origin" "$disk"
pass
