#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Turns the VM's raw bench figures into a Markdown table, a JSON file and PNG plots.

    bench/report.py RESULTS_DIR

reads RESULTS_DIR/bench.jsonl, progress-*.csv and iops-*.csv (written by bench-vm.sh) and writes
RESULTS_DIR/bench.md, RESULTS_DIR/bench.json and, when matplotlib is installed, the plots
copy-progress.png, guest-iops.png, converge.png and switch.png.
"""
import csv
import json
import os
import sys

THROTTLE = {
    "migrate-rate": "rate: the device in BENCH_RATE_S s",
    "clone-slow": "hydration_threshold 1, batch 1",
    "mirror-throttled": "raid1_resync_throttle 25%",
}


def ratio(a, b):
    return round(a / b, 2) if b else None


def tables(rows):
    by = lambda fig: [r for r in rows if r["figure"] == fig]
    out = ["# dm-migrate bench", ""]

    copy = by("copy")
    raw = next((r for r in copy if r["peer"].startswith("raw")), None)
    out += ["## Idle copy throughput", "", "| peer | seconds | MiB/s | vs raw copy |", "|---|---:|---:|---:|"]
    for r in copy:
        r["mib_per_s"] = round(r["mib"] / r["seconds"], 1)
        r["ratio_to_raw"] = ratio(raw["seconds"], r["seconds"]) if raw else None
        name = r["peer"]
        if name == "migrate-tuned":
            name += f" (copy_depth {r['copy_depth']}, region {r['region_kib']} KiB)"
        out.append(f"| {name} | {r['seconds']:.2f} | {r['mib_per_s']} | {r['ratio_to_raw']} |")
    search = by("copy_search")
    if search:
        out += ["", "The search for migrate-tuned, one setting at a time from the defaults (copy_depth 4,",
                "region 64 KiB; copies are 512 KiB batches of contiguous regions):", "",
                "| copy_depth | region | seconds | MiB/s | vs raw copy |", "|---:|---:|---:|---:|---:|"]
        for r in search:
            r["mib_per_s"] = round(r["mib"] / r["seconds"], 1)
            r["ratio_to_raw"] = ratio(raw["seconds"], r["seconds"]) if raw else None
            out.append(f"| {r['copy_depth']} | {r['region_kib']} KiB | {r['seconds']:.2f} | "
                       f"{r['mib_per_s']} | {r['ratio_to_raw']} |")

    for fig, title in [("guest_io", "Guest 4 KiB random I/O while copying (fio libaio, iodepth 16)"),
                       ("idle_overhead", "Overhead when not copying")]:
        out += ["", f"## {title}", ""]
        if fig == "guest_io":
            out += ["Counted over the I/O that completed while the copy ran (\"window\"; for dm-linear,",
                    "the same span of its run). \"dd\" is dm-linear while a raw dd copy of the same devices",
                    "runs beside it: what any full-speed copy leaves the guest in this VM. migrate-rate",
                    "copies at its rate limit (the device in BENCH_RATE_S seconds).", ""]
        out += ["| peer | rw | IOPS | p99 µs | p99.9 µs | vs dm-linear | window s |",
                "|---|---|---:|---:|---:|---:|---:|"]
        for r in by(fig):
            b = next((x for x in by(fig) if x["peer"] == "linear" and x["rw"] == r["rw"]), None)
            if r["ios"] == 0:
                # The held copy was already done when released (a dm-clone hydrates the region of
                # every write; dm-raid1 resyncs a little even when throttled): nothing to measure.
                r["ratio_to_linear"] = None
                out.append(f"| {r['peer']} | {r['rw']} | — | — | — | — | 0 (copy done before the release) |")
                continue
            r["ratio_to_linear"] = ratio(r["iops"], b["iops"]) if b else None
            out.append(f"| {r['peer']} | {r['rw']} | {r['iops']} | {r['p99_us']} | {r['p999_us']} | "
                       f"{r['ratio_to_linear']} | {r['seconds']} |")

    linear_w = next((x["iops"] for x in by("guest_io") if x["peer"] == "linear" and x["rw"] == "randwrite"), None)
    out += ["", "## Convergence under flat-out 4 KiB random writes", "",
            "| peer | throttle | seconds to in sync | guest write IOPS meanwhile | vs dm-linear |",
            "|---|---|---:|---:|---:|"]
    for r in by("converge_under_load"):
        r["ratio_to_linear"] = ratio(r["iops"], linear_w)
        out.append(f"| {r['peer']} | {THROTTLE.get(r['peer'], 'none')} | {r['seconds']:.2f} | {r['iops']} | "
                   f"{r['ratio_to_linear']} |")

    out += ["", "## Switch pause (fio 4 KiB random writes, iodepth 16)", "",
            "| how | window | I/Os | max µs | p99.9 µs | p99 µs |", "|---|---|---:|---:|---:|---:|"]
    for r in by("switch_pause"):
        window = {"switch": "0.5 s either side of the switch",
                  "after": "from 50 ms before the switch to 0.5 s after",
                  "mid-copy": "1 s in the middle of the copy"}.get(r["window"], r["window"])
        out.append(f"| {r['peer']} | {window} | {r['ios']} | {r['max_us']} | {r['p999_us']} | {r['p99_us']} |")

    md = by("metadata_overhead")
    if md:
        out += ["", "## The metadata device's cost (4 KiB random writes, iodepth 16)", "",
                "migrate's write-intent log (an intent bit made durable before the first write to a",
                "region, cleared a commit interval after its last) against dm-raid1's disk log, on a",
                "ram disk like the data; in sync (migrate no_switch, dm-raid1 resynced), and while",
                "migrate copies at its rate limit.", "",
                "| when | peer | IOPS | p99 µs | vs the same without metadata |", "|---|---|---:|---:|---:|"]
        base = {"migrate+metadata": "migrate", "mirror-disk": "mirror-core"}
        for r in md:
            b = next((x for x in md if x["window"] == r["window"] and x["peer"] == base.get(r["peer"])), None)
            r["ratio_to_base"] = ratio(r["iops"], b["iops"]) if b else None
            out.append(f"| {r['window']} | {r['peer']} | {r['iops']} | {r['p99_us']} | "
                       f"{r['ratio_to_base'] if b else '—'} |")
    for r in by("resume"):
        out += ["", "## Resuming with metadata", "",
                f"A copy stopped at 70% and loaded again resumed at {r['resumed_regions']} of "
                f"{r['total_regions']} regions and was in sync after {r['resume_s']:.2f} s; the same copy "
                f"from scratch took {r['scratch_s']:.2f} s ({ratio(r['resume_s'], r['scratch_s'])}x)."]

    out += targets(rows)

    out += ["", "## Tracking memory per TiB", "",
            "Measured: MemFree before and after the constructor of a migrate target over two 1 TiB",
            "null_blk devices (table loaded, not resumed: no copier buffers). Computed: one bit per region.", "",
            "| region | measured KiB/TiB | bitmap KiB/TiB (computed) |", "|---:|---:|---:|"]
    for r in by("memory"):
        out.append(f"| {r['region_kib']} KiB | {r['measured_kib_per_tib']} | {r['bitmap_kib_per_tib']} |")
    return out


def targets(rows):
    """The issue's targets, each with the figures it compares and whether this run met it."""
    def find(fig, **keys):
        return next((r for r in rows if r["figure"] == fig and all(r.get(k) == v for k, v in keys.items())), None)

    lines = ["", "## Targets", "", "| target | this run | met |", "|---|---|---|"]

    def line(what, figures, met):
        lines.append(f"| {what} | {figures} | {'yes' if met else 'no'} |")

    raw, ours = find("copy", peer="raw dd 4M O_DIRECT"), find("copy", peer="migrate")
    clone, mirror = find("copy", peer="clone-tuned"), find("copy", peer="mirror")
    if raw and ours and clone and mirror:
        line("copy >= 0.9x the raw copy", f"{ours['ratio_to_raw']}x", ours["ratio_to_raw"] >= 0.9)
        line("copy ahead of dm-clone (tuned) and dm-raid1",
             f"{ours['mib_per_s']} vs {clone['mib_per_s']} and {mirror['mib_per_s']} MiB/s",
             ours["mib_per_s"] > max(clone["mib_per_s"], mirror["mib_per_s"]))
    for rw in ["randread", "randwrite"]:
        r = find("guest_io", peer="migrate", rw=rw)
        if r and r.get("ratio_to_linear") is not None:
            line(f"guest {rw} IOPS while copying >= 0.8x dm-linear", f"{r['ratio_to_linear']}x",
                 r["ratio_to_linear"] >= 0.8)
        r = find("idle_overhead", peer="migrate switched", rw=rw)
        if r and r.get("ratio_to_linear") is not None:
            line(f"{rw} IOPS after the switch within 3% of dm-linear", f"{r['ratio_to_linear']}x",
                 r["ratio_to_linear"] >= 0.97)
    ours, swap = find("switch_pause", peer="migrate", window="switch"), find("switch_pause", peer="swap")
    if ours and swap:
        for key, what in [("max_us", "longest"), ("p999_us", "p99.9")]:
            line(f"switch pause ({what}) below the suspend/resume swap",
                 f"{ours[key]} vs {swap[key]} µs", ours[key] < swap[key])
    return lines


