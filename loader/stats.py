"""Pipeline statistics: where the time goes, and what limits throughput.

```
 user loop ──next()──▶ iterator ──receive──▶ workers: fetch │ collate │ encode (timing in
   consumer_s        main_s       wait_s                    each Result)
```

- A :class:`Recorder` belongs to a DataLoader and lives across its iterators, so it has
  the current epoch and the cumulative figures. Per batch it adds a few floats for the
  current epoch only (earlier epochs are folded in when an epoch starts) and keeps the
  latest running totals each worker sends with its results (one store, no additions);
  everything else is worked out when someone asks (:meth:`Recorder.snapshot`).
- :meth:`Recorder.snapshot` returns :class:`LoaderStats`: batches and samples delivered,
  the main process's time waiting for data, its own overhead, the consumer's time between
  ``next()`` calls, per-worker busy time split into fetch / collate / encode (transfer),
  queue depths, CPU% and RSS per worker, the workers' time on a core and waiting for one
  (Linux schedstat, read at epoch start, when asked and before the workers stop), and a
  one-line ``summary`` of the limiter.
- Self-healing counts (``loader/_healing.py``): worker restarts, stall warnings, and the
  samples ``on_error="skip"`` left out, each as (index, exception type name, message).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from time import perf_counter
from typing import Any

__all__ = ["EpochStats", "LoaderStats", "Recorder", "WorkerStats", "run_queue_s"]

_CONSUMER_BOUND = 0.10  # main waits less than this share of a batch's cycle: consumer-bound
_BUSY = 0.80  # workers busier than this share of the time are the limiter
_CPU_WAIT = 0.15  # workers runnable but off a core this share of the time: CPU-bound, ...
_CPU_IDLE = 0.50  # ... unless they sleep (neither run nor wait to run) this much of it
_TOTAL_SKIPPED_KEPT = 10_000  # skipped samples listed in the all-epochs figures (the count
#                               stays exact): a bad dataset would otherwise grow it forever


@dataclass
class WorkerStats:
    """One worker's work in a period: busy = fetch + collate + encode."""

    batches: int = 0
    samples: int = 0
    fetch_s: float = 0.0
    collate_s: float = 0.0
    encode_s: float = 0.0
    cpu_s: float = 0.0
    pid: int | None = None
    cpu_percent: float | None = None  # cpu_s over the period's wall time
    rss: int | None = None  # bytes, read with psutil when the snapshot is taken

    @property
    def busy_s(self) -> float:
        return self.fetch_s + self.collate_s + self.encode_s


