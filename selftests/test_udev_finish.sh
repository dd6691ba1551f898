#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# udev finishes a move that nobody is watching: with systemd-udevd running and the shipped rule
# (udev/70-dmmig-finish.rules), the migrate target's switched uevent runs `dmmig finish`. Two
# moves: one started with plain dmsetup (finished onto a linear on the destination, nothing else
# touched), and one by `dmmig move` killed (SIGKILL) mid-copy (finished, and its old image,
# loop device, metadata and record retired, as move would have). Every byte is compared, with
# writes made during the copy.
. "$(dirname "$0")/lib.sh"
need_dmmig
UDEVD=$(command -v systemd-udevd || echo /lib/systemd/systemd-udevd)
[ -x "$UDEVD" ] || skip "systemd-udevd is not installed (Debian's udev package)"
command -v udevadm >/dev/null || skip "udevadm is not installed"
[ -e /run/udev/control ] && skip "a udev daemon is running already: this test runs its own"
load_migrate

# The shipped rule, with this tree's dmmig, the test's state folder and a log of what finish
# printed (the background finish inherits the log).
mkdir -p /run/udev/rules.d
finish_log=$TEST_TMP/finish.log
sed -e "s|RUN+=\"@DMMIG@ finish \(.*\)\"|RUN+=\"/bin/sh -c 'DMMIG_STATE_DIR=$DMMIG_STATE_DIR $DMMIG finish \1 >>$finish_log 2>\&1'\"|" \
	"$REPO_ROOT/udev/70-dmmig-finish.rules" >/run/udev/rules.d/70-dmmig-finish.rules
grep -q "$DMMIG finish" /run/udev/rules.d/70-dmmig-finish.rules ||
	fail "rule not rewritten: $(cat /run/udev/rules.d/70-dmmig-finish.rules)"
# fail_log MESSAGE: fails with what udev's dmmig finish runs printed.
fail_log() {
	sed 's/^/# finish: /' "$finish_log" 2>/dev/null
	diag "state: $(ls "$DMMIG_STATE_DIR" 2>&1); loops: $(losetup -a | tr '\n' ' ')"
	diag "rule: $(tail -1 /run/udev/rules.d/70-dmmig-finish.rules)"
	fail "$@"
}
"$UDEVD" --daemon --resolve-names=never || fail "systemd-udevd did not start"
stop_udevd() {
	udevadm control --exit 2>/dev/null
	rm -f /run/udev/rules.d/70-dmmig-finish.rules
	cleanup
	# The control socket stays behind, and libdevmapper and the devicemapper crate take it for
	# a running udev: the tests after this one would wait on udev cookies nobody completes.
	pkill -x systemd-udevd 2>/dev/null
	rm -f /run/udev/control
}
trap stop_udevd EXIT
udevadm settle -t 10

# wait_linear NAME DEV: waits until NAME is a linear on DEV (udev's finish), 60 s at most.
wait_linear() {
	local start=$SECONDS want="0 $(sectors "$2") linear $(devnum "$2") 0"
	until [ "$(dmsetup table "$1")" = "$want" ]; do
		[ $((SECONDS - start)) -lt 60 ] ||
			fail_log "$1 not finished by udev: $(dmsetup table "$1"); status $(dmsetup status "$1")"
		sleep 0.2
	done
}

# 1. A migration started with plain dmsetup: udev swaps it to the destination and stops there.
make_loop origin 16
make_loop dest 16
len=$(sectors "$origin")
disk=$DEV_PREFIX-plain
dmsetup create "$disk" --table "0 $len linear $origin 0" || fail "create failed"
dmsetup load "$disk" --table "0 $len migrate $origin $dest 2 max_rate 1024" || fail "load failed"
dmsetup suspend "$disk" && dmsetup resume "$disk" || fail "swap to migrate failed"
head -c $((1 << 20)) /dev/urandom >"$TEST_TMP/w1"
dd if="$TEST_TMP/w1" of="/dev/mapper/$disk" bs=64k seek=64 oflag=direct status=none ||
	fail "write during the copy failed"
dmsetup message "$disk" 0 max_rate 0 || fail "max_rate 0 refused"
wait_linear "$disk" "$dest"
losetup "$origin" >/dev/null 2>&1 || fail "the origin's loop device was detached without a record"
snapshot "/dev/mapper/$disk" "$TEST_TMP/plain.after"
snapshot "$origin" "$TEST_TMP/plain.origin"
# The destination holds the origin's bytes, with the write made during the copy.
same_bytes "$TEST_TMP/plain.after" "$TEST_TMP/plain.origin"
cmp -s -i $((64 << 16)):0 -n $((1 << 20)) "$TEST_TMP/plain.after" "$TEST_TMP/w1" ||
	fail "the write made during the copy is not on the destination"
diag "plain dmsetup migration: finished by udev onto $(devnum "$dest")"

# 2. dmmig move killed mid-copy: udev finishes it and retires the old image.
old_img=$TEST_TMP/old.img new_img=$TEST_TMP/new.img
head -c $((32 << 20)) /dev/urandom >"$old_img"
image_disk moved "$old_img" --direct-io=on
disk=$DEV_PREFIX-moved
"$DMMIG" move "$disk" "$new_img" --no-progress --max-rate 2048 >"$TEST_TMP/move.log" 2>&1 &
mover=$!
wait_migrate_table "$disk"
kill -KILL $mover
wait $mover 2>/dev/null
[ -e "$DMMIG_STATE_DIR/$disk.json" ] || fail "move left no record"
head -c $((1 << 20)) /dev/urandom >"$TEST_TMP/w2"
dd if="$TEST_TMP/w2" of="/dev/mapper/$disk" bs=64k seek=100 oflag=direct status=none ||
	fail "write during the copy failed"
cp "$old_img" "$TEST_TMP/expected"
dd if="$TEST_TMP/w2" of="$TEST_TMP/expected" bs=64k seek=100 conv=notrunc status=none
dmsetup message "$disk" 0 max_rate 0 || fail "max_rate 0 refused"
new=
start=$SECONDS
until [ -n "$new" ]; do
	new=$(losetup -j "$new_img" | cut -d: -f1)
	[ $((SECONDS - start)) -lt 10 ] || fail "the new image is not attached"
done
_loops+=("$new")
wait_linear "$disk" "$new"
# The rest of finish (metadata, the old loop device and image) follows the swap.
start=$SECONDS
while [ -e "$old_img" ] || [ -e "$DMMIG_STATE_DIR/$disk.json" ]; do
	[ $((SECONDS - start)) -lt 30 ] || fail_log "finish left the old image or the record"
	sleep 0.2
done
losetup -a | grep -q "$old_img" && fail "the old image is still attached"
[ -e "$new_img.dmmig-meta" ] && fail "the metadata file is still there"
same_bytes "/dev/mapper/$disk" "$TEST_TMP/expected"
same_bytes "$new" "$TEST_TMP/expected"
diag "killed dmmig move: finished by udev onto $new_img, $old_img removed"
sed 's/^/# finish: /' "$finish_log"
grep -q "finished on" "$finish_log" || fail "dmmig finish printed no summary"

# 3. Nothing to finish: a finish of a device on a linear table changes nothing.
"$DMMIG" finish "$disk" 2>"$TEST_TMP/nothing.log" || fail "finish of a finished move failed"
grep -q "nothing to finish" "$TEST_TMP/nothing.log" || fail "finish said: $(cat "$TEST_TMP/nothing.log")"
same_bytes "/dev/mapper/$disk" "$TEST_TMP/expected"
pass
