#!/usr/bin/env bash
# Runs the kselftest suite inside the QEMU VM on the test kernel, prints its TAP output and ends
# with the line "N passed, N failed, N skipped". Fails when a test fails, and also when the VM crashes,
# hangs or reports nothing.
#
#   scripts/vm-test.sh KDIR [test_*.sh ...]
set -uo pipefail
. "$(dirname "$0")/common.sh"

kdir=${1:?usage: scripts/vm-test.sh KDIR [test ...]}
shift
results=$REPO_ROOT/results/selftests
rm -rf "$results"
mkdir -p "$results"

VM_KEEP_RESULTS=$results VM_TIMEOUT=${VM_TIMEOUT:-2400} \
	"$REPO_ROOT/scripts/vm.sh" "$kdir" bash -c \
	'"$REPO_ROOT"/selftests/run_tests.sh "$@" 2>&1 | tee "$VM_RESULTS/tap.log"; exit ${PIPESTATUS[0]}' \
	run "$@"
vm_status=$?

tap=$results/tap.log
passed=$(grep -E '^ok [0-9]+ ' "$tap" 2>/dev/null | grep -cv '# SKIP')
skipped=$(grep -cE '^ok [0-9]+ .*# SKIP' "$tap" 2>/dev/null)
failed=$(grep -cE '^not ok [0-9]+ ' "$tap" 2>/dev/null)
planned=$(sed -n 's/^1\.\.//p' "$tap" 2>/dev/null | head -1)
passed=${passed:-0} failed=${failed:-0} skipped=${skipped:-0} planned=${planned:-0}

# A skip is a failure unless selftests/skips-allowed allows that test to skip for that reason:
# a tool or a module gone missing must not turn a run green.
while read -r name reason; do
	allowed=""
	while IFS=$'\t' read -r test pattern; do
		case $test in "" | "#"*) continue ;; esac
		[ "$test" = "$name" ] && [[ $reason == *"$pattern"* ]] && allowed=1
	done <"$REPO_ROOT/selftests/skips-allowed"
	if [ -z "$allowed" ]; then
		echo "vm-test: $name skipped, which is not allowed: ${reason:-no reason given}" >&2
		failed=$((failed + 1))
	fi
done < <(sed -n 's/^ok [0-9]* \(test_[^ ]*\) # SKIP *\(.*\)$/\1 \2/p' "$tap" 2>/dev/null)

problem=""
if [ "$vm_status" -eq 125 ]; then
	problem="the VM crashed, hung or logged a kernel bug"
elif [ ! -s "$tap" ]; then
	problem="the VM reported nothing"
elif [ $((passed + failed + skipped)) -ne "$planned" ] || [ "$planned" -eq 0 ]; then
	problem="planned $planned tests but $((passed + failed + skipped)) reported"
fi
if [ -n "$problem" ]; then
	echo "vm-test: $problem" >&2
	failed=$((failed + 1))
fi
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ] && [ "$vm_status" -eq 0 ]
