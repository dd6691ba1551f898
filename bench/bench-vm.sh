#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# The benchmark's measurements, run inside the VM by `make bench` (BENCH_MIB=1024) and
# `make bench-smoke` (BENCH_MIB=32). In sections 1 to 8 every peer copies the same pair of brd ram
# disks, and in section 11 the same pair of each device kind, in this one VM run, so ratios
# between them mean something even under TCG. Writes one JSON object per figure
# to $VM_RESULTS/bench.jsonl, and the series the plots are drawn from: copy progress
# (progress-*.csv: unix seconds, fraction, state), guest IOPS (iops-*.csv: seconds, IOPS) and the
# copy rate under the adaptive controller (controller-*.csv, see ratesample.py). Sections 9 to 12
# (issue 11) add the controller, the time to sync under a flat-out writer, the same copy and guest
# I/O on device kinds with real completion paths (null_blk with timer completions, a destination
# behind dm-delay, loop devices over tmpfs files) and a sparse origin.
set -euo pipefail
# A command substitution fails the way the command in it does: a figure computed by a command
# that failed ends the bench, instead of being emitted from its empty output.
shopt -s inherit_errexit
MIB=${BENCH_MIB:-512}
FIO_S=${BENCH_FIO_S:-3}
# The rate limit of migrate's throttled runs: the whole device in this many seconds.
RATE_S=${BENCH_RATE_S:-8}
# Rounds of the overhead runs (3.), whose median is reported.
ROUNDS=${BENCH_ROUNDS:-3}
here=$(dirname "$(readlink -f "$0")")
out=$VM_RESULTS
: >"$out/bench.jsonl"
MODULE=${MODULE:-$REPO_ROOT/dm-migrate.ko}
kmod() { modprobe -d "$KMOD_ROOT" "$@"; }
# ram2 holds metadata (migrate's, dm-raid1's disk log): brd allocates only what is written.
kmod brd rd_nr=3 rd_size=$((MIB * 1024))
kmod dm-clone
kmod dm-mirror
insmod "$MODULE"
src=/dev/ram0 dst=/dev/ram1
sectors=$(blockdev --getsz $src)
dd if=/dev/urandom of=$src bs=1M count="$MIB" oflag=direct status=none
# The destination is written once, here, and never discarded: brd allocates a page on the first
# write to it, and on a discarded brd that allocation, not the copy, takes most of the time (every
# copy ran at about a quarter of its speed); a real disk has no such cost.
dd if=/dev/zero of=$dst bs=1M count="$MIB" oflag=direct status=none
# fio writes the output of --exec_prerun into the current directory.
cd "$TMPDIR"
now() { date +%s.%N; }
# diff_s A B: A - B in seconds, as JSON takes a number (bc alone prints ".5").
diff_s() { printf '%.3f' "$(echo "$1 - $2" | bc -l)"; }
elapsed() { diff_s "$(now)" "$1"; }
emit() { echo "$1" >>"$out/bench.jsonl"; echo "# $1"; }
# die MESSAGE: ends the bench run, exit status 1; MESSAGE names the figure that failed. Called in
# a subshell (a command substitution), it ends the subshell, and set -e the script with it.
die() {
	echo "bench: FAILED: $*" >&2
	exit 1
}
# Failures found after their figure was emitted (a copy that did not end in its time, which is
# what its figure reports): the run goes on, and ends with exit status 1 naming each.
late_failures=()

# sample NAME PEER CSV [INTERVAL]: samples a copy's progress until it ends (see sample.py), or
# for at most SAMPLE_TIMEOUT seconds (a copy that may never end sets it lower).
sample() { timeout "${SAMPLE_TIMEOUT:-900}" python3 "$here/sample.py" "$@"; }
# sample_bg NAME PEER CSV [INTERVAL]: the same in the background, returning once it is ready
# for the device to appear; its pid is in $sampler.
sample_bg() {
	rm -f "$3.ready"
	# exec: $sampler is timeout itself, which passes a kill on to the sampler. Killing a subshell
	# that runs the function instead left the sampler running, polling every 2 ms for the rest
	# of its 900 s, on the CPUs every later figure was measured with.
	(exec timeout "${SAMPLE_TIMEOUT:-900}" python3 "$here/sample.py" "$@") &
	sampler=$!
	while [ ! -e "$3.ready" ]; do sleep 0.01; done
	rm -f "$3.ready"
}
# progress_start CSV T0: (re)starts a progress file with the copy's start as its first row; the
# sampler, started before, appends its rows after it.
progress_start() { printf 'unix_seconds,fraction,state\n%s,0,start\n' "$2" >"$1"; }
# The unix time of the last sample: when the copy was seen to end.
last_sample() { tail -1 "$1" | cut -d, -f1; }
# The state of the last sample: how the copy ended (switched, synced; failed, cancelled), or
# copying or paused if it did not (the sampler was stopped, or timed out).
last_state() { tail -1 "$1" | cut -d, -f3; }
# copy_ended FIGURE STATE: "true" for a copy that ended well (switched, or synced for a peer that
# ends mirrored: dm-clone and dm-raid1 once every region is in sync, migrate with no_switch),
# "false" for one still copying or paused; a failed or cancelled copy ends the bench.
copy_ended() {
	case $2 in
	switched | synced) echo true ;;
	copying | paused) echo false ;;
	*) die "$1: the copy ended ${2:-unsampled (no progress row)}" ;;
	esac
}
# dm_state: the migrate state of device bench (the status line's fourth field).
dm_state() { dmsetup status bench | awk '{ print $4 }'; }
# expect_state FIGURE STATE...: ends the bench, naming FIGURE, unless device bench is in one of
# the STATEs.
expect_state() {
	local what=$1 state s
	shift
	state=$(dm_state)
	for s in "$@"; do
		[ "$state" = "$s" ] && return 0
	done
	die "$what: the copy is $state, not ${*// / or }: $(dmsetup status bench)"
}
# await_switch FIGURE: waits for device bench to switch. A migration without no_switch passes
# through synced (all copied) on its way to switched, and a sampler can stop there; one that is
# not switched 60 s later, or fails, ends the bench.
await_switch() {
	local state deadline=$((SECONDS + 60))
	while :; do
		state=$(dm_state)
		case $state in
		switched) return 0 ;;
		synced | copying) ;;
		*) die "$1: the copy is $state, not switched: $(dmsetup status bench)" ;;
		esac
		[ $SECONDS -lt $deadline ] || die "$1: not switched 60 s after its copy: $(dmsetup status bench)"
		sleep 0.05
	done
}
# json_merge A B: the two JSON objects as one.
json_merge() { python3 -c 'import json, sys; a = json.loads(sys.argv[1]); a.update(json.loads(sys.argv[2])); print(json.dumps(a))' "$1" "$2"; }
# fio_log DEV RW SECONDS LOG [fio options]: 4 KiB random I/O with a per-I/O completion log in
# LOG_clat.1.log, for SECONDS or until `stop_fio` creates its trigger file LOG.stop. Run in the
# background, it must not remove LOG.stop itself: a stop_fio quicker than its start would be
# undone, and fio would run its whole time (stop_fio removes the file once fio has ended).
fio_log() {
	local dev=$1 rw=$2 secs=$3 log=$4
	shift 4
	rm -f "$log"_clat.1.log
	fio --name=g --filename="$dev" --rw="$rw" --bs=4k --ioengine=libaio --direct=1 --iodepth=16 \
		--runtime="$secs" --time_based --randrepeat=0 --eta=never --output=/dev/null \
		--disable_lat=1 --disable_slat=1 --write_lat_log="$log" --log_avg_msec=0 \
		--log_unix_epoch=1 --trigger-file="$log.stop" "$@"
}
fiolog() { python3 "$here/fiolog.py" "$@"; }
# io_summary FIGURE LOG [FROM TO]: the figures of LOG's I/O alive in [FROM, TO] (see fiolog.py);
# a log without I/O there, or a window fio did not cover, ends the bench naming FIGURE. Call it
# as var=$(io_summary ...), so that its failure ends the script.
io_summary() {
	local what=$1 json
	shift
	json=$(fiolog summary "$@") || die "$what: no I/O figures for it (fiolog.py said why, above)"
	echo "$json"
}
# emit_io JSON LOG [FROM TO]: emits JSON with the figures of LOG's I/O in [FROM, TO].
emit_io() {
	local base=$1 io
	shift
	io=$(io_summary "$base" "$@")
	emit "$(json_merge "$base" "$io")"
}
# io_bins FIGURE LOG ORIGIN WIDTH CSV: LOG's completions per WIDTH-second bin into CSV.
io_bins() {
	fiolog bins "${@:2}" || die "$1: fio left no I/O log (fiolog.py said why, above)"
}
# log_span FIGURE LOG: "FIRST LAST", the unix seconds of LOG's first submission and its last
# completion.
log_span() {
	local span
	span=$(fiolog span "$2") || die "$1: fio left no I/O log (fiolog.py said why, above)"
	echo "$span"
}
# min A B, max A B: of two decimal numbers.
min() { if [ "$(echo "$1 < $2" | bc -l)" = 1 ]; then echo "$1"; else echo "$2"; fi; }
max() { if [ "$(echo "$1 > $2" | bc -l)" = 1 ]; then echo "$1"; else echo "$2"; fi; }

