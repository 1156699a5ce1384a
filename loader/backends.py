"""``DataLoader(worker_backend=...)``: which engine runs the workers, and its settings.

- ``"local"`` (the default): worker processes on this machine (``workers/pool.py``).
- ``"ray"`` or :class:`RayBackend`: Ray actors on a Ray cluster (``workers/ray_pool.py``),
  needing ``pip install 'loader[ray]'``. The sampler, dispatch, prefetch bound and
  reorder buffer stay in the main process either way, so the batches and their order do
  not depend on the engine.
- ``LOADER_WORKER_BACKEND=ray`` picks Ray for every loader built without an explicit
  ``worker_backend``, where it can apply (workers, and no ``multiprocessing_context``):
  the others keep the local engine rather than fail.

Nothing here imports Ray; it is imported when a Ray loader first iterates.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from loader.workers.backend import BACKENDS

__all__ = ["ENV_VAR", "RayBackend", "resolve_backend"]

ENV_VAR = "LOADER_WORKER_BACKEND"
_INSTALL_HINT = "pip install 'loader[ray]'"
_RESERVED = frozenset(("max_restarts", "max_task_retries", "max_concurrency",
                       "concurrency_groups", "lifetime"))  # actor options the loader owns
_PLACEMENT_TIMEOUT_S = 120.0  # how long an actor may wait for a node with room before the
#                               loader gives up: long enough for an autoscaler to add one


@dataclass(frozen=True)
class RayBackend:
    """Settings of the Ray engine: ``DataLoader(..., worker_backend=RayBackend(...))``.

    - ``remote_args``: options for every worker actor (``ActorClass.options(**...)``), on
      top of ``{"num_cpus": 1}``: e.g. ``{"resources": {"cpu_node": 1}}`` to pin workers
      to nodes started with that custom resource, ``{"scheduling_strategy": "SPREAD"}``,
      ``{"runtime_env": {...}}``.
    - ``address``: the cluster to join when Ray is not initialised yet (default: Ray's
      own rule, ``RAY_ADDRESS`` or a new local instance); ``init_args``: more
      ``ray.init`` arguments for that case. A session the loader starts is shut down
      with the last loader using it; one you started is left alone.
    - ``placement_timeout_s``: how long a worker may wait for a node with room.
    """

    remote_args: Mapping[str, Any] = field(default_factory=dict)
    address: str | None = None
    init_args: Mapping[str, Any] = field(default_factory=dict)
    placement_timeout_s: float = _PLACEMENT_TIMEOUT_S

    name = "ray"

    def __post_init__(self) -> None:
        reserved = sorted(set(self.remote_args) & _RESERVED)
        if reserved:
            raise ValueError(f"RayBackend(remote_args=...) cannot set {reserved}: the loader "
                             "needs one-at-a-time, in-order, non-restarting actors that end "
                             "with it (replacing dead workers is the loader's job)")

    def actor_options(self) -> dict:
        return {"num_cpus": 1, **self.remote_args}


def _ray_importable() -> bool:
    try:
        return importlib.util.find_spec("ray") is not None
    except (ImportError, ValueError):  # hidden, or a broken half-import
        return False


def resolve_backend(worker_backend: Any, num_workers: Any,
                    multiprocessing_context: Any) -> tuple[str, RayBackend | None]:
    """("local", None) or ("ray", settings) for the DataLoader's arguments; raises for
    combinations that cannot work."""
    explicit = worker_backend is not None
    if not explicit:
        worker_backend = os.environ.get(ENV_VAR) or "local"
        if worker_backend not in BACKENDS:
            raise ValueError(f"{ENV_VAR} should be one of {BACKENDS!r}, but got "
                             f"{worker_backend!r}")
    if isinstance(worker_backend, RayBackend):
        options = worker_backend
    elif isinstance(worker_backend, str) and worker_backend in BACKENDS:
        options = RayBackend() if worker_backend == "ray" else None
    else:
        raise ValueError(f"worker_backend should be one of {BACKENDS!r} or a RayBackend, "
                         f"but got worker_backend={worker_backend!r}")
    if options is None:
        return "local", None
    if not explicit and (num_workers == 0 or multiprocessing_context is not None):
        return "local", None  # the environment's choice yields to what the code asked for
    if num_workers == 0:
        raise ValueError("worker_backend='ray' runs the workers as Ray actors and needs "
                         "num_workers > 0; num_workers=0 loads in the main process")
    if num_workers == "auto":
        raise ValueError("num_workers='auto' sizes local worker processes; with "
                         "worker_backend='ray' give the number of actors")
    if multiprocessing_context is not None:
        raise ValueError("multiprocessing_context chooses how local worker processes start "
                         "and cannot be combined with worker_backend='ray'")
    if not _ray_importable():
        raise ImportError(f"worker_backend='ray' needs Ray, which is not installed: "
                          f"{_INSTALL_HINT}")
    return "ray", options
