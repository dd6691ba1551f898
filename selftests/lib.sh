# SPDX-License-Identifier: GPL-2.0
# shellcheck shell=bash
#
# Common helpers of the dm-migrate selftests. Each test sources this file, sets up what it needs
# with the helpers below (everything they create is removed on exit, pass or fail), and ends with
# `pass`, `fail MESSAGE` or `skip REASON`. Diagnostics go to stdout prefixed with "# " (TAP).

set -u

KSFT_PASS=0
KSFT_FAIL=1
KSFT_SKIP=4

SELFTEST_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=${REPO_ROOT:-$(cd "$SELFTEST_DIR/.." && pwd)}
MODULE=${MODULE:-$REPO_ROOT/dm-migrate.ko}
GOLDEN=$SELFTEST_DIR/golden
# Every dm device a test creates has this prefix, so cleanup finds them all.
DEV_PREFIX=ksft-migrate
TEST_TMP=$(mktemp -d "${TMPDIR:-/tmp}/ksft-migrate.XXXXXX")
# Tools that write state files (fio) need a writable working directory; the tree may be read-only.
cd "$TEST_TMP" || exit 1
# Where dmmig move records a move for dmmig recover (the VM's /var/lib is read-only).
export DMMIG_STATE_DIR=$TEST_TMP/dmmig-state
# The VM's scratch space is a tmpfs: dmmig refuses new images there unless told it is a test rig
# (test_dmmig_refuse_volatile.sh checks the refusal without it).
export DMMIG_ALLOW_VOLATILE=1

_loops=()
_nullbs=()
# The kernel log's mark where this test began (the runner's, or this script's own: see log_mark).
_log_mark=${KSFT_LOG_MARK:-}

diag() { printf '# %s\n' "$*"; }
# diag_file FILE: the lines of FILE as diagnostics; diag_lines: the same as a filter.
diag_file() { sed 's/^/# /' "$1"; }
diag_lines() { sed 's/^/# /'; }
pass() { exit $KSFT_PASS; }
fail() { diag "FAIL: $*"; exit $KSFT_FAIL; }
skip() { diag "SKIP: $*"; exit $KSFT_SKIP; }

test_devices() { dmsetup ls 2>/dev/null | awk -v p="$DEV_PREFIX" 'index($1, p) == 1 { print $1 }'; }

cleanup() {
	local dev pass
	# Stacked devices go in several passes: one in use by another is removed after it.
	for pass in 1 2 3; do
		for dev in $(test_devices); do
			dmsetup resume "$dev" >/dev/null 2>&1
			dmsetup remove "$dev" >/dev/null 2>&1
		done
	done
	for dev in $(test_devices); do
		diag "cleanup: cannot remove $dev"
	done
	for dev in "${_loops[@]}"; do
		losetup -d "$dev" 2>/dev/null
	done
	for dev in "${_nullbs[@]}"; do
		echo 0 >"$dev/power" 2>/dev/null
		rmdir "$dev" 2>/dev/null
	done
	[ -n "${_nullb_loaded:-}" ] && rmmod null_blk 2>/dev/null
	rm -rf "$TEST_TMP"
}
trap cleanup EXIT

[ "$(id -u)" -eq 0 ] || skip "must run as root"
command -v dmsetup >/dev/null || skip "dmsetup is not installed"

# kmodprobe MODULE: loads a module of the running kernel (the VM keeps them outside /lib/modules).
kmodprobe() {
	if [ -n "${KMOD_ROOT:-}" ]; then
		modprobe -d "$KMOD_ROOT" "$@"
	else
		modprobe "$@"
	fi
}

# load_migrate: makes sure dm-migrate is loaded, from $MODULE.
load_migrate() {
	grep -q '^dm_migrate ' /proc/modules && return 0
	[ -f "$MODULE" ] || fail "module $MODULE not built"
	insmod "$MODULE" || fail "insmod $MODULE failed"
}

# make_loop VAR SIZE_MIB [losetup options...]: creates an image file of SIZE_MIB filled with
# random bytes (so a write to the wrong device or sector shows), attaches it to a loop device
# with direct I/O and stores the device path in VAR.
make_loop() {
	local var=$1 size=$2 image dev
	shift 2
	image=$(mktemp "$TEST_TMP/image.XXXXXX")
	head -c "$((size << 20))" /dev/urandom >"$image"
	dev=$(losetup -f --show "$@" "$image") || fail "losetup $image failed"
	_loops+=("$dev")
	printf -v "$var" '%s' "$dev"
}

