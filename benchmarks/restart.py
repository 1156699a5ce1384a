"""How long from a worker's death to its replacement's first batch? ``python -m benchmarks.restart``

```
 DataLoader(worker_restarts=1), batches of (index, pid) ─▶ after batch 8: SIGKILL worker 0
   t0: the kill ─▶ t1: the death reported and restart() called (detection + drain)
                ─▶ t2: restart() returns (the new process is forked / spawned)
                ─▶ t3: next() returns the first batch made by the replacement
```

For each start method, ``--reps`` fresh loaders; prints the median and worst of
t1-t0, t2-t1 and t3-t0 in milliseconds. ``--json`` writes every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import time

import numpy as np

from loader import DataLoader

_KILL_AFTER = 8  # batches delivered before the kill: workers are warm, the pipeline full
_SAMPLES = 400


class PidDataset:
    """Each sample says which process made it."""

    def __len__(self) -> int:
        return _SAMPLES

    def __getitem__(self, i: int):
        return np.array([i, os.getpid()])


def one_run(context: str) -> dict:
    """Kill worker 0 mid-epoch once; the figures of that one restart, in seconds."""
    marks: dict[str, float] = {}
    dl = DataLoader(PidDataset(), batch_size=4, num_workers=2, worker_restarts=1,
                    multiprocessing_context=context)
    it = iter(dl)
    pool = it._pool
    restart = pool.restart

    def timed_restart(*args, **kwargs):
        marks["restart_called"] = time.perf_counter()
        restart(*args, **kwargs)
        marks["restart_done"] = time.perf_counter()

    pool.restart = timed_restart
    victim = None
    seen = 0
    for n, batch in enumerate(it):
        seen += len(batch)
        if n == _KILL_AFTER:
            victim = it.worker_pids[0]
            marks["kill"] = time.perf_counter()
            os.kill(victim, signal.SIGKILL)
        elif victim is not None and "first_batch" not in marks:
            replacement = it.worker_pids[0]
            if replacement != victim and int(batch[0, 1]) == replacement:
                marks["first_batch"] = time.perf_counter()
    assert seen == _SAMPLES and dl.stats().restarts == 1, "the epoch was not complete"
    kill = marks["kill"]
    return {"detect_s": marks["restart_called"] - kill,
            "restart_call_s": marks["restart_done"] - marks["restart_called"],
            "first_batch_s": marks["first_batch"] - kill}


def _row(context: str, runs: list[dict]) -> str:
    cells = []
    for key in ("detect_s", "restart_call_s", "first_batch_s"):
        values = [r[key] * 1e3 for r in runs]
        cells.append(f"{statistics.median(values):8.1f} {max(values):8.1f}")
    return f"{context:10s} " + "   ".join(cells)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.restart", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--contexts", default="fork,spawn", help="start methods (comma-separated)")
    p.add_argument("--reps", type=int, default=10, help="restarts measured per start method")
    p.add_argument("--json", help="write every figure to this file")
    args = p.parse_args(argv)
    results = {}
    print(f"{'':10s} {'death -> restart() (ms)':>17s}   {'restart() (ms)':>17s}   "
          f"{'death -> 1st batch (ms)':>17s}")
    print(f"{'':10s} " + "   ".join(f"{'median':>8s} {'worst':>8s}" for _ in range(3)))
    for context in [c.strip() for c in args.contexts.split(",") if c.strip()]:
        runs = [one_run(context) for _ in range(args.reps)]
        results[context] = runs
        print(_row(context, runs), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
