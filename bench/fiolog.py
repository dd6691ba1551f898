#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Reads fio's per-I/O completion-latency logs (--write_lat_log, --log_avg_msec=0,
--log_unix_epoch=1): one line per completed I/O, "unix_ms, clat_ns, direction, size, offset".
An I/O lives from its submission (its completion time less its latency) to its completion.

    bench/fiolog.py summary LOG [FROM TO]
        prints one JSON object over the window [FROM, TO] (unix seconds; default: the whole
        log): "ios", the I/Os alive in the window (submitted before its end and completed after
        its start, so an I/O stalled across the whole window counts), whose latencies give
        "p99_us", "p999_us" and "max_us"; "completed", the I/Os completed in the window, and
        "iops", their rate; "spanning", the I/Os in flight through the whole window; and
        "seconds", the window's length.
    bench/fiolog.py span LOG
        prints "FIRST LAST": the unix seconds of the log's first submission and of its last
        completion, the span a window must lie in.
    bench/fiolog.py bins LOG ORIGIN WIDTH CSV
        writes "seconds,iops" rows to CSV: completions per WIDTH-second bin, seconds from ORIGIN.

A summary is an error (a message on stderr, exit status 1), never a row of zeros: a missing or
empty log, a window that is empty or not inside the log's span (fio started after the window
began, or stopped before it ended: its I/O there is unknown), and a window with no I/O alive.
"""
import json
import sys

# The log's clock ticks in milliseconds: a window edge within one tick of the span is inside it.
TICK_S = 0.001


class LogError(Exception):
    """A log or a window that cannot give a figure."""


def read(path):
    """(completion time in unix seconds, latency in µs) of every I/O in the log."""
    ios = []
    try:
        log = open(path)
    except FileNotFoundError:
        raise LogError("no log: fio did no I/O (did it start?)") from None
    with log:
        for number, line in enumerate(log, 1):
            if not line.strip():
                continue
            fields = line.split(",")
            try:
                ios.append((int(fields[0]) / 1000.0, int(fields[1]) / 1000.0))
            except (IndexError, ValueError):
                raise LogError(f"line {number} is not 'unix_ms, clat_ns, ...': {line.strip()!r}") from None
    if not ios:
        raise LogError("the log is empty: fio completed no I/O")
    return ios


def span(ios):
    """(first submission, last completion) of IOS, in unix seconds."""
    return min(t - lat / 1e6 for t, lat in ios), max(t for t, _ in ios)


def percentile(sorted_values, p):
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * p))]


def summary(path, start=None, end=None):
    ios = read(path)
    first, last = span(ios)
    start = first if start is None else start
    end = last if end is None else end
    if end <= start:
        raise LogError(f"the window [{start:.3f}, {end:.3f}] is empty")
    if start < first - TICK_S:
        raise LogError(f"the window [{start:.3f}, {end:.3f}] begins {first - start:.3f} s before fio's "
                       f"first I/O ({first:.3f}): fio started after the window began")
    if end > last + TICK_S:
        raise LogError(f"the window [{start:.3f}, {end:.3f}] ends {end - last:.3f} s after fio's "
                       f"last completion ({last:.3f}): fio stopped before the window ended")
    # Alive in the window: submitted before its end, completed after its start.
    alive = [(t, lat) for t, lat in ios if t - lat / 1e6 <= end and t >= start]
    if not alive:
        raise LogError(f"no I/O in the window [{start:.3f}, {end:.3f}] (log span "
                       f"[{first:.3f}, {last:.3f}])")
    completed = sum(1 for t, _ in alive if t <= end)
    spanning = sum(1 for t, lat in alive if t - lat / 1e6 <= start and t >= end)
    lat = sorted(l for _, l in alive)
    seconds = max(end - start, 1e-3)
    return {
        "ios": len(lat),
        "completed": completed,
        "spanning": spanning,
        "seconds": round(seconds, 3),
        "iops": round(completed / seconds),
        "p99_us": round(percentile(lat, 0.99)),
        "p999_us": round(percentile(lat, 0.999)),
        "max_us": round(lat[-1]),
    }


def bins(path, origin, width, csv):
    counts = {}
    for t, _ in read(path):
        slot = int((t - origin) // width)
        counts[slot] = counts.get(slot, 0) + 1
    with open(csv, "w") as out:
        out.write("seconds,iops\n")
        # Skip the first and last bins: fio starts and stops inside them.
        for slot in range(min(counts) + 1, max(counts)):
            out.write(f"{(slot + 0.5) * width:.3f},{counts.get(slot, 0) / width:.0f}\n")


def main(argv):
    if len(argv) < 2:
        sys.exit(__doc__)
    verb, path, *rest = argv
    try:
        if verb == "summary" and len(rest) in (0, 2):
            print(json.dumps(summary(path, *(float(x) for x in rest))))
        elif verb == "span" and not rest:
            print("%.6f %.6f" % span(read(path)))
        elif verb == "bins" and len(rest) == 3:
            bins(path, float(rest[0]), float(rest[1]), rest[2])
        else:
            sys.exit(f"fiolog.py: bad arguments: {' '.join(argv)}\n{__doc__}")
    except LogError as e:
        sys.exit(f"fiolog.py: {path}: {e}")


if __name__ == "__main__":
    main(sys.argv[1:])
