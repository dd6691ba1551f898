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

echo "TAP version 13"
echo "1..${#tests[@]}"
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
echo "# $passed passed, $failed failed, $skipped skipped"
[ $failed -eq 0 ]
