#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Turns the VM's raw bench figures into a Markdown table, a JSON file and PNG plots.

    bench/report.py RESULTS_DIR

reads RESULTS_DIR/bench.jsonl, progress-*.csv, iops-*.csv and controller-*.csv (written by
bench-vm.sh) and writes RESULTS_DIR/bench.md, RESULTS_DIR/bench.json and, when matplotlib is
installed, the plots copy-progress.png, guest-iops.png, converge.png, switch.png, controller.png
and kinds-copy.png.

A target judged on a figure that is missing (not measured), empty (no I/O in its window), or
from a copy not recorded to have ended well (switched, or synced for a peer that ends mirrored)
is an error, never "met": its line says ERROR, the report is still written, and the script
exits 1 after naming every such figure on stderr.
"""
import csv
import json
import os
import sys

# The errors of this report: what each unusable figure was and why (see error()).
ERRORS = []


def error(what, why):
    """Records that the figure WHAT cannot be used, and returns the text for its line."""
    ERRORS.append(f"{what}: {why}")
    return f"**ERROR**: {why}"


# How a copy may end for its figure to count: migrate switches; dm-clone and dm-raid1 (and
# migrate with no_switch) end in sync.
GOOD_ENDS = ("switched", "synced")


def copy_problem(r):
    """Why the copy figure R cannot be used, or None: a missing row, no recorded end state (a
    bench from before its copies were checked), a copy that failed, was cancelled or did not
    end, or no time."""
    if r is None:
        return "not measured"
    if "state" not in r:
        return "no end state recorded: the copy was never checked to have ended"
    if r["state"] not in GOOD_ENDS:
        return f"the copy ended {r['state']}"
    if not r.get("seconds"):
        return "no copy time"
    return None


def io_problem(r, *keys):
    """Why the I/O figure R cannot be used, or None: a missing row, no I/O in its window, or
    one of KEYS missing."""
    if r is None:
        return "not measured"
    if not r.get("ios"):
        why = "no I/O in its window"
        if r.get("done_before_release"):
            why += " (the copy was done before its release)"
        if r.get("done_before_writes"):
            why += " (the copy was done before fio's first write)"
        return why
    missing = [k for k in keys if r.get(k) is None]
    if missing:
        return f"no {', '.join(missing)}"
    return None

THROTTLE = {
    "migrate-rate": "rate: the device in BENCH_RATE_S s",
    "clone-slow": "hydration_threshold 1, batch 1",
    "mirror-throttled": "raid1_resync_throttle 25%",
}


def ratio(a, b):
    return round(a / b, 2) if b else None


def tables(rows, results):
    by = lambda fig: [r for r in rows if r["figure"] == fig]
    out = ["# dm-migrate bench", ""]

    copy = by("copy")
    raw = next((r for r in copy if r["peer"].startswith("raw")), None)
    out += ["## Idle copy throughput", "", "| peer | seconds | MiB/s | vs raw copy |", "|---|---:|---:|---:|"]
    for r in copy:
        r["mib_per_s"] = round(r["mib"] / r["seconds"], 1) if r.get("seconds") else None
        r["ratio_to_raw"] = ratio(raw["seconds"], r["seconds"]) if raw and r.get("seconds") else None
        name = r["peer"]
        if name == "migrate-tuned":
            name += f" (copy_depth {r['copy_depth']}, region {r['region_kib']} KiB)"
        if not r["peer"].startswith("raw") and copy_problem(r):
            name += f" ({copy_problem(r)})"
        out.append(f"| {name} | {r['seconds']:.2f} | {r['mib_per_s']} | {r['ratio_to_raw']} |")
    search = by("copy_search")
    if search:
        out += ["", "The search for migrate-tuned, one setting at a time from the defaults (no copy_depth:",
                "16 batches while the guest is idle; region 64 KiB; copies are 512 KiB batches of",
                "contiguous regions):", "",
                "| copy_depth | region | seconds | MiB/s | vs raw copy |", "|---:|---:|---:|---:|---:|"]
        for r in search:
            r["mib_per_s"] = round(r["mib"] / r["seconds"], 1) if r.get("seconds") else None
            r["ratio_to_raw"] = ratio(raw["seconds"], r["seconds"]) if raw and r.get("seconds") else None
            out.append(f"| {r['copy_depth']} | {r['region_kib']} KiB | {r['seconds']:.2f} | "
                       f"{r['mib_per_s']} | {r['ratio_to_raw']} |")

    for fig, title in [("guest_io", "Guest 4 KiB random I/O while copying (fio libaio, iodepth 16)"),
                       ("idle_overhead", "Overhead when not copying")]:
        out += ["", f"## {title}", ""]
        if fig == "guest_io":
            out += ["Counted over the I/O alive while the copy ran (\"window\": from its release to its end, at",
                    "most BENCH_FIO_S + 2 s; for dm-linear, BENCH_FIO_S s from the same point of its run); IOPS",
                    "from the I/Os completed in it. \"dd\" is dm-linear while a raw dd copy of the same devices",
                    "runs beside it: what any full-speed copy leaves the guest in this VM. migrate-rate",
                    "copies at its rate limit (the device in BENCH_RATE_S seconds).", ""]
        out += ["| peer | rw | IOPS | p99 µs | p99.9 µs | vs dm-linear | window s |",
                "|---|---|---:|---:|---:|---:|---:|"]
        for r in by(fig):
            b = next((x for x in by(fig) if x["peer"] == "linear" and x["rw"] == r["rw"]), None)
            if io_problem(r):
                # The held copy was already done when released (a dm-clone hydrates the region of
                # every write; dm-raid1 resyncs a little even when throttled): nothing to measure.
                r["ratio_to_linear"] = None
                out.append(f"| {r['peer']} | {r['rw']} | — | — | — | — | 0 ({io_problem(r)}) |")
                continue
            r["ratio_to_linear"] = ratio(r["iops"], b["iops"]) if b and not io_problem(b) else None
            out.append(f"| {r['peer']} | {r['rw']} | {r['iops']} | {r['p99_us']} | {r['p999_us']} | "
                       f"{r['ratio_to_linear']} | {r['seconds']} |")

    linear_w = next((x["iops"] for x in by("guest_io") if x["peer"] == "linear" and x["rw"] == "randwrite"), None)
    out += ["", "## Convergence under flat-out 4 KiB random writes", "",
            "| peer | throttle | seconds to in sync | guest write IOPS meanwhile | vs dm-linear |",
            "|---|---|---:|---:|---:|"]
    for r in by("converge_under_load"):
        if io_problem(r):
            r["ratio_to_linear"] = None
            out.append(f"| {r['peer']} | {THROTTLE.get(r['peer'], 'none')} | {r['seconds']:.2f} | — "
                       f"({io_problem(r)}) | — |")
            continue
        r["ratio_to_linear"] = ratio(r["iops"], linear_w)
        out.append(f"| {r['peer']} | {THROTTLE.get(r['peer'], 'none')} | {r['seconds']:.2f} | {r['iops']} | "
                   f"{r['ratio_to_linear']} |")

    out += ["", "## Switch pause (fio 4 KiB random writes, iodepth 16)", "",
            "The I/Os alive in each window: submitted before its end and completed after its start, so",
            "that an I/O held across the whole window counts, with its whole latency; \"held through\" are",
            "those in flight from the window's start to its end.", "",
            "| how | window | I/Os | completed | held through | max µs | p99.9 µs | p99 µs |",
            "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in by("switch_pause"):
        window = {"switch": "0.5 s either side of the switch",
                  "after": "from 50 ms before the switch to 0.5 s after",
                  "mid-copy": "1 s in the middle of the copy"}.get(r["window"], r["window"])
        if io_problem(r):
            out.append(f"| {r['peer']} | {window} | 0 ({io_problem(r)}) | — | — | — | — | — |")
            continue
        out.append(f"| {r['peer']} | {window} | {r['ios']} | {r.get('completed', '—')} | {r.get('spanning', '—')} | "
                   f"{r['max_us']} | {r['p999_us']} | {r['p99_us']} |")

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


    out += ["", "## Tracking memory per TiB", "",
            "Measured: MemFree before and after the constructor of a migrate target over two 1 TiB",
            "null_blk devices (table loaded, not resumed: no copier buffers), the median of three loads;",
            "Slab, VmallocUsed and Percpu are the same loads' deltas. Without a metadata device and with",
            "one (`dmmig move` always gives one: a loop device over a tmpfs file written in full",
            "beforehand, so that formatting it allocates no page). Computed: one bit per region, the",
            "pending bitmap once the copy has reached all of it; with metadata the constructor also",
            "allocates eight flat bitmaps of this size (the write-intent log's five, the metadata store's",
            "three). A linear table's load over the same devices, measured the same way, is the noise",
            "floor.", ""]
    memory = by("memory")
    if memory and "rounds_kib" in memory[0]:
        r0 = memory[0]
        out += [f"Loading a linear table took {r0['linear_kib']} KiB of MemFree (rounds: "
                f"{', '.join(str(x) for x in r0['linear_rounds_kib'])}).", "",
                "| region | metadata | measured KiB/TiB | rounds | Slab | VmallocUsed | Percpu | one bitmap KiB/TiB (computed) |",
                "|---:|---|---:|---|---:|---:|---:|---:|"]
        for r in memory:
            meta = f"yes ({r['metadata_device_kib']} KiB device)" if r.get("metadata") else "no"
            out.append(f"| {r['region_kib']} KiB | {meta} | {r['measured_kib_per_tib']} | "
                       f"{', '.join(str(x) for x in r['rounds_kib'])} | {r['slab_kib']} | {r['vmalloc_kib']} | "
                       f"{r['percpu_kib']} | {r['bitmap_kib_per_tib']} |")
    else:
        out += ["| region | metadata | measured KiB/TiB | one bitmap KiB/TiB (computed) |", "|---:|---|---:|---:|"]
        for r in memory:
            out.append(f"| {r['region_kib']} KiB | {'yes' if r.get('metadata') else 'no'} | "
                       f"{r['measured_kib_per_tib']} | {r['bitmap_kib_per_tib']} |")

    out += issue11_tables(rows, results)
    out += issue11_targets(rows)
    out += targets(rows)
    return out


def issue11_tables(rows, results):
    """The sections of issue 11: device kinds, the controller, sync under load, a sparse origin."""
    by = lambda fig: [r for r in rows if r["figure"] == fig]
    out = []

    kinds = by("device_kind")
    if kinds:
        out += ["", "## Device kinds: idle copy throughput", "",
                f"The first {kinds[0]['mib']} MiB of each pair, nothing else running. raw-1 is one `dd bs=4M",
                "iflag=direct oflag=direct`, raw-4 four of them at once, each a quarter (skip/seek);",
                "migrate at its defaults; clone-tuned64 is dm-clone with `hydration_threshold 64",
                "hydration_batch_size 64`. \"copier CPU\" is the CPU time of migrate's copier thread over",
                "its copy, in percent of the copy's time: near 100% the copy is bound by the one CPU that",
                "thread runs on (the VM has two; raw-4's four processes use both). The devices:", ""]
        out += [f"- **{k['device']}**: {k['what']}" for k in kinds]
        out += ["", "| device | raw-1 MiB/s | raw-4 MiB/s | migrate MiB/s | clone-tuned64 MiB/s | "
                "migrate vs best raw | migrate vs dm-clone | copier CPU |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for k in kinds:
            mine = {r["peer"]: r for r in by("kind_copy") if r["device"] == k["device"]}
            for r in mine.values():
                r["mib_per_s"] = round(r["mib"] / r["seconds"], 1) if r["seconds"] else None
            speed = lambda peer: mine[peer]["mib_per_s"] if peer in mine else None
            raws = [x for x in (speed("raw-1"), speed("raw-4")) if x]
            k["best_raw_mib_per_s"] = max(raws) if raws else None
            # Why the targets cannot be judged on this kind's copies, if they cannot.
            k["migrate_problem"] = copy_problem(mine.get("migrate")) or (None if raws else "no raw copy")
            k["clone_problem"] = copy_problem(mine.get("clone-tuned64"))
            k["migrate_vs_best_raw"] = ratio(speed("migrate"), k["best_raw_mib_per_s"]) if speed("migrate") else None
            k["migrate_vs_clone"] = ratio(speed("migrate"), speed("clone-tuned64")) if speed("migrate") else None
            cpu = mine.get("migrate", {}).get("copier_cpu_s")
            seconds = mine.get("migrate", {}).get("seconds")
            k["copier_cpu_percent"] = round(100 * cpu / seconds) if cpu is not None and seconds else None
            cpu_text = f"{k['copier_cpu_percent']}%" if k["copier_cpu_percent"] is not None else "—"
            if cpu == 0 and seconds and seconds >= 0.5:
                # A thread that copied for half a second took some of the CPU's ticks: a 0 is
                # the wrong thread, or a count taken after the copy (issue 24).
                cpu_text = error(f"copier CPU on {k['device']}",
                                 f"0 s of CPU time over a copy of {seconds} s: not the copier's time")
                k["copier_cpu_percent"] = None
            out.append(f"| {k['device']} | {speed('raw-1')} | {speed('raw-4')} | {speed('migrate')} | "
                       f"{speed('clone-tuned64')} | {k['migrate_vs_best_raw']} | {k['migrate_vs_clone']} | {cpu_text} |")

        guest = by("kind_guest_io")
        out += ["", "## Device kinds: guest 4 KiB random I/O while migrate copies at its defaults", "",
                "fio libaio iodepth 16 on the device; counted from the copy's release to the end of the copy",
                "or for at most BENCH_FIO_S + 2 s, for dm-linear (on the origin, no copy) over BENCH_FIO_S s",
                "from the same point of its run.", "",
                "\"in sync\" is migrate with `no_switch` once every region is copied: every write goes to",
                "both devices, so its ratio is what mirroring alone costs a write on that kind; while",
                "copying, the writes that land on copied regions pay it.", "",
                "| device | rw | dm-linear IOPS | migrate IOPS | vs dm-linear | dm-linear p99 µs | "
                "migrate p99 µs | vs dm-linear | copied meanwhile | in sync vs dm-linear (IOPS, p99) |",
                "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r in (r for r in guest if r["peer"] == "migrate"):
            b = next((x for x in guest if x["peer"] == "linear" and x["device"] == r["device"] and x["rw"] == r["rw"]), None)
            if not b or not r["ios"]:
                continue
            r["ratio_to_linear"] = ratio(r["iops"], b["iops"])
            r["p99_ratio_to_linear"] = ratio(r["p99_us"], b["p99_us"])
            copied = "all" if r.get("copy_ended") else f"{r.get('fraction', 0) * 100:.0f}%"
            m = next((x for x in guest if x["peer"] == "mirrored" and x["device"] == r["device"]
                      and x["rw"] == r["rw"] and x["ios"]), None)
            mirrored = "—"
            if m:
                m["ratio_to_linear"] = ratio(m["iops"], b["iops"])
                m["p99_ratio_to_linear"] = ratio(m["p99_us"], b["p99_us"])
                mirrored = f"{m['ratio_to_linear']}x, {m['p99_ratio_to_linear']}x"
            out.append(f"| {r['device']} | {r['rw']} | {b['iops']} | {r['iops']} | {r['ratio_to_linear']} | "
                       f"{b['p99_us']} | {r['p99_us']} | {r['p99_ratio_to_linear']} | {copied} | {mirrored} |")

    mirror_rows = [r for r in by("kind_guest_io") if r["peer"] in ("migrate-async", "mirrored-async")]
    if mirror_rows:
        out += ["", "## Device kinds: the synchronous against the asynchronous mirror", "",
                "Guest 4 KiB random writes (fio libaio iodepth 16) against dm-linear on the origin: while",
                "migrate copies at its defaults (as above), and in sync (`no_switch`, every write mirrored),",
                "with `mirror sync` (the default: the write completes when both devices have it) and",
                "`mirror async` (it completes when the origin has it; the destination's half follows within",
                "`mirror_lag`, 8 MiB, and 128 writes). Each cell is IOPS and p99 against dm-linear's. \"most",
                "behind\" and \"capped\" are async's in sync: the most bytes in flight to the destination",
                "at once, and the writes mirrored synchronously because the cap or the slots were used up.", "",
                "| device | dm-linear IOPS | sync, copying | async, copying | sync, in sync | async, in sync | "
                "most behind (bytes) | capped writes |", "|---|---:|---|---|---|---|---:|---:|"]
    for device in dict.fromkeys(r["device"] for r in mirror_rows):
        find = lambda peer: next((x for x in by("kind_guest_io") if x["device"] == device
                                  and x["rw"] == "randwrite" and x["peer"] == peer), None)
        b = find("linear")
        if io_problem(b):
            out.append(f"| {device} | {error(f'dm-linear writes on {device}', io_problem(b))} | | | | | | |")
            continue
        cells = []
        for peer in ("migrate", "migrate-async", "mirrored", "mirrored-async"):
            r = find(peer)
            why = io_problem(r)
            if why:
                cells.append(error(f"{peer} writes on {device}", why))
                continue
            r["ratio_to_linear"] = ratio(r["iops"], b["iops"])
            r["p99_ratio_to_linear"] = ratio(r["p99_us"], b["p99_us"])
            cells.append(f"{r['ratio_to_linear']}x, p99 {r['p99_ratio_to_linear']}x")
        a = find("mirrored-async") or {}
        out.append(f"| {device} | {b['iops']} | {' | '.join(cells)} | {a.get('behind_max_bytes', '—')} | "
                   f"{a.get('capped_writes', '—')} |")

    ctl = by("controller")
    if ctl:
        out += ["", "## The adaptive controller: a guest load that starts, stops and starts again", "",
                "Guest fio 4 KiB randrw, iodepth 16, on, off, on, while migrate copies 1 TiB of null_blk (no",
                "backing memory: it cannot finish). Copy rates from the target's copied bytes over each",
                "phase; `rate_limit` is the controller's limit (controller.png).", "",
                "| run | table options | guest IOPS (1st, 2nd load) | guest p99 µs (1st, 2nd) | "
                "copy MiB/s under load | copy MiB/s between the loads |", "|---|---|---|---|---:|---:|"]
        for r in ctl:
            data = controller_csv(os.path.join(results, f"controller-{r['run']}.csv"))
            on1, on2 = r["on"]
            t0 = r["t0"]
            windows = [(t0 + on1["from_s"], t0 + on1["to_s"]), (t0 + on2["from_s"], t0 + on2["to_s"])]
            rates_on = [copy_rate(data, a, b) for a, b in windows]
            r["copy_mib_per_s_loaded"] = round(sum(x for x in rates_on if x is not None) / 2, 1) if all(
                x is not None for x in rates_on) else None
            r["copy_mib_per_s_idle"] = copy_rate(data, t0 + on1["to_s"] + 0.5, t0 + on2["from_s"])
            r["guest_iops"] = [on1["iops"], on2["iops"]]
            out.append(f"| {r['run']} | {r['table_opts'] or '(defaults)'} | {on1['iops']}, {on2['iops']} | "
                       f"{on1['p99_us']}, {on2['p99_us']} | {r['copy_mib_per_s_loaded']} | {r['copy_mib_per_s_idle']} |")

    for r in by("sync_under_load"):
        out += ["", "## Time to sync under a flat-out writer", "",
                f"fio 4 KiB randwrite, iodepth 16, for the whole copy of {r['mib']} MiB of brd at the defaults",
                f"with `min_rate {r['min_rate_kibps']}`: the bound is size / min_rate = {r['bound_s']} s.", "",
                "| seconds | bound s | ended | guest write IOPS meanwhile | p99 µs |", "|---:|---:|---|---:|---:|",
                f"| {r['seconds']:.2f} | {r['bound_s']} | {'yes' if sync_ended(r) else 'no (' + r.get('state', 'no state recorded') + ', ' + format(r.get('fraction', 0) * 100, '.0f') + '%)'} | "
                f"{r.get('iops', '—')} | {r.get('p99_us', '—')} |"]

    for r in by("sparse"):
        r["alloc_ratio"] = ratio(r["alloc_bytes"], r["data_bytes"])
        r["time_ratio"] = ratio(r["seconds"], r["full_copy_s"]) if r.get("full_copy_s") else None
        mib = lambda b: f"{b / 1048576:.1f}"
        out += ["", "## A sparse origin", "",
                f"A loop device over a {r['mib']} MiB tmpfs file, a tenth of it data (1 MiB chunks at random places,",
                "the rest holes), copied by migrate at its defaults onto a fresh sparse file; against the",
                "loop kind's copy of an all-data origin of the same size (device kinds, above).", "",
                "| origin data MiB | destination allocated MiB (stat) | du MiB | vs the data | seconds | "
                "full copy seconds | vs full | identical (cmp) | zero bytes (sysfs, status) |",
                "|---:|---:|---:|---:|---:|---:|---:|---|---|",
                f"| {mib(r['data_bytes'])} | {mib(r['alloc_bytes'])} | {mib(r['du_bytes'])} | {r['alloc_ratio']} | "
                f"{r['seconds']:.2f} | {r['full_copy_s']} | {r['time_ratio']} | {'yes' if r['identical'] else 'no'} | "
                f"{r['zero_bytes']}, {r['status_zero_bytes']} |"]

    skipped = by("not_measured")
    if skipped:
        out += ["", "## Not measured", "", "The target refused these tables (a module without issue 11's options?):", ""]
        out += [f"- {r['section']}: `{r['table']}`: {r['error']}" for r in skipped]
    return out


def sync_ended(r):
    """Whether the copy of the sync_under_load figure R switched: only a switch ends it (a
    bench before issue 21 also counted "failed" and "cancelled" as ended)."""
    return r.get("state") == "switched" and bool(r.get("copy_ended"))


def controller_csv(path):
    """The rows of a controller CSV as (unix seconds, rate KiB/s, limit KiB/s or None, copied bytes)."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [(float(r["unix_seconds"]), float(r["rate_kibps"]),
                 float(r["rate_limit_kibps"]) if r["rate_limit_kibps"] else None, float(r["copied_bytes"]))
                for r in csv.DictReader(f)]