meta=$TMPDIR/clone-meta.img
rate_kibps=$((MIB * 1024 / RATE_S))
throttle=/sys/module/dm_mirror/parameters/raid1_resync_throttle
# table_for PEER [held]: the peer's table; "held" keeps its copy back until `release PEER`.
table_for() {
	local held=${2:-} clone_dev
	clone_dev=$(losetup -j "$meta" | cut -d: -f1)
	# dm-clone's feature arguments: no_hydration holds it; the core arguments tune it.
	local clone_features="0"
	[ -n "$held" ] && clone_features="1 no_hydration"
	case $1 in
	migrate) echo "0 $sectors migrate $src $dst${held:+ 2 rate 1}" ;;
	migrate-rate) echo "0 $sectors migrate $src $dst 2 rate $([ -n "$held" ] && echo 1 || echo $rate_kibps)" ;;
	migrate-tuned) echo "0 $sectors migrate $src $dst 4 copy_depth $best_depth region_size $best_region" ;;
	migrate-search-*-*) # migrate-search-DEPTH-REGION
		local setting=${1#migrate-search-}
		echo "0 $sectors migrate $src $dst 4 copy_depth ${setting%-*} region_size ${setting#*-}"
		;;
	clone) echo "0 $sectors clone $clone_dev $dst $src 128 $clone_features" ;;
	clone-tuned) echo "0 $sectors clone $clone_dev $dst $src 128 $clone_features 4 hydration_threshold 256 hydration_batch_size 32" ;;
	# Issue 11's reference: dm-clone tuned as in its text, on every device kind.
	clone-tuned64) echo "0 $sectors clone $clone_dev $dst $src 128 $clone_features 4 hydration_threshold 64 hydration_batch_size 64" ;;
	clone-slow) echo "0 $sectors clone $clone_dev $dst $src 128 $clone_features 4 hydration_threshold 1 hydration_batch_size 1" ;;
	mirror*) echo "0 $sectors mirror core 1 1024 2 $src 0 $dst 0" ;;
	esac
}

# start_copy PEER [held]: creates the peer's device "bench"; the copy starts at once, or when
# released. dm-raid1 cannot be held: it resyncs at 1% of kcopyd's time until released.
start_copy() {
	case $1,${2:-} in
	mirror*,held) echo 1 >$throttle ;;
	mirror-throttled,) echo 25 >$throttle ;;
	*) echo 100 >$throttle ;;
	esac
	if [[ $1 == clone* ]]; then
		meta_detach
		rm -f "$meta"
		truncate -s 16M "$meta"
		losetup -f "$meta"
	fi
	dmsetup create bench --table "$(table_for "$@")"
}

# release_cmd PEER: the command that lets a held copy go, at the peer's own speed or throttle.
release_cmd() {
	case $1 in
	migrate) echo "dmsetup message bench 0 rate 0" ;;
	migrate-rate) echo "dmsetup message bench 0 rate $rate_kibps" ;;
	clone*) echo "dmsetup message bench 0 enable_hydration" ;;
	mirror-throttled) echo "echo 25 >$throttle" ;;
	mirror) echo "echo 100 >$throttle" ;;
	esac
}
release() { sh -c "$(release_cmd "$1")"; }

# meta_detach: detaches dm-clone's metadata loop device, and only it: the loop devices of the
# device kinds (section 11) and of the sparse origin (12) stay attached across copies.
meta_detach() {
	local dev
	for dev in $(losetup -j "$meta" | cut -d: -f1); do
		losetup -d "$dev" 2>/dev/null || true
	done
}

stop_copy() {
	dmsetup remove bench
	meta_detach
}

# stop_fio PID LOG: ends a time-based fio job started with `fio_log ... LOG &` early (PID is the
# shell running fio_log, fio is its child) through its trigger file, which fio looks for every
# 10 ms and which ends it as its runtime would: it writes its logs and exits 0 (a SIGTERM makes
# it exit 128). Returns fio's exit status.
stop_fio() {
	local rc=0
	touch "$2.stop"
	wait "$1" || rc=$?
	rm -f "$2.stop"
	return $rc
}

# fio_start DEV RW LOG: starts `fio_log DEV RW 900 LOG` in the background (its pid in $loader,
# to be ended by stop_fio) and returns a second after fio's first I/O, which its --exec_prerun
# marks (fio took from 0.3 s to more than half a second to start its I/O in the TCG VM): a
# window from then on, or from half a second before, lies inside fio's I/O.
fio_start() {
	local deadline=$((SECONDS + 120))
	rm -f "$3.running" "$3.stop"
	fio_log "$1" "$2" 900 "$3" --exec_prerun="touch $3.running" &
	loader=$!
	until [ -e "$3.running" ]; do
		[ $SECONDS -lt $deadline ] || die "fio on $1 did not start its I/O in 120 s"
		sleep 0.05
	done
	sleep 1
}

# idle_copy PEER [CSV]: copies with nothing else running, and sets copy_s, the seconds to the end
# of the copy, copy_state, how it ended, and for migrate copy_cpu_s, the CPU seconds its copier
# thread took (else null). The progress goes to CSV (default progress-PEER.csv). A copy that
# failed, was cancelled or did not end (within SAMPLE_TIMEOUT) ends the bench.
idle_copy() {
	local csv=${2:-$out/progress-$1.csv} t0 ticks want=synced
	[[ $1 == migrate* ]] && want=switched
	sample_bg bench "$1" "$csv"
	t0=$(now)
	progress_start "$csv" "$t0"
	start_copy "$1" || die "copy $1: the table was refused"
	wait $sampler || true
	copy_state=$(last_state "$csv")
	if [ $want = switched ] && [ "$copy_state" = synced ]; then
		await_switch "copy $1"
		copy_state=switched
	fi
	[ "$copy_state" = $want ] || die "copy $1: the copy ended $copy_state, not $want ($(dmsetup status bench))"
	copy_s=$(diff_s "$(last_sample "$csv")" "$t0")
	copy_cpu_s=null
	if [[ $1 == migrate* ]]; then
		# The copier thread's whole life is this copy: it is made parked by the table's
		# constructor, runs from the resume, and sleeps once switched.
		ticks=$(copier_ticks "copy $1")
		copy_cpu_s=$(printf '%.2f' "$(echo "$ticks / $clk_tck" | bc -l)")
		if [ "$ticks" = 0 ] && [ "$(echo "$copy_s >= 1" | bc)" = 1 ]; then
			die "copy $1: the copier thread took no CPU time over a copy of $copy_s s"
		fi
	fi
	stop_copy
}

