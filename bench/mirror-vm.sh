#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# What mirroring costs a guest's writes, sync against async (issue 24), run inside the VM by
# `make bench-mirror`. On each device kind, fio's 4 KiB random writes (iodepth 16) for FIO_S
# seconds on: dm-linear over the origin (the guest without a migration: the peer every ratio is
# against), and migrate with `mirror sync` and with `mirror async`, each in sync (no_switch,
# every region copied: every write is mirrored) and while copying (the copy held at a rate that
# makes it last about twice the run, so that more and more of the writes land on copied
# regions). Kinds: brd to brd; brd to dm-delay over brd with every destination I/O delayed
# 1 ms and 5 ms; and a destination on another box: an NBD export (qemu-nbd on a brd, in a
# second network namespace) reached over a veth pair whose packets netem delays 1 ms and 5 ms
# each round trip. One JSON object per run in
# $VM_RESULTS/mirror.jsonl; a Markdown table on stdout. A run whose fio completed no write, or
# whose migration did not end in the state it was measured in, fails the bench.
set -euo pipefail
shopt -s inherit_errexit
MIB=${BENCH_MIB:-256}
FIO_S=${BENCH_FIO_S:-8}
out=$VM_RESULTS
: >"$out/mirror.jsonl"
MODULE=${MODULE:-$REPO_ROOT/dm-migrate.ko}
DMMIG=${DMMIG:-$REPO_ROOT/target/debug/dmmig}
kmod() { modprobe -d "$KMOD_ROOT" "$@"; }
kmod brd rd_nr=3 rd_size=$((MIB * 1024))
kmod dm-delay
insmod "$MODULE"
sectors=$((MIB * 2048))
dd if=/dev/urandom of=/dev/ram0 bs=1M count="$MIB" oflag=direct status=none
dd if=/dev/zero of=/dev/ram1 bs=1M count="$MIB" oflag=direct status=none
dd if=/dev/zero of=/dev/ram2 bs=1M count="$MIB" oflag=direct status=none
cd "$TMPDIR"
die() {
	echo "bench: FAILED: $*" >&2
	exit 1
}
state() { dmsetup status bench | awk '$3 == "migrate" { print $4 }'; }

# fio_run NAME: FIO_S seconds of 4 KiB random writes on /dev/mapper/bench; prints
# "IOPS P99_US COMPLETED".
fio_run() {
	fio --name="$1" --filename=/dev/mapper/bench --ioengine=libaio --direct=1 --iodepth=16 \
		--rw=randwrite --bs=4k --time_based --runtime="$FIO_S" --randrepeat=0 \
		--output-format=json >"$TMPDIR/fio.json" || die "$1: fio failed"
	python3 - "$TMPDIR/fio.json" <<'PY'
import json, sys
w = json.load(open(sys.argv[1]))["jobs"][0]["write"]
print(round(w["iops"]), round(w["clat_ns"]["percentile"]["99.000000"] / 1000), w["total_ios"])
PY
}

# run KIND PEER WHEN TABLE: one run; WHEN is "synced" (wait for sync first) or "copying".
run() {
	local kind=$1 peer=$2 when=$3 table=$4 figures iops p99 ios st behind_max=null capped=null
	dmsetup create bench --table "$table" || die "$kind $peer $when: cannot create: $table"
	if [ "$peer" != linear ] && [ "$when" = synced ]; then
		local start=$SECONDS
		until [ "$(state)" = synced ]; do
			[ $((SECONDS - start)) -lt 300 ] || die "$kind $peer: not in sync after 300 s"
			sleep 0.2
		done
	fi
	figures=$(fio_run "$kind-$peer-$when")
	read -r iops p99 ios <<<"$figures"
	[ "$ios" -gt 0 ] || die "$kind $peer $when: fio completed no write"
	if [ "$peer" != linear ]; then
		st=$(state)
		[ "$st" = "$when" ] || die "$kind $peer $when: the migration was $st at the end of the run"
		local sys
		sys=/sys/block/$(dmsetup info -c --noheadings -o blkdevname bench)/migrate
		behind_max=$(cat "$sys/behind_max_bytes")
		capped=$(cat "$sys/capped_writes")
	fi
	dmsetup remove bench
	echo "{\"kind\":\"$kind\",\"peer\":\"$peer\",\"when\":\"$when\",\"iops\":$iops,\"p99_us\":$p99,\"ios\":$ios,\"behind_max_bytes\":$behind_max,\"capped_writes\":$capped}" >>"$out/mirror.jsonl"
	echo "# $kind $peer $when: $iops IOPS, p99 $p99 µs (behind at most $behind_max bytes, $capped capped)"
}

