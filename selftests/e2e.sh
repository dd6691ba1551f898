#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# `make e2e`, inside the test VM (the "host" here): a nested QEMU guest (TCG) runs on a disk that
# moves under it. Its disk is /dev/mapper/vm1-disk, a linear table over a loop-attached image,
# opened the way libvirt opens a disk (virtio-blk, cache=none, aio=native: O_DIRECT). The nested
# guest boots the test kernel with a busybox initramfs and runs guest-writer, a verifying writer
# (tools/guest-writer): O_DIRECT writes of 4 to 64 KiB, reads of what it wrote, and flushes, each
# timed. Meanwhile `dmmig move` copies the disk to a new image, switches, swaps the table to a
# linear on the new image and unlinks the old one. Then the host tells the writer to stop, the
# writer verifies every block of its disk, and the nested guest is booted again from the new
# image alone (the dm device removed) to verify every block once more.
#
# Passes when both runs report no I/O error and no mismatch. Prints the longest I/O stall the
# nested guest saw (before the move, TCG's own jitter; during it) next to the switch pause
# dmmig measured.
set -eu
MODULE=${MODULE:-$REPO_ROOT/dm-migrate.ko}
DMMIG=${DMMIG:-$REPO_ROOT/target/debug/dmmig}
WRITER=${WRITER:-$REPO_ROOT/target/release/guest-writer}
DISK_MIB=${E2E_DISK_MIB:-128}
# The copy rate in KiB/s: slow enough that the writer is busy during most of the copy.
RATE=${E2E_RATE:-4096}
# How long the writer keeps writing before the move starts, and after it is done (seconds).
SETTLE_S=${E2E_SETTLE_S:-10}
# The nested guest's boot under TCG in TCG takes a minute or two.
BOOT_TIMEOUT_S=${E2E_BOOT_TIMEOUT_S:-900}

scratch=${TMPDIR:-/tmp}/e2e
rm -rf "$scratch"
mkdir -p "$scratch"
cd "$scratch"
# dmmig move records the move for dmmig recover in /var/lib/dmmig, read-only in the VM.
export DMMIG_STATE_DIR=$scratch/dmmig-state
# The VM's scratch space is a tmpfs: a test rig, where an image in memory is fine.
export DMMIG_ALLOW_VOLATILE=1

step() { printf '\n==> %s\n' "$*"; }
fail() {
	echo "e2e: FAIL: $*"
	exit 1
}

[ -x "$WRITER" ] || fail "no guest-writer at $WRITER (make e2e builds it)"
kernel_image=$KDIR/arch/x86/boot/bzImage

step "Loading dm-migrate"
insmod "$MODULE"

step "The VM's disk: /dev/mapper/vm1-disk, a linear table over old.img ($DISK_MIB MiB)"
truncate -s "${DISK_MIB}M" old.img
old_loop=$(losetup -f --show --direct-io=on old.img)
sectors=$(blockdev --getsz "$old_loop")
dmsetup create vm1-disk --table "0 $sectors linear $old_loop 0"
dmsetup table vm1-disk
# The control disk: the host's "stop" in block 0, the writer's table of what it wrote after it.
truncate -s 1M control.img
control_loop=$(losetup -f --show control.img)

step "The nested guest's initramfs: busybox and guest-writer"
mkdir -p initramfs/{bin,dev,proc,sys}
cp /bin/busybox initramfs/bin/busybox
cp "$WRITER" initramfs/bin/guest-writer
cat >initramfs/init <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mode=$(sed -n 's/.*e2e=\([a-z]*\).*/\1/p' /proc/cmdline)
/bin/guest-writer "$mode" /dev/vda /dev/vdb
echo "guest-writer exited with $?"
reboot -f
INIT
chmod +x initramfs/init
(cd initramfs && find . | cpio -o -H newc --quiet) >nested.cpio

tsc_khz=$(awk -F: '/^cpu MHz/ { printf "%d", $2 * 1000; exit }' /proc/cpuinfo)

# nested_guest MODE DISK LOG: boots the nested guest on DISK, its console to LOG and to ours.
nested_guest() {
	qemu-system-x86_64 -accel tcg -cpu max -smp 1 -m 160M -nographic -no-reboot -nodefaults \
		-serial stdio -kernel "$kernel_image" -initrd nested.cpio \
		-append "console=ttyS0 panic=-1 loglevel=4 quiet tsc=reliable${tsc_khz:+ tsc_early_khz=$tsc_khz} e2e=$1" \
		-drive "file=$2,format=raw,if=none,id=disk,cache=none,aio=native" \
		-device virtio-blk-pci,drive=disk \
		-drive "file=$control_loop,format=raw,if=none,id=control,cache=none,aio=native" \
		-device virtio-blk-pci,drive=control \
		</dev/null 2>&1 | sed -u 's/\r$//; s/\x1b\[[0-9;?]*[A-Za-z]//g; s/\x1b[A-Za-z]//g' |
		tee "$3" | sed -u 's/^/    nested| /'
}

