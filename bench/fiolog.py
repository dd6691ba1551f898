#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Reads fio's per-I/O completion-latency logs (--write_lat_log, --log_avg_msec=0,
--log_unix_epoch=1): one line per completed I/O, "unix_ms, clat_ns, direction, size, offset".

    bench/fiolog.py summary LOG [FROM [TO]]
        prints one JSON object: I/Os completed in [FROM, TO] (unix seconds; default: the whole
        log), their rate (IOPS over the window) and their p99, p99.9 and longest latency in µs.
    bench/fiolog.py bins LOG ORIGIN WIDTH CSV
        writes "seconds,iops" rows to CSV: completions per WIDTH-second bin, seconds from ORIGIN.
"""
import json
import os
import sys


def read(path):
    """(completion time in unix seconds, latency in µs) of every I/O in the log."""
    ios = []
    if not os.path.exists(path):
        # fio stopped before its job began (the copy ended first): no I/O, no log.
        return ios
    with open(path) as log:
        for line in log:
            fields = line.split(",")
            if len(fields) >= 2:
                ios.append((int(fields[0]) / 1000.0, int(fields[1]) / 1000.0))
    return ios


def percentile(sorted_values, p):
    if not sorted_values:
        return 0
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * p))]


def summary(path, start=None, end=None):
    ios = read(path)
    if not ios:
        return {"ios": 0, "seconds": 0, "iops": 0, "p99_us": 0, "p999_us": 0, "max_us": 0}
    first, last = min(t for t, _ in ios), max(t for t, _ in ios)
    start = first if start is None else max(start, first)
    end = last if end is None else min(end, last)
    lat = sorted(l for t, l in ios if start <= t <= end)
    seconds = max(end - start, 1e-3)
    return {
        "ios": len(lat),
        "seconds": round(seconds, 3),
        "iops": round(len(lat) / seconds),
        "p99_us": round(percentile(lat, 0.99)),
        "p999_us": round(percentile(lat, 0.999)),
        "max_us": round(lat[-1]) if lat else 0,
    }


def bins(path, origin, width, csv):
    counts = {}
    for t, _ in read(path):
        slot = int((t - origin) // width)
        counts[slot] = counts.get(slot, 0) + 1
    with open(csv, "w") as out:
        out.write("seconds,iops\n")
        if counts:
            # Skip the first and last bins: fio starts and stops inside them.
            for slot in range(min(counts) + 1, max(counts)):
                out.write(f"{(slot + 0.5) * width:.3f},{counts.get(slot, 0) / width:.0f}\n")


if __name__ == "__main__":
    verb, path, *rest = sys.argv[1:]
    if verb == "summary":
        print(json.dumps(summary(path, *(float(x) for x in rest))))
    elif verb == "bins":
        bins(path, float(rest[0]), float(rest[1]), rest[2])
    else:
        sys.exit(f"fiolog.py: unknown verb {verb}")
