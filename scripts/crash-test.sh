#!/usr/bin/env bash
# make crash-test: kills QEMU (SIGKILL) at random times during a `dmmig move` under a verifying
# writer, boots again, runs `dmmig recover`, and verifies every acknowledged write. The disks
# are virtio disks backed by files on the host, so they keep what the guest had written when
# QEMU died: vda the origin (a linear "disk" over it is the guest's disk), vdb the destination,
# vdc the metadata. Prints a table of the kills (phase at the kill as the metadata recorded it,
# regions recorded, acknowledged writes, outcome) and fails if any kill lost a write, if a kill
# found no acknowledged write or a failed `dmmig move`, and if no kill landed in one of the two
# phases a recovery must handle (copying, switched).
#
# The disks are opened with cache=none, as a production VM's are (O_DIRECT on the host). A QEMU
# kill keeps every write the host completed whatever the cache mode, so these kills test what
# the guest had completed, not the order of flushes: a write the guest did not flush is kept.
#
#   scripts/crash-test.sh KDIR [KILLS] [REPORT.md]
set -uo pipefail
. "$(dirname "$0")/common.sh"

kdir=${1:?usage: scripts/crash-test.sh KDIR [KILLS] [REPORT]}
kills=${2:-12}
report=${3:-}
mib=32
work=$(mktemp -d /tmp/dm-migrate-crash.XXXXXX)
trap 'rm -rf "$work"' EXIT
results=$work/results
head -c $((mib << 20)) /dev/urandom >"$work/origin.init"
dmmig=$REPO_ROOT/target/debug/dmmig
[ -x "$dmmig" ] || die "dmmig is not built: cargo build -p dmmig"
[ -f "$REPO_ROOT/dm-migrate.ko" ] || die "dm-migrate.ko is not built: make vm-module"

# The guest's side of a boot: PHASE move (start the writer and the move) or recover.
cat >"$work/guest.sh" <<GUEST
#!/bin/bash
set -u
export DMMIG_STATE_DIR=/run/results/state
insmod $(printf %q "$REPO_ROOT/dm-migrate.ko") || exit 1
disk=/dev/mapper/disk
case \$1 in
move)
	dmsetup create disk --table "0 \$(blockdev --getsz /dev/vda) linear /dev/vda 0" || exit 1
	# The writer's log is on the host share: what it holds when QEMU dies is what was acknowledged.
	python3 $(printf %q "$REPO_ROOT/selftests/crashwriter.py") write \$disk 0 $((mib * 256 / 2)) \$((RANDOM + 1)) /run/results/writer.log 2>/run/results/writer.err &
	sleep 1
	echo moving >/run/results/stage
	$dmmig move disk /dev/vdb --metadata /dev/vdc --rate 4096 --no-progress >/run/results/move.log 2>&1
	echo "moved \$?" >/run/results/stage
	sleep 600
	;;
recover)
	printf '%d:%d\n' "\$((0x\$(stat -c %t /dev/vdb)))" "\$((0x\$(stat -c %T /dev/vdb)))" >/run/results/vdb
	printf '%d:%d\n' "\$((0x\$(stat -c %t /dev/vda)))" "\$((0x\$(stat -c %T /dev/vda)))" >/run/results/vda
	$dmmig --json inspect /dev/vdc >/run/results/inspect.json 2>&1
	if grep -q '"phase": "blank"' /run/results/inspect.json; then
		# Killed before the migrate table was loaded: the disk is on its origin.
		dmsetup create disk --table "0 \$(blockdev --getsz /dev/vda) linear /dev/vda 0" || exit 1
	else
		$dmmig recover disk --origin /dev/vda --dest /dev/vdb --metadata /dev/vdc --no-progress \
			>/run/results/recover.log 2>&1 || { cat /run/results/recover.log; exit 2; }
	fi
	dmsetup table disk >/run/results/table
	python3 $(printf %q "$REPO_ROOT/selftests/crashwriter.py") verify \$disk $((mib * 256)) $(printf %q "$work/origin.init") /run/results/writer.log >/run/results/verify.log 2>&1
	echo \$? >/run/results/verified
	;;
esac
GUEST
chmod +x "$work/guest.sh"