@dataclass
class EpochStats:
    """A period (one epoch, or everything so far) seen from the main process."""

    batches: int = 0
    samples: int = 0
    elapsed_s: float = 0.0  # from the period's first next() to now
    first_batch_s: float = 0.0  # the first next(): worker start-up, not counted below
    wait_s: float = 0.0  # main process blocked waiting for a worker's batch
    main_s: float = 0.0  # time inside next() not spent waiting (dispatch, decode, convert)
    consumer_s: float = 0.0  # time between next() calls: the training step
    depth_sum: int = 0  # outstanding tasks summed over next() calls, for the mean
    buffered_sum: int = 0  # reorder-buffer entries summed over next() calls
    workers: list[WorkerStats] = field(default_factory=list)
    restarts: int = 0  # dead or stuck workers replaced (worker_restarts)
    stalls: int = 0  # StallWarnings given (stall_warning_s)
    skips: int = 0  # samples left out (on_error="skip")
    skipped: list = field(default_factory=list)  # (index, exception type name, message)
    cpu_run_s: float = 0.0  # workers' time on a core, summed (Linux schedstat; 0 elsewhere)
    cpu_wait_s: float = 0.0  # workers' time runnable but waiting for a core (the same)

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def mean_depth(self) -> float:
        return self.depth_sum / self.batches if self.batches else 0.0

    @property
    def mean_buffered(self) -> float:
        return self.buffered_sum / self.batches if self.batches else 0.0

    def worker_busy(self) -> float:
        """Mean share of wall time the workers spent busy (0..1)."""
        if not self.workers or self.elapsed_s <= 0:
            return 0.0
        return sum(w.busy_s for w in self.workers) / (len(self.workers) * self.elapsed_s)

    def limiter(self, num_workers: int) -> tuple[str, str]:
        """(what limits throughput, why), from this period's figures."""
        if self.batches < 2:
            return "nothing yet", "too few batches delivered"
        per = 1e3 / (self.batches - 1)  # the first batch is start-up, counted apart
        wait, main, consumer = self.wait_s * per, self.main_s * per, self.consumer_s * per
        cycle = wait + main + consumer
        if num_workers == 0:
            if consumer > main:
                return "consumer", (f"your loop takes {consumer:.2f} ms per batch, loading "
                                    f"{main:.2f} ms in the main process")
            return "main process", (f"loading takes {main:.2f} ms per batch in the main "
                                    "process (num_workers=0); workers may take it off")
        busy = self.worker_busy()
        if wait < _CONSUMER_BOUND * cycle:
            return "consumer", (f"batches are ready before they are asked for: your loop "
                                f"takes {consumer:.2f} ms per batch, the main process waits "
                                f"{wait:.2f} ms; more workers will not help")
        span = len(self.workers) * self.elapsed_s
        queued = self.cpu_wait_s / span if span > 0 else 0.0
        asleep = 1.0 - (self.cpu_run_s + self.cpu_wait_s) / span if span > 0 else 1.0
        if queued >= _CPU_WAIT and asleep < _CPU_IDLE:  # they want a core, not data
            return "CPU", (f"the workers spend {queued:.0%} of the time waiting for a free "
                           "core: every core is in use, so more workers will not help (fewer, "
                           "or cheaper samples, may)")
        if busy >= _BUSY:
            return "workers", (f"the main process waits {wait:.2f} ms per batch while the "
                               f"{num_workers} workers are busy {busy:.0%} of the time: more "
                               "workers (if CPU allows) or cheaper samples would help")
        if main > wait:
            return "main process", (f"the main process spends {main:.2f} ms per batch on "
                                    f"its own work and workers are busy only {busy:.0%}")
        return "workers", (f"the main process waits {wait:.2f} ms per batch; workers are busy "
                           f"{busy:.0%} of the time, so they wait on something (I/O, "
                           "sleeps): more workers or a deeper prefetch would help")


@dataclass
class LoaderStats:
    """What ``stats()`` returns."""

    num_workers: int
    epoch: EpochStats
    total: EpochStats
    limiter: str
    reason: str
    autotune: dict[str, Any] | None = None  # what num_workers="auto" chose and why

    @property
    def skipped(self) -> list:
        """This epoch's skipped samples: (index, exception type name, message) each."""
        return self.epoch.skipped

    @property
    def restarts(self) -> int:
        """Workers replaced this epoch."""
        return self.epoch.restarts

    @property
    def stalls(self) -> int:
        """Stall warnings given this epoch."""
        return self.epoch.stalls

    @property
    def summary(self) -> str:
        e = self.epoch
        text = (f"{e.samples_per_s:,.0f} samples/s over {e.batches} batches with "
                f"{self.num_workers} workers; limited by the {self.limiter}: {self.reason}")
        healing = [f"{n} {one if n == 1 else many}" for n, one, many in (
            (e.restarts, "worker restart", "worker restarts"),
            (e.stalls, "stall warning", "stall warnings"),
            (e.skips, "sample skipped", "samples skipped")) if n]
        if healing:
            text += "; this epoch: " + ", ".join(healing)
        if self.autotune:
            text += f'; num_workers="auto": {self.autotune["reason"]}'
        return text

    def __str__(self) -> str:
        return self.summary


_WORKER_FIELDS = ("batches", "samples", "fetch_s", "collate_s", "encode_s", "cpu_s")
_ZERO = (0, 0, 0.0, 0.0, 0.0, 0.0, None)  # running totals, then the pid they belong to
_MAIN_FIELDS = ("batches", "first_batch_s", "wait_s", "main_s", "consumer_s", "depth_sum",
                "buffered_sum", "restarts", "stalls", "skips")


