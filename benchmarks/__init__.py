"""Benchmark suite: ``loader.DataLoader`` against torch's DataLoader (and peers).

Run ``python -m benchmarks`` (``--help`` for options, ``--list`` for workloads and
loaders, ``--quick`` for a < 60 s smoke run).

```
 __main__.py  flags ─▶ runner.Config
 runner.py    plan cells ─▶ per cell: calibrate ─▶ interleaved reps ─▶ aggregate rows
 runs.py      one run: build ─▶ first batch ─▶ timed loop ─▶ drain ─▶ shutdown ─▶ leak check
 measure.py   memory sampler thread, worker discovery, batch sizes
 workloads.py synthetic datasets (module-level classes; torch-free for spawn)
 adapters.py / peers.py  how each loader is built and shut down
 report.py    table, JSON, plot
```

- The parent (this process) builds every loader, times it and samples memory.
- Workers are the loaders' own; the suite only finds them (psutil children) to measure
  their CPU and memory and to check that none outlives its run.
- Shutdown: every run closes its loader and waits for its workers; the suite checks for
  survivors at the end and warns.

This package imports nothing heavy at import time: spawned workers import it to
unpickle the workload datasets.
"""

__all__: list[str] = []
