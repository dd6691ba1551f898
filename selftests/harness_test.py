#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Tests of the crash tests' own checker (crashwriter.py verify), run on the host by
`make test-userspace`: each case is a disk state that a broken recovery could leave, and the
checker must call it bad. A checker that passes these states would pass the broken recovery.

    python3 selftests/harness_test.py
"""

import os
import shutil
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import crashwriter  # noqa: E402

BLOCK = crashwriter.BLOCK
BLOCKS = 64


class CrashVerify(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(dir="/var/tmp")
        self.initial = os.path.join(self.dir, "initial")
        self.dev = os.path.join(self.dir, "dev")
        with open(self.initial, "wb") as f:
            f.write(os.urandom(BLOCK * BLOCKS))
        shutil.copy(self.initial, self.dev)

    def tearDown(self):
        shutil.rmtree(self.dir)

    def log(self, name, seed, writes):
        """A writer's log: its seed line, then "BLOCK SEQ" for each (block, n) in writes."""
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write(f"seed {seed}\n")
            for block, n in writes:
                f.write(f"{block} {(seed << 40) + n}\n")
        return path

    def put(self, block, seed, n):
        with open(self.dev, "r+b") as f:
            f.seek(block * BLOCK)
            f.write(crashwriter.content(block, (seed << 40) + n))

    def put_initial(self, block):
        with open(self.initial, "rb") as i, open(self.dev, "r+b") as f:
            i.seek(block * BLOCK)
            f.seek(block * BLOCK)
            f.write(i.read(BLOCK))

    def verify(self, *logs):
        return crashwriter.verify(self.dev, BLOCKS, self.initial, list(logs))

    def test_every_acknowledged_write_present(self):
        for block, n in [(1, 1), (2, 2), (1, 3)]:
            self.put(block, 9, n)
        self.assertEqual(self.verify(self.log("a", 9, [(1, 1), (2, 2), (1, 3)])), 0)

    def test_a_write_in_flight_may_have_landed(self):
        self.put(1, 9, 1)
        self.put(3, 9, 2)
        self.assertEqual(self.verify(self.log("a", 9, [(1, 1)])), 0)

    def test_no_writer_means_initial_content(self):
        self.assertEqual(self.verify("/dev/null"), 0)
        self.put(5, 9, 1)
        self.assertEqual(self.verify("/dev/null"), 1)

    def test_lost_write_is_bad(self):
        self.put(1, 9, 1)
        self.assertEqual(self.verify(self.log("a", 9, [(1, 1), (2, 2)])), 1)

    def test_older_write_is_bad(self):
        self.put(1, 9, 1)
        self.assertEqual(self.verify(self.log("a", 9, [(1, 1), (1, 2)])), 1)

    def test_earlier_runs_write_is_stale(self):
        # An earlier crash point's writer (seed 12) left block 4 and a newer-looking write on
        # block 1; a recovery that did not copy them over is wrong, whatever their numbers.
        self.put(4, 12, 7)
        self.put(1, 12, 9)
        self.assertEqual(self.verify(self.log("a", 9, [(1, 1)])), 1)
        self.put(1, 9, 1)
        self.assertEqual(self.verify(self.log("a", 9, [(1, 1)])), 1)
        self.put_initial(4)
        self.assertEqual(self.verify(self.log("a", 9, [(1, 1)])), 0)

    def test_another_blocks_write_is_bad(self):
        with open(self.dev, "r+b") as f:
            f.seek(6 * BLOCK)
            f.write(crashwriter.content(7, (9 << 40) + 1))
        self.assertEqual(self.verify(self.log("a", 9, [])), 1)

    def test_log_without_seed_is_refused(self):
        path = os.path.join(self.dir, "noseed")
        with open(path, "w") as f:
            f.write(f"1 {(9 << 40) + 1}\n")
        self.put(1, 9, 1)
        self.assertEqual(self.verify(path), 1)

    def test_writer_and_checker_agree(self):
        """The real writer on a file, killed, and its log checked."""
        log = os.path.join(self.dir, "real.log")
        writer = subprocess.Popen([sys.executable, crashwriter.__file__, "write", self.dev,
                                   "0", "16", "5", log])
        try:
            while not os.path.exists(log) or os.path.getsize(log) < 200:
                if writer.poll() is not None:
                    self.fail(f"the writer ended with {writer.returncode}")
        finally:
            writer.kill()
            writer.wait()
        self.assertEqual(self.verify(log), 0)


if __name__ == "__main__":
    unittest.main()