def copy_rate(data, start, end):
    """MiB/s copied between the samples nearest START and END, or None without samples there."""
    inside = [d for d in data if start <= d[0] <= end]
    if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
        return None
    return round((inside[-1][3] - inside[0][3]) / (inside[-1][0] - inside[0][0]) / 1048576, 1)


def issue11_targets(rows):
    """Issue 11's targets, each with this run's figure, the target, and whether it was met; a
    target whose figure is missing or unusable is an error (see ERRORS)."""
    by = lambda fig: [r for r in rows if r["figure"] == fig]
    lines = ["", "## Targets", "", "Issue 11's targets, at default settings, side by side in this one VM run.", "",
             "| figure | device | this run | target | met |", "|---|---|---|---|---|"]

    def line(what, device, figure, target, met):
        lines.append(f"| {what} | {device} | {figure} | {target} | {'yes' if met else '**no**'} |")

    def bad(what, device, target, why):
        lines.append(f"| {what} | {device} | {error(f'{what} ({device})', why)} | {target} | **ERROR** |")

    kinds = [k["device"] for k in by("device_kind")] or ["brd", "delay", "nullb", "loop"]
    for device in kinds:
        for rw in ["randread", "randwrite"]:
            r = next((x for x in by("kind_guest_io") if x["device"] == device and x["rw"] == rw
                      and x["peer"] == "migrate"), None)
            b = next((x for x in by("kind_guest_io") if x["device"] == device and x["rw"] == rw
                      and x["peer"] == "linear"), None)
            why = io_problem(r, "ratio_to_linear", "p99_ratio_to_linear") or (
                io_problem(b) and f"dm-linear: {io_problem(b)}")
            if why:
                bad(f"guest {rw} IOPS while copying", device, ">= 0.85x dm-linear", why)
                bad(f"guest {rw} p99 while copying", device, "<= 1.5x dm-linear", why)
                continue
            line(f"guest {rw} IOPS while copying", device, f"{r['ratio_to_linear']}x", ">= 0.85x dm-linear",
                 r["ratio_to_linear"] >= 0.85)
            line(f"guest {rw} p99 while copying", device, f"{r['p99_ratio_to_linear']}x ({r['p99_us']} µs)",
                 "<= 1.5x dm-linear", r["p99_ratio_to_linear"] <= 1.5)
    for k in by("device_kind"):
        what = "idle copy vs the best raw copy (1 or 4 streams)"
        if k.get("migrate_problem") or k.get("migrate_vs_best_raw") is None:
            bad(what, k["device"], ">= 0.95x", k.get("migrate_problem") or "not measured")
        else:
            line(what, k["device"], f"{k['migrate_vs_best_raw']}x ({k['best_raw_mib_per_s']} MiB/s raw)", ">= 0.95x",
                 k["migrate_vs_best_raw"] >= 0.95)
        what = "idle copy vs dm-clone tuned (64/64)"
        why = k.get("migrate_problem") or (k.get("clone_problem") and f"dm-clone: {k['clone_problem']}")
        if why or k.get("migrate_vs_clone") is None:
            bad(what, k["device"], "ahead (> 1x)", why or "not measured")
        else:
            line(what, k["device"], f"{k['migrate_vs_clone']}x", "ahead (> 1x)", k["migrate_vs_clone"] > 1)
    r = next(iter(by("sync_under_load")), None)
    what, target = "time to sync under a flat-out writer", "ends, <= size / min_rate"
    if r is None:
        bad(what, "brd", target, "not measured")
    elif r.get("state") not in ("switched", "copying", "paused"):
        # Only a switch ends the copy; one that failed or was cancelled did not sync at all.
        bad(what, f"brd, {r['mib']} MiB", target, f"the copy ended {r.get('state', '(no state recorded)')}")
    elif io_problem(r):
        bad(what, f"brd, {r['mib']} MiB", target, f"the writer: {io_problem(r)}")
    else:
        line(what, f"brd, {r['mib']} MiB",
             f"{r['seconds']:.2f} s" if sync_ended(r) else f"did not end ({r['fraction'] * 100:.0f}% copied)",
             f"{target} = {r['bound_s']} s", sync_ended(r) and r["seconds"] <= r["bound_s"])
    r = next(iter(by("sparse")), None)
    why = None if r is None else (None if r.get("state") == "switched" else
                                  f"the copy ended {r.get('state', '(no state recorded)')}")
    if r is None or why:
        for what, target in [("sparse origin (10% data): destination allocation", "<= 1.1x the origin's data"),
                             ("sparse origin (10% data): time", "<= 0.5x a full copy"),
                             ("sparse origin: identical (cmp)", "identical")]:
            bad(what, "loop", target, why or "not measured")
    else:
        if r["alloc_ratio"] is None:
            bad("sparse origin (10% data): destination allocation", "loop", "<= 1.1x the origin's data",
                "no data in the origin")
        else:
            line("sparse origin (10% data): destination allocation", "loop", f"{r['alloc_ratio']}x the data",
                 "<= 1.1x the origin's data", r["alloc_ratio"] <= 1.1)
        if r["time_ratio"] is None:
            bad("sparse origin (10% data): time", "loop", "<= 0.5x a full copy", "no full copy to compare")
        else:
            line("sparse origin (10% data): time", "loop", f"{r['time_ratio']}x a full copy", "<= 0.5x a full copy",
                 r["time_ratio"] <= 0.5)
        line("sparse origin: identical (cmp)", "loop", "yes" if r["identical"] else "no", "identical", r["identical"])
    # Issue 24's guest-write targets, on every kind that has the asynchronous mirror's runs:
    # while copying and in sync, with the default mirror (sync) and with `mirror async`.
    for device in dict.fromkeys(r["device"] for r in by("kind_guest_io") if r["peer"] == "mirrored-async"):
        remote = device in ("delay", "nbd")
        iops_target, p99_target = (0.85, 1.5) if remote else (0.9, 1.3)
        b = next((x for x in by("kind_guest_io") if x["device"] == device and x["rw"] == "randwrite"
                  and x["peer"] == "linear"), None)
        for peer, what in [("migrate", "while copying, mirror sync (default)"),
                           ("migrate-async", "while copying, mirror async"),
                           ("mirrored", "in sync, mirror sync (default)"),
                           ("mirrored-async", "in sync, mirror async")]:
            r = next((x for x in by("kind_guest_io") if x["device"] == device and x["rw"] == "randwrite"
                      and x["peer"] == peer), None)
            why = io_problem(r) or (io_problem(b) and f"dm-linear: {io_problem(b)}")
            name = f"guest randwrite {what}"
            target = f">= {iops_target}x dm-linear IOPS, p99 <= {p99_target}x"
            if why:
                bad(name, device, target, why)
                continue
            iops_ratio, p99_ratio = ratio(r["iops"], b["iops"]), ratio(r["p99_us"], b["p99_us"])
            line(name, device, f"{iops_ratio}x, p99 {p99_ratio}x ({r['p99_us']} µs)", target,
                 iops_ratio >= iops_target and p99_ratio <= p99_target)
    # The tracking memory target, judged on both tables: without metadata, and with it, as
    # `dmmig move` runs every migration.
    for metadata in (False, True):
        what = f"tracking memory at 64 KiB regions, {'with' if metadata else 'without'} a metadata device"
        r = next((x for x in by("memory") if x["region_kib"] == 64 and bool(x.get("metadata")) == metadata), None)
        if r is None or r.get("measured_kib_per_tib") is None:
            bad(what, "null_blk, 1 TiB", "<= 2048 KiB/TiB", "not measured")
            continue
        spread = ""
        if "rounds_kib" in r:
            spread = f" (rounds {min(r['rounds_kib'])} to {max(r['rounds_kib'])}; a linear table: {r['linear_kib']})"
        line(what, "null_blk, 1 TiB", f"{r['measured_kib_per_tib']} KiB/TiB{spread}", "<= 2048 KiB/TiB",
             r["measured_kib_per_tib"] <= 2048)
    return lines