clk_tck=$(getconf CLK_TCK)
# copier_ticks FIGURE: the CPU time (user + system clock ticks, /proc/PID/stat fields 14 and
# 15; this kernel has no /proc/PID/schedstat) of the one migrate copier thread. The threads are
# found by name with the shell's own `read`: a `cat` per process took longer than a copy in the
# TCG VM, so that the count taken "before" a copy was taken after it, and every difference read 0.
copier_ticks() {
	local file comm pids=() stat
	for file in /proc/[0-9]*/comm; do
		{ read -r comm <"$file"; } 2>/dev/null || continue
		# A kthread's comm shows its full name on this kernel; older ones cut it at 15 characters.
		case $comm in
		dm-migrate/copier | dm-migrate/copi)
			file=${file#/proc/}
			pids+=("${file%/comm}")
			;;
		esac
	done
	[ ${#pids[@]} = 1 ] || die "$1: ${#pids[@]} copier threads (${pids[*]}), not one"
	read -r -a stat <"/proc/${pids[0]}/stat"
	# The comm field, "(dm-migrate/copier)", has no spaces: fields 14 and 15 are utime, stime.
	echo $((stat[13] + stat[14]))
}

# 1. Idle copy throughput: the raw limit, then the peers; migrate's copy_depth and region_size
# are searched one at a time around the defaults, and the fastest setting runs as migrate-tuned. A
# first copy, not counted, warms up the tools (the first run of each reads it over 9p).
idle_copy migrate
t0=$(now)
dd if=$src of=$dst bs=4M iflag=direct oflag=direct status=none
raw_s=$(elapsed "$t0")
emit "{\"figure\":\"copy\",\"peer\":\"raw dd 4M O_DIRECT\",\"seconds\":$raw_s,\"mib\":$MIB}"
idle_copy migrate
emit "{\"figure\":\"copy\",\"peer\":\"migrate\",\"seconds\":$copy_s,\"state\":\"$copy_state\",\"mib\":$MIB}"
# The search: the defaults (no copy_depth: 16 batches while the guest is idle, as here; 64 KiB
# regions) with one of them changed per run.
best_depth=16 best_region=128 best_s=$copy_s
for setting in 1,128 2,128 8,128 16,128 4,8 4,1024 4,2048 4,8192; do
	depth=${setting%,*} region=${setting#*,}
	idle_copy "migrate-search-$depth-$region"
	rm -f "$out/progress-migrate-search-$depth-$region.csv"
	emit "{\"figure\":\"copy_search\",\"copy_depth\":$depth,\"region_kib\":$((region / 2)),\"seconds\":$copy_s,\"state\":\"$copy_state\",\"mib\":$MIB}"
	if [ "$(echo "$copy_s < $best_s" | bc)" = 1 ]; then best_depth=$depth best_region=$region best_s=$copy_s; fi
done
idle_copy migrate-tuned
emit "{\"figure\":\"copy\",\"peer\":\"migrate-tuned\",\"seconds\":$copy_s,\"state\":\"$copy_state\",\"mib\":$MIB,\"copy_depth\":$best_depth,\"region_kib\":$((best_region / 2))}"
for peer in clone clone-tuned mirror; do
	idle_copy $peer
	emit "{\"figure\":\"copy\",\"peer\":\"$peer\",\"seconds\":$copy_s,\"state\":\"$copy_state\",\"mib\":$MIB}"
done

# 2. Guest 4 KiB random I/O while each peer copies, against dm-linear with no copy, and against
# dm-linear while a raw dd copy of the same devices runs beside it (what any full-speed copy
# leaves the guest in this VM, whose two emulated CPUs do both the guest's and the copy's work).
# fio starts on the device with its copy held back; a second later the copy is released. The
# figures count the I/O alive from the release to the end of the copy, or for at most
# FIO_S + 2 seconds, and, for dm-linear, over FIO_S seconds from the same point of its run; fio
# runs on until that window has ended (starting the sampler under fio's load took up to 3 s in a
# smoke run, so a fio of fixed length could end before the window did). iops-<rw>-<peer>.csv has
# the whole run, seconds from the release. migrate-rate copies at its rate limit (the device in
# RATE_S seconds).
guest_window_s=$((FIO_S + 2))
# await_copy: waits, from the release, until the copy sampled by $sampler ends or for
# guest_window_s seconds, whichever comes first.
await_copy() {
	local sleeper
	sleep "$guest_window_s" &
	sleeper=$!
	wait -n "$sampler" "$sleeper" || true
	kill "$sleeper" 2>/dev/null || true
	wait "$sleeper" 2>/dev/null || true
}
# copy_window FIGURE CSV T0 T_STOP: sets `end`, the end of the window from the release at T0 to
# the end of the copy sampled in CSV.raw or to T_STOP, when fio was told to stop, whichever came
# first, and `copy`, the JSON fields that say how the copy ended; CSV gets the progress from the
# release on. A copy that failed or was cancelled ends the bench.
copy_window() {
	local what=$1 csv=$2 t0=$3 t_stop=$4 state ended
	state=$(last_state "$csv.raw")
	ended=$(copy_ended "$what" "$state")
	end=$(last_sample "$csv.raw")
	if [ "$ended" = false ] || [ "$(echo "$end > $t_stop" | bc -l)" = 1 ]; then
		# Still copying when fio was stopped: the window ends there.
		end=$t_stop ended=false
	fi
	copy="\"copy_ended\":$ended,\"copy_end_s\":$(diff_s "$end" "$t0"),\"state\":\"$state\",\"fraction\":$(tail -1 "$csv.raw" | cut -d, -f2)"
	progress_start "$csv" "$t0"
	awk -F, -v t0="$t0" '$1 >= t0' "$csv.raw" >>"$csv"
	rm -f "$csv.raw"
}
# emit_window JSON LOG T0: emits JSON with the figures of LOG's I/O from T0 to $end; a held copy
# that was done before its release at T0 (dm-clone hydrates the region of every write) has no
# window: its row says so, with no I/O figures, and the report refuses a target on it.
emit_window() {
	if [ "$(echo "$end <= $3" | bc -l)" = 1 ]; then
		emit "$(json_merge "$1" '{"ios": 0, "done_before_release": true}')"
	else
		emit_io "$1" "$2" "$3" "$end"
	fi
}
for rw in randread randwrite; do
	log=$TMPDIR/guest
	for peer in linear dd migrate migrate-rate clone mirror; do
		csv=$out/progress-$rw-$peer.csv
		case $peer in
		linear | dd) dmsetup create bench --table "0 $sectors linear $src 0" ;;
		*) start_copy $peer held ;;
		esac
		fio_start /dev/mapper/bench $rw "$log"
		# Ten samples a second: the sampler competes with fio for the VM's two CPUs, so it
		# samples dm-linear too, where it never sees an end.
		case $peer in linear | dd) kind=linear ;; *) kind=$peer ;; esac
		# The sampler samples the held copy at once: its rows go to CSV.raw, whose last row
		# says how the copy ended even if that was before the release.
		rm -f "$csv.raw"
		sample_bg bench "$kind" "$csv.raw" 0.1
		t0=$(now)
		case $peer in
		linear) sleep "$(echo "$FIO_S + 0.2" | bc)" ;;
		dd)
			dd if=$src of=$dst bs=4M iflag=direct oflag=direct status=none
			dd_end=$(now)
			;;
		*)
			release $peer
			await_copy
			;;
		esac
		t_stop=$(now)
		stop_fio $loader "$log" || die "guest_io $rw $peer: fio failed"
		# A copy still running when fio is stopped covered the whole window.
		kill $sampler 2>/dev/null || true
		wait $sampler 2>/dev/null || true
		case $peer in
		linear)
			end=$(echo "$t0 + $FIO_S" | bc)
			copy="\"copy_ended\":false"
			;;
		dd)
			end=$dd_end
			copy="\"copy_ended\":true,\"copy_end_s\":$(diff_s "$end" "$t0")"
			;;
		*) copy_window "guest_io $rw $peer" "$csv" "$t0" "$t_stop" ;;
		esac
		if [ $kind = linear ]; then rm -f "$csv.raw"; fi
		stop_copy
		io_bins "guest_io $rw $peer" "$log"_clat.1.log "$t0" 0.1 "$out/iops-$rw-$peer.csv"
		emit_window "{\"figure\":\"guest_io\",\"peer\":\"$peer\",\"rw\":\"$rw\",$copy}" \
			"$log"_clat.1.log "$t0"
	done
done

# 3. Overhead when not copying: migrate after the switch, and paused, against dm-linear on the
# same device. ROUNDS rounds, the three runs of a round back to back, so that drift in the VM
# hits all three alike; each figure is the round with the median IOPS (idle_overhead_runs has
# every round).
for rw in randread randwrite; do
	log=$TMPDIR/idle
	for _ in $(seq "$ROUNDS"); do
		dmsetup create bench --table "0 $sectors linear $dst 0"
		fio_log /dev/mapper/bench $rw "$FIO_S" "$log"
		dmsetup remove bench
		emit_io "{\"figure\":\"idle_overhead_runs\",\"peer\":\"linear\",\"rw\":\"$rw\"}" "$log"_clat.1.log
		start_copy migrate
		rm -f "$TMPDIR/switched.csv"
		sample bench migrate "$TMPDIR/switched.csv" || true
		await_switch "idle_overhead $rw migrate switched"
		fio_log /dev/mapper/bench $rw "$FIO_S" "$log"
		stop_copy
		emit_io "{\"figure\":\"idle_overhead_runs\",\"peer\":\"migrate switched\",\"rw\":\"$rw\"}" "$log"_clat.1.log
		dmsetup create bench --table "0 $sectors migrate $src $dst 2 rate 1"
		dmsetup message bench 0 pause
		fio_log /dev/mapper/bench $rw "$FIO_S" "$log"
		expect_state "idle_overhead $rw migrate paused" paused
		stop_copy
		emit_io "{\"figure\":\"idle_overhead_runs\",\"peer\":\"migrate paused\",\"rw\":\"$rw\"}" "$log"_clat.1.log
	done
