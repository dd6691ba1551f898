#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# The adaptive copy rate: guest I/O brings the copy down toward min_rate at once, and when the
# guest stops the copy goes back up to max_rate; the copy still ends with every byte copied.
. "$(dirname "$0")/lib.sh"
command -v fio >/dev/null || skip "fio is not installed"
load_migrate
make_loop origin 384
make_loop dest 384
len=$(sectors "$origin")
max=65536
# A fixed crawl (a floor above the ceiling) until the guest's load runs.
dm_create ctl "0 $len migrate $origin $dest 4 min_rate 2048 max_rate 1" || fail "create failed"
dir=$(dm_sysfs ctl)/migrate
[ "$(cat "$dir/rate_limit_kibps")" = 1 ] || fail "rate_limit_kibps: $(cat "$dir/rate_limit_kibps"), not 1"
fio --name=guest --filename="$(dm_path ctl)" --rw=randread --bs=4k --iodepth=16 \
	--ioengine=libaio --direct=1 --time_based --runtime=6 --output="$TEST_TMP/fio.log" &
loader=$!
# stop_fail MESSAGE: fails once the guest's fio is gone (it holds the device open).
stop_fail() {
	kill -TERM $loader 2>/dev/null
	wait $loader
	fail "$@"
}
# fio takes a while to start in the VM: its I/O, not the clock, starts the loaded phase.
start=$SECONDS
until [ "$(awk '{ print $1 }' "$(dm_sysfs ctl)/stat")" -gt 1000 ]; do
	[ $((SECONDS - start)) -lt 20 ] || stop_fail "the guest's reads did not start"
	sleep 0.1
done
dmsetup message "$DEV_PREFIX-ctl" 0 max_rate $max || stop_fail "max_rate message failed"
# The floor comes at the first interval with guest I/O; from there the limit can only climb a
# step (1 MiB/s) per 100 ms, so within the next two seconds a full one-second window of the
# measured rate lies well under half the ceiling, whatever the guest's latency says.
sleep 2
loaded=$(cat "$dir/rate_kibps")
loaded_limit=$(cat "$dir/rate_limit_kibps")
diag "under load: rate_kibps $loaded, rate_limit_kibps $loaded_limit"
[ "$(migrate_state ctl)" = copying ] || stop_fail "the copy ended under load: $(dmsetup status "$DEV_PREFIX-ctl")"
[ "$loaded" -lt $((max / 2)) ] || stop_fail "the copy ran at $loaded KiB/s under guest load"
[ "$loaded" -gt 0 ] || stop_fail "the copy stopped under guest load"
[ "$loaded_limit" -ge 2048 ] && [ "$loaded_limit" -lt "$max" ] ||
	stop_fail "rate_limit_kibps under load: $loaded_limit"
wait $loader || { diag_file "$TEST_TMP/fio.log"; fail "fio failed"; }
# Idle: the ceiling after two quiet intervals; the measured rate follows within its window.
# A sample counts only if the copy was still going after it was read: rate_limit_kibps reads
# 0 once the copy has ended, while rate_kibps still shows the last full second.
best=0 limit=0 start=$SECONDS
while [ $((SECONDS - start)) -lt 10 ] && [ "$(migrate_state ctl)" = copying ]; do
	rate=$(cat "$dir/rate_kibps")
	rate_limit=$(cat "$dir/rate_limit_kibps")
	[ "$(migrate_state ctl)" = copying ] && [ "$rate" -gt "$best" ] && best=$rate limit=$rate_limit
	sleep 0.2
done
diag "idle: best rate_kibps $best (rate_limit_kibps $limit)"
[ "$limit" = "$max" ] || fail "rate_limit_kibps when idle: $limit, not $max"
[ "$best" -ge $((max * 6 / 10)) ] || fail "the idle copy reached only $best KiB/s"
[ "$best" -ge $((2 * loaded)) ] || fail "idle $best KiB/s is not above loaded $loaded KiB/s"
dmsetup message "$DEV_PREFIX-ctl" 0 max_rate 0 || fail "max_rate 0 failed"
wait_state ctl switched
dmsetup remove "$DEV_PREFIX-ctl" || fail "remove failed"
same_bytes "$origin" "$dest"
pass
