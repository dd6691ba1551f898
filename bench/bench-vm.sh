#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# The benchmark's measurements, run inside the VM by `make bench` (BENCH_MIB=512) and
# `make bench-smoke` (BENCH_MIB=32). Every peer copies the same pair of brd ram disks in this one
# VM run, so ratios between them mean something even under TCG. Writes one JSON object per figure
# to $VM_RESULTS/bench.jsonl and copy progress samples to $VM_RESULTS/progress-<peer>.csv.
set -euo pipefail
MIB=${BENCH_MIB:-512}
FIO_S=${BENCH_FIO_S:-3}
out=$VM_RESULTS
: >"$out/bench.jsonl"
MODULE=${MODULE:-$REPO_ROOT/dm-migrate.ko}
kmod() { modprobe -d "$KMOD_ROOT" "$@"; }
kmod brd rd_nr=2 rd_size=$((MIB * 1024))
kmod dm-clone
kmod dm-mirror
insmod "$MODULE"
src=/dev/ram0 dst=/dev/ram1
sectors=$(blockdev --getsz $src)
dd if=/dev/urandom of=$src bs=1M count="$MIB" oflag=direct status=none
now() { date +%s.%N; }
elapsed() { printf '%.3f' "$(echo "$(now) - $1" | bc)"; }
emit() { echo "$1" >>"$out/bench.jsonl"; echo "# $1"; }

# Progress of each peer's copy, as a fraction, from its status line.
progress() { # progress PEER NAME
	local s
	s=$(dmsetup status "$2")
	case $1 in
	migrate*) awk '{ split($5, a, "/"); print a[1] / a[2] }' <<<"$s" ;;
	clone*) awk '{ split($7, a, "/"); print a[1] / a[2] }' <<<"$s" ;;
	mirror*) awk '{ split($7, a, "/"); print a[1] / a[2] }' <<<"$s" ;;
	esac
}

meta=$TMPDIR/clone-meta.img
table_for() { # table_for PEER
	case $1 in
	migrate) echo "0 $sectors migrate $src $dst" ;;
	migrate-tuned) echo "0 $sectors migrate $src $dst 4 copy_depth 8 region_size 1024" ;;
	clone) echo "0 $sectors clone $(losetup -j "$meta" | cut -d: -f1) $dst $src 128" ;;
	clone-tuned) echo "0 $sectors clone $(losetup -j "$meta" | cut -d: -f1) $dst $src 128 0 4 hydration_threshold 256 hydration_batch_size 32" ;;
	mirror) echo "0 $sectors mirror core 1 1024 2 $src 0 $dst 0" ;;
	esac
}

# start_copy PEER: creates the peer's device "bench"; the copy starts at once.
start_copy() {
	blkdiscard $dst 2>/dev/null || true
	if [[ $1 == clone* ]]; then
		losetup -D 2>/dev/null || true
		rm -f "$meta"
		truncate -s 16M "$meta"
		losetup -f "$meta"
	fi
	dmsetup create bench --table "$(table_for "$1")"
}

# wait_copy PEER CSV: samples progress until the copy is done; prints the seconds it took.
wait_copy() {
	local start=$1 peer=$2 csv=$3 p
	while :; do
		p=$(progress "$peer" bench)
		[ -n "$csv" ] && echo "$(elapsed "$start"),$p" >>"$csv"
		[ "$p" = 1 ] && break
		if [ "$(echo "$(elapsed "$start") > 900" | bc)" = 1 ]; then
			echo "bench: $peer did not finish its copy in 900 s: $(dmsetup status bench)" >&2
			exit 1
		fi
		sleep 0.05
	done
	elapsed "$start"
}

stop_copy() {
	dmsetup remove bench
	losetup -D 2>/dev/null || true
}

# 1. Idle copy throughput.
t0=$(now)
dd if=$src of=$dst bs=4M iflag=direct oflag=direct status=none
raw_s=$(elapsed "$t0")
emit "{\"figure\":\"copy\",\"peer\":\"raw dd 4M O_DIRECT\",\"seconds\":$raw_s,\"mib\":$MIB}"
for peer in migrate migrate-tuned clone clone-tuned mirror; do
	csv=$out/progress-$peer.csv
	echo "seconds,fraction" >"$csv"
	t0=$(now)
	start_copy "$peer"
	s=$(wait_copy "$t0" "$peer" "$csv")
	stop_copy
	emit "{\"figure\":\"copy\",\"peer\":\"$peer\",\"seconds\":$s,\"mib\":$MIB}"
done

# 2. Guest 4 KiB random I/O while each peer copies, and on dm-linear with no copy.
fio_iops() { # fio_iops DEV RW: prints "iops p99_us"
	fio --name=g --filename="$1" --rw="$2" --bs=4k --ioengine=libaio --direct=1 --iodepth=16 \
		--runtime="$FIO_S" --time_based --output-format=json --randrepeat=0 --eta=never 2>/dev/null |
		python3 -c '
import json, sys
j = json.load(sys.stdin)["jobs"][0]
d = j["read"] if j["read"]["io_bytes"] else j["write"]
print(round(d["iops"]), round(d["clat_ns"]["percentile"]["99.000000"] / 1000))'
}
for rw in randread randwrite; do
	dmsetup create bench --table "0 $sectors linear $src 0"
	read -r iops p99 < <(fio_iops /dev/mapper/bench $rw)
	dmsetup remove bench
	emit "{\"figure\":\"guest_io\",\"peer\":\"linear\",\"rw\":\"$rw\",\"iops\":$iops,\"p99_us\":$p99}"
	for peer in migrate clone mirror; do
		start_copy "$peer"
		read -r iops p99 < <(fio_iops /dev/mapper/bench $rw)
		stop_copy
		emit "{\"figure\":\"guest_io\",\"peer\":\"$peer\",\"rw\":\"$rw\",\"iops\":$iops,\"p99_us\":$p99}"
	done
