#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# Runs selftests and prints TAP, like the kselftest runner: "ok N name", "not ok N name", and
# "ok N name # SKIP" for exit code 4. Each test runs with the timeout from `settings`, and a test
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

echo "TAP version 13"
echo "1..$planned"
n=0 passed=0 failed=0 skipped=0
for t in "${tests[@]}"; do
	n=$((n + 1))
	name=${t%.sh}
	echo "# $name: $(sed -n '3s/^# //p' "$t")"
	dmesg -C 2>/dev/null
	started=$SECONDS
	timeout -k 5 "${timeout_s:-300}" bash "./$t" 2>&1 | sed -u 's/^\([^#]\)/# \1/'
	rc=${PIPESTATUS[0]}
	echo "# $name: $((SECONDS - started)) s"
	if dmesg 2>/dev/null | grep -qE 'BUG:|WARNING:|Oops|Call Trace:'; then
		dmesg | sed 's/^/# dmesg: /' | tail -40
		echo "# $name: the kernel logged a bug"
		rc=1
	fi
	case $rc in
	0) echo "ok $n $name"; passed=$((passed + 1)) ;;
	4) echo "ok $n $name # SKIP"; skipped=$((skipped + 1)) ;;
	124) echo "not ok $n $name # TIMEOUT ${timeout_s}s"; failed=$((failed + 1)) ;;
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
