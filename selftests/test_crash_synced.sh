#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# A host crash while in sync with no_switch, writes mirrored to both devices: the write-intent
# bits make every region a write was in flight to be copied again (see crash.sh).
. "$(dirname "$0")/lib.sh"
. "$SELFTEST_DIR/crash.sh" || fail "cannot read crash.sh"
command -v python3 >/dev/null || skip "python3 is not installed"
load_migrate
crash_setup
for i in 1 2 3 4 5 6 7 8 9 10; do
	crash_point synced
done
crash_summary
pass