def targets(rows):
    """The issue's targets, each with the figures it compares and whether this run met it; a
    target whose figure is missing or unusable is an error (see ERRORS)."""
    def find(fig, **keys):
        return next((r for r in rows if r["figure"] == fig and all(r.get(k) == v for k, v in keys.items())), None)

    lines = ["", "## Earlier targets", "", "| target | this run | met |", "|---|---|---|"]

    def line(what, figures, met):
        lines.append(f"| {what} | {figures} | {'yes' if met else 'no'} |")

    def bad(what, why):
        lines.append(f"| {what} | {error(what, why)} | **ERROR** |")

    raw, ours = find("copy", peer="raw dd 4M O_DIRECT"), find("copy", peer="migrate")
    clone, mirror = find("copy", peer="clone-tuned"), find("copy", peer="mirror")
    why = ("raw copy: not measured" if raw is None or not raw.get("seconds") else None) or next(
        (f"{name}: {copy_problem(r)}" for name, r in [("migrate", ours), ("dm-clone tuned", clone),
                                                      ("dm-raid1", mirror)] if copy_problem(r)), None)
    if why:
        bad("copy >= 0.9x the raw copy", why)
        bad("copy ahead of dm-clone (tuned) and dm-raid1", why)
    else:
        line("copy >= 0.9x the raw copy", f"{ours['ratio_to_raw']}x", ours["ratio_to_raw"] >= 0.9)
        line("copy ahead of dm-clone (tuned) and dm-raid1",
             f"{ours['mib_per_s']} vs {clone['mib_per_s']} and {mirror['mib_per_s']} MiB/s",
             ours["mib_per_s"] > max(clone["mib_per_s"], mirror["mib_per_s"]))
    for rw in ["randread", "randwrite"]:
        what = f"guest {rw} IOPS while copying >= 0.8x dm-linear"
        r, b = find("guest_io", peer="migrate", rw=rw), find("guest_io", peer="linear", rw=rw)
        why = io_problem(r, "ratio_to_linear") or (io_problem(b) and f"dm-linear: {io_problem(b)}")
        if why:
            bad(what, why)
        else:
            line(what, f"{r['ratio_to_linear']}x", r["ratio_to_linear"] >= 0.8)
        what = f"{rw} IOPS after the switch within 3% of dm-linear"
        r, b = find("idle_overhead", peer="migrate switched", rw=rw), find("idle_overhead", peer="linear", rw=rw)
        why = io_problem(r, "ratio_to_linear") or (io_problem(b) and f"dm-linear: {io_problem(b)}")
        if why:
            bad(what, why)
        else:
            line(what, f"{r['ratio_to_linear']}x", r["ratio_to_linear"] >= 0.97)
    ours, swap = find("switch_pause", peer="migrate", window="switch"), find("switch_pause", peer="swap", window="switch")
    for key, what in [("max_us", "longest"), ("p999_us", "p99.9")]:
        what = f"switch pause ({what}) below the suspend/resume swap"
        why = (io_problem(ours, key) and f"migrate's switch: {io_problem(ours, key)}") or (
            io_problem(swap, key) and f"the swap: {io_problem(swap, key)}")
        if why:
            bad(what, why)
        else:
            line(what, f"{ours[key]} vs {swap[key]} µs", ours[key] < swap[key])
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

    issue11_plots(results, rows, plt)


