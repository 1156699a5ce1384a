"""The suite: which cells to run, in what order, and how repetitions become a row.

```
 Config ─▶ plan(): cells (workload × workers × start method) and the loaders that run
   for each cell:
     throughput: calibrate each loader (time-bounded warm-up) ─▶ fixed batch count N
                 rep 1: ours, torch, ...  rep 2: ours, torch, ...  (interleaved)
     cold_start: rep 1: ours, torch, ...  (a fresh loader per run)
     warm_epochs: rep 1: ours, torch, ...  (persistent workers, --epochs epochs)
   ─▶ aggregate(): medians over reps, spread, ratio to torch, ideal for `latency`
```

- The main process runs everything; loaders alternate run by run so that drift on a
  noisy machine hits all of them alike.
- A loader that fails a run gets an error in its row and is not run again in that cell;
  the suite goes on. A watchdog dumps every thread's stack and exits if a run hangs.
- Shutdown: each run closes its loader and checks its workers exited (``runs.py``); the
  suite checks once more at the end.
"""

from __future__ import annotations

import copy
import faulthandler
import gc
import importlib
import inspect
import math
import os
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

from .adapters import ADAPTERS, BASELINE
from .measure import worker_processes
from .runs import Cell, cold_run, memory_run, throughput_run, warm_run
from .workloads import WORKLOADS, Workload

__all__ = ["Config", "QUICK_WORKLOADS", "run_suite"]

_CALIBRATE_S = 0.4  # time-bounded warm-up run per loader and cell; sets the batch count
_CALIBRATE_QUICK_S = 0.1
_CALIB_EPOCH_BATCHES = 1_000_000  # a calibration run's virtual epoch (samplers are lazy)
_MIN_BATCHES = 5  # below this a median over next() calls means little
_MAX_BATCHES = 50_000  # bounds a run when a loader is extremely fast
_COLD_BATCHES = 4  # batches in a cold-start run's epoch: enough to reach steady shutdown
_WARM_EPOCH_BATCHES = 10  # batches per epoch in `warm_epochs`: short, so starts matter
_RUN_WATCHDOG_S = 180.0  # a single run taking longer than this is a hang: dump and exit
_USER_BATCH_SIZE = 64  # --dataset batch size unless --batch-size says otherwise
QUICK_WORKLOADS = ("tiny", "image_npcollate", "iterable", "cold_start", "warm_epochs")
_METRICS = ("samples_per_s", "mb_per_s", "ttfb_s", "ttfb_main_cpu_ms",
            "main_cpu_us_per_batch", "worker_cpu_us_per_batch", "peak_pss_mb",
            "peak_rss_mb", "peak_uss_mb", "p50_next_ms", "p99_next_ms", "teardown_s",
            "first_epoch_ttfb_s", "bytes_per_sample", "batches", "samples", "wall_s",
            "background_cores", "run_s", "epoch_s", "worker_uss_start_max_mb",
            "worker_uss_end_max_mb", "pss_sum_mb", "main_pss_mb")
_PER_WORKER = ("worker_uss_start_mb", "worker_uss_end_mb")  # lists: kept from the median rep


@dataclass
class Config:
    """What to run; every field has a CLI flag in ``__main__.py``."""

    workloads: list[str] = field(default_factory=list)
    loaders: list[str] = field(default_factory=list)
    workers: list[int] | None = None
    batch_size: int | None = None
    epochs: int = 5
    reps: int = 3
    seconds: float = 1.5  # steady-state seconds per run for the slower loader
    batches: int | None = None  # a fixed batch count instead of calibrating
    quick: bool = False
    dataset: str | None = None  # "module:factory"
    items: int | None = None  # the size of "memory" workloads' datasets (default: theirs)


