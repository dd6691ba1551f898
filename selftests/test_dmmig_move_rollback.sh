#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# A dmmig move to a destination that fails writes (dm-flakey) rolls back: the disk is again a
# linear on its origin, the command fails, and every write of a verifying writer is on the origin.
# Bad inputs fail with their messages and exit codes.
. "$(dirname "$0")/lib.sh"
need_dmmig
command -v fio >/dev/null || skip "fio is not installed"
load_migrate
kmodprobe dm-flakey || skip "dm-flakey is not available"
make_loop origin 64
make_loop bad 64
make_loop small 8
len=$(sectors "$origin")
disk=$DEV_PREFIX-disk
dmsetup create "$disk" --table "0 $len linear $origin 0" || fail "create failed"
flakey_create flaky "$bad" 0 1 error_writes
fio --name=guest "${fio_job[@]}" --size=16M --offset_increment=16M --filename="/dev/mapper/$disk" \
	--output="$TEST_TMP/fio.log" &
writer=$!
"$DMMIG" move "$disk" "/dev/mapper/$DEV_PREFIX-flaky" --no-progress >"$TEST_TMP/move.log" 2>&1 &&
	fail "move to a failing destination succeeded"
diag_file "$TEST_TMP/move.log"
grep -q 'stays on its origin' "$TEST_TMP/move.log" || fail "no rollback message"
[ "$(dmsetup table "$disk")" = "0 $len linear $(devnum "$origin") 0" ] || fail "not rolled back: $(dmsetup table "$disk")"
wait $writer || fail "fio failed"
grep -q 'err= 0' "$TEST_TMP/fio.log" || fail "fio saw errors"
fio_verify_only "$origin" 64 "$TEST_TMP/verify.log"

# Bad inputs: each with its message and exit code.
expect() { # expect CODE PATTERN CMD...
	local code=$1 pattern=$2 out rc
	shift 2
	out=$("$DMMIG" "$@" 2>&1); rc=$?
	[ "$rc" = "$code" ] || fail "'dmmig $*' exited $rc, not $code: $out"
	echo "$out" | grep -q "$pattern" || fail "'dmmig $*' said '$out', not '$pattern'"
	diag "dmmig $* -> $rc: $out"
}
expect 3 "no device-mapper device named" move "$DEV_PREFIX-nosuch" "$TEST_TMP/x.img"
expect 2 "too small" move "$disk" "$small"
expect 2 "not a device-mapper device" move "$origin" "$TEST_TMP/x.img"
expect 2 "in use" move "$disk" "$origin"
expect 2 "the disk itself" move "$disk" "/dev/mapper/$disk"
mkdir -p "$TEST_TMP/full" && mount -t tmpfs -o size=1M tmpfs "$TEST_TMP/full" || fail "tmpfs failed"
expect 2 "not enough space" move "$disk" "$TEST_TMP/full/new.img"
umount "$TEST_TMP/full"
[ -e "$TEST_TMP/x.img" ] && fail "a failed move left an image behind"
expect 2 "single linear segment" move "$DEV_PREFIX-flaky" "$TEST_TMP/x.img"
# Options are checked with the target's own grammar before anything is created.
expect 2 "Region size is not a power of two" move "$disk" "$TEST_TMP/x.img" --region-size 100
[ -e "$TEST_TMP/x.img" ] && fail "a refused move left an image behind"
# When the kernel refuses a table anyway, dmmig says why in the kernel's words.
dmsetup create "$DEV_PREFIX-other" --table "0 $len linear $origin 0" || fail "create failed"
expect 1 "Origin and destination are the same device" load "$DEV_PREFIX-other" \
	--table "0 $len migrate $origin $origin"
dmsetup remove "$DEV_PREFIX-other"
setpriv --reuid=65534 --regid=65534 --clear-groups "$DMMIG" move "$disk" "$TEST_TMP/x.img" 2>/dev/null
[ $? = 4 ] || fail "move as non-root: exit code not 4"

# SIGTERM in the middle of a (slow) move rolls back and removes the image it created; a second
# move of the same disk meanwhile is refused.
"$DMMIG" move "$disk" "$TEST_TMP/y.img" --rate 1 --no-progress >"$TEST_TMP/term.log" 2>&1 &
mover=$!
for _ in $(seq 50); do [ "$(migrate_state disk)" = copying ] && break; sleep 0.2; done
[ "$(migrate_state disk)" = copying ] || fail "the slow move did not start"
expect 2 "another dmmig move" move "$disk" "$TEST_TMP/z.img"
kill -TERM $mover
wait $mover && fail "an interrupted move exited 0"
diag_file "$TEST_TMP/term.log"
[ "$(dmsetup table "$disk")" = "0 $len linear $(devnum "$origin") 0" ] || fail "not rolled back after SIGTERM"
[ -e "$TEST_TMP/y.img" ] && fail "the image of the interrupted move is still there"
losetup -a | grep -q y.img && fail "the loop device of the interrupted move is still attached"
pass