def issue11_plots(results, rows, plt):
    """controller.png (guest IOPS and copy rate over time, one panel per run) and kinds-copy.png."""
    path = lambda name: os.path.join(results, name)
    ctl = [r for r in rows if r["figure"] == "controller"]
    if ctl:
        fig, axes = plt.subplots(len(ctl), 1, figsize=(10, 3.2 * len(ctl)), sharex=True, squeeze=False)
        for ax, r in zip(axes[:, 0], ctl):
            t0 = r["t0"]
            for phase in r["on"]:
                ax.axvspan(phase["from_s"], phase["to_s"], color="0.92", zorder=0)
            iops = series(path(f"iops-controller-{r['run']}.csv"))
            if iops:
                ax.plot(*iops, color="black", linewidth=1, label="guest IOPS (100 ms bins)")
            ax.set_ylabel("guest IOPS")
            ax.set_ylim(bottom=0)
            data = controller_csv(path(f"controller-{r['run']}.csv"))
            right = ax.twinx()
            if data:
                # The copy rate from the copied bytes over about half a second, finer than the
                # target's own one-second figure, which is drawn too.
                xs, ys = [], []
                for i in range(len(data)):
                    j = next((j for j in range(i, -1, -1) if data[i][0] - data[j][0] >= 0.5), None)
                    if j is not None and data[i][0] > data[j][0]:
                        xs.append((data[i][0] + data[j][0]) / 2 - t0)
                        ys.append((data[i][3] - data[j][3]) / (data[i][0] - data[j][0]) / 1048576)
                right.plot(xs, ys, color="tab:blue", linewidth=1.5, label="copy MiB/s (copied bytes, 0.5 s)")
                right.plot([d[0] - t0 for d in data], [d[1] / 1024 for d in data], color="tab:cyan",
                           linewidth=1, linestyle=":", label="copy MiB/s (the target's rate, 1 s)")
                limits = [(d[0] - t0, d[2] / 1024 if d[2] else float("nan")) for d in data if d[2] is not None]
                if limits:
                    right.plot(*zip(*limits), color="tab:red", linewidth=1, linestyle="--",
                               label="rate_limit MiB/s (gap: none)")
            # A log scale: the floor (10 MiB/s) and a flat-out copy (GiB/s) in one panel.
            right.set_yscale("log")
            right.set_ylim(1, 20000)
            right.set_ylabel("copy MiB/s (log)")
            ax.set_title(f"{r['run']}: {r['table_opts'] or 'defaults'}", fontsize=10)
            handles = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
        fig.legend(handles, [h.get_label() for h in handles], loc="lower center", ncol=4, fontsize=8,
                   bbox_to_anchor=(0.5, -0.02))
        axes[-1, 0].set_xlabel("seconds from the copy's start (grey: guest load running)")
        fig.suptitle("The adaptive controller: guest 4 KiB randrw on, off, on while migrate copies 1 TiB of null_blk")
        fig.savefig(path("controller.png"), dpi=100, bbox_inches="tight")

    kinds = [k for k in rows if k["figure"] == "device_kind"]
    copies = [r for r in rows if r["figure"] == "kind_copy" and r.get("mib_per_s")]
    if kinds and copies:
        peers = ["raw-1", "raw-4", "migrate", "clone-tuned64"]
        colors = {"raw-1": "tab:gray", "raw-4": "black", "migrate": "tab:blue", "clone-tuned64": "tab:red"}
        fig, ax = plt.subplots(figsize=(8, 4))
        width = 0.8 / len(peers)
        for i, peer in enumerate(peers):
            heights = [next((r["mib_per_s"] for r in copies if r["device"] == k["device"] and r["peer"] == peer), 0)
                       for k in kinds]
            ax.bar([x + (i - 1.5) * width for x in range(len(kinds))], heights, width, label=peer, color=colors[peer])
        ax.set_xticks(range(len(kinds)), [k["device"] for k in kinds])
        ax.set(ylabel="MiB/s", title=f"Idle copy throughput per device kind ({kinds[0]['mib']} MiB, one TCG VM run)")
        ax.legend()
        fig.savefig(path("kinds-copy.png"), dpi=100, bbox_inches="tight")


def main(results, draw=True):
    """Writes the report of RESULTS; returns the exit status: 1 if a target could not be judged."""
    ERRORS.clear()
    rows = [json.loads(line) for line in open(os.path.join(results, "bench.jsonl")) if line.strip()]
    out = tables(rows, results)
    if ERRORS:
        out += ["", "## Errors", "", "These figures are missing or unusable, so the targets on them were not judged:", ""]
        out += [f"- {e}" for e in ERRORS]
    with open(os.path.join(results, "bench.md"), "w") as f:
        f.write("\n".join(out) + "\n")
    with open(os.path.join(results, "bench.json"), "w") as f:
        json.dump(rows, f, indent=1)
    print("\n".join(out))
    if draw:
        plots(results, rows)
    for e in ERRORS:
        print(f"report.py: ERROR: {e}", file=sys.stderr)
    return 1 if ERRORS else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
