"""Turning the suite's results into a table, a JSON file and (with matplotlib) a plot."""

from __future__ import annotations

import json
import os
import statistics
from typing import Any

__all__ = ["engine_overhead", "engine_overhead_lines", "format_table", "state_overheads",
           "write_json", "write_plot"]

_ENGINES = ("ours", "ours-ray")  # (reference engine, other engine) compared per batch

_NOTE_WIDTH = 48  # characters of an error message shown in the table; the JSON has all
_BUSY_NOTE_CORES = 0.25  # other processes' CPU (in cores) during a row's timed loops above
#                          which the row is flagged: its numbers measure a shared machine

_COLUMNS = [  # (header, row key, format)
    ("workload", "workload", "{}"),
    ("loader", "loader", "{}"),
    ("w", "num_workers", "{}"),
    ("samples/s", "samples_per_s", "{:,.0f}"),
    ("±%", "spread_pct", "{:.0f}"),
    ("MB/s", "mb_per_s", "{:,.1f}"),
    ("TTFB ms", "ttfb_ms", "{:,.1f}"),
    ("main µs/b", "main_cpu_us_per_batch", "{:,.0f}"),
    ("wkr µs/b", "worker_cpu_us_per_batch", "{:,.0f}"),
    ("peak MB", "peak_pss_mb", "{:,.0f}"),
    ("p99 ms", "p99_next_ms", "{:,.2f}"),
    ("×torch", "ratio_vs_torch", "{:.2f}"),
    ("note", "note", "{}"),
]
_LEFT = {"workload", "loader", "note"}

_LEGEND = """\
samples/s: median over reps of samples / wall time of the timed loop (first batch
  excluded); ±%: (max - min) / median of the reps. MB/s: samples/s × payload bytes.
TTFB: loader built + iter() + first batch; warm_epochs: median start of epochs 2.., its
  throughput counts epochs 2.. including their starts. cold_start: ×torch is torch's
  TTFB / ours (higher is faster), elsewhere samples/s / torch's.
main µs/b: main-process CPU over the timed loop per batch (the memory sampler's own CPU
  subtracted); wkr µs/b: the workers' CPU per batch. p99: 99th percentile next() time.
peak MB: peak of the summed {kind} of the main process and its workers, sampled every 1 s
  and at the end of the timed loop (RSS in the JSON too).
"others used N cores": other processes on the machine were busy during the row's timed
  loops (median of its reps), so its numbers are those of a shared machine.
The consumer keeps each batch until the next and never reads it."""


def _display(row: dict) -> dict:
    shown = dict(row)
    ttfb = row.get("ttfb_s")
    shown["ttfb_ms"] = None if ttfb is None else ttfb * 1e3
    notes = []
    if row.get("skipped"):
        notes.append(f"skipped: {row['skipped']}")
    if row.get("errors"):
        notes.append(("ERROR " + row["errors"][0])[:_NOTE_WIDTH])
    if row.get("leaked_pids"):
        notes.append(f"LEAKED workers {row['leaked_pids']}")
    if (row.get("background_cores") or 0) > _BUSY_NOTE_CORES:
        notes.append(f"others used {row['background_cores']:.1f} cores")
    if row.get("ideal_samples_per_s") and row.get("fraction_of_ideal") is not None:
        notes.append(f"ideal {row['ideal_samples_per_s']:,.0f}/s: "
                     f"{row['fraction_of_ideal']:.0%}")
    if row.get("kind") == "warm_epochs" and row.get("first_epoch_ttfb_s") is not None:
        notes.append(f"epoch 1 TTFB {row['first_epoch_ttfb_s'] * 1e3:,.0f} ms")
    if row.get("kind") == "cold_start" and row.get("teardown_s") is not None:
        notes.append(f"main CPU {row.get('ttfb_main_cpu_ms') or 0:,.0f} ms, "
                     f"close {row['teardown_s'] * 1e3:,.0f} ms")
    shown["note"] = "; ".join(notes)
    return shown


