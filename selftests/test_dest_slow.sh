#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# With the destination behind dm-delay (20 ms per I/O) the migration still converges under
# verified random writes, and the destination verifies alone.
. "$(dirname "$0")/lib.sh"
command -v fio >/dev/null || skip "fio is not installed"
load_migrate
kmodprobe dm-delay || skip "dm-delay is not available"
make_loop origin 64
make_loop disk 64
len=$(sectors "$origin")
dmsetup create "$DEV_PREFIX-slow" --table "0 $len delay $disk 0 20" || fail "delay failed"
dm_create mig "0 $len migrate $origin $(dm_path slow)" || fail "create failed"
fio_verify_write "$(dm_path mig)" 64 "$TEST_TMP/fio.log"
wait_state mig switched 300
dmsetup remove "$DEV_PREFIX-mig" || fail "remove failed"
dmsetup remove "$DEV_PREFIX-slow" || fail "remove delay failed"
fio_verify_only "$disk" 64 "$TEST_TMP/verify-dest.log"
pass
