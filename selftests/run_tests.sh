#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# Runs selftests and prints TAP, like the kselftest runner: "ok N name", "not ok N name", and
# "ok N name # SKIP" for exit code 4. Each test runs with the timeout from `settings` (or its own
# "# ksft-timeout=N" line), and a test
# that leaves a kernel warning in the log fails. Ends with "# N passed, N failed, N skipped" and
# exits non-zero when any test failed.
#
#   ./run_tests.sh [test_*.sh ...]     (all tests by default)

cd "$(dirname "$0")" || exit 1
tests=("$@")
[ ${#tests[@]} -gt 0 ] || mapfile -t tests < <(ls test_*.sh)
timeout_s=$(sed -n 's/^timeout=//p' settings)
# On a kernel with kmemleak (the debug kernel), a scan after the last test is one more test.
mountpoint -q /sys/kernel/debug 2>/dev/null || mount -t debugfs none /sys/kernel/debug 2>/dev/null
kmemleak=/sys/kernel/debug/kmemleak
planned=${#tests[@]}
if [ -w "$kmemleak" ]; then planned=$((planned + 1)); else kmemleak=""; fi
# The debug kernel (KASAN, lockdep: the one with kmemleak) runs everything about 4 times slower.
[ -n "$kmemleak" ] && timeout_s=$((${timeout_s:-300} * 4))

out=$(mktemp) klog=$(mktemp)
trap 'rm -f "$out" "$klog"' EXIT

echo "TAP version 13"
echo "1..$planned"
n=0 passed=0 failed=0 skipped=0
for t in "${tests[@]}"; do
	n=$((n + 1))
	name=${t%.sh}
	echo "# $name: $(sed -n '3s/^# //p' "$t")"
	# The kernel log is marked, never cleared: what the test's kernel logged is everything after
	# the mark, and the test's own helpers (log_since in lib.sh) read from it too.
	mark="ksft-migrate: mark $n $name $$.$RANDOM"
	echo "<6>$mark" >/dev/kmsg
	started=$SECONDS
	# A test may need longer than `settings` gives: a line "# ksft-timeout=N" (seconds on this
	# kernel's scale: multiplied like the default on the debug kernel) says how long.
	test_timeout=$(sed -n 's/^# ksft-timeout=//p' "$t" | head -1)
	test_timeout=${test_timeout:-${timeout_s:-300}}
	[ -n "$kmemleak" ] && [ "$test_timeout" != "${timeout_s:-300}" ] && test_timeout=$((test_timeout * 4))
	KSFT_LOG_MARK=$mark timeout -k 5 "$test_timeout" bash "./$t" 2>&1 |
		sed -u 's/^\([^#]\)/# \1/' | tee "$out"
	rc=${PIPESTATUS[0]}
	echo "# $name: $((SECONDS - started)) s"
	dmesg | awk -v mark="$mark" 'seen { print } index($0, mark) { seen = 1 }' >"$klog"
	if ! dmesg | grep -qF "$mark"; then
		echo "# $name: the kernel log's mark is gone (the log was cleared or overflowed): its warnings cannot be checked"
		rc=1
	elif grep -qE 'BUG:|WARNING:|Oops|Call Trace:|possible recursive locking|circular locking' "$klog"; then
		sed 's/^/# dmesg: /' "$klog" | tail -40
		echo "# $name: the kernel logged a bug"
		rc=1
	fi
	case $rc in
	0) echo "ok $n $name"; passed=$((passed + 1)) ;;
	# The reason goes on the TAP line: scripts/vm-test.sh fails a skip it does not allow.
	4) echo "ok $n $name # SKIP $(sed -n 's/^# SKIP: //p' "$out" | tail -1)"; skipped=$((skipped + 1)) ;;
	124) echo "not ok $n $name # TIMEOUT ${test_timeout}s"; failed=$((failed + 1)) ;;
	*) echo "not ok $n $name # exit=$rc"; failed=$((failed + 1)) ;;
	esac
done
if [ -n "$kmemleak" ]; then
	n=$((n + 1))
	echo "# kmemleak: no object allocated by dm-migrate is unreferenced after the suite"
	# Objects are reported only once seen unreferenced by two scans, a while apart.
	echo scan >"$kmemleak"
	sleep 6
	echo scan >"$kmemleak"
	if grep -qE 'dm_migrate|migrate_|\[dm_migrate\]' "$kmemleak"; then
		sed 's/^/# /' "$kmemleak" | head -60
		echo "not ok $n kmemleak"
		failed=$((failed + 1))
	else
		echo "ok $n kmemleak"
		passed=$((passed + 1))
	fi
fi
echo "# $passed passed, $failed failed, $skipped skipped"
[ $failed -eq 0 ]