_MEMORY_COLUMNS = [  # the "memory" workloads' own table
    ("workload", "workload", "{}"),
    ("loader", "loader", "{}"),
    ("w", "num_workers", "{}"),
    ("TTFB s", "ttfb_s", "{:,.2f}"),
    ("×torch", "ratio_vs_torch", "{:.2f}"),
    ("worker USS MiB start → end", "uss", "{}"),
    ("PSS sum MiB", "pss_sum_mb", "{:,.0f}"),
    ("main PSS", "main_pss_mb", "{:,.0f}"),
    ("epoch s", "epoch_s", "{:,.2f}"),
    ("samples/s", "samples_per_s", "{:,.0f}"),
    ("note", "note", "{}"),
]
_MEMORY_LEGEND = """\
memory workloads: one shuffled epoch of a fixed dataset, a fresh loader per rep (median
  rep by TTFB). worker USS: each worker's unique memory right after the first batch and
  before the last one is handed out; PSS sum: main process + workers at that point (shared
  pages counted once in total); ×torch: torch's TTFB / ours (higher is sooner); epoch s:
  loader built to the last batch; samples/s: after the first batch to the last."""


def _uss(row: dict) -> str:
    start, end = row.get("worker_uss_start_mb"), row.get("worker_uss_end_mb")
    if not start or not end:
        return ""
    return f"{', '.join(f'{v:.0f}' for v in start)} → {', '.join(f'{v:.0f}' for v in end)}"


def _grid(rows: list[dict], columns: list) -> list[str]:
    grid = [[h for h, _, _ in columns]]
    breaks = set()
    last = None
    for row in rows:
        if last is not None and row["workload"] != last:
            breaks.add(len(grid))
        last = row["workload"]
        grid.append([_cell(row.get(key), fmt) for _, key, fmt in columns])
    widths = [max(len(line[i]) for line in grid) for i in range(len(columns))]
    lines = []
    for n, line in enumerate(grid):
        if n in breaks:
            lines.append("")
        cells = [(c.ljust(w) if key in _LEFT | {"uss"} else c.rjust(w))
                 for c, w, (_, key, _) in zip(line, widths, columns)]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


def engine_overhead(rows: list[dict]) -> list[dict]:
    """Per (workload, workers) run by both engines of ``_ENGINES``: what a batch costs on
    the other engine beyond the reference one, in wall time (1 / batches per second) and
    main-process CPU."""
    base, other = _ENGINES
    by_key = {(r["workload"], r["num_workers"], r["loader"]): r for r in rows
              if r.get("kind") == "throughput" and r.get("samples_per_s")}
    out = []
    for (workload, workers, loader), row in by_key.items():
        ref = by_key.get((workload, workers, base))
        if loader != other or ref is None:
            continue

        def wall_us(r: dict) -> float:
            return r["batch_size"] / r["samples_per_s"] * 1e6

        entry = {"workload": workload, "num_workers": workers,
                 "wall_us_per_batch": wall_us(row), "ref_wall_us_per_batch": wall_us(ref),
                 "overhead_wall_us": wall_us(row) - wall_us(ref)}
        if row.get("main_cpu_us_per_batch") is not None and \
                ref.get("main_cpu_us_per_batch") is not None:
            entry["overhead_main_cpu_us"] = (row["main_cpu_us_per_batch"]
                                             - ref["main_cpu_us_per_batch"])
        out.append(entry)
    return out


def engine_overhead_lines(rows: list[dict]) -> list[str]:
    lines = []
    base, other = _ENGINES
    for e in engine_overhead(rows):
        cpu = e.get("overhead_main_cpu_us")
        lines.append(
            f"engine overhead: {other} vs {base} on {e['workload']} w={e['num_workers']}: "
            f"{e['wall_us_per_batch']:,.0f} vs {e['ref_wall_us_per_batch']:,.0f} us per batch"
            f" ({e['overhead_wall_us']:+,.0f} us)"
            + ("" if cpu is None else f", main CPU {cpu:+,.0f} us per batch"))
    return lines


