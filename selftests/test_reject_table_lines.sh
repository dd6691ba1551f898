#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Malformed table lines, 48 of them, are each refused with the reason documented in
# Documentation/dm-migrate.rst in the kernel log, and leave no device behind.
. "$(dirname "$0")/lib.sh"
load_migrate
make_loop origin 8
make_loop dest 8
make_loop small 4
make_loop big_block 8
losetup --sector-size 4096 "$big_block" 2>/dev/null || skip "losetup cannot set 4 KiB sectors"
len=$(sectors "$origin")
o=$origin d=$dest
m="0 $len migrate"
count="Invalid argument count"
n_opt="Invalid number of optional arguments"
mismatch="Number of optional arguments does not match the words given"
unknown="Unknown optional argument"
dup="Duplicate optional argument"
missing="Missing value for optional argument"
rs_bad="Invalid region size"
rs_pow="Region size is not a power of two"
rs_range="Region size out of range (1 to 2097152 sectors)"
rs_block="Region size is not a multiple of the logical block size"
depth="Invalid copy depth (1 to 16)"
rate="Invalid rate"
words="Invalid arguments (too many, or not UTF-8)"
cases=(
	"$m|$count"
	"$m $o|$count"
	"$m $o $d 1|$mismatch"
	"$m $o $d x|$n_opt"
	"$m $o $d -1 no_switch|$n_opt"
	"$m $o $d 0x1 no_switch|$n_opt"
	"$m $o $d 1 no_switch extra|$mismatch"
	"$m $o $d 2 no_switch|$mismatch"
	"$m $o $d 99999999999999999999999 no_switch|$n_opt"
	"$m $o $d 1 frobnicate|$unknown"
	"$m $o $d 2 region-size 8|$unknown"
	"$m $o $d 2 no_switch no_switch|$dup"
	"$m $o $d 4 rate 1 rate 2|$dup"
	"$m $o $d 4 region_size 8 REGION_SIZE 8|$dup"
	"$m $o $d 1 region_size|$missing"
	"$m $o $d 1 copy_depth|$missing"
	"$m $o $d 1 rate|$missing"
	"$m $o $d 2 region_size x|$rs_bad"
	"$m $o $d 2 region_size -8|$rs_bad"
	"$m $o $d 2 region_size 0x8|$rs_bad"
	"$m $o $d 2 region_size 8k|$rs_bad"
	"$m $o $d 2 region_size 18446744073709551616|$rs_bad"
	"$m $o $d 2 region_size 100|$rs_pow"
	"$m $o $d 2 region_size 0|$rs_pow"
	"$m $o $d 2 region_size 4194304|$rs_range"
	"$m $big_block $d 2 region_size 4|$rs_block"
	"$m $big_block $d 2 region_size 1|$rs_block"
	"$m $o $d 2 copy_depth 0|$depth"
	"$m $o $d 2 copy_depth 17|$depth"
	"$m $o $d 2 copy_depth x|$depth"
	"$m $o $d 2 copy_depth -1|$depth"
	"$m $o $d 2 rate x|$rate"
	"$m $o $d 2 rate -5|$rate"
	"$m $o $d 2 rate 1.5|$rate"
	"$m $o $d 2 rate 18446744073709551616|$rate"
	"$m $o $d 2 mirror later|Invalid mirror mode (sync or async)"
	"$m $o $d 1 mirror|$missing"
	"$m $o $d 4 mirror sync mirror async|$dup"
	"$m $o $d 2 mirror_lag 0|Invalid mirror_lag (1 to 1048576 KiB)"
	"$m $o $d 2 mirror_lag 1048577|Invalid mirror_lag (1 to 1048576 KiB)"
	"$m /dev/nonexistent $d|Error opening origin device"
	"$m $o /dev/nonexistent|Error opening destination device"
	"$m $o $o|Origin and destination are the same device"
	"$m $o $(devnum "$o")|Origin and destination are the same device"
	"$m $small $d|Origin device too small"
	"$m $o $small|Destination device too small"
	"$m $o $big_block|Destination logical block size larger than the origin's"
	"$m $o $d 30 $(printf 'no_switch %.0s' {1..30})|$words"
)
n=0
for c in "${cases[@]}"; do
	expect_reject "${c%|*}" "${c#*|}"
	n=$((n + 1))
done
[ $n -ge 40 ] || fail "only $n table lines tried"
diag "$n malformed table lines refused"
pass
