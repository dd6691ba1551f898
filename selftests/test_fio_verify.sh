#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Concurrent random writes of mixed sizes through the target, verified with crc32c by fio; the
# origin alone then verifies too, and the destination is untouched.
. "$(dirname "$0")/lib.sh"
command -v fio >/dev/null || skip "fio is not installed"
load_migrate
make_loop origin 64
make_loop dest 64
snapshot "$dest" "$TEST_TMP/dest.before"
dm_create fio "0 $(sectors "$origin") migrate $origin $dest" || fail "create failed"
job=(--ioengine=libaio --direct=1 --iodepth=8 --numjobs=4 --size=16M --offset_increment=16M
	--bsrange=4k-256k --verify=crc32c --verify_fatal=1 --randrepeat=0 --group_reporting)
fio --name=write --rw=randwrite "${job[@]}" --filename="$(dm_path fio)" \
	--output="$TEST_TMP/fio.log" || { sed 's/^/# /' "$TEST_TMP/fio.log"; fail "fio write+verify through the target failed"; }
grep -q 'err= 0' "$TEST_TMP/fio.log" || fail "fio reported errors"
dmsetup remove "$DEV_PREFIX-fio" || fail "remove failed"
fio --name=write --rw=randwrite "${job[@]}" --filename="$origin" --verify_only \
	--output="$TEST_TMP/verify.log" || { sed 's/^/# /' "$TEST_TMP/verify.log"; fail "origin does not verify"; }
same_bytes "$dest" "$TEST_TMP/dest.before"
pass