class Recorder:
    """Collects the figures; every per-batch method is a handful of additions."""

    def __init__(self) -> None:
        self.epoch = EpochStats()
        self._closed = EpochStats()  # the main-side figures of the epochs before this one
        self._main_samples = [0, 0]  # samples fetched in the main process: epoch, before
        self._latest: list[tuple] = []  # per worker: its running totals, as last received
        self._carry: list[tuple] = []  # per worker id: totals of the processes it had before
        self._base: list[tuple] = []  # per worker: carry + latest when this epoch began
        self._started: float | None = None
        self._total_started: float | None = None
        self._left_next: float | None = None
        self.pids: list[int | None] = []
        self.autotune: dict[str, Any] | None = None
        self.epochs = 0  # epochs started
        self._total_skipped: list = []  # the skipped samples listed in the totals (capped)
        self._sched_base: dict[int, tuple] = {}  # pid -> (on a core, queued) s at epoch start
        self._sched_last: dict[int, tuple] = {}  # pid -> the same, as last read this epoch
        self._sched_closed = (0.0, 0.0)  # the workers' figures in the epochs before

    def start_epoch(self, num_workers: int, pids: list) -> None:
        self.epochs += 1
        closed, epoch = self._closed, self.epoch
        for name in _MAIN_FIELDS:
            setattr(closed, name, getattr(closed, name) + getattr(epoch, name))
        self._main_samples = [0, self._main_samples[0] + self._main_samples[1]]
        self.epoch = EpochStats()
        self._grow(num_workers)
        self._base = [self._running(k) for k in range(len(self._latest))]
        self.pids = pids  # the pool's own list: workers started later show up in it
        self._sched_closed = _add(self._sched_closed, self._sched_epoch())
        self._sched_base = {pid: sched_s(pid) for pid in pids if pid is not None}
        self._sched_last = dict(self._sched_base)
        self._started = None
        self._left_next = None

    def _grow(self, num_workers: int) -> None:
        while len(self._latest) < num_workers:
            self._latest.append(_ZERO)
            self._carry.append(_ZERO)
            self._base.append(_ZERO)

    def resize(self, num_workers: int, pids: list) -> None:
        """The pool started, grew or shrank (num_workers="auto"): new pids."""
        self._grow(num_workers)
        self.pids = pids

    def entered(self) -> float:
        now = perf_counter()
        if self._started is None:
            self._started = now
            if self._total_started is None:
                self._total_started = now
        elif self._left_next is not None:
            self.epoch.consumer_s += now - self._left_next
        return now

    def left(self, entered: float, waited: float, depth: int, buffered: int) -> None:
        now = perf_counter()
        self._left_next = now
        epoch = self.epoch
        epoch.batches += 1
        if epoch.batches == 1:  # the first next(): start-up, counted apart
            epoch.first_batch_s += now - entered
            return
        epoch.wait_s += waited
        epoch.main_s += now - entered - waited
        epoch.depth_sum += depth
        epoch.buffered_sum += buffered

    def worker_result(self, worker_id: int, timing: tuple) -> None:
        """``timing``: the worker's running totals and its pid (messages.Result.timing)."""
        latest = self._latest
        previous = latest[worker_id]
        if timing[6] != previous[6] and previous[0]:  # a new process under this id
            self._carry[worker_id] = _add(self._carry[worker_id], previous)
        latest[worker_id] = timing

    def skip(self, items: list) -> None:
        """Samples left out of their batch: (index, exception type name, message) each."""
        self.epoch.skips += len(items)
        self.epoch.skipped.extend(items)
        room = _TOTAL_SKIPPED_KEPT - len(self._total_skipped)
        if room > 0:
            self._total_skipped.extend(items[:room])

    def restarted(self) -> None:
        self.epoch.restarts += 1

    def stalled(self) -> None:
        self.epoch.stalls += 1

    def main_fetch(self, samples: int) -> None:
        """num_workers=0: the main process fetched and collated ``samples``."""
        self._main_samples[0] += samples

    def sample_sched(self) -> None:
        """Read the workers' scheduler times (Linux schedstat) while they are alive: before
        they stop, and whenever a snapshot is taken."""
        for pid in self.pids:
            if pid is not None:
                times = sched_s(pid)
                if times[0]:  # 0: gone (or not Linux): keep what was read last
                    self._sched_last[pid] = times

    def _sched_epoch(self) -> tuple:
        """(on a core, queued) seconds of this epoch's workers, summed."""
        base, total = self._sched_base, (0.0, 0.0)
        for pid, times in self._sched_last.items():
            total = _add(total, _sub(times, base.get(pid, (0.0, 0.0))))
        return total

    def _running(self, k: int) -> tuple:
        return _add(self._carry[k], self._latest[k])

    def totals(self) -> tuple:
        """(batches, samples, wait_s, main_s, consumer_s, worker busy_s, worker cpu_s,
        worker batches) since the loader started: what the autotuner's windows compare."""
        workers = [self._running(k) for k in range(len(self._latest))]
        busy = sum(w[2] + w[3] + w[4] for w in workers)
        closed, epoch = self._closed, self.epoch
        return (closed.batches + epoch.batches,
                sum(self._main_samples) + sum(w[1] for w in workers),
                closed.wait_s + epoch.wait_s, closed.main_s + epoch.main_s,
                closed.consumer_s + epoch.consumer_s, busy, sum(w[5] for w in workers),
                sum(w[0] for w in workers))

    def _periods(self) -> tuple[EpochStats, EpochStats]:
        epoch = EpochStats(**{name: getattr(self.epoch, name) for name in _MAIN_FIELDS})
        total = EpochStats(**{name: getattr(self._closed, name) + getattr(self.epoch, name)
                              for name in _MAIN_FIELDS})
        for k in range(len(self._latest)):
            now = self._running(k)
            base = self._base[k] if k < len(self._base) else _ZERO
            epoch.workers.append(WorkerStats(**dict(zip(_WORKER_FIELDS, _sub(now, base)))))
            total.workers.append(WorkerStats(**dict(zip(_WORKER_FIELDS, now))))
        epoch.samples = self._main_samples[0] + sum(w.samples for w in epoch.workers)
        total.samples = sum(self._main_samples) + sum(w.samples for w in total.workers)
        epoch.skipped = list(self.epoch.skipped)
        total.skipped = list(self._total_skipped)
        return epoch, total

    def snapshot(self, num_workers: int) -> LoaderStats:
        now = perf_counter()
        epoch, total = self._periods()
        if self._started is not None:
            epoch.elapsed_s = now - self._started
            total.elapsed_s = now - self._total_started
        _live(epoch, self.pids)
        _live(total, self.pids)
        self.sample_sched()
        epoch.cpu_run_s, epoch.cpu_wait_s = self._sched_epoch()
        total.cpu_run_s, total.cpu_wait_s = _add(self._sched_closed,
                                                 (epoch.cpu_run_s, epoch.cpu_wait_s))
        limiter, reason = epoch.limiter(num_workers)
        return LoaderStats(num_workers, epoch, total, limiter, reason,
                           dict(self.autotune) if self.autotune else None)


