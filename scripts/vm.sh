#!/usr/bin/env bash
# Boots the test kernel in QEMU (TCG) and runs one command inside it, as root, in the host's own
# root filesystem shared read-only over 9p (so dmsetup, fio, losetup and the repository are there).
#
#   scripts/vm.sh KDIR COMMAND [ARG...]
#
# The guest has a tmpfs on /run with a scratch folder at $TMPDIR (/run/tmp), `modprobe -d
# $KMOD_ROOT` for the test kernel's modules (the kernel's own module autoloading uses it too), and
# a writable share at $VM_RESULTS (/run/results in the guest, a fresh folder on the host, kept
# when VM_KEEP_RESULTS=DIR names one). The console (kernel warnings and the command's output) goes to
# stdout. Exits with the command's status, or 125 when the guest crashed, hung past VM_TIMEOUT
# seconds (default 1200) or printed a kernel BUG, Oops or WARNING.
# VM_EXTRA_ARGS adds QEMU arguments (disks for make crash-test).
set -euo pipefail
. "$(dirname "$0")/common.sh"

[ $# -ge 2 ] || die "usage: scripts/vm.sh KDIR COMMAND [ARG...]"
kdir=$(cd "$1" && pwd)
shift
kernel_image="$kdir/arch/x86/boot/bzImage"
[ -f "$kernel_image" ] || die "no kernel image at $kernel_image: run scripts/kernel.sh"
release=$(cat "$kdir/include/config/kernel.release")
modroot="$(dirname "$kdir")/modroot"
timeout_s=${VM_TIMEOUT:-1200}

work=$(mktemp -d /tmp/dm-migrate-vm.XXXXXX)
trap 'rm -rf "$work"' EXIT
results=${VM_KEEP_RESULTS:-$work/results}
mkdir -p "$results" "$work/initramfs"/{bin,sbin,dev,proc,sys,host}

# The command, run by the guest from the results share, from the directory we were called in.
{
	echo "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	echo "export HOME=/run/tmp TMPDIR=/run/tmp DM_DISABLE_UDEV=1 VM_RESULTS=/run/results"
	echo "export KDIR=$(printf %q "$kdir") REPO_ROOT=$(printf %q "$REPO_ROOT")"
	echo "export KMOD_ROOT=$(printf %q "$modroot")"
	# Settings for the command (BENCH_*, E2E_*, MODULE, DMMIG) travel with it.
	for v in $(compgen -e | grep -E '^(BENCH_[A-Z_]+|E2E_[A-Z_]+|MODULE|DMMIG)$'); do
		echo "export $v=$(printf %q "${!v}")"
	done
	echo "cd $(printf %q "$PWD")"
	printf '%q ' "$@"
	echo
} >"$results/cmd.sh"
rm -f "$results/rc"

cp /bin/busybox "$work/initramfs/bin/busybox"
cat >"$work/initramfs/init" <<INIT
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
ln -s /proc/self/fd /dev/fd
ln -s /proc/self/fd/0 /dev/stdin
ln -s /proc/self/fd/1 /dev/stdout
ln -s /proc/self/fd/2 /dev/stderr
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose hostroot /host
for d in proc sys dev; do mount --bind /\$d /host/\$d; done
# Scratch space is a tmpfs on /run, not on /tmp: the repository, the kernel cache or a CI
# checkout may well live under the host's /tmp, and must stay visible at the same path.
mount -t tmpfs tmpfs /host/run
mkdir -p -m 1777 /host/run/tmp
mkdir -p /host/run/results
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 results /host/run/results
chroot /host /bin/sh /run/results/cmd.sh
echo \$? >/host/run/results/rc
sync
umount /host/run/results
reboot -f
INIT
# The host has no /lib/modules for the test kernel, so modprobe is pointed at the kernel's own
# module tree; this wrapper is also what the kernel runs to autoload a module (dm-migrate for a
# "migrate" table, crc32c for dm-clone), from the initramfs root.
cat >"$work/initramfs/sbin/modprobe" <<MODPROBE
#!/bin/busybox sh
exec /bin/busybox chroot /host /usr/sbin/modprobe -d "$modroot" "\$@"
MODPROBE
chmod +x "$work/initramfs/init" "$work/initramfs/sbin/modprobe"
(cd "$work/initramfs" && find . | cpio -o -H newc --quiet) >"$work/initramfs.cpio"

# Under TCG the guest's TSC is the host's. The guest's own calibration against the emulated PIT
# fails now and then on a busy host ("could not calculate TSC khz"), which leaves it on the
# jiffies clocksource: time in 4 ms steps, useless for latency figures. Tell it the rate instead.
tsc_khz=$(awk -F: '/^cpu MHz/ { printf "%d", $2 * 1000; exit }' /proc/cpuinfo)
clock_args="tsc=reliable${tsc_khz:+ tsc_early_khz=$tsc_khz}"

# The console prints warnings (loglevel=5: levels 0 to 4): a WARN, a lockdep or a debug-objects
# report reaches the console, and the check below, whatever a test does with the kernel log.

# Two CPUs, so that map, end_io and the copier really run at the same time. The kernel has no
# ACPI and finds CPUs in SeaBIOS's MP table, which lists one CPU per socket: QEMU's default
# topology for -smp 2 (one socket, two cores) would leave the guest with a single CPU.
smp="2,sockets=2,cores=1,threads=1"

log "booting $release in QEMU (TCG): $*"
status=0
timeout --foreground -k 10 "$timeout_s" qemu-system-x86_64 \
	-accel tcg -cpu max -smp "$smp" -m "${VM_MEM:-2G}" -nographic -no-reboot -nodefaults -serial stdio \
	-kernel "$kernel_image" -initrd "$work/initramfs.cpio" \
	-append "console=ttyS0 panic=-1 oops=panic loglevel=5 $clock_args" \
	-virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
	-virtfs "local,path=$results,mount_tag=results,security_model=none" \
	${VM_EXTRA_ARGS:-} \
	</dev/null 2>&1 | tee "$work/console.log" || status=$?

if grep -qE 'Kernel panic|BUG:|Oops|WARNING:|general protection|Call Trace:' "$work/console.log"; then
	echo "vm: the kernel reported a bug (see the console output above)" >&2
	exit 125
fi
if [ ! -f "$results/rc" ]; then
	if [ "$status" -eq 124 ]; then
		echo "vm: the guest did not finish within ${timeout_s}s" >&2
	else
		echo "vm: the guest stopped without reporting a result (crash or panic?)" >&2
	fi
	exit 125
fi
exit "$(cat "$results/rc")"
