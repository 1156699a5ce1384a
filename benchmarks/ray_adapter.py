"""``ours-ray``: loader.DataLoader(worker_backend="ray") on a local Ray cluster.

```
 run_suite ─▶ prepare(): ray.init(num_cpus=max(cores, most workers asked)) once
   each run ─▶ DataLoader(..., worker_backend="ray"): actors on that cluster
 run_suite ─▶ finish(): ray.shutdown()
```

- The cluster is started once for the suite, so Ray's start-up (seconds) is not charged to
  any run; the loader joins it and never owns it. Logical CPUs are raised to the largest
  worker count so every actor is placed (the local engine oversubscribes the same way).
- Ray's daemons exist before every run and are not counted as its workers; the actors
  (children of the raylet) are, for CPU and for the leak check. Ray's idle worker
  processes are helpers (``measure.py``).
- The report sets this loader against ``ours`` on the same cells: the difference in
  per-batch wall time is the Ray engine's overhead (``report.py``).
"""

from __future__ import annotations

import os
from typing import Any

from .adapters import OursAdapter

__all__ = ["RayAdapter"]

_OBJECT_STORE_BYTES = 512 * 2**20  # enough for every workload's in-flight batches


class RayAdapter(OursAdapter):
    """``loader.DataLoader(worker_backend="ray")``; batches as numpy."""

    def __init__(self) -> None:
        super().__init__("ours-ray", "numpy")
        self.note = ('ours-ray: loader.DataLoader(output="numpy", worker_backend="ray") on a '
                     "local Ray cluster started once for the suite")
        self._started = False

    def unavailable(self) -> str | None:
        import importlib.util
        if importlib.util.find_spec("ray") is None:
            return "not installed (pip install 'loader[ray]')"
        return None

    def unsupported(self, workload: Any, num_workers: int, start_method: str,
                    persistent: bool) -> str | None:
        if num_workers == 0:
            return "workers are Ray actors: needs num_workers > 0"
        if start_method != "fork":
            return "start methods do not apply to Ray actors"
        return None

    def prepare(self, max_workers: int) -> None:
        import ray
        if ray.is_initialized():
            return  # someone else's cluster: use it as it is
        cores = len(os.sched_getaffinity(0))
        # the workload classes are imported by module name in the actors
        path = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = os.getcwd() + (os.pathsep + path if path else "")
        try:
            ray.init(num_cpus=max(cores, max_workers), include_dashboard=False,
                     object_store_memory=_OBJECT_STORE_BYTES, log_to_driver=False)
        finally:
            if path is None:
                os.environ.pop("PYTHONPATH", None)
            else:
                os.environ["PYTHONPATH"] = path
        self._started = True

    def finish(self) -> None:
        if self._started:
            import ray
            ray.shutdown()
            self._started = False

    def make(self, dataset, *, batch_size, num_workers, collate_fn, start_method, persistent):
        from loader import DataLoader
        kwargs: dict = {"batch_size": batch_size, "num_workers": num_workers,
                        "output": self.output, "persistent_workers": persistent,
                        "worker_backend": "ray"}
        if collate_fn is not None:
            kwargs["collate_fn"] = collate_fn
        return DataLoader(dataset, **kwargs)