rows=()
lost=0 bad=0
declare -A phases=()
for ((i = 1; i <= kills; i++)); do
	rm -rf "$results" && mkdir -p "$results/state"
	cp "$work/origin.init" "$work/vda.img"
	truncate -s 0 "$work/vdb.img" "$work/vdc.img"
	truncate -s "${mib}M" "$work/vdb.img"
	truncate -s 1M "$work/vdc.img"
	disks="-drive file=$work/vda.img,if=virtio,format=raw,cache=none"
	disks+=" -drive file=$work/vdb.img,if=virtio,format=raw,cache=none"
	disks+=" -drive file=$work/vdc.img,if=virtio,format=raw,cache=none"
	# The copy takes about 8 s at 4 MiB/s after the move starts; kill anywhere from just
	# before it to a few seconds after the switch.
	delay_ms=$((RANDOM % 12000 + 500))
	VM_KEEP_RESULTS=$results VM_EXTRA_ARGS="$disks -name crashtest$$" VM_TIMEOUT=600 \
		"$REPO_ROOT/scripts/vm.sh" "$kdir" "$work/guest.sh" move >"$work/boot1.log" 2>&1 &
	vm=$!
	until [ -f "$results/stage" ] || ! kill -0 $vm 2>/dev/null; do sleep 0.1; done
	sleep "$((delay_ms / 1000)).$(printf %03d $((delay_ms % 1000)))"
	stage=$(cat "$results/stage" 2>/dev/null)
	pkill -9 -f "crashtest$$"
	wait $vm 2>/dev/null
	VM_KEEP_RESULTS=$results VM_EXTRA_ARGS="$disks" VM_TIMEOUT=600 \
		"$REPO_ROOT/scripts/vm.sh" "$kdir" "$work/guest.sh" recover >"$work/boot2.log" 2>&1
	phase=$(sed -n 's/.*"phase": "\(.*\)".*/\1/p' "$results/inspect.json")
	copied=$(sed -n 's/.*"copied_regions": \([0-9]*\).*/\1/p' "$results/inspect.json")
	dirty=$(sed -n 's/.*"dirty_regions": \([0-9]*\).*/\1/p' "$results/inspect.json")
	writes=$(grep -c '^[0-9]' "$results/writer.log" 2>/dev/null)
	table=$(cat "$results/table" 2>/dev/null)
	on_dest=$(cat "$results/vdb" 2>/dev/null) on_origin=$(cat "$results/vda" 2>/dev/null)
	verified=$(cat "$results/verified" 2>/dev/null)
	if [ "${writes:-0}" -eq 0 ]; then
		# A writer that died at once (an I/O error) or never ran proves nothing.
		outcome="BAD: no write was acknowledged: $(head -c 200 "$results/writer.err" 2>/dev/null)"
		bad=$((bad + 1))
	elif [[ $stage == moved* ]] && [ "$stage" != "moved 0" ]; then
		outcome="BAD: dmmig move failed before the kill: $(tail -1 "$results/move.log" 2>/dev/null)"
		bad=$((bad + 1))
	elif [ "$verified" != 0 ]; then
		outcome="LOST: $(tail -1 "$results/verify.log" 2>/dev/null) table '$table'"
		lost=$((lost + 1))
		sed 's/^/# /' "$work/boot2.log" | tail -30
	elif [[ $phase == copying || $phase == switched ]] && [[ $table == *" linear $on_dest 0" ]]; then
		outcome="ok: all verified, on the destination"
	elif [ "$phase" = blank ] && [ "$stage" = moving ] && [[ $table == *" linear $on_origin 0" ]]; then
		outcome="ok: all verified, on the origin (the move had not written its metadata)"
	else
		outcome="BAD: metadata '$phase', dmmig '$stage', table '$table'"
		bad=$((bad + 1))
		sed 's/^/# /' "$work/boot2.log" | tail -30
	fi
	phases[${phase:-?}]=$((${phases[${phase:-?}]:-0} + 1))
	row="| $i | ${delay_ms} ms after the move began | ${stage:-booting} | ${phase:-?} | ${copied:-?} | ${dirty:-?} | ${writes:-0} | $outcome |"
	echo "$row"
	rows+=("$row")
done

summary=$(for p in "${!phases[@]}"; do printf '%s %s\n' "$p" "${phases[$p]}"; done | sort |
	awk '{ printf "%s%s %d", sep, $1, $2; sep = ", " }')
{
	echo "| kill | when | dmmig at the kill | metadata phase | regions recorded copied | dirty | acknowledged writes | outcome |"
	echo "|---|---|---|---|---|---|---|---|"
	printf '%s\n' "${rows[@]}"
} >"$work/table.md"
cat "$work/table.md"
if [ -n "$report" ]; then
	{
		echo "# make crash-test, $(date +%Y-%m-%d)"
		echo
		echo "$kills QEMU kills (SIGKILL) during \`dmmig move\` of a ${mib} MiB disk (virtio, host files) at 4 MiB/s,"
		echo "under a verifying writer on the first half; each followed by a boot, \`dmmig recover\`, and a check"
		echo "of every block against the writer's log of acknowledged writes. The metadata"
		echo "phase and counts are as \`dmmig inspect\` read them before the recovery. Kernel $(cat "$kdir/include/config/kernel.release"), TCG, 2 CPUs."
		echo "The disks are opened with cache=none; a QEMU kill keeps every write the host completed,"
		echo "whatever the cache mode, so these kills do not test the order of flushes."
		echo
		echo "Kills by the metadata's phase: $summary."
		echo
		cat "$work/table.md"
	} >"$report"
fi
[ "$lost" -eq 0 ] || die "$lost of $kills kills lost acknowledged writes"
[ "$bad" -eq 0 ] || die "$bad of $kills kills tested nothing or ended wrongly (see the table)"
[ "${phases[copying]:-0}" -gt 0 ] && [ "${phases[switched]:-0}" -gt 0 ] ||
	die "no kill landed in one of the phases copying and switched ($summary)"
log "crash-test: $kills kills, no acknowledged write lost"
