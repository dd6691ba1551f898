#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# A host crash around the switch, under writes: just before or just after it, and later while
# writes go to the destination alone. A crash after the switch must load switched (the origin is
# stale); every acknowledged write is on the destination afterwards (see crash.sh).
. "$(dirname "$0")/lib.sh"
. "$SELFTEST_DIR/crash.sh" || fail "cannot read crash.sh"
command -v python3 >/dev/null || skip "python3 is not installed"
load_migrate
crash_setup
for phase in switch after switch after switch after switch after switch after; do
	crash_point "$phase"
done
crash_summary
pass