# wait_for_line LOG PATTERN PID SECONDS: waits until LOG has a line matching PATTERN.
wait_for_line() {
	local waited=0
	until grep -q "$2" "$1" 2>/dev/null; do
		kill -0 "$3" 2>/dev/null || fail "the nested guest stopped before '$2'"
		[ "$waited" -lt "$4" ] || fail "no '$2' from the nested guest in $4 s"
		sleep 1
		waited=$((waited + 1))
	done
}

# window_stall LOG FIRST LAST: the longest window_stall_ms of the progress lines FIRST..LAST.
window_stall() {
	sed -n "$2,$3p" "$1" | sed -n 's/.*writer: progress .*window_stall_ms=\([0-9.]*\).*/\1/p' |
		sort -g | tail -1
}

step "Booting the nested guest on /dev/mapper/vm1-disk (TCG inside TCG: a minute or two)"
booted=$(date +%s)
nested_guest write /dev/mapper/vm1-disk write.log &
guest=$!
wait_for_line write.log "writer: running" $guest "$BOOT_TIMEOUT_S"
echo "e2e: the nested guest booted in $(($(date +%s) - booted)) s and is writing"
sleep "$SETTLE_S"

step "dmmig move vm1-disk -> new.img at $RATE KiB/s, under the nested guest's writer"
move_first=$(wc -l <write.log)
started=$(date +%s)
# The move's own status, not tee's: a failed move must fail the run here, whatever it printed.
"$DMMIG" move vm1-disk "$scratch/new.img" --rate "$RATE" --no-progress | tee move.log
[ "${PIPESTATUS[0]}" -eq 0 ] || fail "dmmig move failed"
move_s=$(($(date +%s) - started))
move_last=$(wc -l <write.log)
pause_ms=$(sed -n 's/.*longest I\/O pause \([0-9.]*\) ms.*/\1/p' move.log)
[ -n "$pause_ms" ] || fail "dmmig move printed no switch pause"
new_loop=$(losetup -j "$scratch/new.img" | cut -d: -f1)
[ -n "$new_loop" ] || fail "new.img is not loop-attached after the move"
table=$(dmsetup table vm1-disk)
echo "vm1-disk: $table"
major_minor=$(cat "/sys/block/${new_loop#/dev/}/dev")
case "$table" in
"0 $sectors linear $major_minor 0") ;;
*) fail "vm1-disk is not a linear table on $new_loop ($major_minor)" ;;
esac
[ ! -e old.img ] || fail "old.img is still there after the move"
losetup "$old_loop" >/dev/null 2>&1 && fail "the old loop device $old_loop is still attached"

step "The writer keeps going on the new image for $SETTLE_S s, then stops and verifies every block"
sleep "$SETTLE_S"
kill -0 $guest 2>/dev/null || fail "the nested guest stopped during the move"
printf stop | dd of="$control_loop" bs=4096 conv=sync oflag=direct status=none
wait $guest || true
result=$(grep 'writer: result' write.log) || fail "the writer printed no result (see its console above)"
echo "e2e: $result"
case "$result" in
*" errors=0 mismatches=0 "*) ;;
*) fail "the nested guest's writer saw errors or mismatches" ;;
esac
before_ms=$(window_stall write.log 1 "$move_first")
during_ms=$(window_stall write.log "$move_first" "$move_last")
after_ms=$(window_stall write.log "$move_last" '$')

step "Rebooting the nested guest from new.img alone (vm1-disk removed) to verify every block"
dmsetup remove vm1-disk
nested_guest verify "$new_loop" verify.log &
guest=$!
wait $guest || true
verify=$(grep 'verify: result' verify.log) || fail "the verification printed no result"
echo "e2e: $verify"
case "$verify" in
*" errors=0 mismatches=0") ;;
*) fail "the verification after the reboot found errors or mismatches" ;;
esac

losetup -d "$new_loop" "$control_loop"
rmmod dm_migrate

longest_ms=$(echo "$result" | sed -n 's/.*longest_stall_ms=\([0-9.]*\).*/\1/p')
longest_io=$(echo "$result" | sed -n 's/.*longest_stall_io=\([a-z ]*\).*/\1/p')
cat <<SUMMARY

e2e passed: the nested guest's disk moved to new.img in $move_s s with no I/O error and no
mismatch, and every block verified again after a reboot from the new image.
  switch pause (the table swap, as dmmig measured it):  ${pause_ms} ms
  the nested guest's longest I/O, during the move:      ${during_ms:-?} ms
  the nested guest's longest I/O, before the move:      ${before_ms:-?} ms (TCG's own jitter)
  the nested guest's longest I/O, after the move:       ${after_ms:-?} ms
  the nested guest's longest I/O, whole run:            ${longest_ms} ms (a ${longest_io:-?}; the
                                                        first I/Os after the boot are the slowest)
SUMMARY