done
python3 - "$out/bench.jsonl" >>"$out/bench.jsonl.median" <<'PY'
import json, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if '"idle_overhead_runs"' in l]
for key in sorted({(r["peer"], r["rw"]) for r in runs}, key=lambda k: (k[1], k[0] != "linear", k[0])):
    mine = sorted((r for r in runs if (r["peer"], r["rw"]) == key), key=lambda r: r["iops"])
    median = dict(mine[len(mine) // 2], figure="idle_overhead", rounds=len(mine))
    print(json.dumps(median))
PY
while read -r line; do emit "$line"; done <"$out/bench.jsonl.median"
rm -f "$out/bench.jsonl.median"

# 4. Convergence under load: time to be in sync while 4 KiB random writes run flat out, with
# each peer copying as fast as it can, then with each one's throttle: migrate's rate (the device
# in RATE_S seconds), dm-raid1's raid1_resync_throttle (25% of the time), and for dm-clone, which
# has no rate limit, its narrowest hydration (one region at a time). The copy is held until fio
# is about to write (fio's --exec_prerun releases it), so that the writes meet the whole copy and
# a held dm-clone is not hydrated by writes before its copy starts; seconds count from there.
for peer in migrate clone mirror migrate-rate clone-slow mirror-throttled; do
	csv=$out/progress-converge-$peer.csv
	log=$TMPDIR/load
	start_copy "$peer" held
	sample_bg bench "$peer" "$csv.raw" 0.05
	printf 'date +%%s.%%N >%s\n%s\n' "$TMPDIR/t0" "$(release_cmd "$peer")" >"$TMPDIR/release.sh"
	rm -f "$TMPDIR/t0" "$log.stop"
	fio_log /dev/mapper/bench randwrite 900 "$log" --exec_prerun="sh $TMPDIR/release.sh" &
	loader=$!
	what="converge_under_load $peer"
	wait $sampler || true
	# fio releases the copy just before its first write. A held copy can be done before that
	# (dm-raid1 resyncs at 1% while held, and a smoke run's device is small): fio is still let
	# run its release, so that the row can say so.
	deadline=$((SECONDS + 120))
	until [ -s "$TMPDIR/t0" ]; do
		[ $SECONDS -lt $deadline ] || die "$what: fio never ran the release (its --exec_prerun)"
		sleep 0.05
	done
	stop_fio $loader "$log" || die "$what: the writer, fio, failed"
	state=$(last_state "$csv.raw")
	want=synced
	[[ $peer == migrate* ]] && want=switched
	if [ $want = switched ] && [ "$state" = synced ]; then
		await_switch "$what"
		state=switched
	fi
	[ "$state" = $want ] || die "$what: the copy ended $state, not $want ($(dmsetup status bench))"
	stop_copy
	t0=$(cat "$TMPDIR/t0")
	end=$(last_sample "$csv.raw")
	progress_start "$csv" "$t0"
	awk -F, -v t0="$t0" '$1 >= t0' "$csv.raw" >>"$csv"
	rm -f "$csv.raw"
	seconds=$(diff_s "$end" "$t0")
	if [ "$(echo "$end <= $t0" | bc -l)" = 1 ]; then
		# In sync before its release: no time to sync, no writes met; the row says so.
		seconds=0.000 io='{"ios": 0, "done_before_release": true}'
	elif [ ! -s "$log"_clat.1.log ]; then
		# Stopped, with exit status 0, before its first write completed: a copy done within
		# a few milliseconds of its release met no writes.
		io='{"ios": 0, "done_before_writes": true}'
	else
		io_bins "$what" "$log"_clat.1.log "$t0" 0.1 "$out/iops-converge-$peer.csv"
		# The writes meet the copy from fio's first I/O, just after its prerun released the
		# copy at t0: the guest's figures count from there (the time to sync from t0).
		span=$(log_span "$what" "$log"_clat.1.log)
		read -r first _ <<<"$span"
		[ "$(echo "$first - $t0 < 1" | bc -l)" = 1 ] || die "$what: fio's first I/O came $(diff_s "$first" "$t0") s after the release"
		first=$(max "$t0" "$first")
		if [ "$(echo "$end <= $first" | bc -l)" = 1 ]; then
			# A copy done before fio's first write (a small device in a smoke run) met no
			# writes: its row says so, with no I/O figures.
			io='{"ios": 0, "done_before_writes": true}'
		else
			io=$(io_summary "$what" "$log"_clat.1.log "$first" "$end")
		fi
	fi
	# The summary's own "seconds" (its window) must not replace the time to sync.
	emit "$(json_merge "{\"figure\":\"converge_under_load\",\"peer\":\"$peer\",\"seconds\":$seconds,\"state\":\"$state\",\"mib\":$MIB}" \
		"${io/\"seconds\"/\"window_s\"}")"
done
echo 100 >$throttle

# 5. Switch pause: the latencies of a running fio job's I/O alive within half a second of our
# switch, against a dmsetup load/suspend/resume swap to a linear on the destination. For
# comparison, the same job's latencies in the middle second of the full-speed copy (or the whole
# copy, if shorter). fio runs from a second before the copy's release until a second after the
# switch, whenever that comes, so that its log covers every window; a window it does not cover
# ends the bench (fiolog.py).
for how in migrate swap; do
	log=$TMPDIR/pause
	what="switch_pause $how"
	if [ $how = migrate ]; then
		dmsetup create bench --table "0 $sectors migrate $src $dst 2 rate 1"
	else
		dmsetup create bench --table "0 $sectors linear $src 0"
	fi
	fio_start /dev/mapper/bench randwrite "$log"
	if [ $how = migrate ]; then
		# The switch raises a dm event (as would a failure or a cancel): dmsetup wait sleeps
		# until it, with no polling load.
		events=$(dmsetup info -c --noheadings -o events bench)
		go=$(now)
		dmsetup message bench 0 rate 0
		timeout 600 dmsetup wait bench "$events" >/dev/null || die "$what: no event in 600 s after the release"
		event=$(now)
	else
		event=$(now)
		dmsetup load bench --table "0 $sectors linear $dst 0"
		dmsetup suspend bench
		dmsetup resume bench
	fi
	# The windows end half a second after the event; fio runs on for a second.
	sleep 1
	stop_fio $loader "$log" || die "$what: fio failed"
	# Checked after fio: more processes in the window would add their own latency.
	if [ $how = migrate ]; then expect_state "$what" switched; fi
	dmsetup remove bench
	io_bins "$what" "$log"_clat.1.log "$event" 0.05 "$out/iops-switch-$how.csv"
	emit_io "{\"figure\":\"switch_pause\",\"peer\":\"$how\",\"window\":\"switch\"}" \
		"$log"_clat.1.log "$(echo "$event - 0.5" | bc)" "$(echo "$event + 0.5" | bc)"
	emit_io "{\"figure\":\"switch_pause\",\"peer\":\"$how\",\"window\":\"after\"}" \
		"$log"_clat.1.log "$(echo "$event - 0.05" | bc)" "$(echo "$event + 0.5" | bc)"
	if [ $how = migrate ]; then
		mid=$(echo "($go + $event) / 2" | bc -l)
		emit_io "{\"figure\":\"switch_pause\",\"peer\":\"$how\",\"window\":\"mid-copy\",\"copy_s\":$(diff_s "$event" "$go")}" \
			"$log"_clat.1.log "$(max "$go" "$(echo "$mid - 0.5" | bc -l)")" "$(min "$event" "$(echo "$mid + 0.5" | bc -l)")"
	fi
done

# 6. Tracking memory per TiB: free memory before and after loading (not resuming, so no copier
# and no copy buffers) a migrate table over two 1 TiB null_blk devices (no backing memory), at
# each region size, without and with a metadata device (`dmmig move` always gives one). Without
# it, the constructor allocates the pending bitmap's chunk array (its pages come as the copy
# reaches them), a bio_set and a few small objects; with it, also eight flat bitmaps of one bit
# per region (the write-intent log's five and the metadata store's three, kvmalloc) and the
# metadata thread. MemFree moves by a few pages with anything else the VM does, so each figure
# is the median of three loads, the deltas of Slab, VmallocUsed and Percpu say where the memory
# went, and a linear table's load over the same devices, measured the same way, is the noise
# floor (what loading any table costs, dmsetup included).
kmod null_blk nr_devices=2 gb=1024
# mem_snapshot: MemFree, Slab, VmallocUsed and Percpu in KiB, in that order.
mem_snapshot() {
	awk '/^(MemFree|Slab|VmallocUsed|Percpu):/ { v[$1] = $2 }
		END { print v["MemFree:"] + 0, v["Slab:"] + 0, v["VmallocUsed:"] + 0, v["Percpu:"] + 0 }' /proc/meminfo
}
median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
tib=$(blockdev --getsz /dev/nullb0)
# load_cost TABLE: "freed slab vmalloc percpu" KiB that loading TABLE took, in a fresh device.
# Call it as var=$(load_cost ...): a refused table ends the bench.
load_cost() {
	local f0 s0 v0 p0 f1 s1 v1 p1 before after
	dmsetup create bench --notable
	sync
	before=$(mem_snapshot)
	if ! dmsetup load bench --table "$1"; then
		dmsetup remove bench
		die "memory: the table was refused: $1"
	fi
	after=$(mem_snapshot)
	dmsetup remove bench
	read -r f0 s0 v0 p0 <<<"$before"
	read -r f1 s1 v1 p1 <<<"$after"
	echo "$((f0 - f1)) $((s1 - s0)) $((v1 - v0)) $((p1 - p0))"
}
# meta_kib REGION: the smallest metadata device for the 1 TiB pair at REGION sectors per region,
# in KiB: two superblock blocks and two bitmaps of ceil(regions / 32640) 4 KiB blocks each
# (Documentation/dm-migrate.rst, "On-disk format"; Layout::device_sectors in
# src/engine/metadata.rs).
meta_kib() { echo $(((2 + 2 * (((tib + $1 - 1) / $1 + 32639) / 32640)) * 4)); }
# The metadata device: a loop device over a tmpfs file as large as the smallest region size
# needs (66 MiB at 4 KiB), written in full beforehand, so that formatting it in a measured load
# allocates no page (tmpfs, like brd, allocates a page at the first write to it: that would be
# the device's memory, not the target's). Zeroing its two superblocks before each load makes it
# blank again, and a blank device is formatted: every load builds a new migration.
mmeta_img=$TMPDIR/memory-meta.img
dd if=/dev/zero of="$mmeta_img" bs=1M count=$((($(meta_kib 8) + 1023) / 1024)) status=none
mmeta=$(losetup -f --show "$mmeta_img")
linear=()
for _ in 1 2 3; do
	cost=$(load_cost "0 $tib linear /dev/nullb0 0")
	read -r freed _ <<<"$cost"
	linear+=("$freed")
done
linear_kib=$(median "${linear[@]}")
for region in 8 128 2048; do
	for metadata in false true; do
		table="0 $tib migrate /dev/nullb0 /dev/nullb1 2 region_size $region"
		if [ $metadata = true ]; then
			table="0 $tib migrate /dev/nullb0 /dev/nullb1 4 region_size $region metadata $mmeta"
		fi
		freed=() slab=() vmalloc=() percpu=()
		for _ in 1 2 3; do
			if [ $metadata = true ]; then
				dd if=/dev/zero of="$mmeta" bs=4k count=2 oflag=direct status=none
			fi
			cost=$(load_cost "$table")
			read -r f sl v p <<<"$cost"
			freed+=("$f") slab+=("$sl") vmalloc+=("$v") percpu+=("$p")
		done
		emit "{\"figure\":\"memory\",\"region_kib\":$((region / 2)),\"metadata\":$metadata,\"metadata_device_kib\":$([ $metadata = true ] && meta_kib $region || echo null),\"measured_kib_per_tib\":$(median "${freed[@]}"),\"bitmap_kib_per_tib\":$(((tib / region + 7) / 8 / 1024)),\"rounds_kib\":[$(IFS=,; echo "${freed[*]}")],\"slab_kib\":$(median "${slab[@]}"),\"vmalloc_kib\":$(median "${vmalloc[@]}"),\"percpu_kib\":$(median "${percpu[@]}"),\"linear_kib\":$linear_kib,\"linear_rounds_kib\":[$(IFS=,; echo "${linear[*]}")]}"
	done
done
losetup -d "$mmeta"
rm -f "$mmeta_img"

# 7. The cost of the metadata device (issue 10): guest 4 KiB random writes while in sync (migrate
# with no_switch; dm-raid1 once its resync is done), with and without the metadata: migrate's
# write-intent log against dm-raid1's disk log, its peer (dm-raid1 marks a region dirty in its
# log before the first write to it, as we set an intent bit). Then the same while copying, at
# migrate's rate limit. The metadata is on a ram disk (ram2), like the data. ROUNDS rounds, the
# runs of a round back to back; the figure is the median round.
mdev=/dev/ram2
wipe_meta() { dd if=/dev/zero of=$mdev bs=1M count=1 oflag=direct status=none; }
synced_table() {
	case $1 in
	migrate) echo "0 $sectors migrate $src $dst 1 no_switch" ;;
	migrate+metadata) echo "0 $sectors migrate $src $dst 3 metadata $mdev no_switch" ;;
	mirror-core) echo "0 $sectors mirror core 1 1024 2 $src 0 $dst 0" ;;
	mirror-disk) echo "0 $sectors mirror disk 2 $mdev 1024 2 $src 0 $dst 0" ;;
	esac
}
# wait_in_sync FIGURE PEER INTERVAL: polls device bench every INTERVAL seconds until it is in
# sync: migrate synced (no_switch), dm-raid1 with every region in sync. A migration that failed
# or was cancelled, a dm-raid1 leg with errors, or 600 s without sync end the bench.
wait_in_sync() {
	local status deadline=$((SECONDS + 600))
	while :; do
		status=$(dmsetup status bench)
		case $2 in
		migrate*)
			case $(echo "$status" | awk '{ print $4 }') in
			synced) return 0 ;;
			copying | paused) ;;
			*) die "$1: the copy ended without being in sync: $status" ;;
			esac
			;;
		mirror*)
			# <#mirrors> <devices> <in sync>/<total> 1 <health>: A for a leg without errors.
			if ! echo "$status" | awk '{ exit !($9 ~ /^A+$/) }'; then
				die "$1: a mirror leg has errors: $status"
			fi
			echo "$status" | awk '{ split($7, f, "/"); exit !(f[1] == f[2]) }' && return 0
			;;
		esac
		[ $SECONDS -lt $deadline ] || die "$1: not in sync after 600 s: $status"
		sleep "$3"
	done
}
for _ in $(seq "$ROUNDS"); do
	for peer in migrate migrate+metadata mirror-core mirror-disk; do
		wipe_meta
		echo 100 >$throttle
		dmsetup create bench --table "$(synced_table $peer)"
		wait_in_sync "metadata_runs in sync $peer" $peer 0.2
		fio_log /dev/mapper/bench randwrite "$FIO_S" "$TMPDIR/md"
		if [[ $peer == migrate* ]]; then expect_state "metadata_runs in sync $peer" synced; fi
		dmsetup remove bench
		emit_io "{\"figure\":\"metadata_runs\",\"peer\":\"$peer\",\"window\":\"in sync\"}" "$TMPDIR/md"_clat.1.log
	done
	for peer in migrate migrate+metadata; do
		wipe_meta
		table="0 $sectors migrate $src $dst 2 rate $rate_kibps"
		[ $peer = migrate+metadata ] && table="0 $sectors migrate $src $dst 4 metadata $mdev rate $rate_kibps"
		dmsetup create bench --table "$table"
		fio_log /dev/mapper/bench randwrite "$FIO_S" "$TMPDIR/md"
		# The copy at its rate limit outlasts fio (the device in RATE_S seconds) unless a smoke
		# run's short RATE_S lets it end: a failed or cancelled one ends the bench.
		expect_state "metadata_runs copying $peer" copying switched
		state=$(dm_state)
		dmsetup remove bench
		emit_io "{\"figure\":\"metadata_runs\",\"peer\":\"$peer\",\"window\":\"copying\",\"state\":\"$state\"}" "$TMPDIR/md"_clat.1.log
	done
