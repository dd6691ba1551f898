#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Samples a migrate device's copy rate and its controller's limit, many times a second.

    bench/ratesample.py NAME CSV INTERVAL_S SECONDS

Creates CSV.ready once running, waits for the device NAME to have a live table, then for SECONDS
appends "unix_seconds,rate_kibps,rate_limit_kibps,copied_bytes,state" rows to CSV every
INTERVAL_S. rate_kibps is what the target measured over about a second (its `rate_kibps` file in
sysfs, or `rate`; the status line's field when there is no sysfs folder), rate_limit_kibps the
adaptive controller's current limit (`rate_limit_kibps` or `rate_limit`, 0 for none; empty when the
target has no such file), copied_bytes the bytes of the target on the destination (sysfs
`copied_bytes`, else the status line's bytes written), from which finer rates can be computed.
Reading a few sysfs files costs far less than running a program per sample in the TCG VM.
"""
import os
import sys
import time

from sample import status


def sysfs_folder(name):
    """The folder of the migrate target's counters, once the device NAME is resumed, or None."""
    for dev in os.listdir("/sys/block"):
        try:
            with open(f"/sys/block/{dev}/dm/name") as f:
                if f.read().strip() != name:
                    continue
        except OSError:
            continue
        # The documented place, and the one under dm/ that issue 11's text names.
        for folder in (f"/sys/block/{dev}/migrate", f"/sys/block/{dev}/dm/migrate"):
            if os.path.isdir(folder):
                return folder
    return None


def read(folder, *files):
    """The first of FILES present in FOLDER, as text, or None."""
    for name in files:
        try:
            with open(os.path.join(folder, name)) as f:
                return f.read().strip()
        except OSError:
            continue
    return None


def main(name, csv, interval, seconds):
    control = os.open("/dev/mapper/control", os.O_RDWR)
    open(csv + ".ready", "w").close()
    folder = None
    while True:
        params = status(control, name)
        if params is not None:
            break
        time.sleep(0.002)
    # The sysfs folder appears at the resume, just after the table goes live.
    for _ in range(500):
        folder = sysfs_folder(name)
        if folder:
            break
        time.sleep(0.002)
    end = time.time() + seconds
    with open(csv, "w") as out:
        out.write("unix_seconds,rate_kibps,rate_limit_kibps,copied_bytes,state\n")
        while time.time() < end:
            params = status(control, name)
            if params is None:
                return
            words = params.split()
            rate = limit = copied = None
            if folder:
                rate = read(folder, "rate_kibps", "rate")
                limit = read(folder, "rate_limit_kibps", "rate_limit")
                copied = read(folder, "copied_bytes")
            # Status: <state> <copied>/<total> <pending> <inflight> <copied_bytes> <rate_kibps> ...
            rate = rate if rate is not None else words[5]
            copied = copied if copied is not None else words[4]
            out.write(f"{time.time():.4f},{rate},{limit or ''},{copied},{words[0]}\n")
            out.flush()
            time.sleep(interval)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]))