def _add(a: tuple, b: tuple) -> tuple:
    """The totals of ``a`` and ``b`` (the pid is left out: sums have none)."""
    return tuple(x + y for x, y in zip(a[:6], b[:6]))


def _sub(a: tuple, b: tuple) -> tuple:
    return tuple(x - y for x, y in zip(a[:6], b[:6]))


def _live(period: EpochStats, pids: list) -> None:
    import psutil
    for w, pid in zip(period.workers, pids):
        w.pid = pid
        if period.elapsed_s > 0:
            w.cpu_percent = 100.0 * w.cpu_s / period.elapsed_s
        if pid is None:
            continue
        try:
            w.rss = psutil.Process(pid).memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            w.rss = None


def sched_s(pid: int) -> tuple[float, float]:
    """(seconds on a core, seconds runnable but waiting for one) of the process's main
    thread (Linux ``/proc/<pid>/schedstat``); zeros where that cannot be read."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            on_cpu, queued = f.read().split()[:2]
        return int(on_cpu) / 1e9, int(queued) / 1e9
    except (OSError, ValueError):
        return 0.0, 0.0


def run_queue_s(pids: list) -> float:
    """Seconds these processes spent runnable but waiting for a CPU (Linux schedstat).

    Busy time that is neither CPU nor run-queue wait is real waiting (I/O, sleeps): the
    tuners use this to tell an oversubscribed CPU from workers that wait on storage.
    """
    return sum(sched_s(pid)[1] for pid in pids if pid is not None)