done
python3 - "$out/bench.jsonl" >>"$out/bench.jsonl.median" <<'PY'
import json, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if '"metadata_runs"' in l]
for key in sorted({(r["window"], r["peer"]) for r in runs}):
    mine = sorted((r for r in runs if (r["window"], r["peer"]) == key), key=lambda r: r["iops"])
    print(json.dumps(dict(mine[len(mine) // 2], figure="metadata_overhead", rounds=len(mine))))
PY
while read -r line; do emit "$line"; done <"$out/bench.jsonl.median"
rm -f "$out/bench.jsonl.median"

# 8. Resuming: a copy with metadata stopped at 70% (the device removed; a crash costs at most one
# commit interval more) and loaded again, time to sync, against the same copy from scratch.
wipe_meta
t0=$(now)
dmsetup create bench --table "0 $sectors migrate $src $dst 3 metadata $mdev no_switch"
wait_in_sync "resume: the copy from scratch" migrate 0.05
scratch=$(elapsed "$t0")
dmsetup remove bench
wipe_meta
# no_switch, and paused before the removal: a copy that ran to the end meanwhile would switch,
# and the resumed table would then never be in sync (it starts switched).
dmsetup create bench --table "0 $sectors migrate $src $dst 5 metadata $mdev rate $rate_kibps no_switch"
total=$(dmsetup status bench | awk '{ split($5, f, "/"); print f[2] }')
deadline=$((SECONDS + 600))
while :; do
	status=$(dmsetup status bench)
	read -r state copied <<<"$(echo "$status" | awk '{ split($5, f, "/"); print $4, f[1] }')"
	# A copy that outran the polling (a smoke run's small device) may be in sync already.
	case $state in copying) ;; synced) break ;; *) die "resume: the copy to 70% is $state: $status" ;; esac
	[ "$copied" -lt $((total * 7 / 10)) ] || break
	[ $SECONDS -lt $deadline ] || die "resume: the copy did not reach 70% in 600 s: $status"
	sleep 0.05
done
if [ "$state" = copying ]; then
	dmsetup message bench 0 pause
	expect_state "resume: the copy paused at 70%" paused synced
fi
dmsetup remove bench
t0=$(now)
dmsetup create bench --table "0 $sectors migrate $src $dst 3 metadata $mdev no_switch"
resumed=$(dmsetup status bench | awk '{ split($5, f, "/"); print f[1] }')
wait_in_sync "resume: the resumed copy" migrate 0.05
resume=$(elapsed "$t0")
dmsetup remove bench
emit "{\"figure\":\"resume\",\"scratch_s\":$scratch,\"resume_s\":$resume,\"resumed_regions\":$resumed,\"total_regions\":$total,\"mib\":$MIB}"

# The sections of issue 11. A target from before it refuses their tables (min_rate, max_rate):
# try_create then records the section as not measured instead of ending the run.
# try_create NAME TABLE SECTION: creates the device NAME, or records why not and returns 1.
try_create() {
	if dmsetup create "$1" --table "$2" 2>"$TMPDIR/create.err"; then
		return 0
	fi
	dmsetup remove "$1" 2>/dev/null || true
	emit "{\"figure\":\"not_measured\",\"section\":\"$3\",\"table\":\"$2\",\"error\":$(python3 -c 'import json, sys; print(json.dumps(sys.stdin.read().strip()))' <"$TMPDIR/create.err")}"
	return 1
}
# sysfs_file NAME FILE...: the first of the FILEs of migrate's sysfs folder of device NAME that
# exists, or nothing (the folder is documented at /sys/block/dm-N/migrate/).
sysfs_file() {
	local name=$1 dir f
	shift
	dir=/sys/block/dm-$(dmsetup info -c --noheadings -o minor "$name")
	for f in "$@"; do
		for d in "$dir/migrate" "$dir/dm/migrate"; do
			[ -r "$d/$f" ] && { cat "$d/$f"; return; }
		done
	done
	return 0
}

# 9. The adaptive controller reacting to the guest: a guest 4 KiB random read/write load (fio
# iodepth 16) that runs CTL_ON seconds, stops CTL_OFF seconds and runs CTL_ON seconds again, while
# migrate copies a device too big to finish (the two 1 TiB null_blk devices of section 6, no
# backing memory: the copy costs only its bios, so it can take all the CPU the guest leaves).
# Three runs: migrate at its defaults (adaptive), fixed at the default floor (min_rate = max_rate
# = 10 MiB/s: what md's resync does under constant load), and flat out (min_rate 0: the
# controller off, the copy before issue 11). The rate, the controller's limit and the bytes
# copied are sampled every 0.1 s from sysfs (ratesample.py); guest IOPS come from fio's logs.
CTL_ON=${BENCH_CTL_ON_S:-4}
CTL_OFF=${BENCH_CTL_OFF_S:-3}
for run in adaptive floor flat-out; do
	case $run in
	adaptive) opts="" ;;
	floor) opts=" 4 min_rate 10240 max_rate 10240" ;;
	flat-out) opts=" 2 min_rate 0" ;;
	esac
	csv=$out/controller-$run.csv
	rm -f "$csv.ready"
	python3 "$here/ratesample.py" bench "$csv" 0.1 300 &
	rsampler=$!
	while [ ! -e "$csv.ready" ]; do sleep 0.01; done
	rm -f "$csv.ready"
	if ! try_create bench "0 $tib migrate /dev/nullb0 /dev/nullb1$opts" controller; then
		kill $rsampler 2>/dev/null || true
		wait $rsampler 2>/dev/null || true
		continue
	fi
	t0=$(now)
	sleep 1
	fio_log /dev/mapper/bench randrw "$CTL_ON" "$TMPDIR/ctl1"
	sleep "$CTL_OFF"
	fio_log /dev/mapper/bench randrw "$CTL_ON" "$TMPDIR/ctl2"
	sleep 1.5
	# 1 TiB cannot be copied meanwhile: a copy that is not copying failed, or was cancelled.
	expect_state "controller $run" copying
	# The sampler ends when the device goes.
	dmsetup remove bench
	wait $rsampler || true
	cat "$TMPDIR/ctl1_clat.1.log" "$TMPDIR/ctl2_clat.1.log" >"$TMPDIR/ctl_clat.log"
	io_bins "controller $run" "$TMPDIR/ctl_clat.log" "$t0" 0.1 "$out/iops-controller-$run.csv"
	phases=""
	for phase in 1 2; do
		span=$(log_span "controller $run load $phase" "$TMPDIR/ctl${phase}_clat.1.log")
		read -r a b <<<"$span"
		io=$(io_summary "controller $run load $phase" "$TMPDIR/ctl${phase}_clat.1.log")
		phases+="${phases:+,}$(json_merge "{\"from_s\":$(diff_s "$a" "$t0"),\"to_s\":$(diff_s "$b" "$t0")}" "$io")"
	done
	emit "{\"figure\":\"controller\",\"run\":\"$run\",\"t0\":$t0,\"on\":[$phases],\"table_opts\":\"${opts# }\"}"
