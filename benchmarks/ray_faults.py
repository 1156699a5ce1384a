"""``python -m benchmarks.ray_faults``: how long a dead Ray worker takes to surface.

```
 actor killed: local Ray cluster ─▶ loader mid-epoch, workers blocked on a gate
     ─▶ SIGKILL one actor's process ─▶ time until next() raises WorkerError
 node lost:    Cluster(head + 2 worker nodes, short GCS health checks) ─▶ loader pinned
     to the worker nodes ─▶ kill one node's processes ─▶ time until WorkerError
```

Each figure is the median (and range) over ``--reps`` repetitions; the machine's other
load is printed with them. Node loss is detected by the GCS's health checks, so its time
is set by ``_HEALTH`` (Ray's defaults take 20-60 s); an actor whose process dies on a live
node is reported by its raylet at once.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time

import psutil

__all__ = ["Gated"]

_HEALTH = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 200,
           "health_check_timeout_ms": 200, "health_check_failure_threshold": 3}
_STORE = 80 * 2**20  # object store per node (three nodes on one machine)
_GATE_LIMIT_S = 60.0  # a gated sample gives up waiting after this long: nothing hangs
_ERROR_WITHIN_S = 120.0  # receive bound: a death not reported by then is a failure


class Gated:
    """Sample ``i`` is ``(i, pid)``; from index ``gate_at`` on, samples wait for a file."""

    def __init__(self, n: int, gate: str, gate_at: int) -> None:
        self.n, self.gate, self.gate_at = n, gate, gate_at

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple:
        if i >= self.gate_at:
            deadline = time.monotonic() + _GATE_LIMIT_S
            while not os.path.exists(self.gate) and time.monotonic() < deadline:
                time.sleep(0.01)
        return i, os.getpid()


def _time_to_error(dl, kill) -> float:
    """Seconds from ``kill(iterator)`` to the WorkerError of ``next()``."""
    from loader import WorkerError
    it = iter(dl)
    next(it)
    it._pool.processes  # every actor up
    t0 = kill(it)
    try:
        while True:
            next(it)
    except WorkerError:
        return time.monotonic() - t0
    finally:
        it.close()


def actor_killed(reps: int) -> list[float]:
    import ray
    from loader import DataLoader
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        ray.init(num_cpus=4, include_dashboard=False, object_store_memory=_STORE,
                 log_to_driver=False)
        try:
            for rep in range(reps):
                gate = os.path.join(tmp, f"gate-{rep}")
                dl = DataLoader(Gated(64, gate, 8), batch_size=2, num_workers=2,
                                worker_backend="ray", timeout=_ERROR_WITHIN_S)

                def kill(it):
                    pid = it._pool.processes[1].pid
                    t0 = time.monotonic()
                    os.kill(pid, signal.SIGKILL)
                    return t0
                times.append(_time_to_error(dl, kill))
                open(gate, "w").close()
        finally:
            ray.shutdown()
    return times


def node_lost(reps: int) -> list[float]:
    import ray
    from ray.cluster_utils import Cluster
    from loader import DataLoader, RayBackend
    times = []
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "include_dashboard": False, "object_store_memory": _STORE,
        "_system_config": dict(_HEALTH)})  # Ray adds its own keys to it
    with tempfile.TemporaryDirectory() as tmp:
        try:
            for _ in range(2):
                cluster.add_node(num_cpus=2, resources={"cpu_node": 2},
                                 object_store_memory=_STORE)
            ray.init(address=cluster.address, log_to_driver=False)
            pinned = RayBackend(remote_args={"resources": {"cpu_node": 1}})
            for rep in range(reps):
                gate = os.path.join(tmp, f"gate-{rep}")
                dl = DataLoader(Gated(64, gate, 8), batch_size=2, num_workers=2,
                                worker_backend=pinned, timeout=_ERROR_WITHIN_S)

                def kill(it):
                    node_id = it._pool._where[0][1]
                    node = next(n for n in cluster.worker_nodes if n.node_id == node_id)
                    t0 = time.monotonic()
                    cluster.remove_node(node, allow_graceful=False)
                    return t0
                times.append(_time_to_error(dl, kill))
                open(gate, "w").close()
                cluster.add_node(num_cpus=2, resources={"cpu_node": 2},
                                 object_store_memory=_STORE)
                cluster.wait_for_nodes()
        finally:
            ray.shutdown()
            cluster.shutdown()
    return times


def _summary(name: str, times: list[float]) -> str:
    ms = sorted(t * 1e3 for t in times)
    return (f"{name:14s} median {statistics.median(ms):7.0f} ms  "
            f"(min {ms[0]:.0f}, max {ms[-1]:.0f}, {len(ms)} reps)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ray_faults",
                                description="Time from a Ray worker's death to the error.")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--skip-node", action="store_true", help="only the actor-kill case")
    args = p.parse_args(argv)
    os.environ["PYTHONPATH"] = os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", "")
    psutil.cpu_percent()
    lines = [_summary("actor killed", actor_killed(args.reps))]
    if not args.skip_node:
        lines.append(_summary("node lost", node_lost(args.reps)) +
                     f"  (GCS health checks: {_HEALTH})")
    busy = psutil.cpu_percent() / 100 * psutil.cpu_count()
    print("\n".join(lines))
    print(f"machine: {psutil.cpu_count()} CPUs, {busy:.1f} cores busy on average meanwhile")
    return 0


if __name__ == "__main__":
    sys.exit(main())
