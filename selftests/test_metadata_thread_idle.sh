#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Writes that wait for their intent bit when the migration ends (here a cancel, with a slow
# metadata device) go on to the origin, and the metadata thread goes back to sleep: it must not
# spin on intents nobody will write.
. "$(dirname "$0")/lib.sh"
load_migrate
make_loop origin 16
make_loop dest 16
make_metadata meta
len=$(sectors "$origin")
mlen=$(sectors "$meta")
dm_create lm "0 $mlen linear $meta 0" || fail "cannot create the metadata device"
dm_create mig "0 $len migrate $origin $dest 2 metadata $(dm_path lm)" || fail "create failed"
wait_state mig switched
dmsetup remove "$DEV_PREFIX-mig" || fail "remove failed"
dd if=/dev/zero of="$(dm_path lm)" bs=1M count=1 oflag=direct status=none || fail "cannot zero"
dm_create mig "0 $len migrate $origin $dest 3 metadata $(dm_path lm) no_switch" ||
	fail "create failed"
wait_state mig synced
# Metadata writes take a second from now on.
dm_reload lm "0 $mlen delay $meta 0 0 $meta 0 1000"
head -c 4096 /dev/urandom >"$TEST_TMP/w0"
head -c 4096 /dev/urandom >"$TEST_TMP/w1"
dd if="$TEST_TMP/w0" of="$(dm_path mig)" bs=4096 count=1 oflag=direct status=none &
writer0=$!
sleep 0.3
dd if="$TEST_TMP/w1" of="$(dm_path mig)" bs=4096 count=1 seek=1024 oflag=direct status=none &
writer1=$!
sleep 0.3
dmsetup message "$DEV_PREFIX-mig" 0 cancel || fail "cancel failed"
wait $writer0 || fail "the first write failed"
wait $writer1 || fail "the second write failed"
[ "$(migrate_state mig)" = cancelled ] || fail "state: $(migrate_state mig)"
# Cancelled: the origin is the disk, and holds both writes.
blockdev --flushbufs "$origin"
cmp -n 4096 "$TEST_TMP/w0" "$origin" || fail "the first write is not on the origin"
cmp -n 4096 -i 0:$((1024 * 4096)) "$TEST_TMP/w1" "$origin" || fail "the second write is not on the origin"
cmp -n 4096 "$TEST_TMP/w0" "$(dm_path mig)" || fail "the first write does not read back"
pid=
for f in /proc/[0-9]*/comm; do
	[ "$(cat "$f" 2>/dev/null)" = dm-migrate/metadata ] && pid=${f#/proc/} && pid=${pid%/comm}
done
[ -n "$pid" ] || fail "no metadata thread"
ticks() { awk '{ print $14 + $15 }' "/proc/$pid/stat"; }
before=$(ticks)
sleep 2
used=$(($(ticks) - before))
diag "the metadata thread used $used ticks of CPU in 2 s"
[ "$used" -le 20 ] || fail "the metadata thread spins: $used ticks in 2 s"
pass