class Progress:
    """One status line on stderr, rewritten in place on a terminal."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.t0 = total, 0, time.monotonic()
        self.tty = sys.stderr.isatty()

    def step(self, text: str) -> None:
        self.done += 1
        line = (f"[{self.done:3d}/{self.total}] {time.monotonic() - self.t0:5.0f}s  {text}")
        if self.tty:
            sys.stderr.write("\r\033[K" + line)
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\n")
            sys.stderr.flush()


# ---------------------------------------------------------------------- planning

def user_workload(spec: str, batch_size: int | None) -> Workload:
    """A Workload around ``module:factory``; the factory gets ``flavour=`` if it takes it."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise SystemExit(f"--dataset wants module:factory, got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    factory = getattr(importlib.import_module(module_name), attr)
    takes_flavour = "flavour" in inspect.signature(factory).parameters
    built = {"torch": factory(flavour="torch") if takes_flavour else factory()}
    iterable = _is_iterable(built["torch"])

    def build(flavour: str, length: int) -> Any:
        if flavour not in built:
            built[flavour] = factory(flavour=flavour) if takes_flavour else built["torch"]
        return built[flavour]

    return Workload(f"dataset:{spec}", f"user dataset from {spec}", build,
                    batch_size or _USER_BATCH_SIZE, iterable=iterable, resizable=False)


def _is_iterable(dataset: Any) -> bool:
    import loader
    bases = [loader.IterableDataset]
    torch_data = sys.modules.get("torch.utils.data")
    if torch_data is not None:
        bases.append(torch_data.IterableDataset)
    return isinstance(dataset, tuple(bases))


def plan(config: Config) -> tuple[list[Cell], list[Any], list[str]]:
    """The cells, the adapters that can run, and notes about the ones that cannot."""
    notes: list[str] = []
    adapters = []
    for name in config.loaders:
        if name not in ADAPTERS:
            raise SystemExit(f"unknown loader {name!r}; --list shows them")
        reason = ADAPTERS[name].unavailable()
        if reason:
            notes.append(f"{name}: skipped, {reason}")
        else:
            adapters.append(ADAPTERS[name])
    workloads = []
    for name in config.workloads:
        if name not in WORKLOADS:
            raise SystemExit(f"unknown workload {name!r}; --list shows them")
        workloads.append(WORKLOADS[name])
    if config.dataset:
        workloads.append(user_workload(config.dataset, config.batch_size))
    cells = []
    for wl in workloads:
        batch_size = config.batch_size or wl.batch_size
        workers = config.workers if config.workers is not None else list(wl.workers)
        if wl.kind != "throughput":
            workers = [w for w in workers if w > 0]
        by_method = wl.kind in ("cold_start", "memory") or len(wl.start_methods) > 1
        for method in (wl.start_methods if by_method else ("fork",)):
            label = f"{wl.name}/{method}" if by_method else wl.name
            cells.extend(Cell(wl, label, w, batch_size, method) for w in workers)
    return cells, adapters, notes


def _runs_in(cell: Cell, adapters: list[Any], config: Config) -> int:
    wl = cell.workload
    calibrate = wl.kind == "throughput" and config.batches is None
    active = [a for a in adapters if a.applies(wl) and not a.unsupported(
        wl, cell.num_workers, cell.start_method, wl.kind == "warm_epochs")]
    return len(active) * (config.reps + (1 if calibrate else 0))


# ---------------------------------------------------------------------- running

class _Datasets:
    """Each workload's dataset built once per flavour, resized per run by a shallow copy."""

    def __init__(self, items: int | None = None) -> None:
        self._built: dict[tuple[str, str], Any] = {}
        self._items = items

    def get(self, workload: Workload, flavour: str, batches: int, batch_size: int) -> Any:
        key = (workload.name, flavour)
        if key not in self._built:
            size = (self._items or workload.items) if workload.items else batch_size
            self._built[key] = workload.build(flavour, size)
        dataset = self._built[key]
        if not workload.resizable:
            return dataset
        sized = copy.copy(dataset)
        sized.length = batches * batch_size
        return sized


