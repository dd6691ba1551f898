#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# Prints the idle copy throughput of a migrate target next to a dd O_DIRECT copy between the same
# two devices (brd ram disks), in the same VM run. A figure, not a test: `make copy-throughput`.
set -eu
MODULE=${MODULE:-$REPO_ROOT/dm-migrate.ko}
MIB=${COPY_MIB:-256}
modprobe -d "$KMOD_ROOT" brd rd_nr=2 rd_size=$((MIB * 1024))
insmod "$MODULE"
src=/dev/ram0 dst=/dev/ram1
dd if=/dev/urandom of=$src bs=1M count="$MIB" oflag=direct status=none
sectors=$(blockdev --getsz $src)
now() { date +%s.%N; }
rate() { echo "scale=1; $MIB / ($2 - $1)" | bc; }

t0=$(now)
dd if=$src of=$dst bs=4M iflag=direct oflag=direct status=none
t1=$(now)
dd_rate=$(rate "$t0" "$t1")

run_migrate() {
	local opts=$1 t0 t1
	blkdiscard $dst 2>/dev/null || true
	t0=$(now)
	dmsetup create tp --table "0 $sectors migrate $src $dst $opts"
	dmsetup wait tp 0 >/dev/null
	t1=$(now)
	[ "$(dmsetup status tp | awk '{ print $4 }')" = switched ]
	cmp $src $dst
	dmsetup remove tp
	rate "$t0" "$t1"
}
printf '%-40s %10s %8s\n' "copy of $MIB MiB, brd to brd" "MiB/s" "vs dd"
printf '%-40s %10s %8s\n' "dd bs=4M O_DIRECT" "$dd_rate" "1.00"
for opts in "" "2 copy_depth 1" "2 copy_depth 8" "2 copy_depth 16" "4 region_size 1024 copy_depth 8"; do
	r=$(run_migrate "$opts")
	printf '%-40s %10s %8s\n' "migrate ${opts:-(defaults)}" "$r" "$(echo "scale=2; $r / $dd_rate" | bc)"
done
