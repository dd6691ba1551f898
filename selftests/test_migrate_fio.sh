#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# A 256 MiB disk migrates while fio runs 4 jobs of random writes (4 KiB to 1 MiB) verified with
# crc32c: no verify error during the copy, after the switch, and on the destination alone.
. "$(dirname "$0")/lib.sh"
command -v fio >/dev/null || skip "fio is not installed"
region=${REGION_SECTORS:-128}
load_migrate
make_loop origin 256
make_loop dest 256
# A 2 MiB/s limit keeps the copy going while fio writes (two minutes for 256 MiB); it is
# lifted once fio is done.
dm_create fio "0 $(sectors "$origin") migrate $origin $dest 4 region_size $region rate 2048" ||
	fail "create failed"
dev=$(dm_path fio)
fio_verify_write "$dev" 256 "$TEST_TMP/fio.log"
diag "after the writes: $(dmsetup status "$DEV_PREFIX-fio")"
# Every write overlapped the copy: it was still going when fio ended, and had copied regions, to
# which writes were mirrored.
[ "$(migrate_state fio)" = copying ] || fail "the copy was not running when the writes ended"
[ "$(migrate_field fio 2 | cut -d/ -f1)" -gt 0 ] || fail "nothing was copied during the writes"
dmsetup message "$DEV_PREFIX-fio" 0 rate 0 || fail "rate 0 failed"
wait_state fio switched 300
fio_verify_only "$dev" 256 "$TEST_TMP/verify.log"
dmsetup remove "$DEV_PREFIX-fio" || fail "remove failed"
fio_verify_only "$dest" 256 "$TEST_TMP/verify-dest.log"
pass
