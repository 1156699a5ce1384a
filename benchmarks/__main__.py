"""``python -m benchmarks``: parse flags, run the suite, print the table, write files.

```
 argv ─▶ Config ─▶ runner.run_suite ─▶ report.format_table (stdout)
                                    ─▶ report.write_json (--out) ─▶ report.write_plot
```

Exit status: 0, or 1 when ours or torch failed a run or left a worker behind (a peer's
failure is only reported), or 2 for bad flags.
"""

from __future__ import annotations

import argparse
import os
import sys

_QUICK_SECONDS = 0.15  # steady-state seconds per run in --quick: smoke, not measurement
_QUICK_EPOCHS = 3
_DEFAULT_OUT = os.path.join("bench-results", "results.json")
_MUST_PASS = ("ours", "ours-torch", "torch")  # loaders whose failure fails the command


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _ints(text: str) -> list[int]:
    try:
        return [int(part) for part in _csv(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmark loader.DataLoader against torch.utils.data.DataLoader.")
    p.add_argument("--workloads", type=_csv, help="comma-separated workloads (see --list)")
    p.add_argument("--loaders", type=_csv,
                   help="comma-separated loaders (default: ours, torch and any installed "
                        "peer; ours-torch is ours with output='torch')")
    p.add_argument("--workers", type=_ints,
                   help="num_workers values for every workload (default: per workload, "
                        "0,2; latency 0,2,4,8; cold_start and warm_epochs 2)")
    p.add_argument("--batch-size", type=int, help="override every workload's batch size")
    p.add_argument("--epochs", type=int, help="epochs of warm_epochs (default 5)")
    p.add_argument("--reps", type=int, help="timed repetitions per loader (default 3)")
    p.add_argument("--seconds", type=float,
                   help="steady-state seconds per run for the slower loader (default 1.5)")
    p.add_argument("--batches", type=int,
                   help="a fixed number of timed batches per run instead of calibrating")
    p.add_argument("--items", type=int,
                   help="dataset size of the memory workloads (shared_dicts: 1,000,000 "
                        "dicts; shared_arrays: 2,048 images)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run in < 60 s: few workloads, tiny runs, 1 rep")
    p.add_argument("--out", default=_DEFAULT_OUT, help=f"JSON path (default {_DEFAULT_OUT})")
    p.add_argument("--dataset", metavar="MODULE:FACTORY",
                   help="also (or, without --workloads, only) benchmark the dataset this "
                        "factory returns; it gets flavour='ours'/'torch' if it accepts it")
    p.add_argument("--list", action="store_true", help="list workloads and loaders, exit")
    return p


def _list() -> None:
    from .adapters import ADAPTERS, DEFAULT_LOADERS
    from .workloads import WORKLOADS
    print("workloads:")
    for w in WORKLOADS.values():
        workers = ",".join(map(str, w.workers))
        print(f"  {w.name:16s} batch {w.batch_size:<4d} workers {workers:8s} {w.description}")
    print("loaders:")
    for name, adapter in ADAPTERS.items():
        reason = adapter.unavailable()
        default = "default" if name in DEFAULT_LOADERS else "opt-in"
        print(f"  {name:12s} {default:8s} {reason or 'available'}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.list:
        _list()
        return 0
    from . import report
    from .adapters import DEFAULT_LOADERS
    from .runner import QUICK_WORKLOADS, Config, run_suite
    from .workloads import WORKLOADS

    if args.workloads is not None:
        workloads = args.workloads
    elif args.dataset:
        workloads = []
    else:
        workloads = list(QUICK_WORKLOADS if args.quick else WORKLOADS)
    config = Config(workloads=workloads, loaders=args.loaders or list(DEFAULT_LOADERS),
                    workers=args.workers, batch_size=args.batch_size,
                    dataset=args.dataset, batches=args.batches, quick=args.quick,
                    items=args.items)
    if args.quick:
        config.reps, config.seconds, config.epochs = 1, _QUICK_SECONDS, _QUICK_EPOCHS
    for name in ("reps", "seconds", "epochs"):
        if getattr(args, name) is not None:
            setattr(config, name, getattr(args, name))

    result = run_suite(config)
    print(report.format_table(result))
    report.write_json(result, args.out)
    plot = report.write_plot(result, os.path.splitext(args.out)[0] + ".png")
    print(f"results: {args.out}" + (f", plot: {plot}" if plot else ""))

    failed = [r for r in result["rows"] if r["loader"] in _MUST_PASS
              and (r.get("errors") or r.get("leaked_pids"))]
    for row in failed:
        print(f"FAILED: {row['loader']} on {row['workload']} w={row['num_workers']}: "
              f"{row.get('errors') or 'leaked workers'}", file=sys.stderr)
        if row.get("traceback"):
            print(row["traceback"], file=sys.stderr)
    if result["leftover_pids"]:
        print(f"WARNING: worker processes outlived the suite: {result['leftover_pids']}",
              file=sys.stderr)
    return 1 if failed or result["leftover_pids"] else 0


if __name__ == "__main__":
    sys.exit(main())
