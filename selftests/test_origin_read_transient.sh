#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# An origin read error that goes away (the first region's sectors fail reads until the origin's
# table is reloaded, as after a path failover) is retried and survived: the migration switches
# and the destination holds every byte.
. "$(dirname "$0")/lib.sh"
load_migrate
make_loop disk 8
make_loop dest 8
len=$(sectors "$disk")
printf '0 128 error\n128 %d linear %s 128\n' $((len - 128)) "$disk" |
	dmsetup create "$DEV_PREFIX-src" || fail "src failed"
dm_create mig "0 $len migrate $(dm_path src) $dest 2 copy_depth 1" || fail "create failed"
start=$SECONDS
until [ "$(migrate_field mig 7)" -ge 1 ]; do
	[ $((SECONDS - start)) -lt 30 ] || fail "no read error seen: $(dmsetup status "$DEV_PREFIX-mig")"
	sleep 0.05
done
# The retries wait 0.5, 1, 2 and 4 s: the origin is mended well before they run out.
dm_reload src "0 $len linear $disk 0"
wait_state mig switched 60
errors=$(migrate_field mig 7)
[ "$errors" -ge 1 ] && [ "$errors" -le 4 ] || fail "errors: $errors"
dmsetup remove "$DEV_PREFIX-mig" || fail "remove failed"
same_bytes "$disk" "$dest"
pass
