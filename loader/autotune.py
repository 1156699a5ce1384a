"""``num_workers="auto"``: size the pool during the first epoch(s) from measurements.

```
 start: min(cores, 4) workers
 every starting worker delivered once, and they wait on I/O >= 80% of their busy time
     ─▶ jump at once to ceil(1.15 cores busy / cpu) workers (within the limits below)
 the loader's processes use >= 85% of the cores, or n >= cores and workers wait on I/O
     under 20% of their busy time ──────────────────────▶ settle
 window (>= max(8, 2n) batches and 0.25 s; the first: max(4, n) and 0.05 s)
     ─▶ per batch: main waits w, main works m,
     consumer u, a worker is busy b: c on CPU, q waiting for a CPU (schedstat), io = b-c-q
 consumer-bound (w < 10% of the cycle) ─────────────▶ settle
 the main process alone might do as well (1 / (c + io + u) >= 80% of the pool's rate)
     ─▶ fetch in the main process for a window ─▶ faster: settle on 0 workers (they are
        retired), else back to the pool and settle
 target rate  R = min(cores / (c + m + u), 1 / (m + u))      (CPU and main-thread limits)
 target count n* = ceil(1.15 R (c + io)), within max_workers and the memory budget
 n* > n ─▶ grow, measure again ─▶ no +5% ─▶ back to n, settle      n* <= n ─▶ settle
```

- Only the pool, the in-flight depth (``prefetch_factor`` x workers) and where batches are
  fetched change; which batches are produced and their order do not (the reorder buffer
  sees to the order; fetching in the main process is what ``num_workers=0`` does).
- It settles after at most three resizes and never resizes again; ``stats().autotune``
  says what it chose and why, and so does ``stats().summary``.
- Iterable datasets are sharded by worker, so their pool keeps its starting size.
- Between window checks ``observe`` only counts batches: readings from ``/proc`` and
  psutil happen at the checks.
"""

from __future__ import annotations

import math
import os
from time import perf_counter
from typing import Any

from loader.stats import run_queue_s

__all__ = ["AutoTuner", "AutoWorkers", "initial_workers"]

_MAX_STEPS = 3  # resizes before settling for good
_HEADROOM = 1.15  # workers beyond the modelled need, for jitter
_GAIN = 1.05  # a resize must raise throughput this much to be kept
_CONSUMER_BOUND = 0.10  # main waits less than this share of the cycle: consumer-bound
_WINDOW_S = 0.25  # shortest window for judging a resize (throughput must be comparable)
_FIRST_WINDOW_S = 0.05  # the first decision only needs per-batch costs, not a rate
_CPU_SATURATED = 0.85  # the loader's processes use this share of the cores: no room to grow
_CPU_BOUND = 0.8  # workers waiting on I/O under 1 - this share cannot gain beyond cores
_IO_BOUND = 0.8  # first batches waiting on I/O at least this share of busy: jump at once
_LOCAL_TRY = 0.8  # try the main process alone when its estimated rate reaches this share


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def initial_workers() -> int:
    return max(1, min(_cores(), 4))


class AutoWorkers(int):
    """``loader.num_workers`` under ``num_workers="auto"``: the current count, as an int
    that remembers it is tuned. Frameworks rebuild a DataLoader from its attributes
    (Lightning passes ``num_workers=loader.num_workers``; accelerate hands it to torch's
    DataLoader, which sees a plain count): a rebuilt loader keeps tuning, from this count."""

    __slots__ = ()


