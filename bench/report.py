#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Turns the VM's raw bench figures into a Markdown table, a JSON file and PNG plots.

    bench/report.py RESULTS_DIR

reads RESULTS_DIR/bench.jsonl and RESULTS_DIR/progress-*.csv, and writes RESULTS_DIR/bench.md,
RESULTS_DIR/bench.json and RESULTS_DIR/copy-progress.png (when matplotlib is installed).
"""
import csv
import glob
import json
import os
import sys


def main(results):
    rows = [json.loads(line) for line in open(os.path.join(results, "bench.jsonl")) if line.strip()]
    by = lambda fig: [r for r in rows if r["figure"] == fig]
    out = ["# dm-migrate bench", ""]

    copy = by("copy")
    raw = next((r for r in copy if r["peer"].startswith("raw")), None)
    out += ["## Idle copy throughput", "", "| peer | seconds | MiB/s | vs raw copy |", "|---|---:|---:|---:|"]
    for r in copy:
        r["mib_per_s"] = round(r["mib"] / r["seconds"], 1)
        r["ratio_to_raw"] = round(raw["seconds"] / r["seconds"], 2) if raw else None
        out.append(f"| {r['peer']} | {r['seconds']:.2f} | {r['mib_per_s']} | {r['ratio_to_raw']} |")

    for fig, title, base in [
        ("guest_io", "Guest 4 KiB random I/O while copying", "linear"),
        ("idle_overhead", "Overhead when not copying", "linear"),
    ]:
        out += ["", f"## {title}", "", "| peer | rw | IOPS | p99 µs | vs dm-linear |", "|---|---|---:|---:|---:|"]
        for r in by(fig):
            b = next((x for x in by(fig) if x["peer"] == base and x["rw"] == r["rw"]), None)
            r["ratio_to_linear"] = round(r["iops"] / b["iops"], 2) if b and b["iops"] else None
            out.append(f"| {r['peer']} | {r['rw']} | {r['iops']} | {r['p99_us']} | {r['ratio_to_linear']} |")

    out += ["", "## Convergence under 4 KiB random writes", "", "| peer | seconds to in sync |", "|---|---:|"]
    for r in by("converge_under_load"):
        out.append(f"| {r['peer']} | {r['seconds']:.2f} |")

    out += ["", "## Switch pause (I/O completing within 0.5 s of the switch)", "",
            "| how | max µs | p99.9 µs |", "|---|---:|---:|"]
    for r in by("switch_pause"):
        out.append(f"| {r['peer']} | {r['max_us']} | {r['p999_us']} |")

    out += ["", "## Tracking memory per TiB", "",
            "Measured: MemFree before and after the constructor of a migrate target over two 1 TiB",
            "null_blk devices (table loaded, not resumed: no copier buffers). Computed: one bit per region.", "",
            "| region | measured KiB/TiB | bitmap KiB/TiB (computed) |", "|---:|---:|---:|"]
    for r in by("memory"):
        out.append(f"| {r['region_kib']} KiB | {r['measured_kib_per_tib']} | {r['bitmap_kib_per_tib']} |")

    with open(os.path.join(results, "bench.md"), "w") as f:
        f.write("\n".join(out) + "\n")
    with open(os.path.join(results, "bench.json"), "w") as f:
        json.dump(rows, f, indent=1)
    print("\n".join(out))

    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots", file=sys.stderr)
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    for path in sorted(glob.glob(os.path.join(results, "progress-*.csv"))):
        with open(path) as f:
            data = [(float(r["seconds"]), float(r["fraction"]) * 100) for r in csv.DictReader(f)]
        if data:
            # A fast copy may end before its second sample: markers keep single points visible.
            ax.plot(*zip(*data), marker="o", markersize=3, label=os.path.basename(path)[9:-4])
    ax.set_xlabel("seconds")
    ax.set_ylabel("% copied")
    ax.set_title("Idle copy progress, brd to brd, one TCG VM run")
    ax.legend()
    fig.savefig(os.path.join(results, "copy-progress.png"), dpi=100, bbox_inches="tight")


if __name__ == "__main__":
    main(sys.argv[1])