def state_overheads(rows: list[dict], runs: list[dict] | None = None) -> list[dict]:
    """What calling ``state_dict()`` after every batch costs each loader: its ``-state``
    runs against its plain runs of the same cell. Reps alternate loader by loader, so
    rep i of both ran back to back; the figures are medians over those pairs (robust to
    load that changes between reps), or of the rows' medians without the runs."""
    by_key = {(r["workload"], r["loader"], r["num_workers"]): r for r in rows}
    reps: dict[tuple, dict] = {}
    for run in runs or ():
        if not run.get("calibration") and run.get("samples_per_s") and not run.get("error"):
            reps[(run["workload"], run["loader"], run["num_workers"], run.get("rep"))] = run
    out = []
    for (workload, name, workers), probe in sorted(by_key.items()):
        if not name.endswith("-state"):
            continue
        plain = name[: -len("-state")]
        base = by_key.get((workload, plain, workers))
        if not base or not base.get("samples_per_s") or not probe.get("samples_per_s"):
            continue
        pairs = [(reps[(workload, plain, workers, rep)], run)
                 for (w, n, k, rep), run in reps.items()
                 if (w, n, k) == (workload, name, workers)
                 and (workload, plain, workers, rep) in reps]
        if not pairs:
            pairs = [(base, probe)]
        change = statistics.median(p["samples_per_s"] / b["samples_per_s"]
                                   for b, p in pairs)
        cpu = statistics.median((p.get("main_cpu_us_per_batch") or 0)
                                - (b.get("main_cpu_us_per_batch") or 0) for b, p in pairs)
        out.append({"workload": workload, "loader": plain, "num_workers": workers,
                    "pairs": len(pairs), "throughput_change_pct": (change - 1) * 100,
                    "main_cpu_us_per_batch": cpu,
                    "main_cpu_us_per_batch_plain": base.get("main_cpu_us_per_batch")})
    return out


def _cell(value: Any, fmt: str) -> str:
    if value is None or value == "":
        return "-" if fmt != "{}" else ""
    return fmt.format(value)


def format_table(result: dict) -> str:
    """The printed report: the table, its legend and the notes."""
    rows = [_display(r) for r in result["rows"]]
    memory = [dict(r, uss=_uss(r)) for r in rows if r.get("kind") == "memory"]
    rows = [r for r in rows if r.get("kind") != "memory"]
    lines = _grid(rows, _COLUMNS) if rows else []
    if memory:
        lines += ([""] if lines else []) + _grid(memory, _MEMORY_COLUMNS)
    overheads = result.get("state_overhead") or state_overheads(result["rows"])
    if overheads:
        lines += ["", "state_dict() after every batch: each -state run against the plain run "
                      "next to it (median over the rep pairs):"]
        for o in overheads:
            plain_cpu = o.get("main_cpu_us_per_batch_plain")
            lines.append(f"  {o['workload']} w={o['num_workers']} {o['loader']}: "
                         f"samples/s {o['throughput_change_pct']:+.1f}%, main CPU "
                         f"{o['main_cpu_us_per_batch']:+.1f} µs per batch"
                         + (f" (of {plain_cpu:.0f})" if plain_cpu else "")
                         + f", {o['pairs']} pair(s)")
    kinds = {r.get("memory_kind") for r in result.get("runs", []) if r.get("memory_kind")}
    if rows:
        lines += ["", _LEGEND.format(kind="/".join(sorted(kinds)).upper() or "PSS")]
    if memory:
        lines += ["", _MEMORY_LEGEND]
    lines.append("")
    lines += [f"note: {n}" for n in result.get("notes", [])]
    lines += engine_overhead_lines(result["rows"])
    background = sorted(r["background_cores"] for r in result.get("runs", [])
                        if r.get("background_cores") is not None)
    if background:
        lines.append(f"background load: other processes used a median of "
                     f"{background[len(background) // 2]:.2f} cores (max {background[-1]:.2f})"
                     " during the timed loops")
    meta = result.get("meta", {})
    if meta:
        v = meta.get("versions", {})
        lines.append(f"machine: {meta.get('cpus')} CPUs, {meta.get('platform')}; "
                     + ", ".join(f"{k} {val}" for k, val in v.items()))
        lines.append(f"suite wall time: {meta.get('wall_s', 0):.0f} s")
    if result.get("leftover_pids"):
        lines.append(f"WARNING: worker processes outlived the suite: {result['leftover_pids']}")
    return "\n".join(lines)


def write_json(result: dict, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=1, default=str)
        f.write("\n")


def write_plot(result: dict, path: str) -> str | None:
    """Throughput vs num_workers, one line per loader, a panel per workload; None
    when matplotlib is not installed or there is nothing to draw."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    series: dict[str, dict[str, list]] = {}
    for row in result["rows"]:
        if row.get("kind") != "throughput" or not row.get("samples_per_s"):
            continue
        series.setdefault(row["workload"], {}).setdefault(row["loader"], []).append(
            (row["num_workers"], row["samples_per_s"]))
    if not series:
        return None
    n = len(series)
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, (workload, loaders) in zip(axes.flat, series.items()):
        for loader, points in sorted(loaders.items()):
            points.sort()
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=loader)
        ax.set_xticks(sorted({p[0] for points in loaders.values() for p in points}))
        ax.set_title(workload)
        ax.set_xlabel("num_workers")
        ax.set_ylabel("samples/s")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