class AutoTuner:
    """Watches an iterator's recorder and resizes its pool; see the module docstring."""

    def __init__(self, start: int, *, resizable: bool, max_workers: int | None = None,
                 memory_budget: int | None = None) -> None:
        import psutil
        self.cores = _cores()
        self.max_workers = max_workers or max(16, 4 * self.cores)
        self.memory_budget = memory_budget or psutil.virtual_memory().available // 2
        self.settled = not resizable
        self.steps = 0
        self.history: list[tuple[int, float]] = []
        self.reason = ("an IterableDataset is sharded by worker: the pool keeps its size"
                       if not resizable else "measuring")
        self.start = self.current = start
        self._window: tuple | None = None
        self._seen = 0  # batches since the window opened (or since a mark was last due)
        self._due = 0  # batches the current window needs before its time is checked
        self._skip = 0  # batches to let pass before measuring (new workers warming up)
        self._previous: tuple[int, float] | None = None
        self._trial: tuple[int, float] | None = None  # (workers, rate) while trying local
        self._tried_local = False

    def report(self, current: int) -> dict[str, Any]:
        self.current = current
        return {"start": self.start, "workers": current, "settled": self.settled,
                "reason": self.reason, "history": list(self.history)}

    def _settle(self, reason: str) -> None:
        self.settled, self.reason = True, reason

    def observe(self, it: Any) -> None:
        """Called after each batch handed out by a multi-process iterator. Between window
        checks it only counts; the readings (``/proc``, psutil) happen at checks."""
        if self.settled:
            return
        if self._skip > 0:
            self._skip -= 1
            return
        self._seen += 1
        if self._seen < self._due:
            return
        n = it._active_workers()
        now = perf_counter()
        if self._window is None:
            recorder = it._recorder
            if any(recorder._latest[k][0] == 0 for k in range(min(n, len(recorder._latest)))):
                return  # workers still starting: forks would pass for a saturated CPU
            first = self._previous is None and not self.history
            if first and not self.steps and self._jump(it, n):
                return
            self._window = self._mark(it, now)
            self._seen, self._due = 0, max(4, n) if first else max(8, 2 * n)
            return
        first = self._previous is None and not self.history
        if now - self._window[0] < (_FIRST_WINDOW_S if first else _WINDOW_S):  # [0]: opened
            return
        mark = self._mark(it, now)
        t0, b0, s0, w0, m0, u0, busy0, cpu0, wb0, tree0, queued0 = self._window
        self._window = None
        self._seen, self._due = 0, 0
        batches = mark[1] - b0
        rate = (mark[2] - s0) / (now - t0)
        self.history.append((n, rate))
        produced = max(1, mark[8] - wb0)
        wait, main, consumer = ((mark[i] - self_i) / batches
                                for i, self_i in ((3, w0), (4, m0), (5, u0)))
        busy, cpu = (mark[6] - busy0) / produced, (mark[7] - cpu0) / produced
        queued = min(max(0.0, (mark[10] - queued0) / produced), max(0.0, busy - cpu))
        io = max(0.0, busy - cpu - queued)  # waiting on something other than a CPU
        used = (mark[9] - tree0) / (now - t0) / self.cores  # share of the cores in use
        self._decide(it, n, rate, wait, main, consumer, busy, cpu, io, used,
                     batches / (now - t0))
        it._recorder.autotune = self.report(it._active_workers())

    def _jump(self, it: Any, n: int) -> bool:
        """First results of waiting workers: grow at once, without a window of them."""
        totals = it._recorder.totals()
        produced = max(1, totals[7])
        busy, cpu = totals[5] / produced, totals[6] / produced
        # time runnable but without a CPU is not waiting on I/O: a busy machine would
        # otherwise pass for slow storage (schedstat, since each worker started)
        queued = run_queue_s(it._pool.started_pids) / produced
        io = busy - cpu - queued
        if busy <= 0 or io < _IO_BOUND * busy:
            return False
        target, limit, _ = self._limited(it, math.ceil(_HEADROOM * self.cores * busy / cpu)
                                         if cpu > 0 else self.max_workers)
        if target <= n:
            return False
        self.steps += 1
        it._grow(target - n)
        self._skip = target
        self.reason = (f"grew from {n} to {target} workers at once: their first batches "
                       f"waited {1 - cpu / busy:.0%} of the time; measuring")
        it._recorder.autotune = self.report(it._active_workers())
        return True

    def _limited(self, it: Any, target: int) -> tuple[int, int, str]:
        """``target`` within max_workers and the memory budget: (target, limit, why)."""
        limit, why = self.max_workers, f"max_workers={self.max_workers}"
        per_worker = it._worker_memory()
        if per_worker:
            by_memory = max(1, int(self.memory_budget // per_worker))
            if by_memory < limit:
                limit, why = by_memory, f"memory budget {self.memory_budget / 2**20:.0f} MB"
        return max(1, min(target, limit)), limit, why

    @staticmethod
    def _mark(it: Any, now: float) -> tuple:
        return (now, *it._recorder.totals(), it._tree_cpu_s(),
                run_queue_s(it._pool.started_pids))

    def _decide(self, it: Any, n: int, rate: float, wait: float, main: float,
                consumer: float, busy: float, cpu: float, io: float, used: float,
                batch_rate: float) -> None:
        if self._trial is not None:  # this window fetched in the main process
            pool_n, pool_rate = self._trial
            self._trial = None
            if rate > pool_rate:
                it._shrink_to(0)
                self._settle(f"fell back to fetching in the main process: {rate:,.0f} "
                             f"samples/s against {pool_rate:,.0f} with {pool_n} workers")
            else:
                it._go_pool()
                self._settle(f"{pool_n} workers: {pool_rate:,.0f} samples/s, faster than "
                             f"the main process alone ({rate:,.0f})")
            return
        if self._previous is not None:
            before_n, before_rate = self._previous
            self._previous = None
            if rate < before_rate * _GAIN:
                it._shrink_to(before_n)
                self._settle(f"{n} workers gave {rate:,.0f} samples/s, no more than "
                             f"{before_n} ({before_rate:,.0f}): back to {before_n}")
                return
        cycle = wait + main + consumer
        if wait < _CONSUMER_BOUND * cycle:
            self._settle(f"{n} workers keep up: the main process waits {wait * 1e3:.2f} ms "
                         f"of a {cycle * 1e3:.2f} ms cycle per batch")
            return
        if not self._tried_local and 1.0 / max(cpu + io + consumer, 1e-9) >= \
                _LOCAL_TRY * batch_rate:
            self._tried_local = True  # the pool may not beat num_workers=0: try it
            self._trial = (n, rate)
            it._go_local()
            self._skip = it._tasks_outstanding  # batches already dispatched arrive first
            self.reason = f"{n} workers: trying the main process alone; measuring"
            return
        if used >= _CPU_SATURATED and self.history[:-1]:  # not in the first window, which
            # follows worker start-up (copy-on-write faults look like a busy CPU)
            self._settle(f"{n} workers: the loader's processes already use {used:.0%} of "
                         f"{self.cores} cores; more workers would only compete for them")
            return
        if n >= self.cores and io < (1 - _CPU_BOUND) * busy:
            self._settle(f"{n} workers: they wait on I/O only {io / busy:.0%} of the time they "
                         "are busy (the rest is CPU), so more workers than cores cannot help")
            return
        rate_cpu = self.cores / max(cpu + main + consumer, 1e-9)
        rate_main = 1.0 / max(main + consumer, 1e-9)
        target, limit, why = self._limited(
            it, math.ceil(_HEADROOM * min(rate_cpu, rate_main) * (cpu + io)))
        if target <= n or self.steps >= _MAX_STEPS:
            capped = f" (capped by {why})" if target == limit and target <= n else ""
            self._settle(f"{n} workers: a worker is busy {busy * 1e3:.1f} ms per batch "
                         f"({cpu / busy:.0%} on CPU), the model asks for {target}{capped}")
            return
        self.steps += 1
        self._previous = (n, rate)
        it._grow(target - n)
        self._skip = target
        self.reason = f"grew from {n} to {target} workers; measuring"
