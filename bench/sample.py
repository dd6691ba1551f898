#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Samples a copying dm device's progress from its status line, many times a second.

    bench/sample.py NAME PEER CSV [INTERVAL_S]

Creates CSV.ready once running, waits for the device NAME to have a table (so it can be started
before the copy, and python's start-up does not delay the first sample), then appends
"unix_seconds,fraction,state" rows to CSV until the copy has ended: for migrate, until
the state is no longer copying or paused (switched, synced, failed, cancelled); for dm-clone and
dm-raid1, until every region is in sync ("synced") or their status reports a failure
("failed"). The status comes from the DM_TABLE_STATUS ioctl made by this one process, because
running `dmsetup status` takes about 0.3 s per sample in the TCG VM, longer than some whole
copies. The wall clock is the one fio uses for --log_unix_epoch.
"""
import errno
import fcntl
import os
import struct
import sys
import time

# struct dm_ioctl from include/uapi/linux/dm-ioctl.h: version[3], data_size, data_start,
# target_count, open_count, flags, event_nr, padding, dev, name[128], uuid[129], data[7].
DM_IOCTL = struct.Struct("=3IIIIiIIIQ128s129s7s")
DM_TARGET_SPEC = struct.Struct("=QQiI16s")
DM_TABLE_STATUS = (3 << 30) | (DM_IOCTL.size << 16) | (0xFD << 8) | 12
BUFFER = 16384


def status(control, name):
    """The first target's status parameters, as dmsetup status prints them after the type."""
    header = DM_IOCTL.pack(4, 0, 0, BUFFER, DM_IOCTL.size, 0, 0, 0, 0, 0, 0, name.encode(), b"", b"")
    buf = bytearray(header + bytes(BUFFER - DM_IOCTL.size))
    try:
        fcntl.ioctl(control, DM_TABLE_STATUS, buf)
    except OSError as e:
        if e.errno == errno.ENXIO:
            return None
        raise
    fields = DM_IOCTL.unpack_from(buf)
    data_start, target_count = fields[4], fields[5]
    if target_count < 1:
        return None
    params = buf[data_start + DM_TARGET_SPEC.size:]
    return params[:params.index(0)].decode()


def progress(peer, params):
    """(fraction copied, state word) from a peer's status parameters. dm-clone and dm-raid1 are
    "synced" once every region is in sync, and "failed" when their status says so."""
    words = params.split()
    if peer == "linear":
        # Nothing to copy: sampled only so that the baseline carries the sampler's own load.
        return 0.0, "copying"
    if peer.startswith("migrate"):
        state, pair = words[0], words[1]
    elif peer.startswith("clone"):
        # <metadata block size> <used>/<total metadata blocks> <region size>
        # <hydrated>/<total regions> <hydrating> <features> <core args> <mode>: the mode is rw,
        # or ro or Fail after a metadata error; a failed target says only "Fail" (or "Error").
        if words[0] in ("Fail", "Error") or words[-1] != "rw":
            return 0.0, "failed"
        state, pair = "copying", words[3]
    else:
        # <#mirrors> <dev>... <in sync>/<total> 1 <health>: a health character per leg, A for a
        # leg without errors.
        n = int(words[0])
        if not all(c == "A" for c in words[3 + n]):
            return 0.0, "failed"
        state, pair = "copying", words[1 + n]
    done, total = (int(x) for x in pair.split("/"))
    fraction = done / total if total else 1.0
    if not peer.startswith("migrate") and done == total:
        state = "synced"
    return fraction, state


def main(name, peer, csv, interval=0.01):
    control = os.open("/dev/mapper/control", os.O_RDWR)
    open(csv + ".ready", "w").close()
    with open(csv, "a") as out:
        while True:
            params = status(control, name)
            if params is None:
                # Not created yet, or no live table yet.
                time.sleep(0.002)
                continue
            fraction, state = progress(peer, params)
            out.write(f"{time.time():.4f},{fraction:.6f},{state}\n")
            out.flush()
            if state not in ("copying", "paused"):
                return
            time.sleep(interval)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], *(float(x) for x in sys.argv[4:5]))
