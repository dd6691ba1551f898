#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""A writer whose acknowledged writes can be verified after a crash.

    crashwriter.py write DEV FIRST COUNT SEED LOG
        Writes 4 KiB blocks at random among blocks FIRST..FIRST+COUNT of DEV with O_DIRECT,
        one at a time, until killed, and appends "BLOCK SEQ" to LOG after each write returned
        (was acknowledged). Every block's content names its block and a sequence number unique
        to the write, and the rest is derived from both, so any complete write can be told
        from any other and from garbage.

    crashwriter.py verify DEV BLOCKS INITIAL LOG...
        Checks blocks 0..BLOCKS of DEV: a block the logs name must hold its last logged write
        or a later one of this writer (one in flight at the crash may have landed); a block
        they do not name must hold its INITIAL content (a file) or a write of this writer.
        Prints every violation and exits 1 if there is any.
"""

import hashlib
import mmap
import os
import random
import struct
import sys

BLOCK = 4096
MAGIC = b"CRASHWR1"


def content(block, seq):
    header = MAGIC + struct.pack("<QQ", block, seq)
    seed = hashlib.sha256(header).digest()
    body = (seed * (BLOCK // len(seed) + 1))[: BLOCK - len(header)]
    return header + body


def parse(data):
    """The (block, seq) a block's content is a complete write of, or None."""
    if data[:8] != MAGIC:
        return None
    block, seq = struct.unpack("<QQ", data[8:24])
    return (block, seq) if content(block, seq) == data else None


def write(dev, first, count, seed, log):
    rng = random.Random(seed)
    fd = os.open(dev, os.O_WRONLY | os.O_DIRECT)
    logfd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    buf = mmap.mmap(-1, BLOCK)
    # Sequence numbers are unique across writers: the seed picks the high bits.
    seq = seed << 40
    while True:
        seq += 1
        block = first + rng.randrange(count)
        buf.seek(0)
        buf.write(content(block, seq))
        if os.pwrite(fd, buf, block * BLOCK) != BLOCK:
            sys.exit("short write")
        os.write(logfd, b"%d %d\n" % (block, seq))


def verify(dev, blocks, initial, logs):
    last = {}
    for log in logs:
        with open(log, "rb") as f:
            for line in f:
                # A line cut by the kill is not a logged write.
                if not line.endswith(b"\n"):
                    continue
                block, seq = map(int, line.split())
                last[block] = max(last.get(block, 0), seq)
    bad = 0
    with open(dev, "rb", buffering=0) as d, open(initial, "rb") as init:
        for block in range(blocks):
            data = d.read(BLOCK)
            orig = init.read(BLOCK)
            found = parse(data)
            if found is not None and found[0] != block:
                print(f"# block {block} holds block {found[0]}'s write {found[1]}")
                bad += 1
            elif block in last:
                if found is None:
                    print(f"# block {block}: acknowledged write {last[block]} lost "
                          f"({'initial content' if data == orig else 'garbage'})")
                    bad += 1
                elif found[1] < last[block]:
                    print(f"# block {block}: acknowledged write {last[block]} lost "
                          f"(older write {found[1]})")
                    bad += 1
            elif found is None and data != orig:
                print(f"# block {block}: never written, yet neither initial nor a write")
                bad += 1
    print(f"# verified {blocks} blocks, {len(last)} with acknowledged writes: {bad} bad")
    return 1 if bad else 0


def main():
    if len(sys.argv) == 7 and sys.argv[1] == "write":
        write(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6])
    elif len(sys.argv) >= 6 and sys.argv[1] == "verify":
        sys.exit(verify(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5:]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