done
rmmod null_blk

# 10. Time to sync under a flat-out guest writer: fio 4 KiB random writes at iodepth 16 for the
# whole copy of a small device (the first SYNC_MIB MiB of the brd pair) with a floor of
# SYNC_MIN_RATE KiB/s. The controller gives such a guest all it can, but never less than the
# floor to the copy, so the copy must end within size / min_rate. The copy is held (max_rate 1:
# a ceiling below the floor wins) while fio starts, and released (max_rate 0, the default) a
# second later, when the guest is busy: released with fio's start, as in section 4, the copy of
# an idle guest's device ran flat out and was done before fio's first writes.
SYNC_MIB=$((MIB < 64 ? MIB : 64))
SYNC_MIN_RATE=${BENCH_SYNC_MIN_RATE:-4096}
sync_bound=$(echo "scale=3; $SYNC_MIB * 1024 / $SYNC_MIN_RATE" | bc)
csv=$out/progress-sync-under-load.csv
log=$TMPDIR/sync
if try_create bench "0 $((SYNC_MIB * 2048)) migrate $src $dst 4 min_rate $SYNC_MIN_RATE max_rate 1" sync_under_load; then
	fio_start /dev/mapper/bench randwrite "$log"
	# Three times the bound, and some: a copy that does not end is a finding, not a hang.
	SAMPLE_TIMEOUT_SYNC=$(echo "$sync_bound * 3 + 20" | bc | cut -d. -f1)
	SAMPLE_TIMEOUT=$SAMPLE_TIMEOUT_SYNC sample_bg bench migrate "$csv" 0.05
	t0=$(now)
	dmsetup message bench 0 max_rate 0
	wait $sampler || true
	# The writer ran throughout: from a second before the release until it is stopped here,
	# after the copy's end; its exit status says it met no error, and the summary below that
	# its log covers the window.
	stop_fio $loader "$log" || die "sync_under_load: the writer, fio, failed"
	state=$(last_state "$csv")
	fraction=$(tail -1 "$csv" | cut -d, -f2)
	if [ "$state" = synced ]; then
		await_switch sync_under_load
		state=switched
	fi
	stop_copy
	# Only a switch is an end: a copy still copying ran out of its time (three times the
	# bound), which the row reports; a failed or cancelled one ends the bench.
	ended=$(copy_ended sync_under_load "$state")
	# The rows from before the release are the held copy: the progress starts at the release.
	awk -F, -v t0="$t0" '$1 >= t0' "$csv" >"$csv.raw"
	progress_start "$csv" "$t0"
	cat "$csv.raw" >>"$csv"
	rm -f "$csv.raw"
	end=$(last_sample "$csv")
	io_bins sync_under_load "$log"_clat.1.log "$t0" 0.1 "$out/iops-sync-under-load.csv"
	io=$(io_summary sync_under_load "$log"_clat.1.log "$t0" "$end")
	completed=$(echo "$io" | sed -n 's/.*"completed": \([0-9]*\).*/\1/p')
	[ "${completed:-0}" -gt 0 ] || die "sync_under_load: the writer completed no I/O while the copy ran: $io"
	emit "$(json_merge "{\"figure\":\"sync_under_load\",\"mib\":$SYNC_MIB,\"min_rate_kibps\":$SYNC_MIN_RATE,\"bound_s\":$sync_bound,\"seconds\":$(diff_s "$end" "$t0"),\"copy_ended\":$ended,\"state\":\"$state\",\"fraction\":$fraction,\"fio_rc\":0}" \
		"${io/\"seconds\"/\"window_s\"}")"
	if [ "$ended" = false ]; then
		late_failures+=("sync_under_load: the copy did not end in $SAMPLE_TIMEOUT_SYNC s ($state, $fraction copied)")
	fi
