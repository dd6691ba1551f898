#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# With `mirror async` and a destination slower than the guest's writes (dm-delay, 20 ms per
# write), the bytes behind never pass the cap (mirror_lag 256 KiB): past it writes are mirrored
# synchronously. The copy still finishes under verified random writes (held at 4 MiB/s while
# they run, so that they meet copied regions), and the destination verifies alone.
. "$(dirname "$0")/lib.sh"
command -v fio >/dev/null || skip "fio is not installed"
load_migrate
kmodprobe dm-delay || skip "dm-delay is not available"
make_loop origin 64
make_loop disk 64
len=$(sectors "$origin")
dm_create slow "0 $len delay $disk 0 0 $disk 0 20" || fail "cannot create the delay device"
# The copy is held at 4 MiB/s while fio writes, so that its writes meet copied regions: at its
# defaults the copy is done before fio has started.
dm_create mig "0 $len migrate $origin $(dm_path slow) 8 mirror async mirror_lag 256 max_rate 4096 \
min_rate 0" || fail "create failed"
sys=$(dm_sysfs mig)/migrate
fio_verify_write "$(dm_path mig)" 64 "$TEST_TMP/fio.log"
dmsetup message "$DEV_PREFIX-mig" 0 max_rate 0 || fail "max_rate 0 failed"
wait_state mig switched 300
max=$(cat "$sys/behind_max_bytes") behind=$(cat "$sys/behind_writes")
capped=$(cat "$sys/capped_writes")
diag "writes behind $behind, mirrored at the cap $capped, most bytes behind $max"
[ "$behind" -gt 0 ] || fail "no write went behind"
[ "$capped" -gt 0 ] || fail "no write reached the cap (writes of up to 1 MiB, a cap of 256 KiB)"
[ "$max" -le 262144 ] || fail "$max bytes were behind at once, above the cap of 262144"
dmsetup remove "$DEV_PREFIX-mig" || fail "remove failed"
dmsetup remove "$DEV_PREFIX-slow" || fail "remove slow failed"
fio_verify_only "$disk" 64 "$TEST_TMP/verify-dest.log"
pass
