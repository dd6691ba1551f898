#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# A destination with a larger logical block size than the origin is refused (the disk's block
# size would change under the guest at the switch); a smaller one is accepted.
. "$(dirname "$0")/lib.sh"
load_migrate
make_loop origin512 8
make_loop dest4k 8 --sector-size 4096
make_loop origin4k 8 --sector-size 4096
make_loop dest512 8
[ "$(blockdev --getss "$dest4k")" = 4096 ] || skip "loop devices cannot have 4 KiB sectors here"
expect_reject "0 $(sectors "$origin512") migrate $origin512 $dest4k" \
	"Destination logical block size larger than the origin's"
dm_create smaller "0 $(sectors "$origin4k") migrate $origin4k $dest512" ||
	fail "a destination with a smaller block size was refused"
pass
