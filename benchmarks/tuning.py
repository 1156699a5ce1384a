"""How good are the worker-count tuners? ``python -m benchmarks.tuning``

```
 for each dataset (latency-bound: 2 ms sleep per sample; CPU-bound: ~1 ms numpy work):
   fixed counts 0..16 ─▶ steady samples/s of each (warm persistent workers)
   tune_num_workers(seconds=S) ─▶ its pick, and the pick's share of the best fixed rate
   num_workers="auto", first epoch of 2,000 samples ─▶ what it settled on; its first epoch
       against the best count's own first epoch (both start workers); its steady rate
       afterwards against the best count's steady rate
```

Prints a table per dataset; ``--json`` writes the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings

import numpy as np

from loader import DataLoader
from loader.tune import run_trial, tune_num_workers

_EPOCH = 2000  # samples in the first epoch that num_workers="auto" must tune within


class Latency:
    """2 ms of waiting per sample, standing in for remote storage."""

    def __len__(self) -> int:
        return _EPOCH

    def __getitem__(self, i: int):
        time.sleep(0.002)
        return np.float32(i)


class CPUBound:
    """About 1 ms of numpy work per sample, no waiting."""

    def __init__(self) -> None:
        self.m = np.random.default_rng(0).standard_normal((48, 48))

    def __len__(self) -> int:
        return _EPOCH

    def __getitem__(self, i: int):
        x = self.m
        for _ in range(12):
            x = np.tanh(x @ self.m)
        return x[0, :4].copy()


def _first_epoch(dataset, batch_size: int, num_workers) -> float:
    """samples/s of a fresh loader's first epoch, worker start-up included."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers,
                            output="numpy")
        t0 = time.perf_counter()
        for _ in loader:
            pass
        return _EPOCH / (time.perf_counter() - t0)


def _auto(dataset, batch_size: int) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loader = DataLoader(dataset, batch_size=batch_size, num_workers="auto",
                            persistent_workers=True, output="numpy")
        t0 = time.perf_counter()
        for _ in loader:
            pass
        first = _EPOCH / (time.perf_counter() - t0)
        t1 = time.perf_counter()
        for _ in range(2):
            for _ in loader:
                pass
        steady = 2 * _EPOCH / (time.perf_counter() - t1)
        report = loader.stats().autotune
        loader.close()
    return {"workers": report["workers"], "first_epoch": first, "steady": steady,
            "reason": report["reason"]}


def measure(name: str, dataset, batch_size: int, counts: list[int], trial_s: float,
            tune_s: float) -> dict:
    print(f"[{name}] fixed counts ...", file=sys.stderr, flush=True)
    fixed = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for n in counts:
            fixed[n] = run_trial(dataset, batch_size, n, 2 if n else None, trial_s, {}
                                 ).samples_per_s
            print(f"[{name}]   {n:>2} workers: {fixed[n]:>10,.0f} samples/s", file=sys.stderr,
                  flush=True)
    best_n = max(fixed, key=fixed.get)
    print(f"[{name}] tuner ...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    tuned = tune_num_workers(dataset, batch_size, seconds=tune_s, progress=False)
    tune_wall = time.perf_counter() - t0
    print(f"[{name}] auto ...", file=sys.stderr, flush=True)
    auto = _auto(dataset, batch_size)
    best_first = _first_epoch(dataset, batch_size, best_n)
    return {"dataset": name, "batch_size": batch_size, "fixed": fixed, "best": best_n,
            "best_first_epoch": best_first,
            "tuner": {"pick": tuned.best, "share": fixed.get(tuned.best, 0) / fixed[best_n],
                      "seconds": tune_wall, "budget": tune_s, "reason": tuned.reason},
            "auto": {**auto, "first_share": auto["first_epoch"] / best_first,
                     "steady_share": auto["steady"] / fixed[best_n]}}


def report(result: dict) -> str:
    fixed, best = result["fixed"], result["best"]
    lines = [f"{result['dataset']} (batch {result['batch_size']}): best fixed count "
             f"{best} at {fixed[best]:,.0f} samples/s",
             "  fixed: " + ", ".join(f"{n}={v:,.0f}" for n, v in fixed.items())]
    t, a = result["tuner"], result["auto"]
    lines.append(f"  tuner: picks {t['pick']} = {t['share']:.0%} of the best, in "
                 f"{t['seconds']:.1f} s (budget {t['budget']:.0f} s); {t['reason']}")
    lines.append(f"  auto:  settles on {a['workers']}; first epoch {a['first_epoch']:,.0f}/s "
                 f"= {a['first_share']:.0%} of the best count's own first epoch "
                 f"({result['best_first_epoch']:,.0f}/s, start-up included), then "
                 f"{a['steady']:,.0f}/s = {a['steady_share']:.0%} of its steady rate; "
                 f"{a['reason']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tuning", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trial-seconds", type=float, default=1.5)
    parser.add_argument("--tune-seconds", type=float, default=20.0)
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    results = [
        measure("latency-bound", Latency(), 16, list(range(0, 17)), args.trial_seconds,
                args.tune_seconds),
        measure("CPU-bound", CPUBound(), 16, list(range(0, 7)), args.trial_seconds,
                args.tune_seconds),
    ]
    for result in results:
        print(report(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