fi

# 11. Device kinds. brd completes every bio in the submitter, so a copy's overlap of reads and
# writes never shows on it. The same copies and guest I/O on: brd (the pair above); a
# network-like destination, dm-delay adding DELAY_MS to every read and write of ram1; null_blk
# with memory and timer completions after 50 µs (NVMe-like); and loop devices over files on the
# VM's tmpfs, the origin filled with random data and the destination a fresh sparse file (what
# `dmmig move` to a new image copies onto); and a remote destination, an NBD export over a veth
# pair with netem delay (issue 24). On each: raw copies with one dd stream and with
# four (each a quarter, by skip/seek), migrate at its defaults, dm-clone tuned as in issue 11;
# then guest 4 KiB random reads and writes while migrate copies at its defaults (writes also
# with `mirror async`), and writes in sync with either mirror, against dm-linear on the origin
# with no copy, as in section 2. Every copy covers the first MIB MiB.
# Note that dm-delay below 50 ms hands its bios to a kernel thread that polls the list of
# delayed bios (drivers/md/dm-delay.c): while bios are delayed it keeps one of the VM's two CPUs
# busy, for every peer alike.
DELAY_MS=${BENCH_DELAY_MS:-1}
sectors=$((MIB * 2048))
# kind_fresh: makes the destination fresh again before a copy: for the loop kind the file's
# blocks are punched out (a sparse file again, whose first write allocates, as on a new image);
# the other kinds keep their destination written once (see the brd pair above).
kind_fresh() {
	if [ "$kind" = loop ] || [ "$kind" = nbd ]; then
		fallocate --punch-hole --offset 0 --length $((MIB << 20)) "$TMPDIR/kind-dest.img"
	fi
}
# raw_copy STREAMS: copies the first MIB MiB from $src to $dst with STREAMS dd processes at once,
# each its own part (4 MiB blocks where the parts allow it), O_DIRECT both ways.
raw_copy() {
	local streams=$1 part=$((MIB / $1)) bs=1M unit=1 k n pids=()
	[ $((part % 4)) = 0 ] && bs=4M unit=4
	for k in $(seq 0 $((streams - 1))); do
		n=$((part / unit))
		# The last stream takes what the division left.
		[ "$k" = $((streams - 1)) ] && n=$(((MIB - k * part) / unit))
		dd if="$src" of="$dst" bs=$bs count=$n skip=$((k * part / unit)) seek=$((k * part / unit)) \
			iflag=direct oflag=direct status=none &
		pids+=($!)
	done
	for k in "${pids[@]}"; do wait "$k"; done
}
# kind_copy PEER: idle_copy, with the progress kept per device kind.
kind_copy() { idle_copy "$1" "$out/progress-$kind-$1.csv"; }
# kind_guest_io: section 2's guest runs for dm-linear and migrate on the current kind. migrate is
# held with `rate 1` (the ceiling: the copy waits) and released with `rate 0`, which leaves it at
# its defaults; `rate` is max_rate's alias, so this also runs on a module before issue 11.
kind_guest_io() {
	local rw peer peers csv log=$TMPDIR/kguest loader end copy t_stop mode
	for rw in randread randwrite; do
		# Reads go to the origin alone whatever the mirror's mode: only writes are run with
		# `mirror async` as well (issue 24).
		peers="linear migrate"
		[ $rw = randwrite ] && peers="linear migrate migrate-async"
		for peer in $peers; do
			kind_fresh
			csv=$out/progress-$kind-$rw-$peer.csv
			case $peer in
			linear) dmsetup create bench --table "0 $sectors linear $src 0" ;;
			migrate) dmsetup create bench --table "0 $sectors migrate $src $dst 2 rate 1" ;;
			migrate-async) dmsetup create bench --table "0 $sectors migrate $src $dst 4 rate 1 mirror async" ;;
			esac
			fio_start /dev/mapper/bench $rw "$log"
			rm -f "$csv.raw"
			sample_bg bench $peer "$csv.raw" 0.1
			t0=$(now)
			if [ $peer != linear ]; then
				dmsetup message bench 0 rate 0
				await_copy
			else
				sleep "$(echo "$FIO_S + 0.2" | bc)"
			fi
			t_stop=$(now)
			stop_fio $loader "$log" || die "kind_guest_io $kind $rw $peer: fio failed"
			kill $sampler 2>/dev/null || true
			wait $sampler 2>/dev/null || true
			if [ $peer = linear ]; then
				end=$(echo "$t0 + $FIO_S" | bc)
				copy="\"copy_ended\":false"
				rm -f "$csv.raw"
			else
				copy_window "kind_guest_io $kind $rw $peer" "$csv" "$t0" "$t_stop"
			fi
			stop_copy
			io_bins "kind_guest_io $kind $rw $peer" "$log"_clat.1.log "$t0" 0.1 "$out/iops-$kind-$rw-$peer.csv"
			emit_window "{\"figure\":\"kind_guest_io\",\"device\":\"$kind\",\"peer\":\"$peer\",\"rw\":\"$rw\",$copy}" \
				"$log"_clat.1.log "$t0"
		done
	done
	# What mirroring alone costs the guest's writes on this kind: migrate in sync (no_switch,
	# every region copied), where every write goes to both devices, against dm-linear above.
	# While copying, the share of writes that land on copied regions pays this. The figures are
	# over fio's whole run, in sync from before it starts to after it ends.
	# The same with `mirror async`: the write completes once the origin has it (issue 24). The
	# sysfs counters say how far behind the destination went and how many writes found the cap
	# (or the slots) used up and were mirrored synchronously.
	for mode in sync async; do
		kind_fresh
		dmsetup create bench --table "0 $sectors migrate $src $dst 3 no_switch mirror $mode"
		wait_in_sync "kind_guest_io $kind mirrored $mode" migrate 0.2
		fio_log /dev/mapper/bench randwrite "$FIO_S" "$log"
		expect_state "kind_guest_io $kind mirrored $mode" synced
		local sys behind
		sys=/sys/block/$(dmsetup info -c --noheadings -o blkdevname bench)/migrate
		behind="\"behind_max_bytes\":$(cat "$sys/behind_max_bytes"),\"capped_writes\":$(cat "$sys/capped_writes"),\"behind_writes\":$(cat "$sys/behind_writes")"
		stop_copy
		peer=mirrored
		[ $mode = async ] && peer=mirrored-async
		emit_io "{\"figure\":\"kind_guest_io\",\"device\":\"$kind\",\"peer\":\"$peer\",\"rw\":\"randwrite\",\"copy_ended\":true,\"state\":\"synced\",$behind}" \
			"$log"_clat.1.log
	done
}
# The remote kind (issue 24): the destination on another box, an NBD export of a tmpfs file
# served by qemu-nbd in a second network namespace, reached over a veth pair whose client end
# netem delays NBD_MS ms (one way: the round trip is NBD_MS longer). The origin is the loop
# kind's. The server writes into the page cache of its tmpfs file, which is the storage itself.
NBD_MS=${BENCH_NBD_MS:-1}
DMMIG=${DMMIG:-$REPO_ROOT/target/debug/dmmig}
nbd_ns=bench-nbd nbd_ip=10.198.0.2
nbd_serve() {
	command -v qemu-nbd >/dev/null || die "the nbd kind: qemu-nbd is not installed (Debian: qemu-utils)"
	[ -x "$DMMIG" ] || die "the nbd kind: dmmig is not built ($DMMIG)"
	ip netns add $nbd_ns
	ip link add veth-bench type veth peer name veth-bsrv netns $nbd_ns
	ip addr add 10.198.0.1/24 dev veth-bench
	ip link set veth-bench up
	ip -n $nbd_ns addr add $nbd_ip/24 dev veth-bsrv
	ip -n $nbd_ns link set veth-bsrv up
	ip -n $nbd_ns link set lo up
	tc qdisc replace dev veth-bench root netem delay "${NBD_MS}ms"
	ip netns exec $nbd_ns qemu-nbd -f raw -x bench -b $nbd_ip --persistent --shared=8 \
		"$1" >"$TMPDIR/qemu-nbd.log" 2>&1 &
	nbd_server=$!
	local deadline=$((SECONDS + 30))
	until ip netns exec $nbd_ns ss -ltn 2>/dev/null | grep -q "$nbd_ip:10809"; do
		[ $SECONDS -lt $deadline ] || die "the nbd kind: qemu-nbd does not listen: $(cat "$TMPDIR/qemu-nbd.log")"
		sleep 0.2
	done
	nbd_dev=$("$DMMIG" nbd connect "nbd://$nbd_ip/bench") || die "the nbd kind: dmmig nbd connect failed"
}
for kind in brd delay nullb loop nbd; do
	case $kind in
	brd)
		src=/dev/ram0 dst=/dev/ram1
		what="brd to brd (bios complete in the submitter)"
		;;
	delay)
		kmod dm-delay
		dmsetup create bench-delay --table "0 $(blockdev --getsz /dev/ram1) delay /dev/ram1 0 $DELAY_MS"
		src=/dev/ram0 dst=/dev/mapper/bench-delay
		what="brd to dm-delay over brd, reads and writes delayed $DELAY_MS ms"
		;;
	nullb)
		dmsetup remove bench-delay
		# The brd pair is done with: its memory goes back for the kinds below.
		rmmod brd || echo "bench: brd stays loaded" >&2
		kmod null_blk nr_devices=2 memory_backed=1 irqmode=2 completion_nsec=50000 \
			gb=$(((MIB + 1023) / 1024)) bs=4096
		src=/dev/nullb0 dst=/dev/nullb1
		dd if=/dev/urandom of=$src bs=1M count="$MIB" oflag=direct status=none
		# Written once, as the brd destination: null_blk too allocates its pages on first write.
		dd if=/dev/zero of=$dst bs=1M count="$MIB" oflag=direct status=none
		what="null_blk with memory, timer completions after 50 µs, 4 KiB blocks"
		;;
	loop)
		rmmod null_blk
		dd if=/dev/urandom of="$TMPDIR/kind-origin.img" bs=1M count="$MIB" status=none
		truncate -s "${MIB}M" "$TMPDIR/kind-dest.img"
		src=$(losetup -f --show "$TMPDIR/kind-origin.img")
		dst=$(losetup -f --show "$TMPDIR/kind-dest.img")
		what="loop devices over tmpfs files, a fresh sparse destination for every copy"
		;;
	nbd)
		losetup -d "$dst"
		nbd_serve "$TMPDIR/kind-dest.img"
		dst=$nbd_dev
		what="the loop origin to an NBD export of a fresh sparse tmpfs file, over veth with netem $NBD_MS ms"
		;;
	esac
	emit "{\"figure\":\"device_kind\",\"device\":\"$kind\",\"what\":\"$what\",\"mib\":$MIB}"
	for streams in 1 4; do
		kind_fresh
		t0=$(now)
		raw_copy $streams
		emit "{\"figure\":\"kind_copy\",\"device\":\"$kind\",\"peer\":\"raw-$streams\",\"seconds\":$(elapsed "$t0"),\"mib\":$MIB}"
	done
	for peer in migrate clone-tuned64; do
		kind_fresh
		kind_copy $peer
		emit "{\"figure\":\"kind_copy\",\"device\":\"$kind\",\"peer\":\"$peer\",\"seconds\":$copy_s,\"state\":\"$copy_state\",\"mib\":$MIB,\"copier_cpu_s\":$copy_cpu_s}"
		if [ $peer = migrate ]; then kind_migrate_s=$copy_s; fi
	done
	kind_guest_io