# The server's side of the NBD kinds: a network namespace with one end of a veth pair, and
# qemu-nbd serving /dev/ram2 there. The link's delay is set per kind (netem on the client's end).
ns=bench-nbd server_ip=10.198.0.2
nbd_setup() {
	ip netns add $ns
	ip link add veth-bench type veth peer name veth-bsrv netns $ns
	ip addr add 10.198.0.1/24 dev veth-bench
	ip link set veth-bench up
	ip -n $ns addr add $server_ip/24 dev veth-bsrv
	ip -n $ns link set veth-bsrv up
	ip -n $ns link set lo up
	ip netns exec $ns qemu-nbd -f raw -x bench -b $server_ip --persistent --shared=4 --cache=none \
		/dev/ram2 >"$TMPDIR/qemu-nbd.log" 2>&1 &
	local start=$SECONDS
	until ip netns exec $ns ss -ltn 2>/dev/null | grep -q "$server_ip:10809"; do
		[ $((SECONDS - start)) -lt 30 ] || die "qemu-nbd does not listen: $(cat "$TMPDIR/qemu-nbd.log")"
		sleep 0.2
	done
	nbd=$("$DMMIG" nbd connect "nbd://$server_ip/bench") || die "dmmig nbd connect failed"
}
command -v qemu-nbd >/dev/null || die "qemu-nbd is not installed (Debian: qemu-utils)"
[ -x "$DMMIG" ] || die "dmmig is not built ($DMMIG)"
nbd_setup

# The copy rate that makes a copy last about twice the run.
copy_rate=$((MIB * 1024 / (2 * FIO_S)))
for kind in brd delay1 delay5 nbd1 nbd5; do
	case $kind in
	brd) dst=/dev/ram1 ;;
	delay*)
		ms=${kind#delay}
		dmsetup create bench-delay --table "0 $sectors delay /dev/ram1 0 $ms"
		dst=/dev/mapper/bench-delay
		;;
	nbd*)
		ms=${kind#nbd}
		tc qdisc replace dev veth-bench root netem delay "${ms}ms"
		dst=$nbd
		;;
	esac
	for when in synced copying; do
		run "$kind" linear "$when" "0 $sectors linear /dev/ram0 0"
		for mode in sync async; do
			if [ "$when" = synced ]; then
				run "$kind" "$mode" synced "0 $sectors migrate /dev/ram0 $dst 3 no_switch mirror $mode"
			else
				run "$kind" "$mode" copying \
					"0 $sectors migrate /dev/ram0 $dst 7 no_switch mirror $mode max_rate $copy_rate min_rate 0"
			fi
		done
	done
	case $kind in delay*) dmsetup remove bench-delay ;; esac
done
"$DMMIG" nbd disconnect "$nbd" || true

python3 - "$out/mirror.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print("| kind | when | peer | IOPS | p99 µs | IOPS vs dm-linear | p99 vs dm-linear | most bytes behind | capped writes |")
print("|---|---|---|---:|---:|---:|---:|---:|---:|")
for r in rows:
    base = next(b for b in rows if b["kind"] == r["kind"] and b["when"] == r["when"] and b["peer"] == "linear")
    print(f"| {r['kind']} | {r['when']} | {r['peer']} | {r['iops']} | {r['p99_us']} | "
          f"{r['iops'] / base['iops']:.2f} | {r['p99_us'] / base['p99_us']:.2f} | "
          f"{r['behind_max_bytes'] if r['behind_max_bytes'] is not None else '—'} | "
          f"{r['capped_writes'] if r['capped_writes'] is not None else '—'} |")
PY
echo "# bench done"
