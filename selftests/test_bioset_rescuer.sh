#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# The target's bio set has a rescuer (BIOSET_NEED_RESCUER), as bio_alloc_bioset() asks of a set
# that is allocated from in submit_bio context while the submitter's current->bio_list may hold
# bios from it: when the mempool runs dry, the rescuer sends those on instead of the allocation
# waiting for them forever (defect 9). A deadlock that needs the pool exhausted by one task's own
# unsent bios cannot be forced here; the rescuer that prevents it can be seen: each bio set with
# one has its own rescuer thread ("kworker/R-bioset"; "bioset" before 6.9), which comes with the
# target and goes with it.
. "$(dirname "$0")/lib.sh"
load_migrate
make_loop origin 4
make_loop dest 4
len=$(sectors "$origin")
rescuers() { grep -lxE 'bioset|kworker/R-bioset' /proc/[0-9]*/comm 2>/dev/null | wc -l; }
before=$(rescuers)
dm_create res "0 $len migrate $origin $dest 1 no_switch" || fail "create failed"
with=$(rescuers)
[ "$with" -eq $((before + 1)) ] ||
	fail "$((with - before)) new bioset rescuer threads with the target, expected 1"
wait_state res synced 60
dmsetup remove "$DEV_PREFIX-res" || fail "remove failed"
after=$(rescuers)
[ "$after" -eq "$before" ] || fail "$((after - before)) bioset rescuer threads left after remove"
pass
