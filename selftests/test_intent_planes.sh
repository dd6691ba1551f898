#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# With a metadata device, the write-intent state is held in memory only for the chunks of 6528
# regions the guest wrote lately (issue 24), from spare pages the metadata thread allocates: a
# write to a clean chunk takes a spare under the routing lock, or waits until the thread has
# given more. Here the guest writes to 32 chunks at once while every metadata write takes a
# second, so the 16 spares run out and writes wait for pages. Every write must complete and be
# on both devices, and once the commits have cleared the intents, the pages are given back.
. "$(dirname "$0")/lib.sh"
load_migrate
# 512-byte regions: a chunk is 3264 KiB, and 128 MiB has 40 of them.
make_loop origin 128
make_loop dest 128
make_metadata meta
len=$(sectors "$origin")
mlen=$(sectors "$meta")
chunk_bytes=$((6528 * 512))
dm_create lm "0 $mlen linear $meta 0" || fail "cannot create the metadata device"
dm_create mig "0 $len migrate $origin $dest 5 metadata $(dm_path lm) region_size 1 no_switch" ||
	fail "create failed"
wait_state mig synced
sys=$(dm_sysfs mig)/migrate
[ "$(cat "$sys/intent_chunks")" = 0 ] || fail "intent state held before any write: $(cat "$sys/intent_chunks") chunks"
# Metadata writes take a second from now on: the first writes wait for their intent bits
# meanwhile, and the others find the spares taken.
dm_reload lm "0 $mlen delay $meta 0 0 $meta 0 1000"
pids=()
for k in $(seq 0 31); do
	head -c 4096 /dev/urandom >"$TEST_TMP/w$k"
	dd if="$TEST_TMP/w$k" of="$(dm_path mig)" bs=4096 count=1 oflag=direct status=none \
		seek=$(((k * chunk_bytes + k * 8192) / 4096)) &
	pids+=($!)
done
for k in $(seq 0 31); do
	wait "${pids[$k]}" || fail "write $k failed"
done
waits=$(cat "$sys/intent_plane_waits")
chunks=$(cat "$sys/intent_chunks")
diag "writes that waited for pages: $waits; chunks with intent state: $chunks"
[ "$waits" -gt 0 ] || fail "no write waited for a page: the spares did not run out, nothing was tested"
[ "$chunks" -gt 16 ] || fail "$chunks chunks hold intent state after writes to 32: pages were not added"
[ "$(migrate_state mig)" = synced ] || fail "state: $(migrate_state mig)"
dm_reload lm "0 $mlen linear $meta 0"
for dev in "$(dm_path mig)" "$origin" "$dest"; do
	blockdev --flushbufs "$dev"
	for k in $(seq 0 31); do
		cmp -n 4096 -i 0:$((k * chunk_bytes + k * 8192)) "$TEST_TMP/w$k" "$dev" ||
			fail "write $k is not on $dev"
	done
done
# Untouched for a commit interval, the intents are cleared, and their pages go.
deadline=$((SECONDS + 30))
until [ "$(cat "$sys/intent_chunks")" = 0 ]; do
	[ $SECONDS -lt $deadline ] || fail "intent state still held for $(cat "$sys/intent_chunks") chunks after 30 s"
	sleep 0.5
done
pass
