#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# A host crash during the copy, under writes, at random moments: early in the copy and in its
# middle. Loading the same table with the same metadata afterwards resumes the copy and ends with
# every acknowledged write on the destination (see crash.sh).
. "$(dirname "$0")/lib.sh"
. "$SELFTEST_DIR/crash.sh" || fail "cannot read crash.sh"
command -v python3 >/dev/null || skip "python3 is not installed"
load_migrate
crash_setup
for phase in early mid early mid early mid early mid early mid; do
	crash_point "$phase"
done
crash_summary
pass
