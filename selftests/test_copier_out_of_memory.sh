#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# A copier that cannot get the memory it copies through fails the migration as out_of_memory
# (not as an origin read error), with one `failed` event; the guest's writes still reach the
# origin. The copier thread's own allocations are made to fail (fault injection: failslab and
# fail_page_alloc filtered to that task, debug kernel only), marked before its first allocation.
. "$(dirname "$0")/lib.sh"
load_migrate
fault=/sys/kernel/debug
mountpoint -q $fault || mount -t debugfs none $fault 2>/dev/null
[ -d $fault/failslab ] && [ -d $fault/fail_page_alloc ] ||
	skip "no fault injection (CONFIG_FAILSLAB, CONFIG_FAIL_PAGE_ALLOC)"
make_loop origin 16
make_loop dest 16
len=$(sectors "$origin")
# inject ATTR VALUE: sets one attribute of both fault injectors.
inject() {
	echo "$2" >"$fault/failslab/$1" && echo "$2" >"$fault/fail_page_alloc/$1" ||
		fail "cannot set $1 of the fault injectors"
}
stop_injecting() {
	local pid
	inject probability 0
	for pid in $(copier_pids); do echo 0 >"/proc/$pid/make-it-fail" 2>/dev/null; done
}
inject task-filter Y
inject ignore-gfp-wait N
inject times -1
inject space 0
inject verbose 0
echo N >$fault/fail_page_alloc/ignore-gfp-highmem
echo 0 >$fault/fail_page_alloc/min-order

[ -z "$(copier_pids)" ] || fail "a copier thread of another device is still running"
dmsetup create "$DEV_PREFIX-oom" --notable || fail "create failed"
dmsetup load "$DEV_PREFIX-oom" --table "0 $len migrate $origin $dest" || fail "load failed"
event=$(dm_events oom)
trap 'stop_injecting; cleanup' EXIT
# mark_copiers: makes the copier threads' allocations fail from now on.
mark_copiers() {
	local pid
	for pid in $(copier_pids); do echo 1 >"/proc/$pid/make-it-fail" || fail "cannot mark $pid"; done
}
# The copier thread exists from the constructor on, parked until the resume. (A target that
# created it only at resume, as before the hardening, has it marked in a window in which it
# cannot run yet.)
mark_copiers
inject probability 100
if [ -z "$(copier_pids)" ]; then
	hold_cpus 15
	trap 'stop_injecting; release_cpus; cleanup' EXIT
fi
dmsetup resume "$DEV_PREFIX-oom" || fail "resume failed"
mark_copiers
[ -n "$(copier_pids)" ] || fail "no copier thread after the resume"
[ "$(migrate_field oom 2)" = "0/$((len / 128))" ] || fail "the copier ran before it was marked"
release_cpus
wait_state oom failed 60
stop_injecting
[ "$(migrate_field oom 8)" = out_of_memory ] || fail "reason: $(dmsetup status "$DEV_PREFIX-oom")"
[ "$(dm_events oom)" = $((event + 1)) ] ||
	fail "expected exactly one event for the failure"
head -c $((1 << 20)) /dev/urandom >"$TEST_TMP/d"
dd if="$TEST_TMP/d" of="$(dm_path oom)" bs=64k oflag=direct status=none || fail "write failed"
same_bytes "$origin" "$TEST_TMP/d" $((1 << 20))
pass
