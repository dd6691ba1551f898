#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""A writer whose acknowledged writes can be verified after a crash.

    crashwriter.py write DEV FIRST COUNT SEED LOG
        Writes 4 KiB blocks at random among blocks FIRST..FIRST+COUNT of DEV with O_DIRECT,
        one at a time, until killed. LOG starts with a line "seed SEED" (written before the
        first write), then gets "BLOCK SEQ" after each write returned (was acknowledged).
        Every block's content names its block and a sequence number unique to the write (the
        seed is its high bits), and the rest is derived from both, so any complete write can be
        told from any other and from garbage.

    crashwriter.py verify DEV BLOCKS INITIAL LOG...
        Checks blocks 0..BLOCKS of DEV: a block the logs name must hold its last logged write
        or a later one of the same writer (one in flight at the crash may have landed); a block
        they do not name must hold its INITIAL content (a file) or a write of one of these
        writers. A write of a writer whose seed no log names (an earlier run's) is stale data.
        A log that is /dev/null stands for no writer at all. Prints every violation and exits
        1 if there is any.
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
    os.write(logfd, b"seed %d\n" % seed)
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
    seeds = set()
    for log in logs:
        with open(log, "rb") as f:
            if log != "/dev/null":
                header = f.readline().split()
                if len(header) != 2 or header[0] != b"seed":
                    print(f"# {log}: no seed line: not a log of this writer")
                    return 1
                seeds.add(int(header[1]))
            for line in f:
                # A line cut by the kill is not a logged write.
                if not line.endswith(b"\n"):
                    continue
                block, seq = map(int, line.split())
                if seq >> 40 not in seeds:
                    print(f"# {log}: write {seq} is not of the writer the log names")
                    return 1
                last[block] = max(last.get(block, 0), seq)
    bad = 0
    with open(dev, "rb", buffering=0) as d, open(initial, "rb") as init:
        for block in range(blocks):
            data = d.read(BLOCK)
            orig = init.read(BLOCK)
            found = parse(data)
            if found is not None and found[1] >> 40 not in seeds:
                print(f"# block {block} holds write {found[1]} of another run's writer (stale)")
                bad += 1
            elif found is not None and found[0] != block:
                print(f"# block {block} holds block {found[0]}'s write {found[1]}")
                bad += 1
            elif block in last:
                if found is None:
                    print(f"# block {block}: acknowledged write {last[block]} lost "
                          f"({'initial content' if data == orig else 'garbage'})")
                    bad += 1
                elif found[1] < last[block] or found[1] >> 40 != last[block] >> 40:
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
