"""One timed run of one loader: throughput, cold start, or warm epochs.

```
 gc + note existing children ─▶ MemorySampler.start ─▶ build loader ─▶ iter ─▶ first batch
   ─▶ timed loop (wall, main CPU, worker CPU, next() latencies) ─▶ PSS sample
   ─▶ drain to the epoch's natural end ─▶ adapter.shutdown ─▶ sampler.stop
   ─▶ wait for this run's workers to exit (kill and report any that do not)
```

- The main process does all the timing; the consumer holds each batch until it asks
  for the next one (as a training step does) and never reads its pages, so neither
  zero-copy views nor shared-memory tensors are charged for page faults.
- Main-process CPU is ``time.process_time()`` over the timed loop minus the memory
  sampler thread's own CPU; worker CPU comes from psutil's per-process counters.
- Every run ends through :class:`_Run.finish`, error or not, so no worker outlives it.
"""

from __future__ import annotations

import gc
import math
import os
import statistics
import time
import traceback
from dataclasses import dataclass
from typing import Any

import psutil

from .measure import (MemorySampler, batch_len, cpu_seconds, is_helper, machine_busy_s,
                                nbytes, worker_processes)
from .workloads import Workload

__all__ = ["Cell", "cold_run", "memory_run", "throughput_run", "warm_run"]

_SETTLE_S = 5.0  # how long a finished run's workers may take to exit before we kill them
_SETTLE_POLL_S = 0.01  # how often that wait re-checks them
_DRAIN_MAX_BATCHES = 64  # batches read after the timed loop to reach the natural epoch
#                          end; more than that (a user dataset) and the run just closes
_MB = 1024 * 1024


@dataclass(frozen=True)
class Cell:
    """One row of the table: a workload at a worker count and start method."""

    workload: Workload
    label: str
    num_workers: int
    batch_size: int
    start_method: str = "fork"


class _Run:
    """Brackets one run: GC first, memory sampling, and a guaranteed shutdown."""

    def __init__(self, adapter: Any) -> None:
        gc.collect()  # the previous run's garbage must not be collected inside this one
        self.t0 = time.perf_counter()
        self.adapter = adapter
        self.before = {p.pid for p in worker_processes()}
        self.loader: Any = None
        self.iterator: Any = None
        self.seen: dict[int, psutil.Process] = {}
        self.sampler = MemorySampler()
        self.sampler.start()

    def workers(self) -> list[psutil.Process]:
        procs = worker_processes(self.before)
        self.seen.update((p.pid, p) for p in procs)
        return procs

    def finish(self, result: dict) -> dict:
        """Shut the loader down, stop sampling, check that every worker exited."""
        self.workers()
        try:
            self.adapter.shutdown(self.loader, self.iterator)
        except Exception as exc:  # reported, and the leak check below still runs
            result.setdefault("error", f"shutdown failed: {type(exc).__name__}: {exc}")
        result.update(self.sampler.stop())
        self.loader = self.iterator = None
        # a helper seen before its exec (a spawned resource tracker) is known by now
        alive = [p for p in self.seen.values() if _alive(p) and not is_helper(p)]
        if alive:  # an abandoned iterator may only stop when collected
            gc.collect()
        deadline = time.monotonic() + _SETTLE_S
        while alive and time.monotonic() < deadline:
            time.sleep(_SETTLE_POLL_S)
            alive = [p for p in alive if _alive(p)]
        if alive:
            result["leaked_pids"] = [p.pid for p in alive]
            for proc in alive:  # ours to end: started by this run's loader
                try:
                    proc.kill()
                except psutil.Error:
                    pass
        result["run_s"] = time.perf_counter() - self.t0
        return result


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _base(adapter: Any, cell: Cell, kind: str) -> dict:
    return {"workload": cell.label, "loader": adapter.name, "num_workers": cell.num_workers,
            "batch_size": cell.batch_size, "start_method": cell.start_method, "kind": kind}


def _error(result: dict, exc: BaseException) -> None:
    result["error"] = f"{type(exc).__name__}: {exc}".strip()
    result["traceback"] = traceback.format_exc()


