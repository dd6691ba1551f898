#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# dmsetup creates a migrate device over two loop devices, reports it active with the right size,
# and removes it; the loop devices are free again afterwards.
. "$(dirname "$0")/lib.sh"
load_migrate
make_loop origin 16
make_loop dest 16
len=$(sectors "$origin")
dm_create basic "0 $len migrate $origin $dest" || fail "dmsetup create failed"
dmsetup info "$DEV_PREFIX-basic" | grep -q '^State: *ACTIVE' || fail "device not active"
[ "$(sectors "$(dm_path basic)")" = "$len" ] || fail "device size is not $len sectors"
ls /sys/block/"$(basename "$origin")"/holders | grep -q dm- || fail "origin not held by the dm device"
ls /sys/block/"$(basename "$dest")"/holders | grep -q dm- || fail "destination not held by the dm device"
dmsetup remove "$DEV_PREFIX-basic" || fail "dmsetup remove failed"
[ -z "$(ls /sys/block/"$(basename "$origin")"/holders)" ] || fail "origin still held after remove"
[ -z "$(ls /sys/block/"$(basename "$dest")"/holders)" ] || fail "destination still held after remove"
pass
