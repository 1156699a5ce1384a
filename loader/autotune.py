"""``num_workers="auto"``: grow the pool during the first epoch(s) from measurements.

```
 start: min(cores, 4) workers
 the loader's processes use >= 85% of the cores, or n >= cores and workers wait on I/O
     under 20% of their busy time ──────────────────────▶ settle
 window (>= max(8, 2n) batches and 0.25 s; the first: max(4, n) and 0.05 s)
     ─▶ per batch: main waits w, main works m,
     consumer u, a worker is busy b: c on CPU, q waiting for a CPU (schedstat), io = b-c-q
 consumer-bound (w < 10% of the cycle) ─────────────▶ settle
 target rate  R = min(cores / (c + m + u), 1 / (m + u))      (CPU and main-thread limits)
 target count n* = ceil(1.15 R (c + io)), within max_workers and the memory budget
 n* > n ─▶ grow, measure again ─▶ no +5% ─▶ back to n, settle      n* <= n ─▶ settle
```

- Only the pool and the in-flight depth (``prefetch_factor`` x workers) change; which
  batches are produced and their order do not (the reorder buffer sees to the order).
- It settles after at most three resizes and never resizes again; ``stats().autotune``
  says what it chose and why.
- Iterable datasets are sharded by worker, so their pool keeps its starting size.
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
        self._skip = 0  # batches to let pass before measuring (new workers warming up)
        self._previous: tuple[int, float] | None = None

    def report(self, current: int) -> dict[str, Any]:
        self.current = current
        return {"start": self.start, "workers": current, "settled": self.settled,
                "reason": self.reason, "history": list(self.history)}

    def _settle(self, reason: str) -> None:
        self.settled, self.reason = True, reason

    def observe(self, it: Any) -> None:
        """Called after each batch handed out by a multi-process iterator."""
        if self.settled:
            return
        if self._skip > 0:
            self._skip -= 1
            return
        epoch = it._recorder.total  # cumulative: windows may span an epoch boundary
        n = it._active_workers()
        now = perf_counter()
        mark = (now, epoch.batches, epoch.samples, epoch.wait_s, epoch.main_s,
                epoch.consumer_s, sum(w.busy_s for w in epoch.workers),
                sum(w.cpu_s for w in epoch.workers), sum(w.batches for w in epoch.workers),
                it._tree_cpu_s(), run_queue_s(it._pool.started_pids))
        if self._window is None:
            if any(w.batches == 0 for w in epoch.workers[:n]):
                return  # workers still starting: forks would pass for a saturated CPU
            self._window = mark
            return
        t0, b0, s0, w0, m0, u0, busy0, cpu0, wb0, tree0, queued0 = self._window
        batches = mark[1] - b0
        first = self._previous is None and not self.history
        if first:
            if batches < max(4, n) or now - t0 < _FIRST_WINDOW_S:
                return
        elif batches < max(8, 2 * n) or now - t0 < _WINDOW_S:
            return
        self._window = None
        rate = (mark[2] - s0) / (now - t0)
        self.history.append((n, rate))
        produced = max(1, mark[8] - wb0)
        wait, main, consumer = ((mark[i] - self_i) / batches
                                for i, self_i in ((3, w0), (4, m0), (5, u0)))
        busy, cpu = (mark[6] - busy0) / produced, (mark[7] - cpu0) / produced
        queued = min(max(0.0, (mark[10] - queued0) / produced), max(0.0, busy - cpu))
        io = max(0.0, busy - cpu - queued)  # waiting on something other than a CPU
        used = (mark[9] - tree0) / (now - t0) / self.cores  # share of the cores in use
        self._decide(it, n, rate, wait, main, consumer, busy, cpu, io, used)

    def _decide(self, it: Any, n: int, rate: float, wait: float, main: float,
                consumer: float, busy: float, cpu: float, io: float, used: float) -> None:
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
        target = math.ceil(_HEADROOM * min(rate_cpu, rate_main) * (cpu + io))
        limit, why = self.max_workers, f"max_workers={self.max_workers}"
        per_worker = it._worker_memory()
        if per_worker:
            by_memory = max(1, int(self.memory_budget // per_worker))
            if by_memory < limit:
                limit, why = by_memory, f"memory budget {self.memory_budget / 2**20:.0f} MB"
        target = max(1, min(target, limit))
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
