#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Tests of fiolog.py on small synthetic fio latency logs, on the host (no VM):

    python3 -m unittest discover -s bench -p 'test_*.py'

The per-I/O logs of the 2026-12-06 run were not kept; these logs reproduce its two faults: a
switch-pause window that fio never reached (fio ran a fixed 9 s, the switch came at 10.25 s:
the old code clamped the window to the log and reported 0 I/Os, which the report then found
below the swap's 72190 µs), and I/O stalled across a whole window (left out when windows were
chosen by completion time).
"""
import io
import json
import os
import subprocess
import sys
import tempfile
import unittest
from contextlib import redirect_stdout

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import fiolog  # noqa: E402

T0 = 1796528000.0


def write_log(path, ios):
    """Writes a fio latency log of IOS, (submission s, latency s) pairs, in completion order."""
    with open(path, "w") as log:
        for submit, lat in sorted(ios, key=lambda io: io[0] + io[1]):
            log.write(f"{round((submit + lat) * 1000)}, {round(lat * 1e9)}, 1, 4096, 0\n")


def steady(start, end, lat=0.001, depth=4):
    """I/Os at DEPTH, each LAT long, back to back from START to END."""
    n = int(round((end - start) / lat))
    return [(start + (i + lane / depth) * lat, lat) for lane in range(depth) for i in range(n - (lane > 0))]


class FiologTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.log = os.path.join(self.dir.name, "g_clat.1.log")

    def tearDown(self):
        self.dir.cleanup()

    def cli(self, *args):
        return subprocess.run([sys.executable, os.path.join(HERE, "fiolog.py"), *args],
                              capture_output=True, text=True)

    def test_switch_after_fio_stopped_is_an_error(self):
        # 2026-12-06: fio from T0 for 9 s; the copy released at T0 + 1 took 9.25 s.
        write_log(self.log, steady(T0, T0 + 9))
        event = T0 + 1 + 9.25
        with self.assertRaisesRegex(fiolog.LogError, "fio stopped before the window ended"):
            fiolog.summary(self.log, event - 0.5, event + 0.5)
        result = self.cli("summary", self.log, str(event - 0.5), str(event + 0.5))
        self.assertEqual(result.returncode, 1)
        self.assertEqual(result.stdout, "")
        self.assertIn("fio stopped before the window ended", result.stderr)
        # The mid-copy window lies inside the log: a figure.
        mid = T0 + 1 + 9.25 / 2
        self.assertGreater(fiolog.summary(self.log, mid - 0.5, mid + 0.5)["ios"], 0)

    def test_window_before_fio_started_is_an_error(self):
        write_log(self.log, steady(T0 + 1, T0 + 5))
        with self.assertRaisesRegex(fiolog.LogError, "fio started after the window began"):
            fiolog.summary(self.log, T0 + 0.5, T0 + 2)

    def test_stalled_io_counts_in_every_window_it_spans(self):
        # Everything stalls from T0 + 2 to T0 + 3.5: the 16 I/Os in flight complete at once,
        # each 1.5 s late; a window inside the stall has no completion at all.
        ios = steady(T0, T0 + 2, depth=16)
        ios += [(T0 + 2 + k * 1e-4, 1.5 - k * 1e-4) for k in range(16)]
        ios += steady(T0 + 3.5, T0 + 6, depth=16)
        write_log(self.log, ios)
        s = fiolog.summary(self.log, T0 + 2.5, T0 + 3.0)
        self.assertEqual(s["ios"], 16)
        self.assertEqual(s["spanning"], 16)
        self.assertEqual(s["completed"], 0)
        self.assertEqual(s["iops"], 0)
        self.assertEqual(s["max_us"], 1500000)
        # A window around the stall's end carries the stall's latency too.
        s = fiolog.summary(self.log, T0 + 3.4, T0 + 3.6)
        self.assertEqual(s["max_us"], 1500000)
        self.assertGreater(s["completed"], 16)

    def test_window_with_no_io_alive_is_an_error(self):
        # fio did nothing from T0 + 2 to T0 + 3 (no I/O in flight either).
        write_log(self.log, steady(T0, T0 + 2) + steady(T0 + 3, T0 + 5))
        with self.assertRaisesRegex(fiolog.LogError, "no I/O in the window"):
            fiolog.summary(self.log, T0 + 2.2, T0 + 2.8)

    def test_empty_window_is_an_error(self):
        write_log(self.log, steady(T0, T0 + 5))
        with self.assertRaisesRegex(fiolog.LogError, "is empty"):
            fiolog.summary(self.log, T0 + 3, T0 + 2)

    def test_missing_or_empty_log_is_an_error(self):
        with self.assertRaisesRegex(fiolog.LogError, "no log"):
            fiolog.summary(self.log)
        open(self.log, "w").close()
        with self.assertRaisesRegex(fiolog.LogError, "empty"):
            fiolog.summary(self.log)
        result = self.cli("span", self.log)
        self.assertEqual(result.returncode, 1)
        self.assertIn("empty", result.stderr)

    def test_whole_log_and_window(self):
        write_log(self.log, steady(T0, T0 + 4, lat=0.002, depth=2))
        whole = fiolog.summary(self.log)
        self.assertEqual(whole["ios"], 3999)
        self.assertEqual(whole["completed"], 3999)
        self.assertEqual(whole["iops"], 1000)
        self.assertEqual(whole["max_us"], 2000)
        s = fiolog.summary(self.log, T0 + 1, T0 + 2)
        self.assertAlmostEqual(s["completed"], 1000, delta=2)
        # The I/Os in flight at both edges count for their latencies.
        self.assertAlmostEqual(s["ios"], 1002, delta=2)

    def test_span(self):
        write_log(self.log, steady(T0, T0 + 3))
        out = io.StringIO()
        with redirect_stdout(out):
            fiolog.main(["span", self.log])
        first, last = (float(x) for x in out.getvalue().split())
        self.assertAlmostEqual(first, T0, delta=0.001)
        self.assertAlmostEqual(last, T0 + 3, delta=0.002)
        # A window from the span's own numbers is inside it.
        self.assertGreater(fiolog.summary(self.log, first, last)["ios"], 0)

    def test_cli_summary_prints_json(self):
        write_log(self.log, steady(T0, T0 + 2))
        result = self.cli("summary", self.log, str(T0 + 0.5), str(T0 + 1.5))
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertGreater(json.loads(result.stdout)["ios"], 0)

    def test_bins(self):
        # Completions in the middle of 5 ms slots, none on a bin's edge.
        write_log(self.log, steady(T0 - 0.005, T0 + 0.995, lat=0.01, depth=1))
        csv = os.path.join(self.dir.name, "iops.csv")
        fiolog.bins(self.log, T0, 0.1, csv)
        with open(csv) as f:
            rows = f.read().split()
        self.assertEqual(rows[0], "seconds,iops")
        # 100 IOPS in every bin but the first and the last.
        self.assertEqual({r.split(",")[1] for r in rows[1:]}, {"100"})


if __name__ == "__main__":
    unittest.main()