def _make(run: _Run, adapter: Any, dataset: Any, cell: Cell, persistent: bool,
          **extra: Any) -> Any:
    run.loader = adapter.make(dataset, batch_size=cell.batch_size,
                              num_workers=cell.num_workers,
                              collate_fn=cell.workload.collate_fn,
                              start_method=cell.start_method, persistent=persistent, **extra)
    return run.loader


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _worker_cpu(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(after[pid] - before[pid] for pid in after if pid in before)


def throughput_run(adapter: Any, dataset: Any, cell: Cell, n_batches: int, *,
                   time_limit_s: float | None = None, drain: bool = True) -> dict:
    """Build, take the first batch, then time ``n_batches`` more (or ``time_limit_s``)."""
    result = _base(adapter, cell, "throughput")
    run = _Run(adapter)
    try:
        t0 = time.perf_counter()
        it = run.iterator = iter(_make(run, adapter, dataset, cell, persistent=False))
        batch = next(it)
        result["ttfb_s"] = time.perf_counter() - t0
        result["bytes_per_sample"] = nbytes(batch) / max(1, batch_len(batch))
        workers = run.workers()
        wcpu0 = cpu_seconds(workers)
        latencies: list[float] = []
        samples = 0
        deadline = math.inf if time_limit_s is None else time.perf_counter() + time_limit_s
        s0 = run.sampler.cpu_s
        busy0 = machine_busy_s()
        c0 = time.process_time()
        start = prev = time.perf_counter()
        for _ in range(n_batches):
            try:
                batch = next(it)
            except StopIteration:
                break
            now = time.perf_counter()
            latencies.append(now - prev)
            prev = now
            samples += batch_len(batch)
            if now >= deadline:
                break
        process_cpu = time.process_time() - c0
        busy = machine_busy_s() - busy0
        main_cpu = process_cpu - (run.sampler.cpu_s - s0)
        wall = prev - start
        wcpu1 = cpu_seconds(workers)
        worker_cpu = _worker_cpu(wcpu0, wcpu1)
        batch = None
        run.sampler.sample_full()
        batches = len(latencies)
        result.update(batches=batches, samples=samples, wall_s=wall)
        if batches and wall > 0:
            result.update(
                samples_per_s=samples / wall,
                mb_per_s=samples * result["bytes_per_sample"] / wall / _MB,
                main_cpu_us_per_batch=main_cpu / batches * 1e6,
                worker_cpu_us_per_batch=worker_cpu / batches * 1e6,
                background_cores=max(0.0, busy - process_cpu - worker_cpu) / wall,
                p50_next_ms=_quantile(latencies, 0.50) * 1e3,
                p99_next_ms=_quantile(latencies, 0.99) * 1e3)
        if drain:
            t = time.perf_counter()
            for extra, _ in enumerate(it):
                if extra >= _DRAIN_MAX_BATCHES:
                    break
            run.adapter.shutdown(run.loader, it)
            result["teardown_s"] = time.perf_counter() - t
    except Exception as exc:
        _error(result, exc)
    return run.finish(result)


def cold_run(adapter: Any, dataset: Any, cell: Cell) -> dict:
    """A fresh loader: time (and main CPU) to its first batch, then to shut down."""
    result = _base(adapter, cell, "cold_start")
    run = _Run(adapter)
    try:
        c0 = time.process_time()
        t0 = time.perf_counter()
        it = run.iterator = iter(_make(run, adapter, dataset, cell, persistent=False))
        batch = next(it)
        result["ttfb_s"] = time.perf_counter() - t0
        result["ttfb_main_cpu_ms"] = (time.process_time() - c0) * 1e3
        result["bytes_per_sample"] = nbytes(batch) / max(1, batch_len(batch))
        run.workers()
        batch = None
        run.sampler.sample_full()
        t = time.perf_counter()
        for _ in it:
            pass
        run.adapter.shutdown(run.loader, it)
        result["teardown_s"] = time.perf_counter() - t
    except Exception as exc:
        _error(result, exc)
    return run.finish(result)


def warm_run(adapter: Any, dataset: Any, cell: Cell, epochs: int) -> dict:
    """Persistent workers over ``epochs`` short epochs: epoch-start times, throughput.

    The dataset's length is one epoch. Epoch 1 pays for starting the workers; the
    throughput and start times of epochs 2.. show what persistence saves.
    """
    result = _base(adapter, cell, "warm_epochs")
    run = _Run(adapter)
    try:
        loader = _make(run, adapter, dataset, cell, persistent=True)
        starts, samples, batches, wall, main_cpu = [], 0, 0, 0.0, 0.0
        workers: list = []
        wcpu0: dict = {}
        for epoch in range(epochs):
            s0 = run.sampler.cpu_s
            c0 = time.process_time()
            t0 = time.perf_counter()
            it = run.iterator = iter(loader)
            batch = next(it)
            starts.append(time.perf_counter() - t0)
            n, b = batch_len(batch), 1
            if epoch == 0:
                result["bytes_per_sample"] = nbytes(batch) / max(1, n)
            for batch in it:
                n += batch_len(batch)
                b += 1
            batch = None
            if epoch > 0:
                wall += time.perf_counter() - t0
                main_cpu += time.process_time() - c0 - (run.sampler.cpu_s - s0)
                samples += n
                batches += b
            if epoch == 0:
                workers = run.workers()
                wcpu0 = cpu_seconds(workers)
        worker_cpu = _worker_cpu(wcpu0, cpu_seconds(workers))
        run.sampler.sample_full()
        result.update(epochs=epochs, first_epoch_ttfb_s=starts[0], samples=samples,
                      batches=batches, wall_s=wall)
        if batches and wall > 0:
            result.update(
                ttfb_s=statistics.median(starts[1:]),
                epoch_start_ms=[s * 1e3 for s in starts],
                samples_per_s=samples / wall,
                mb_per_s=samples * result["bytes_per_sample"] / wall / _MB,
                main_cpu_us_per_batch=main_cpu / batches * 1e6,
                worker_cpu_us_per_batch=worker_cpu / batches * 1e6)
    except Exception as exc:
        _error(result, exc)
    return run.finish(result)


def _memory(pids: list[int]) -> list[tuple[float, float]]:
    """(USS, PSS) in MiB of each process, (nan, nan) for one that is gone."""
    out = []
    for pid in pids:
        try:
            info = psutil.Process(pid).memory_full_info()
            out.append((info.uss / _MB, getattr(info, "pss", info.uss) / _MB))
        except psutil.Error:
            out.append((math.nan, math.nan))
    return out


def memory_run(adapter: Any, dataset: Any, cell: Cell) -> dict:
    """One shuffled epoch of a fixed dataset: TTFB, each worker's USS after the first batch
    and before the last one is handed out, the PSS of the main process and its workers
    then (every process's share of shared pages counted once in total), and samples/s after
    the first batch (how fast the workers read; two USS samples fall in that span)."""
    result = _base(adapter, cell, "memory")
    run = _Run(adapter)
    try:
        t0 = time.perf_counter()
        loader = _make(run, adapter, dataset, cell, persistent=False, shuffle=True)
        it = run.iterator = iter(loader)
        batch = next(it)
        t1 = time.perf_counter()
        result["ttfb_s"] = t1 - t0
        pids = [p.pid for p in it._workers]  # both loaders' introspection hook
        result["worker_uss_start_mb"] = [uss for uss, _ in _memory(pids)]
        batches, samples, total = 1, batch_len(batch), len(loader)
        while batches < total - 1:
            batch = next(it)
            batches += 1
            samples += batch_len(batch)
        measured = _memory(pids + [os.getpid()])
        result["worker_uss_end_mb"] = [uss for uss, _ in measured[:-1]]
        result["main_pss_mb"] = measured[-1][1]
        result["pss_sum_mb"] = sum(pss for _, pss in measured)
        for batch in it:
            batches += 1
            samples += batch_len(batch)
        batch = None
        t2 = time.perf_counter()
        result.update(batches=batches, samples=samples, wall_s=t2 - t1, epoch_s=t2 - t0,
                      samples_per_s=(samples - result["batch_size"]) / (t2 - t1),
                      worker_uss_start_max_mb=max(result["worker_uss_start_mb"]),
                      worker_uss_end_max_mb=max(result["worker_uss_end_mb"]))
        t = time.perf_counter()
        run.adapter.shutdown(run.loader, it)
        result["teardown_s"] = time.perf_counter() - t
    except Exception as exc:
        _error(result, exc)
    return run.finish(result)
