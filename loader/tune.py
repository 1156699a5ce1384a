"""Find the right ``num_workers`` for a dataset by measuring it: the offline tuner.

```
 candidates 0, 1, .., cores+1, then x1.5 .. max_workers
   └─ trial: persistent workers, warm-up, timed window ─▶ samples/s, CPU, memory
 stop: throughput stopped rising (2 trials without +5%), memory or time budget spent
 pick: the fewest workers within 5% of the best measured throughput
```

``tune_num_workers(dataset, batch_size=64, seconds=30)`` returns a :class:`TuneResult`
(``.best``, ``.prefetch_factor``, ``.trials``, ``.table()``, ``.plot(path)``). From the
shell: ``python -m loader.tune module:factory --batch-size 64``.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import psutil

from loader.stats import run_queue_s

__all__ = ["Trial", "TuneResult", "candidate_counts", "main", "tune_num_workers"]

_GAIN = 1.05  # a trial must beat the best so far by 5% to count as "still rising"
_PATIENCE = 2  # trials without such a gain before the search stops
_PICK_WITHIN = 0.95  # the pick: fewest workers reaching 95% of the best throughput
_WARMUP_SHARE = 0.25  # share of a trial's time spent warming up before the timed window
_MIN_TRIAL_S = 0.4  # a shorter timed window measures noise
_IO_BOUND_CPU = 0.5  # workers waiting on I/O more than this share of busy time: try prefetch 4
_CPU_BOUND = 0.8  # workers waiting on I/O less than 1 - this share: beyond cores + 1 no gain


@dataclass
class Trial:
    num_workers: int
    prefetch_factor: int | None
    samples_per_s: float
    cpu_cores: float  # CPU seconds per second used by the main process and its workers
    memory_bytes: int  # the main's RSS plus its workers' USS at the end of the trial
    seconds: float  # wall time the trial took, start-up included
    worker_cpu_share: float | None = None  # workers' CPU time / their busy time
    worker_io_share: float | None = None  # share of busy time waiting on I/O, not on a CPU


@dataclass
class TuneResult:
    best: int
    prefetch_factor: int
    trials: list[Trial] = field(default_factory=list)
    reason: str = ""
    seconds: float = 0.0

    def table(self) -> str:
        lines = [f"{'workers':>7} {'prefetch':>8} {'samples/s':>12} {'CPU cores':>9} "
                 f"{'memory MB':>10} {'trial s':>7}"]
        for t in self.trials:
            mark = " <- best" if t.num_workers == self.best and \
                t.prefetch_factor in (None, self.prefetch_factor) else ""
            lines.append(f"{t.num_workers:>7} {t.prefetch_factor or '-':>8} "
                         f"{t.samples_per_s:>12,.0f} {t.cpu_cores:>9.2f} "
                         f"{t.memory_bytes / 2**20:>10.0f} {t.seconds:>7.2f}{mark}")
        lines.append(f"recommended: num_workers={self.best}, prefetch_factor="
                     f"{self.prefetch_factor} ({self.reason}); tuning took {self.seconds:.1f} s")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def plot(self, path: str) -> bool:
        """Throughput against num_workers as a PNG; False when matplotlib is missing."""
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return False
        trials = sorted((t for t in self.trials if t.prefetch_factor in (None, 2)),
                        key=lambda t: t.num_workers)
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([t.num_workers for t in trials], [t.samples_per_s for t in trials], "o-")
        ax.axvline(self.best, color="grey", linestyle="--", label=f"pick: {self.best}")
        ax.set_xlabel("num_workers")
        ax.set_ylabel("samples/s")
        ax.legend()
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
        return True


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def candidate_counts(cores: int, max_workers: int) -> list[int]:
    """0, every count up to cores + 1, then steps of x1.5 up to ``max_workers``."""
    counts = list(range(0, min(cores + 1, max_workers) + 1))
    n = counts[-1]
    while n < max_workers:
        n = min(max_workers, max(n + 1, math.ceil(n * 1.5)))
        counts.append(n)
    return counts


def _tree_cpu_and_memory() -> tuple[float, int]:
    """CPU seconds of this process and its children, and their memory: the main's RSS
    plus each child's USS (pages shared after fork are counted once)."""
    me = psutil.Process()
    cpu, memory = 0.0, 0
    for p in [me] + me.children(recursive=True):
        try:
            t = p.cpu_times()
            cpu += t.user + t.system
            if p.pid == me.pid:
                memory += p.memory_info().rss
            else:
                try:
                    memory += p.memory_full_info().uss
                except (psutil.AccessDenied, AttributeError):
                    memory += p.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return cpu, memory


