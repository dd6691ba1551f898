#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# The copier and the metadata thread allocate while guest writes wait for them (bitmap pages,
# batch buffers, metadata blocks): reclaim that wrote back through the migrating device could
# wait on them in turn. Like kcopyd (GFP_NOIO), both run their whole life in a no-I/O allocation
# scope: the task flag PF_MEMALLOC_NOIO (0x00080000, field 9 of /proc/PID/stat) is set while
# they copy, while they wait, and after a suspend and resume.
. "$(dirname "$0")/lib.sh"
load_migrate
make_loop a 8
make_loop b 8
make_metadata meta
len=$(sectors "$a")
PF_MEMALLOC_NOIO=$((0x00080000))
# check_noio COMM...: every thread of the migrate target with one of these names has the flag.
check_noio() {
	local file pid comm flags seen=0
	for file in /proc/[0-9]*/comm; do
		pid=${file#/proc/} pid=${pid%/comm}
		comm=$(cat "$file" 2>/dev/null) || continue
		case $comm in dm-migrate/copier | dm-migrate/metadata) ;; *) continue ;; esac
		flags=$(awk '{ print $9 }' "/proc/$pid/stat" 2>/dev/null) || continue
		seen=$((seen + 1))
		((flags & PF_MEMALLOC_NOIO)) || fail "$comm ($pid) allocates with I/O: flags $flags ($1)"
	done
	[ "$seen" -ge 2 ] || fail "found $seen of the target's threads ($1)"
	diag "$seen threads in a no-I/O scope ($1)"
}
dm_create mig "0 $len migrate $a $b 6 metadata $meta copy_depth 1 rate 256" || fail "create failed"
sleep 0.5
check_noio copying
dmsetup suspend "$DEV_PREFIX-mig" && dmsetup resume "$DEV_PREFIX-mig" || fail "suspend/resume failed"
sleep 0.5
check_noio "after a resume"
dmsetup message "$DEV_PREFIX-mig" 0 rate 0 || fail "rate 0 failed"
wait_state mig switched 60
check_noio switched
pass