def _batch_cap(workload: Workload, dataset: Any, batch_size: int) -> int:
    """How many batches a timed run may take after the first one."""
    if workload.resizable:
        return _MAX_BATCHES
    try:
        return max(1, min(_MAX_BATCHES, len(dataset) // batch_size - 1))
    except TypeError:
        return _MAX_BATCHES


def _guarded(fn, *args, **kwargs) -> dict:
    faulthandler.dump_traceback_later(_RUN_WATCHDOG_S, exit=True)
    try:
        return fn(*args, **kwargs)
    finally:
        faulthandler.cancel_dump_traceback_later()


def _run_cell(cell: Cell, adapters: list[Any], config: Config, data: _Datasets,
              progress: Progress) -> list[dict]:
    wl, results, failed = cell.workload, [], set()
    active = []
    for adapter in adapters:
        if not adapter.applies(wl):
            continue
        reason = adapter.unsupported(wl, cell.num_workers, cell.start_method,
                                     wl.kind == "warm_epochs")
        if reason:
            results.append({"workload": cell.label, "loader": adapter.name,
                            "num_workers": cell.num_workers, "kind": wl.kind,
                            "skipped": reason})
        else:
            active.append(adapter)

    def where(adapter: Any, what: str) -> str:
        return f"{cell.label} w={cell.num_workers} {adapter.name} {what}"

    n = config.batches
    if wl.kind == "throughput" and n is None:
        limit = _CALIBRATE_QUICK_S if config.quick else _CALIBRATE_S
        rates = []
        for adapter in active:
            progress.step(where(adapter, "calibrate"))
            ds = data.get(wl, adapter.flavour, _CALIB_EPOCH_BATCHES, cell.batch_size)
            r = _guarded(throughput_run, adapter, ds, cell, _batch_cap(wl, ds, cell.batch_size),
                         time_limit_s=limit, drain=False)
            r["calibration"] = True
            results.append(r)
            if r.get("error"):
                failed.add(adapter.name)
            elif r.get("batches") and r.get("wall_s"):
                rates.append(r["batches"] / r["wall_s"])
        slowest = min(rates) if rates else 1.0
        n = max(_MIN_BATCHES, min(_MAX_BATCHES, math.ceil(config.seconds * slowest)))
    for rep in range(config.reps):
        for adapter in active:
            progress.step(where(adapter, f"rep {rep + 1}/{config.reps}"))
            if adapter.name in failed:
                continue
            if wl.kind == "throughput":
                ds = data.get(wl, adapter.flavour, n + 1, cell.batch_size)
                n_run = min(n, _batch_cap(wl, ds, cell.batch_size))
                r = _guarded(throughput_run, adapter, ds, cell, n_run, drain=wl.resizable)
            elif wl.kind == "cold_start":
                ds = data.get(wl, adapter.flavour, _COLD_BATCHES, cell.batch_size)
                r = _guarded(cold_run, adapter, ds, cell)
            elif wl.kind == "memory":
                ds = data.get(wl, adapter.flavour, 0, cell.batch_size)
                r = _guarded(memory_run, adapter, ds, cell)
            else:
                ds = data.get(wl, adapter.flavour, _WARM_EPOCH_BATCHES, cell.batch_size)
                r = _guarded(warm_run, adapter, ds, cell, config.epochs)
            r["rep"] = rep + 1
            results.append(r)
            if r.get("error"):
                failed.add(adapter.name)
    return results


def run_suite(config: Config) -> dict:
    """Run everything in ``config``; the raw runs, the aggregated rows and the notes."""
    cells, adapters, notes = plan(config)
    # Every run starts with a full gc.collect() so that one run's garbage is not collected
    # inside the next one's timed loop. With torch imported that costs ~80 ms a run, so the
    # objects alive now (imports) are frozen out of collection; both loaders share this
    # process, so neither is favoured.
    gc.collect()
    gc.freeze()
    progress = Progress(sum(_runs_in(c, adapters, config) for c in cells))
    data = _Datasets(config.items)
    prepared = []
    results: list[dict] = []
    started = time.time()
    t0 = time.monotonic()
    try:
        for adapter in adapters:  # before the snapshot: a cluster's daemons are not workers
            adapter.prepare(max((c.num_workers for c in cells), default=0))
            prepared.append(adapter)
        before = {p.pid for p in worker_processes()}
        with warnings.catch_warnings():
            # latency runs 4 and 8 workers on 2 cores on purpose; both loaders warn about it
            warnings.filterwarnings("ignore", message="This DataLoader will create")
            for cell in cells:
                results.extend(_run_cell(cell, adapters, config, data, progress))
    finally:
        for adapter in prepared:
            adapter.finish()
    progress.close()
    gc.unfreeze()
    leftover = [p.pid for p in worker_processes(before)]
    rows = aggregate(results)
    from .report import state_overheads
    return {
        "meta": _meta(config, started, time.monotonic() - t0),
        "rows": rows,
        "state_overhead": state_overheads(rows, results),
        "runs": results,
        "notes": notes + [a.note for a in adapters],
        "leftover_pids": leftover,
    }


# ---------------------------------------------------------------------- aggregation

def aggregate(results: list[dict]) -> list[dict]:
    """One row per (workload, loader, workers): medians over the timed repetitions."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        if not r.get("calibration"):
            groups.setdefault((r["workload"], r["loader"], r["num_workers"]), []).append(r)
    for r in results:  # a loader that failed calibration has no timed runs: keep the error
        key = (r["workload"], r["loader"], r["num_workers"])
        if r.get("calibration") and r.get("error") and key not in groups:
            groups[key] = [r]
    rows = []
    for (workload, loader, workers), runs in groups.items():
        ok = [r for r in runs if not r.get("error") and not r.get("skipped")]
        row = {"workload": workload, "loader": loader, "num_workers": workers,
               "kind": runs[0].get("kind"), "batch_size": runs[0].get("batch_size"),
               "start_method": runs[0].get("start_method"), "reps": len(ok)}
        for metric in _METRICS:
            values = [r[metric] for r in ok if r.get(metric) is not None]
            row[metric] = statistics.median(values) if values else None
        headline = "ttfb_s" if row["kind"] in ("cold_start", "memory") else "samples_per_s"
        values = [r[headline] for r in ok if r.get(headline)]
        if len(values) > 1:
            row["spread_pct"] = (max(values) - min(values)) / statistics.median(values) * 100
        errors = sorted({r["error"] for r in runs if r.get("error")})
        if errors:
            row["errors"] = errors
            row["traceback"] = next(r.get("traceback") for r in runs if r.get("error"))
        if runs[0].get("skipped"):
            row["skipped"] = runs[0]["skipped"]
        leaked = sorted({p for r in runs for p in r.get("leaked_pids", [])})
        if leaked:
            row["leaked_pids"] = leaked
        if ok and row["kind"] == "memory":
            median_rep = sorted(ok, key=lambda r: r["ttfb_s"])[len(ok) // 2]
            for key in _PER_WORKER:
                row[key] = median_rep.get(key)
        if row["kind"] == "warm_epochs":
            starts = [r["epoch_start_ms"] for r in ok if r.get("epoch_start_ms")]
            if starts:
                row["epoch_start_ms"] = [statistics.median(s) for s in zip(*starts)]
        rows.append(row)
    _add_ratios(rows)
    _add_ideal(rows)
    return rows


def _add_ratios(rows: list[dict]) -> None:
    base = {(r["workload"], r["num_workers"]): r for r in rows if r["loader"] == BASELINE}
    for row in rows:
        b = base.get((row["workload"], row["num_workers"]))
        row["ratio_vs_torch"] = None
        if b is None:
            continue
        if row["kind"] in ("cold_start", "memory"):
            if row.get("ttfb_s") and b.get("ttfb_s"):
                row["ratio_vs_torch"] = b["ttfb_s"] / row["ttfb_s"]
        elif row.get("samples_per_s") and b.get("samples_per_s"):
            row["ratio_vs_torch"] = row["samples_per_s"] / b["samples_per_s"]


def _add_ideal(rows: list[dict]) -> None:
    for row in rows:
        name = row["workload"].split("/")[0]
        wl = WORKLOADS.get(name)
        if wl is None or not wl.latency_s:
            continue
        row["ideal_samples_per_s"] = max(1, row["num_workers"]) / wl.latency_s
        if row.get("samples_per_s"):
            row["fraction_of_ideal"] = row["samples_per_s"] / row["ideal_samples_per_s"]


def _meta(config: Config, started: float, wall_s: float) -> dict:
    import platform

    import numpy

    versions = {"python": platform.python_version(), "numpy": numpy.__version__}
    for mod in ("torch", "loader", "psutil"):
        try:
            versions[mod] = getattr(importlib.import_module(mod), "__version__", "?")
        except ImportError:
            pass
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count()
    return {"started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
            "wall_s": wall_s, "cpus": cpus, "platform": platform.platform(),
            "argv": sys.argv[1:], "versions": versions,
            "config": {k: v for k, v in vars(config).items()},
            "tunables": {"calibrate_s": _CALIBRATE_S, "min_batches": _MIN_BATCHES,
                         "cold_batches": _COLD_BATCHES,
                         "warm_epoch_batches": _WARM_EPOCH_BATCHES}}