done
"$DMMIG" nbd disconnect "$dst" || echo "bench: $dst stays connected" >&2
kill "$nbd_server" 2>/dev/null || true
wait "$nbd_server" 2>/dev/null || true
ip netns del $nbd_ns
ip link del veth-bench 2>/dev/null || true
losetup -d "$src"
rm -f "$TMPDIR/kind-origin.img" "$TMPDIR/kind-dest.img"

# 12. A sparse origin: a loop device over a tmpfs file of MIB MiB of which a tenth is data (1 MiB
# chunks of random data at random places; the rest was never written: holes), copied by migrate at
# its defaults onto a fresh sparse file. Chunks that read as zeros should become write-zeroes,
# which a loop device turns into punched holes, so the destination stays as sparse as the origin.
# Reported: the destination's allocation (du, and stat's blocks) against the origin's, the time
# against section 11's full copy of an all-data origin of the same size on the same kind of
# device, whether the two files are identical (cmp), and the target's count of zero bytes.
python3 - "$TMPDIR/sparse-origin.img" "$MIB" <<'PY'
import os, random, sys
path, mib = sys.argv[1], int(sys.argv[2])
with open(path, "wb") as f:
    f.truncate(mib << 20)
    for chunk in random.sample(range(mib), max(1, mib // 10)):
        f.seek(chunk << 20)
        f.write(os.urandom(1 << 20))
PY
truncate -s "${MIB}M" "$TMPDIR/sparse-dest.img"
src=$(losetup -f --show "$TMPDIR/sparse-origin.img")
dst=$(losetup -f --show "$TMPDIR/sparse-dest.img")
csv=$out/progress-sparse.csv
sample_bg bench migrate "$csv"
t0=$(now)
progress_start "$csv" "$t0"
dmsetup create bench --table "0 $sectors migrate $src $dst"
wait $sampler || true
state=$(last_state "$csv")
if [ "$state" = synced ]; then
	await_switch sparse
	state=switched
fi
[ "$state" = switched ] || die "sparse: the copy ended $state, not switched: $(dmsetup status bench)"
seconds=$(diff_s "$(last_sample "$csv")" "$t0")
status=$(dmsetup status bench)
zero_bytes=$(sysfs_file bench zero_bytes zeroed_bytes)
dmsetup remove bench
losetup -d "$src" "$dst"
data=$(stat -c '%b %B' "$TMPDIR/sparse-origin.img" | awk '{ print $1 * $2 }')
alloc=$(stat -c '%b %B' "$TMPDIR/sparse-dest.img" | awk '{ print $1 * $2 }')
du=$(du -B1 "$TMPDIR/sparse-dest.img" | cut -f1)
identical=false
cmp -s "$TMPDIR/sparse-origin.img" "$TMPDIR/sparse-dest.img" && identical=true
# The status line's field after the fail reason: zero bytes (a module before issue 11 has none).
status_zero=$(echo "$status" | awk '{ print ($12 == "") ? "null" : $12 }')
emit "{\"figure\":\"sparse\",\"mib\":$MIB,\"data_bytes\":$data,\"alloc_bytes\":$alloc,\"du_bytes\":$du,\"seconds\":$seconds,\"full_copy_s\":${kind_migrate_s:-null},\"identical\":$identical,\"zero_bytes\":${zero_bytes:-null},\"status_zero_bytes\":$status_zero,\"state\":\"$(echo "$status" | awk '{ print $4 }')\"}"
rm -f "$TMPDIR/sparse-origin.img" "$TMPDIR/sparse-dest.img"

rm -f "$out"/*.ready
# Every figure is one JSON object: a figure made of a failed command's empty output is caught
# here at the latest.
python3 - "$out/bench.jsonl" <<'PY' || die "bench.jsonl holds a line that is not a JSON object (see above)"
import json, sys
for number, line in enumerate(open(sys.argv[1]), 1):
    try:
        assert isinstance(json.loads(line), dict)
    except (ValueError, AssertionError):
        sys.exit(f"bench.jsonl line {number}: {line.strip()!r}")
PY
if [ ${#late_failures[@]} -gt 0 ]; then
	printf 'bench: FAILED: %s\n' "${late_failures[@]}" >&2
	exit 1
fi
echo "# bench done"
