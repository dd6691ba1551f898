#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# min_rate holds under a saturating guest writer: with 4 KiB random writes 16 deep over the whole
# device for as long as the copy runs, the copy still ends within size / min_rate.
. "$(dirname "$0")/lib.sh"
command -v fio >/dev/null || skip "fio is not installed"
load_migrate
size=32
make_loop origin $size
make_loop dest $size
len=$(sectors "$origin")
floor=2048
bound=$(((size << 10) / floor))
# Held back (a fixed crawl) until the writer runs.
dm_create floor "0 $len migrate $origin $dest 4 min_rate $floor max_rate 1" || fail "create failed"
fio --name=writer --filename="$(dm_path floor)" --rw=randwrite --bs=4k --iodepth=16 \
	--ioengine=libaio --direct=1 --time_based --runtime=120 --output="$TEST_TMP/fio.log" &
writer=$!
sleep 1
start=$(date +%s.%N)
dmsetup message "$DEV_PREFIX-floor" 0 max_rate 0 || fail "max_rate message failed"
wait_state floor switched $((bound + 30))
took=$(echo "$(date +%s.%N) - $start" | bc -l)
kill -0 $writer 2>/dev/null || fail "the writer ended before the copy: $(cat "$TEST_TMP/fio.log")"
kill -TERM $writer
wait $writer
diag "switched in ${took}s under the writer (bound ${bound}s at $floor KiB/s)"
[ "$(echo "$took <= $bound" | bc -l)" = 1 ] || fail "took ${took}s, over ${bound}s"
[ "$(migrate_field floor 7)" = 0 ] || fail "errors: $(dmsetup status "$DEV_PREFIX-floor")"
pass