def run_trial(dataset: Any, batch_size: int, num_workers: int, prefetch_factor: int | None,
              seconds: float, loader_kwargs: dict) -> Trial:
    """Measure one setting: warm persistent workers, then a timed window."""
    from loader.dataloader import DataLoader

    started = time.perf_counter()
    kwargs = dict(loader_kwargs)
    kwargs.setdefault("output", "numpy")
    if num_workers > 0:
        kwargs.update(persistent_workers=True, prefetch_factor=prefetch_factor)
    with warnings.catch_warnings():  # trials beyond the core count are deliberate
        warnings.filterwarnings("ignore", message="This DataLoader will create")
        loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, **kwargs)
        return _measure(loader, num_workers, prefetch_factor, seconds, started)


def _measure(loader: Any, num_workers: int, prefetch_factor: int | None, seconds: float,
             started: float) -> Trial:
    try:
        it = iter(loader)
        warm_until = time.perf_counter() + max(0.1, seconds * _WARMUP_SHARE)
        for _ in range(max(2, num_workers + 1)):
            it = _next_or_restart(loader, it)
            if time.perf_counter() > warm_until:
                break
        cpu0, _ = _tree_cpu_and_memory()
        stats0 = loader.stats()
        samples0 = stats0.total.samples
        busy0 = sum(w.busy_s for w in stats0.total.workers)
        wcpu0 = sum(w.cpu_s for w in stats0.total.workers)
        pids = [w.pid for w in stats0.total.workers]
        queued0 = run_queue_s(pids)
        t0 = time.perf_counter()
        deadline = t0 + max(_MIN_TRIAL_S, seconds * (1 - _WARMUP_SHARE))
        while time.perf_counter() < deadline:
            it = _next_or_restart(loader, it)
        elapsed = time.perf_counter() - t0
        stats = loader.stats()
        cpu1, rss = _tree_cpu_and_memory()
        samples = stats.total.samples - samples0
        share = io_share = None
        if num_workers > 0:
            busy = sum(w.busy_s for w in stats.total.workers) - busy0
            if busy > 0:
                wcpu = sum(w.cpu_s for w in stats.total.workers) - wcpu0
                queued = min(run_queue_s(pids) - queued0, busy - wcpu)
                share = wcpu / busy
                io_share = max(0.0, busy - wcpu - queued) / busy
        return Trial(num_workers, prefetch_factor if num_workers else None,
                     samples / elapsed, (cpu1 - cpu0) / elapsed, rss,
                     time.perf_counter() - started, share, io_share)
    finally:
        loader.close()


def _next_or_restart(loader: Any, it: Any) -> Any:
    try:
        next(it)
        return it
    except StopIteration:
        it = iter(loader)
        next(it)
        return it