done

# 3. Overhead when not copying: migrate after the switch, and paused, against dm-linear.
for rw in randread randwrite; do
	dmsetup create bench --table "0 $sectors linear $dst 0"
	read -r iops p99 < <(fio_iops /dev/mapper/bench $rw)
	dmsetup remove bench
	emit "{\"figure\":\"idle_overhead\",\"peer\":\"linear\",\"rw\":\"$rw\",\"iops\":$iops,\"p99_us\":$p99}"
	start_copy migrate
	wait_copy "$(now)" migrate "" >/dev/null
	read -r iops p99 < <(fio_iops /dev/mapper/bench $rw)
	stop_copy
	emit "{\"figure\":\"idle_overhead\",\"peer\":\"migrate switched\",\"rw\":\"$rw\",\"iops\":$iops,\"p99_us\":$p99}"
	dmsetup create bench --table "0 $sectors migrate $src $dst 2 rate 1"
	dmsetup message bench 0 pause
	read -r iops p99 < <(fio_iops /dev/mapper/bench $rw)
	stop_copy
	emit "{\"figure\":\"idle_overhead\",\"peer\":\"migrate paused\",\"rw\":\"$rw\",\"iops\":$iops,\"p99_us\":$p99}"
done

# 4. Convergence under load: time to be in sync while 4 KiB random writes run flat out.
for peer in migrate clone mirror; do
	t0=$(now)
	start_copy "$peer"
	fio --name=load --filename=/dev/mapper/bench --rw=randwrite --bs=4k --ioengine=libaio \
		--direct=1 --iodepth=16 --runtime=600 --time_based --output=/dev/null --randrepeat=0 --eta=never &
	loader=$!
	s=$(wait_copy "$t0" "$peer" "")
	kill $loader; wait $loader 2>/dev/null || true
	stop_copy
	emit "{\"figure\":\"converge_under_load\",\"peer\":\"$peer\",\"seconds\":$s,\"mib\":$MIB}"
done

# 5. Switch pause: completion latencies of a running fio job within half a second of our switch,
# against a dmsetup suspend/load/resume swap to a linear on the destination.
uptime_s() { cut -d' ' -f1 /proc/uptime; }
window_latency() { # window_latency LOG FIO_START EVENT: prints "max_us p999_us" of I/O completing near EVENT
	python3 - "$@" <<'PY'
import sys
log, start, event = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
lat = []
for line in open(log):
    f = [x.strip() for x in line.split(",")]
    t = start + int(f[0]) / 1000.0
    if abs(t - event) <= 0.5:
        lat.append(int(f[1]) / 1000.0)
lat.sort()
if not lat:
    print(0, 0)
else:
    print(round(lat[-1]), round(lat[min(len(lat) - 1, int(len(lat) * 0.999))]))
PY
}
for how in migrate swap; do
	rm -f "$TMPDIR"/lat_*.log
	if [ $how = migrate ]; then
		dmsetup create bench --table "0 $sectors migrate $src $dst 2 rate 1"
	else
		dmsetup create bench --table "0 $sectors linear $src 0"
	fi
	fio_start=$(uptime_s)
	fio --name=pause --filename=/dev/mapper/bench --rw=randwrite --bs=4k --ioengine=libaio \
		--direct=1 --iodepth=16 --runtime=$((FIO_S + 3)) --time_based --randrepeat=0 \
		--write_lat_log="$TMPDIR/lat" --log_avg_msec=0 --output=/dev/null --eta=never &
	loader=$!
	sleep 1
	if [ $how = migrate ]; then
		dmsetup message bench 0 rate 0
		while [ "$(dmsetup status bench | awk '{ print $4 }')" != switched ]; do sleep 0.01; done
		event=$(dmesg | sed -n 's/^\[ *\([0-9.]*\)\].*Switched to the destination.*/\1/p' | tail -1)
	else
		event=$(uptime_s)
		dmsetup load bench --table "0 $sectors linear $dst 0"
		dmsetup suspend bench
		dmsetup resume bench
	fi
	wait $loader
	dmsetup remove bench
	read -r max p999 < <(window_latency "$TMPDIR"/lat_clat.1.log "$fio_start" "$event")
	emit "{\"figure\":\"switch_pause\",\"peer\":\"$how\",\"max_us\":$max,\"p999_us\":$p999}"
done

# 6. Tracking memory per TiB: free memory before and after loading (not resuming, so no copier
# and no copy buffers) a migrate table over two 1 TiB null_blk devices (no backing memory), at
# each region size. What the constructor allocates is the bitmap (kvmalloc, one bit per region),
# a bio_set and a few small objects.
kmod null_blk nr_devices=2 gb=1024
memfree_kb() { awk '/^MemFree/ { print $2 }' /proc/meminfo; }
tib=$(blockdev --getsz /dev/nullb0)
for region in 8 128 2048; do
	dmsetup create bench --notable
	sync
	before=$(memfree_kb)
	dmsetup load bench --table "0 $tib migrate /dev/nullb0 /dev/nullb1 2 region_size $region"
	after=$(memfree_kb)
	dmsetup remove bench
	emit "{\"figure\":\"memory\",\"region_kib\":$((region / 2)),\"measured_kib_per_tib\":$((before - after)),\"bitmap_kib_per_tib\":$(((tib / region + 7) / 8 / 1024))}"
done
echo "# bench done"