# make_metadata VAR [SIZE_MIB]: a loop device of SIZE_MIB (1) of zeros, a blank metadata device.
make_metadata() {
	local var=$1 size=${2:-1}
	make_loop "$var" "$size"
	dd if=/dev/zero of="${!var}" bs=1M count="$size" oflag=direct status=none ||
		fail "cannot zero ${!var}"
}

# image_disk NAME IMAGE [losetup options...]: a "guest disk" as a host has one: attaches the image
# file IMAGE (which the test made) to a loop device, stores the device path in DISK_LOOP and
# creates the linear dm device NAME over all of it. Cleanup removes both, as make_loop's devices.
image_disk() {
	local name=$1 image=$2
	shift 2
	DISK_LOOP=$(losetup -f --show "$@" "$image") || fail "losetup $image failed"
	_loops+=("$DISK_LOOP")
	dm_create "$name" "0 $(sectors "$DISK_LOOP") linear $DISK_LOOP 0" || fail "create $name failed"
}

# make_nullb VAR SIZE_MIB [ATTR=VALUE...]: creates a memory-backed null_blk device through configfs
# (multi-queue, with one poll queue unless the attributes say otherwise), fills it with random
# bytes and stores its path in VAR. null_blk completes bios from its own queues, so unlike brd it
# has a real completion path; with a poll queue it serves polled I/O (REQ_POLLED).
make_nullb() {
	local var=$1 size=$2 dir attr dev
	shift 2
	if ! grep -q '^null_blk ' /proc/modules; then
		kmodprobe null_blk nr_devices=0 || skip "null_blk is not available"
		_nullb_loaded=1
	fi
	[ -d /sys/kernel/config/nullb ] || mount -t configfs configfs /sys/kernel/config 2>/dev/null
	[ -d /sys/kernel/config/nullb ] || skip "null_blk's configfs is not available"
	dir=/sys/kernel/config/nullb/ksft-$var-$$
	mkdir "$dir" || fail "cannot create $dir"
	_nullbs+=("$dir")
	echo "$size" >"$dir/size" && echo 1 >"$dir/memory_backed" && echo 2 >"$dir/queue_mode" &&
		echo 1 >"$dir/poll_queues" || fail "cannot configure $dir"
	for attr in "$@"; do
		echo "${attr#*=}" >"$dir/${attr%%=*}" || fail "cannot set $attr on $dir"
	done
	echo 1 >"$dir/power" || fail "cannot power on $dir"
	# Since 6.x a configfs device is named after its folder; older kernels call it nullb<index>.
	dev=/dev/${dir##*/}
	[ -b "$dev" ] || dev=/dev/nullb$(cat "$dir/index")
	[ -b "$dev" ] || fail "$dev did not appear"
	dd if=/dev/urandom of="$dev" bs=1M count="$size" oflag=direct status=none || fail "cannot fill $dev"
	printf -v "$var" '%s' "$dev"
}

# hold_cpus SECONDS: opens a window in which no new kernel thread (of normal priority, as a copier
# thread is) can run: a real-time busy loop on every CPU for SECONDS, this script above them, and
# the kernel's existing threads (kthreadd, workqueues, RCU) lifted above the loops so that the
# device-mapper ioctls still work. A thread created in the window resets itself to normal
# priority and waits for its end. Since 6.12 the deadline "fair server" runs starved normal tasks
# 50 ms a second; it is switched off through debugfs, which only kernels with CONFIG_SCHED_DEBUG
# have (the debug kernel): elsewhere the test skips. release_cpus waits for the loops to end and
# puts everything back (so does the exit of the test).
hold_cpus() {
	local seconds=$1 stat pid comm ppid cpu prio
	mountpoint -q /sys/kernel/debug || mount -t debugfs none /sys/kernel/debug 2>/dev/null
	_fair_server=/sys/kernel/debug/sched/fair_server
	[ -d "$_fair_server" ] || skip "no $_fair_server (CONFIG_SCHED_DEBUG): the CPUs cannot be held"
	command -v chrt >/dev/null && command -v taskset >/dev/null || skip "chrt and taskset are needed"
	_rt_runtime=$(cat /proc/sys/kernel/sched_rt_runtime_us)
	_fair_runtime=$(cat "$_fair_server/cpu0/runtime")
	_boosted=()
	trap 'release_cpus; cleanup' EXIT
	# RCU's threads go highest: a boosted thread that runs long (kmemleak's scan, left out)
	# must not hold up grace periods, or the RCU stall detector fires.
	for stat in /proc/[0-9]*/stat; do
		read -r pid comm _ ppid _ <"$stat" 2>/dev/null || continue
		[ "$pid" = 2 ] || [ "$ppid" = 2 ] || continue
		# (stat's second field is the name in parentheses.)
		case $comm in ("(kmemleak)") continue ;; esac
		chrt -p "$pid" 2>/dev/null | grep -q SCHED_OTHER || continue
		case $comm in ("(rcu"*) prio=30 ;; (*) prio=20 ;; esac
		chrt -f -p $prio "$pid" 2>/dev/null && _boosted+=("$pid")
	done
	[ ${#_boosted[@]} -gt 0 ] || fail "could not raise the kernel threads' priority"
	echo -1 >/proc/sys/kernel/sched_rt_runtime_us || fail "cannot turn off real-time throttling"
	for cpu in "$_fair_server"/cpu*; do
		echo 0 >"$cpu/runtime" || fail "cannot turn off the fair server of ${cpu##*/}"
	done
	chrt -f -p 50 $$ || fail "cannot make the test real-time"
	_hogs=()
	for cpu in $(seq 0 $(($(nproc) - 1))); do
		taskset -c "$cpu" chrt -f 10 bash -c \
			"end=\$((SECONDS + $seconds)); while [ \$SECONDS -lt \$end ]; do :; done" &
		_hogs+=($!)
	done
	# The window opens when every busy loop runs at its real-time priority.
	for pid in "${_hogs[@]}"; do
		until chrt -p "$pid" 2>/dev/null | grep -q "priority: 10"; do sleep 0.05; done
	done
	sleep 0.1
}

release_cpus() {
	local pid cpu
	[ -n "${_fair_server:-}" ] || return 0
	wait "${_hogs[@]}" 2>/dev/null
	chrt -o -p 0 $$ 2>/dev/null
	for pid in "${_boosted[@]}"; do chrt -o -p 0 "$pid" 2>/dev/null; done
	for cpu in "$_fair_server"/cpu*; do echo "$_fair_runtime" >"$cpu/runtime"; done
	echo "$_rt_runtime" >/proc/sys/kernel/sched_rt_runtime_us
	_fair_server=""
}

# copier_pids: the process ids of the migrate targets' copier threads.
copier_pids() {
	local file pid
	for file in /proc/[0-9]*/comm; do
		pid=${file#/proc/}
		# A kthread's comm shows its full name on this kernel; older ones cut it at 15 characters.
		case $(cat "$file" 2>/dev/null) in
		dm-migrate/copier | dm-migrate/copi) echo "${pid%/comm}" ;;
		esac
	done
}

# snapshot DEV FILE: copies a whole device to a file, to compare with later.
snapshot() { dd if="$1" of="$2" bs=1M iflag=direct status=none || fail "cannot read $1"; }

# sectors DEV: the size of a block device in 512-byte sectors.
sectors() { blockdev --getsz "$1"; }

# devnum DEV: the major:minor of a block device, as device-mapper prints it.
devnum() { printf '%d:%d' "$((0x$(stat -c %t "$1")))" "$((0x$(stat -c %T "$1")))"; }

# dm_create NAME TABLE: creates a dm device from a one-line table.
dm_create() {
	dmsetup create "$DEV_PREFIX-$1" --table "$2"
}

# dm_reload NAME TABLE: replaces the table of a dm device made by dm_create the way dmsetup does
# it (load, suspend, resume); a test fails if any step does.
dm_reload() {
	dmsetup load "$DEV_PREFIX-$1" --table "$2" && dmsetup suspend "$DEV_PREFIX-$1" &&
		dmsetup resume "$DEV_PREFIX-$1" || fail "reload of $1 failed: $2"
}

# dm_path NAME: the block device of a dm device made by dm_create.
dm_path() { echo "/dev/mapper/$DEV_PREFIX-$1"; }

# dm_sysfs NAME: the sysfs folder of a dm device made by dm_create.
dm_sysfs() {
	echo "/sys/block/$(dmsetup info -c --noheadings -o blkdevname "$DEV_PREFIX-$1")"
}

# dm_events NAME: the event count of a dm device made by dm_create (the one `dmsetup wait` takes).
dm_events() { dmsetup info -c --noheadings -o events "$DEV_PREFIX-$1"; }

# flakey_create NAME DEV UP DOWN [FEATURES...]: creates a dm-flakey device NAME over all of DEV,
# available UP seconds and then failing DOWN seconds, over and over; FEATURES (error_writes,
# error_reads...) say how it fails, and without them it fails all I/O.
flakey_create() {
	local name=$1 table
	shift
	table=$(flakey_table "$@")
	dm_create "$name" "$table" || fail "cannot create the flakey device $name: $table"
}

# flakey_table DEV UP DOWN [FEATURES...]: the dm-flakey table line of flakey_create.
flakey_table() {
	local dev=$1 up=$2 down=$3 table
	shift 3
	table="0 $(sectors "$dev") flakey $dev 0 $up $down"
	[ $# -eq 0 ] || table+=" $# $*"
	echo "$table"
}

# flakey_set NAME DEV UP DOWN [FEATURES...]: gives the dm device NAME the dm-flakey table
# flakey_create would make (load, suspend, resume); a test fails if any step does. The suspend is
# --nolockfs: a filesystem on NAME is not frozen, which would write its page cache back first.
flakey_set() {
	local name=$1 table
	shift
	table=$(flakey_table "$@")
	dmsetup load "$DEV_PREFIX-$name" --table "$table" || fail "cannot load into $name: $table"
	dmsetup suspend --nolockfs "$DEV_PREFIX-$name" || fail "cannot suspend $name"
	dmsetup resume "$DEV_PREFIX-$name" || fail "cannot resume $name"
}

# log_mark: marks the kernel log, so that log_since prints only what was logged after the mark.
# The log is never cleared: a warning, a lockdep or a debug-objects report from earlier in the test
# must stay for the runner, which reads the whole test's log after it ends.
log_mark() {
	_log_mark="ksft-migrate: mark $$.$RANDOM.$SECONDS"
	# Level 6 (info): a mark is not a warning, and need not reach the console.
	echo "<6>$_log_mark" >/dev/kmsg || fail "cannot write to /dev/kmsg"
}

# log_since: the kernel log after the last log_mark (all of it if there was none). A mark that
# has left the ring buffer prints nothing, which fails whichever check looked for a line.
log_since() {
	if [ -n "${_log_mark:-}" ]; then
		dmesg | awk -v mark="$_log_mark" 'seen { print } index($0, mark) { seen = 1 }'
	else
		dmesg
	fi
}

# expect_reject TABLE MESSAGE: the table must be refused and the kernel must say why.
expect_reject() {
	local table=$1 message=$2 name out
	name=reject-$RANDOM
	log_mark
	if out=$(dmsetup create "$DEV_PREFIX-$name" --table "$table" 2>&1); then
		fail "table accepted: '$table'"
	fi
	dmsetup ls | grep -q "^$DEV_PREFIX-$name" && fail "rejected table left a device behind: '$table'"
	if ! log_since | grep -qF "migrate: $message"; then
		diag "dmsetup said: $out"
		diag "kernel said: $(log_since | tail -3)"
		fail "no '$message' in the kernel log for '$table'"
	fi
	diag "rejected as expected: '$table' -> $message"
}

# golden FILE ACTUAL: compares text with a golden file after replacing @ORIGIN@, @DEST@, @LEN@,
# @REGIONS@ and @BYTES@ with the values the test set in ORIGIN_NUM, DEST_NUM, LEN, REGIONS, BYTES.
golden() {
	local expected
	expected=$(sed -e "s/@ORIGIN@/${ORIGIN_NUM:-}/g" -e "s/@DEST@/${DEST_NUM:-}/g" \
		-e "s/@LEN@/${LEN:-}/g" -e "s/@REGIONS@/${REGIONS:-}/g" -e "s/@BYTES@/${BYTES:-}/g" \
		"$GOLDEN/$1")
	if [ "$expected" != "$2" ]; then
		diag "expected: $expected"
		diag "actual:   $2"
		fail "output differs from golden file $1"
	fi
}

# same_bytes A B [BYTES]: byte-for-byte comparison of two files or devices. The page cache of a
# block device is dropped first: I/O through a dm device bypasses the cache of the devices below,
# so a cached read of the origin could return bytes the target has since overwritten.
same_bytes() {
	local f
	for f in "$1" "$2"; do
		[ -b "$f" ] && blockdev --flushbufs "$f"
	done
	if [ $# -ge 3 ]; then
		cmp -n "$3" "$1" "$2" >/dev/null || fail "$1 and $2 differ: $(cmp -n "$3" "$1" "$2" 2>&1)"
	else
		cmp "$1" "$2" >/dev/null || fail "$1 and $2 differ: $(cmp "$1" "$2" 2>&1)"
	fi
}

# migrate_state NAME: the state word of a migrate device's status line.
migrate_state() { dmsetup status "$DEV_PREFIX-$1" | awk '$3 == "migrate" { print $4 }'; }

# migrate_field NAME N: the Nth INFO field (1 = state) of a migrate device's status line.
migrate_field() {
	dmsetup status "$DEV_PREFIX-$1" | awk -v n="$2" '$3 == "migrate" { print $(n + 3) }'
}

# wait_state NAME STATE [SECONDS]: waits until the migration reaches STATE (default 120 s).
wait_state() {
	local name=$1 want=$2 limit=${3:-120} start=$SECONDS state
	while :; do
		state=$(migrate_state "$name")
		[ "$state" = "$want" ] && return 0
		if [ $((SECONDS - start)) -ge "$limit" ]; then
			diag "status: $(dmsetup status "$DEV_PREFIX-$name")"
			fail "$name did not reach '$want' within ${limit}s (state '$state')"
		fi
		case $state in
		failed | cancelled | switched) [ "$state" != "$want" ] && {
			diag "status: $(dmsetup status "$DEV_PREFIX-$name")"
			fail "$name ended in '$state', not '$want'"
		} ;;
		esac
		sleep 0.2
	done
}

# fio_verify_write TARGET SIZE_MIB LOG [fio options...]: 4 jobs of random writes of 4 KiB to
# 1 MiB over TARGET, each verified with crc32c after it is written.
fio_job=(--ioengine=libaio --direct=1 --iodepth=8 --numjobs=4 --bsrange=4k-1m
	--verify=crc32c --verify_fatal=1 --randrepeat=0 --group_reporting --rw=randwrite)
fio_verify_write() {
	local target=$1 size=$2 log=$3
	shift 3
	# fio would make a file of a missing path and test that.
	[ -b "$target" ] || fail "$target is not a block device"
	fio --name=migrate "${fio_job[@]}" --size=$((size / 4))M --offset_increment=$((size / 4))M \
		--filename="$target" --output="$log" "$@" || {
		sed 's/^/# /' "$log"
		fail "fio write+verify on $target failed"
	}
	grep -q 'err= 0' "$log" || fail "fio reported errors on $target"
}

# fio_verify_only TARGET SIZE_MIB LOG [fio options...]: re-reads what fio_verify_write wrote
# and checks it; give it the options the writes had.
fio_verify_only() {
	local target=$1 size=$2 log=$3
	shift 3
	[ -b "$target" ] || fail "$target is not a block device"
	fio --name=migrate "${fio_job[@]}" --size=$((size / 4))M --offset_increment=$((size / 4))M \
		--filename="$target" --output="$log" --verify_only "$@" || {
		sed 's/^/# /' "$log"
		fail "$target does not verify"
	}
}

# wait_migrate_table DM_NAME: waits until the dm device DM_NAME (full name) runs a migrate
# table, as once `dmmig move` has loaded it (30 s at most).
wait_migrate_table() {
	local start=$SECONDS
	until dmsetup table "$1" | grep -q ' migrate '; do
		[ $((SECONDS - start)) -lt 30 ] || fail "no migrate table: $(dmsetup table "$1")"
		sleep 0.05
	done
}

# wait_field NAME N VALUE [SECONDS]: waits until INFO field N of NAME reads VALUE (default 30 s).
wait_field() {
	local start=$SECONDS
	until [ "$(migrate_field "$1" "$2")" = "$3" ]; do
		[ $((SECONDS - start)) -ge "${4:-30}" ] &&
			fail "field $2 of $1 is '$(migrate_field "$1" "$2")', not '$3'"
		sleep 0.2
	done
}

# Run alone, outside the runner, a test marks the kernel log itself where it begins.
[ -n "$_log_mark" ] || log_mark

# need_dmmig: DMMIG is the dmmig of this tree (or the one $DMMIG names); the test skips without it.
need_dmmig() {
	DMMIG=${DMMIG:-$REPO_ROOT/target/debug/dmmig}
	[ -x "$DMMIG" ] || skip "dmmig is not built ($DMMIG)"
}
