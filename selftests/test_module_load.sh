#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# The module loads, registers the "migrate" target with its version, and unloads cleanly.
. "$(dirname "$0")/lib.sh"

grep -q '^dm_migrate ' /proc/modules && { rmmod dm_migrate || fail "cannot unload a stale module"; }
insmod "$MODULE" || fail "insmod $MODULE failed"
dmsetup targets | grep -qE "^migrate +v0\.3\.0$" || fail "migrate v0.3.0 not in: $(dmsetup targets | tr '\n' ' ')"
rmmod dm_migrate || fail "rmmod failed"
dmsetup targets | grep -q '^migrate' && fail "migrate still registered after rmmod"
grep -q '^dm_migrate ' /proc/modules && fail "module still listed after rmmod"
# Loading again after an unload works, and the device-mapper core can autoload the module.
insmod "$MODULE" || fail "second insmod failed"
rmmod dm_migrate || fail "second rmmod failed"
make_loop origin 4
make_loop dest 4
dm_create autoload "0 $(sectors "$origin") migrate $origin $dest" || fail "autoload by table load failed"
grep -q '^dm_migrate ' /proc/modules || fail "module not autoloaded"
pass