def tune_num_workers(dataset: Any, batch_size: int = 1, *, seconds: float = 30.0,
                     max_workers: int | None = None, memory_budget: int | None = None,
                     progress: bool | Callable[[str], None] = True,
                     **loader_kwargs: Any) -> TuneResult:
    """Recommend ``num_workers`` (and ``prefetch_factor``) for ``dataset`` by measurement.

    Trials run with warm persistent workers over 0 .. ``max_workers`` (default: 4 x cores,
    at least 16, since workers that wait on I/O pay off beyond the core count), stop once
    throughput stops rising, and stay within ``seconds`` and ``memory_budget`` (bytes;
    default half of the available memory). Other keyword arguments go to the DataLoader.
    """
    say = progress if callable(progress) else (
        (lambda line: print(line, file=sys.stderr, flush=True)) if progress else (lambda _: None))
    cores = _cores()
    max_workers = max_workers if max_workers is not None else max(16, 4 * cores)
    memory_budget = memory_budget or psutil.virtual_memory().available // 2
    counts = candidate_counts(cores, max_workers)
    started = time.perf_counter()
    per_trial = max(_MIN_TRIAL_S / (1 - _WARMUP_SHARE), seconds / min(len(counts), 8))
    trials: list[Trial] = []
    best_rate, stale, stop = 0.0, 0, "tried every candidate"
    for n in counts:
        left = seconds - (time.perf_counter() - started)
        if trials and left < per_trial * 0.8:
            stop = "time budget spent"
            break
        trial = run_trial(dataset, batch_size, n, 2 if n else None, min(per_trial, left),
                          loader_kwargs)
        trials.append(trial)
        say(f"[tune] num_workers={n:>3}: {trial.samples_per_s:>12,.0f} samples/s, "
            f"{trial.cpu_cores:.2f} cores, {trial.memory_bytes / 2**20:.0f} MB")
        if trial.memory_bytes > memory_budget:
            stop = f"memory budget ({memory_budget / 2**20:.0f} MB) reached"
            break
        if n > cores and trial.worker_io_share is not None \
                and trial.worker_io_share < 1 - _CPU_BOUND:
            stop = (f"workers wait on I/O only {trial.worker_io_share:.0%} of their busy time "
                    "(the rest is CPU or waiting for one): more workers than cores cannot help")
            best_rate = max(best_rate, trial.samples_per_s)
            break
        if trial.samples_per_s > best_rate * _GAIN:
            best_rate, stale = max(best_rate, trial.samples_per_s), 0
        else:
            best_rate = max(best_rate, trial.samples_per_s)
            stale += 1
            if stale >= _PATIENCE and n > cores:
                stop = "throughput stopped rising"
                break
    within = [t for t in trials if t.samples_per_s >= _PICK_WITHIN * best_rate
              and t.memory_bytes <= memory_budget]
    if not within:  # nothing fits the budget: the least hungry setting tried
        within = [min(trials, key=lambda t: t.memory_bytes)]
    pick = min(within, key=lambda t: t.num_workers)
    prefetch = 2
    if pick.num_workers and pick.worker_io_share is not None \
            and pick.worker_io_share > _IO_BOUND_CPU \
            and seconds - (time.perf_counter() - started) > per_trial * 0.8:
        deeper = run_trial(dataset, batch_size, pick.num_workers, 4, per_trial, loader_kwargs)
        trials.append(deeper)
        say(f"[tune] num_workers={pick.num_workers:>3}, prefetch_factor=4: "
            f"{deeper.samples_per_s:>12,.0f} samples/s")
        if deeper.samples_per_s > pick.samples_per_s * _GAIN:
            prefetch = 4
    reason = (f"{stop}; fewest workers within {100 - _PICK_WITHIN * 100:.0f}% of the best "
              f"({best_rate:,.0f} samples/s)")
    return TuneResult(pick.num_workers, prefetch, trials, reason,
                      time.perf_counter() - started)


def _load_factory(spec: str) -> Callable[[], Any]:
    module, _, name = spec.partition(":")
    if not name:
        raise SystemExit(f"expected module:factory, got {spec!r}")
    sys.path.insert(0, os.getcwd())
    return getattr(importlib.import_module(module), name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loader.tune", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("factory", help="module:function returning the dataset")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=30.0, help="time budget")
    parser.add_argument("--max-workers", type=int, default=None)
    parser.add_argument("--memory-budget-mb", type=float, default=None)
    parser.add_argument("--plot", metavar="PNG", help="write throughput vs num_workers")
    args = parser.parse_args(argv)
    dataset = _load_factory(args.factory)()
    budget = int(args.memory_budget_mb * 2**20) if args.memory_budget_mb else None
    result = tune_num_workers(dataset, args.batch_size, seconds=args.seconds,
                              max_workers=args.max_workers, memory_budget=budget)
    print(result.table())
    if args.plot:
        print(f"plot: {args.plot}" if result.plot(args.plot) else "plot: matplotlib missing")
    return 0


if __name__ == "__main__":
    sys.exit(main())
