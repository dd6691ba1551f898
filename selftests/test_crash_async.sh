#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Host crashes with `mirror async`: guest writes acknowledged once the origin has them while
# their copies are still on the way to the slow destination (see crash.sh). The intent bit of
# a region is durable before either half of a write goes out and stays set until its copy has
# landed, so every region with a write behind in flight is copied again after the crash.
. "$(dirname "$0")/lib.sh"
. "$SELFTEST_DIR/crash.sh" || fail "cannot read crash.sh"
command -v python3 >/dev/null || skip "python3 is not installed"
load_migrate
CRASH_MIRROR=async
crash_setup
for phase in synced synced mid switch; do
	crash_point "$phase"
done
crash_summary
pass
