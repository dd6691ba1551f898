#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# A destination larger than the origin receives the whole origin at its start; its tail is not
# written.
. "$(dirname "$0")/lib.sh"
load_migrate
make_loop origin 16
make_loop dest 32
snapshot "$dest" "$TEST_TMP/expect"
snapshot "$origin" "$TEST_TMP/origin"
dd if="$TEST_TMP/origin" of="$TEST_TMP/expect" conv=notrunc status=none
dm_create big "0 $(sectors "$origin") migrate $origin $dest" || fail "create failed"
wait_state big switched
same_bytes "$dest" "$TEST_TMP/expect"
pass
