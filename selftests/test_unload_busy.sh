#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# The module cannot be unloaded while a migrate target exists, and can be once it is removed.
. "$(dirname "$0")/lib.sh"
load_migrate
make_loop origin 4
make_loop dest 4
dm_create busy "0 $(sectors "$origin") migrate $origin $dest" || fail "create failed"
rmmod dm_migrate 2>/dev/null && fail "module unloaded while a target exists"
grep -q '^dm_migrate ' /proc/modules || fail "module gone"
dd if=/dev/urandom of="$TEST_TMP/d" bs=4k count=16 status=none
dd if="$TEST_TMP/d" of="$(dm_path busy)" bs=4k oflag=direct status=none || fail "I/O after refused unload failed"
dmsetup remove "$DEV_PREFIX-busy" || fail "remove failed"
rmmod dm_migrate || fail "module not unloadable after the target was removed"
pass