def series(path, x="seconds", y="iops"):
    """(xs, ys) of a CSV the VM wrote, or None if it is missing or empty."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        rows = [(float(r[x]), float(r[y])) for r in csv.DictReader(f)]
    return tuple(zip(*rows)) if rows else None


def progress(path):
    """(seconds from the copy's start, % copied) of a progress CSV."""
    data = series(path, "unix_seconds", "fraction")
    if not data:
        return None
    t0 = data[0][0]
    return [t - t0 for t in data[0]], [f * 100 for f in data[1]]


def plots(results, rows):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots", file=sys.stderr)
        return
    path = lambda name: os.path.join(results, name)
    colors = {"linear": "black", "dd": "tab:gray", "migrate": "tab:blue", "migrate-tuned": "tab:cyan", "clone": "tab:orange",
              "clone-tuned": "tab:red", "mirror": "tab:green", "migrate-rate": "tab:blue",
              "clone-slow": "tab:orange", "mirror-throttled": "tab:green"}
    conditions = "brd to brd, one TCG VM run"

    fig, ax = plt.subplots(figsize=(7, 4))
    for peer in ["migrate", "migrate-tuned", "clone", "clone-tuned", "mirror"]:
        data = progress(path(f"progress-{peer}.csv"))
        if data:
            ax.plot(*data, label=peer, color=colors[peer])
    ax.set(xlabel="seconds", ylabel="% copied", title=f"Idle copy progress, {conditions}")
    ax.legend()
    fig.savefig(path("copy-progress.png"), dpi=100, bbox_inches="tight")

    fig, axes = plt.subplots(1, 2, figsize=(12, 4), sharey=True)
    for ax, rw in zip(axes, ["randread", "randwrite"]):
        for peer in ["linear", "dd", "migrate", "migrate-rate", "clone", "mirror"]:
            data = series(path(f"iops-{rw}-{peer}.csv"))
            if data:
                label = {"linear": "dm-linear", "dd": "dm-linear beside a dd copy"}.get(peer, f"{peer} copying")
                style = "--" if peer == "migrate-rate" else "-"
                ax.plot(*data, label=label, color=colors[peer], linestyle=style, linewidth=1)
            r = next((r for r in rows if r["figure"] == "guest_io" and r["peer"] == peer and r["rw"] == rw), None)
            if r and r.get("copy_ended"):
                ax.axvline(r["copy_end_s"], color=colors[peer], linestyle=":", linewidth=1)
        ax.set(xlabel="seconds from the copy's start (dotted: the copy ended)", title=f"Guest 4 KiB {rw}")
        ax.set_ylim(bottom=0)
    axes[0].set_ylabel("IOPS (100 ms bins)")
    axes[0].legend()
    fig.suptitle(f"Guest I/O while each peer copies, {conditions}")
    fig.savefig(path("guest-iops.png"), dpi=100, bbox_inches="tight")

    fig, axes = plt.subplots(2, 2, figsize=(12, 7), sharex="col")
    for col, peers in enumerate([["migrate", "clone", "mirror"], ["migrate-rate", "clone-slow", "mirror-throttled"]]):
        for peer in peers:
            data = progress(path(f"progress-converge-{peer}.csv"))
            if data:
                axes[0][col].plot(*data, label=peer, color=colors[peer])
            data = series(path(f"iops-converge-{peer}.csv"))
            if data:
                axes[1][col].plot(*data, label=peer, color=colors[peer])
        axes[0][col].set(ylabel="% in sync", title=["Flat out", "Throttled"][col])
        axes[1][col].set(xlabel="seconds", ylabel="guest write IOPS (100 ms)")
        axes[1][col].set_ylim(bottom=0)
        axes[0][col].legend()
    fig.suptitle(f"Convergence under flat-out 4 KiB random writes, {conditions}")
    fig.savefig(path("converge.png"), dpi=100, bbox_inches="tight")

    fig, ax = plt.subplots(figsize=(7, 4))
    for how, color in [("migrate", "tab:blue"), ("swap", "black")]:
        data = series(path(f"iops-switch-{how}.csv"))
        if data:
            ax.plot(*data, label={"migrate": "migrate's switch", "swap": "suspend/load/resume swap"}[how],
                    color=color)
    ax.axvline(0, color="grey", linestyle=":")
    ax.set(xlabel="seconds from the switch", ylabel="write IOPS (50 ms bins)",
           title=f"Guest writes around the switch, {conditions}")
    ax.set_ylim(bottom=0)
    ax.legend()
    fig.savefig(path("switch.png"), dpi=100, bbox_inches="tight")


def main(results):
    rows = [json.loads(line) for line in open(os.path.join(results, "bench.jsonl")) if line.strip()]
    out = tables(rows)
    with open(os.path.join(results, "bench.md"), "w") as f:
        f.write("\n".join(out) + "\n")
    with open(os.path.join(results, "bench.json"), "w") as f:
        json.dump(rows, f, indent=1)
    print("\n".join(out))
    plots(results, rows)


if __name__ == "__main__":
    main(sys.argv[1])
