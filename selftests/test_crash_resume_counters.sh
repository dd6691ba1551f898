#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Resume really resumes: after a crash at 70% of the copy, the recovery starts with what was
# committed and copies at most the regions that were not, as the counters show (no writes, so no
# region is dirty). With the default commit interval (1 s) and a copy of 2 MiB a second, at most
# one commit interval plus one round (32 regions of 64 KiB) of copying is lost.
. "$(dirname "$0")/lib.sh"
. "$SELFTEST_DIR/crash.sh" || fail "cannot read crash.sh"
command -v python3 >/dev/null || skip "python3 is not installed"
load_migrate
CRASH_MIB=32 crash_setup
crash_begin
# The rate is in the table, not a message after it: a copy that ran flat out until the message
# came could pass 70% before the first commit (1 s), and then nothing was committed to resume.
dm_create mg "${crash_table/ 2 metadata / 4 metadata }"" rate 2048" || fail "create failed"
total=$(migrate_field mg 2 | cut -d/ -f2)
until copied=$(migrate_field mg 2 | cut -d/ -f1) && [ "$copied" -ge $((total * 7 / 10)) ]; do
	sleep 0.1
done
crash_status=$(dmsetup status "$DEV_PREFIX-mg")
copied=$(migrate_field mg 2 | cut -d/ -f1)
crash_now
diag "crashed at [${crash_status#*migrate }]"
crash_recover any
resumed=$recovered_copied
[ -n "$resumed" ] || fail "no metadata line in the kernel log"
log_since | grep -q "Metadata: resuming the copy" || fail "the recovery did not resume the copy"
# Bytes the recovery copied, from the status once it had switched.
bytes=$(awk '{ print $8 }' <<<"$finished_status")
diag "resumed at $resumed of $total regions ($copied copied at the crash), copied $bytes bytes"
# 2 MiB/s for 1 s is 32 regions; a round is 32 more.
[ "$resumed" -ge $((copied - 64)) ] || fail "resumed at $resumed, crashed at $copied"
[ "$bytes" -le $(((total - copied + 64) * 65536)) ] ||
	fail "the recovery copied $bytes bytes; at most $((total - copied + 64)) regions were due"
[ "$bytes" -eq $(((total - resumed) * 65536)) ] ||
	fail "the recovery copied $bytes bytes, not the $((total - resumed)) regions left"
pass
