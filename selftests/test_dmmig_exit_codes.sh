#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# dmmig's exit status says what happened, as its manual says, also for a user who is not root and
# for a move stopped by a signal: a usage error is 2 (not 4) without root, inspecting a readable
# metadata file needs no root (0), attaching an NBD device without root is 4 before any network
# traffic; Ctrl-C (SIGINT) stops a move with 130 and SIGHUP (a closed terminal) with 129, each
# rolled back with nothing left behind (image, loop device, record); a multi-disk move's --json
# lists every disk, a failed one with its error and where it is.
. "$(dirname "$0")/lib.sh"
need_dmmig
load_migrate
as_nobody() { setpriv --reuid=65534 --regid=65534 --clear-groups "$DMMIG" "$@"; }
# exits WANT WHAT CMD...: CMD exits WANT.
exits() {
	local want=$1 what=$2 rc
	shift 2
	"$@" >"$TEST_TMP/out.log" 2>&1
	rc=$?
	diag "$what -> $rc: $(head -c 300 "$TEST_TMP/out.log")"
	[ "$rc" = "$want" ] || fail "$what exited $rc, not $want: $(cat "$TEST_TMP/out.log")"
}
exits 2 "create with a bad table line, not root" as_nobody create x --table "zero eight linear"
exits 2 "move with a bad option value, not root" as_nobody move x "$TEST_TMP/x.img" --region-size 3
make_metadata meta
cp "$meta" "$TEST_TMP/meta.img" && chmod 644 "$TEST_TMP/meta.img" && chmod 755 "$TEST_TMP"
exits 0 "inspect a readable metadata file, not root" as_nobody inspect "$TEST_TMP/meta.img"
start=$(date +%s%N)
exits 4 "nbd connect, not root" as_nobody nbd connect nbd://192.0.2.1/x
took_ms=$((($(date +%s%N) - start) / 1000000))
[ "$took_ms" -lt 2000 ] || fail "nbd connect as non-root took $took_ms ms: it tried the network first"

make_loop origin 16
len=$(sectors "$origin")
disk=$DEV_PREFIX-disk
dmsetup create "$disk" --table "0 $len linear $origin 0" || fail "create failed"
table="0 $len linear $(devnum "$origin") 0"
loops_before=$(losetup -a | wc -l)
# stopped SIGNAL STATUS: a slow move, stopped by SIGNAL once it copies, exits STATUS and is
# rolled back with nothing left.
stopped() {
	local signal=$1 want=$2 mover rc
	"$DMMIG" move "$disk" "$TEST_TMP/new.img" --rate 1 --no-progress >"$TEST_TMP/move.log" 2>&1 &
	mover=$!
	for _ in $(seq 100); do [ "$(migrate_state disk)" = copying ] && break; sleep 0.1; done
	[ "$(migrate_state disk)" = copying ] || fail "the slow move did not start: $(cat "$TEST_TMP/move.log")"
	kill "-$signal" "$mover"
	wait "$mover"
	rc=$?
	diag "SIG$signal -> $rc: $(tr '\n' ' ' <"$TEST_TMP/move.log")"
	[ "$rc" = "$want" ] || fail "a move stopped by SIG$signal exited $rc, not $want"
	[ "$(dmsetup table "$disk")" = "$table" ] || fail "not rolled back after SIG$signal: $(dmsetup table "$disk")"
	[ ! -e "$TEST_TMP/new.img" ] || fail "SIG$signal left the new image"
	[ ! -e "$TEST_TMP/new.img.dmmig-meta" ] || fail "SIG$signal left the metadata file"
	[ "$(losetup -a | wc -l)" = "$loops_before" ] || fail "SIG$signal left a loop device: $(losetup -a)"
	[ -z "$(ls -A "$DMMIG_STATE_DIR" 2>/dev/null)" ] || fail "SIG$signal left a record: $(ls "$DMMIG_STATE_DIR")"
}
stopped INT 130
stopped HUP 129

# Two disks, the second onto a device too small: the move fails, and --json says so for each.
make_loop origin2 16
make_loop small 1
disk2=$DEV_PREFIX-disk2
dmsetup create "$disk2" --table "0 $len linear $origin2 0" || fail "create failed"
"$DMMIG" --json move "$disk" "$disk2" --to "$TEST_TMP/a.img" "$small" --no-progress \
	>"$TEST_TMP/multi.json" 2>"$TEST_TMP/multi.err" && fail "a move onto a device too small succeeded"
diag "--json: $(cat "$TEST_TMP/multi.json")"
python3 - "$TEST_TMP/multi.json" "$disk" "$disk2" <<'PY' || fail "--json does not list every disk of the move"
import json, sys
entries = json.load(open(sys.argv[1]))
assert [e["device"] for e in entries] == sys.argv[2:], entries
failed = [e for e in entries if "error" in e]
assert failed and all(e["where"] for e in failed), entries
PY
pass
