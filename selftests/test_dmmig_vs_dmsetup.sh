#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# dmmig create/load/suspend/resume/remove work, and its ls, info, status, table, message and wait
# print what the real dmsetup prints for the same devices; --json parses; errors have their codes.
. "$(dirname "$0")/lib.sh"
need_dmmig
load_migrate
make_loop origin 16
make_loop dest 16
len=$(sectors "$origin")
a=$DEV_PREFIX-a b=$DEV_PREFIX-b
same() { # same DESCRIPTION CMD...: dmmig and dmsetup print the same
	local what=$1 ours theirs
	shift
	ours=$("$DMMIG" "$@" 2>&1) || fail "dmmig $* failed: $ours"
	theirs=$(dmsetup "$@" 2>&1) || fail "dmsetup $* failed: $theirs"
	if [ "$ours" != "$theirs" ]; then
		diag "dmmig:   $ours"
		diag "dmsetup: $theirs"
		fail "$what differs from dmsetup"
	fi
}
"$DMMIG" create "$a" --table "0 $len linear $origin 0" || fail "create failed"
[ -b "/dev/mapper/$a" ] || fail "no node /dev/mapper/$a"
echo "0 $len migrate $origin $dest 2 rate 1" | "$DMMIG" create "$b" || fail "create from stdin failed"
# Hold the copy still, so both tools read the same counters: the first round done, then paused
# (a paused copy reports no rate).
wait_field b 2 "32/$((len / 128))"
"$DMMIG" pause "$b" || fail "pause failed"
same "ls" ls
same "info" info "$a"
same "info of a paused migrate device" info "$b"
same "table" table "$b"
same "status" status "$a"
same "status" status "$b"
same "message" message "$b" 0 depth 8
events=$(dm_events b)
"$DMMIG" message "$b" 0 rate 0 && "$DMMIG" continue "$b" || fail "message failed"
timeout 60 "$DMMIG" wait "$b" "$events" >/dev/null || fail "dmmig wait did not return on the switch"
[ "$(migrate_state b)" = switched ] || fail "dmmig wait returned before the switch: $(migrate_state b)"
same "status after the switch" status "$b"
same "wait for a past event" wait "$b" 0
# JSON output parses and carries the fields.
"$DMMIG" --json status "$b" | python3 -c 'import json,sys; d=json.load(sys.stdin); assert d[0]["target_type"] == "migrate" and d[0]["params"].startswith("switched")' ||
	fail "status --json"
"$DMMIG" --json info "$a" | python3 -c 'import json,sys; d=json.load(sys.stdin); assert d["state"] == "ACTIVE" and d["live_table"]' ||
	fail "info --json"
"$DMMIG" --json ls | python3 -c 'import json,sys; d=json.load(sys.stdin); assert len(d) >= 2' || fail "ls --json"
# Load, suspend and resume swap the table.
"$DMMIG" load "$a" --table "0 $len linear $dest 0" && "$DMMIG" suspend "$a" && "$DMMIG" resume "$a" ||
	fail "load/suspend/resume failed"
[ "$("$DMMIG" table "$a")" = "0 $len linear $(devnum "$dest") 0" ] || fail "table not swapped"
# mknodes puts back a node that went missing.
rm "/dev/mapper/$a"
"$DMMIG" mknodes "$a" && [ -b "/dev/mapper/$a" ] || fail "mknodes did not make the node"
# Errors and exit codes.
"$DMMIG" info "$DEV_PREFIX-nosuch" 2>/dev/null; [ $? = 3 ] || fail "missing device: exit code not 3"
"$DMMIG" message "$b" 0 frobnicate 2>/dev/null; [ $? = 1 ] || fail "refused message: exit code not 1"
"$DMMIG" create "$DEV_PREFIX-c" --table "0 8x linear $origin 0" 2>/dev/null; [ $? = 2 ] ||
	fail "bad table: exit code not 2"
"$DMMIG" bogus 2>/dev/null; [ $? = 2 ] || fail "bad subcommand: exit code not 2"
setpriv --reuid=65534 --regid=65534 --clear-groups "$DMMIG" ls 2>/dev/null; [ $? = 4 ] ||
	fail "not root: exit code not 4"
"$DMMIG" remove "$a" && "$DMMIG" remove "$b" || fail "remove failed"
[ -e "/dev/mapper/$a" ] && fail "node left after remove"
pass
