"""The seam between the multi-process iterator and the engine that runs its workers.

```
 loader/_multiprocess.py (MultiProcessIter)          a WorkerBackend
 sampler, dispatch, prefetch bound, reorder  ─submit(worker, epoch, batch_id, keys)─▶ workers
 buffer, epochs, autotune, stats             ◀─receive(timeout)── (Result | Failure | IterEnd,
                                                                   batch)  or WorkerError
```

- The iterator decides *what* is fetched, by whom and in which order; it never touches a
  process, a socket or a slot. Every batch decision (round robin, ``in_order``, the prefetch
  bound, re-dispatch) lives there, so every engine yields the same batches in the same order.
- A backend decides *how*: it starts workers that run ``workers/fetch.py`` with the loader's
  seeding (``seeding``, ``seed_epoch``), resume duties (``snapshot_every``: send the
  replica's state with every N-th Result; ``restore``: per worker, where its replica
  starts) and ``worker_info``, carries tasks to them and results back (batches as zero-copy
  views where it can), notices a dead worker promptly (``receive`` raises
  :class:`loader.errors.WorkerError` naming it) and frees everything in one idempotent
  :meth:`~WorkerBackend.shutdown`.
- Self-healing (``worker_restarts``): a death is reported only once every message the dead
  worker completed has been returned by ``receive`` (nothing of it can arrive later), so the
  iterator knows exactly which tasks it still owes; :meth:`~WorkerBackend.restart` puts a
  new worker with the same id and seeds in its place and :meth:`~WorkerBackend.kill` ends a
  stuck one. A replacement must never write memory a batch the main process still holds
  lives in.
- ``workers/pool.py`` (local processes, memfd slots, pyzmq) is the default engine;
  ``workers/ray_pool.py`` (Ray actors, the object store) is the ``"ray"`` one. Another
  engine is one new module implementing this protocol plus a line in :func:`make_backend`.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

__all__ = ["BACKENDS", "WorkerBackend", "make_backend"]

BACKENDS = ("local", "ray")  # the values DataLoader(worker_backend=...) accepts


@runtime_checkable
class WorkerBackend(Protocol):
    """What ``MultiProcessIter`` needs from an engine. Worker ids are ``0 .. num_workers-1``;
    messages are those of ``ipc/messages.py``."""

    num_workers: int  # workers prepared so far (started or not)
    blocked_s: float  # seconds ``receive`` has spent blocked, for stats

    def start(self, count: int | None = None) -> None:
        """Start ``count`` prepared workers (all when None); the rest may start lazily."""

    def submit(self, worker_id: int, epoch: int, batch_id: int, indices: Any) -> None:
        """Queue the task "fetch batch ``batch_id`` of ``epoch`` from ``indices``"."""

    def new_epoch(self, worker_id: int, epoch: int, base_seed: int, *, seed_epoch: int = 0,
                  restore: Any = None) -> None:
        """Persistent workers: drop tasks of older epochs, reseed, restart iteration.
        ``seed_epoch`` is the loader's epoch (per-batch seeding); ``restore`` where the
        worker's replica starts, from a resume state (``loader/state.py``)."""

    def receive(self, timeout_s: float | None, prefer: int | None = None) -> tuple[Any, Any]:
        """The next (message, batch) from any worker (batch is None unless the message is a
        Result), worker ``prefer``'s first when it has one waiting (the iterator names the
        worker whose batch is due, so in-order iteration rarely buffers). Messages of one
        worker arrive in the order it sent them. ``Result.timing`` carries the worker's
        running totals. Raises ``WorkerError`` when a worker died, ``TimeoutError`` after
        ``timeout_s`` without a message."""

    def add_workers(self, count: int, *, epoch: int, base_seed: int) -> list[int]:
        """Prepare ``count`` more workers (ids continue the count); tasks may be submitted
        to them before :meth:`start`."""

    def retire(self, worker_id: int) -> None:
        """Stop a worker on purpose; its exit is not an error and it gets no more tasks."""

    def restart(self, worker_id: int, epoch: int, base_seed: int,
                replica_state: dict | None = None) -> None:
        """Replace worker ``worker_id``, whose death ``receive`` reported, by a new one with
        the same id, ``base_seed`` and ``worker_init_fn``, iterating ``epoch``; an
        IterableDataset replica is rebuilt from ``replica_state`` (``workers/replica.py``;
        None: from its start). Tasks submitted to the dead worker are dropped: the caller
        submits again what it still owes. Batches the main process holds stay untouched.
        Raises ``WorkerError`` when the worker cannot be replaced safely."""

    def kill(self, worker_id: int) -> None:
        """End a (stuck) worker at once; ``receive`` then reports its death as any other."""

    def in_hand(self, worker_id: int) -> tuple[int, int] | None:
        """(epoch, batch id) of the task the worker started last, (-1, -1) before its first,
        None if the engine cannot tell; after a death, the batch it was fetching (a result
        it had sent may have died with it)."""

    def describe(self, worker_id: int) -> str:
        """Where the worker runs, for messages: ``"pid 1234"``."""

    def stack_dump(self, worker_id: int) -> str:
        """The worker's Python stacks right now, or '' when that cannot be had."""

    @property
    def started_pids(self) -> list[int | None]:
        """Local process ids of the workers started so far (None: not started, or not a
        local process); for stats and the autotuner's CPU and memory readings. The
        backend's own list, updated in place as workers start: read it, never change it."""

    @property
    def processes(self) -> list:
        """Objects with a Process's interface (``pid``, ``exitcode``, ``is_alive``,
        ``join``, ``terminate``), one per worker; every worker is started first."""

    @property
    def exited(self) -> list:
        """After :meth:`shutdown`: what remains known of each worker, Process-like."""

    def shutdown(self) -> None:
        """Stop every worker and free everything; safe to call any number of times."""


def make_backend(kind: str, **spec: Any) -> WorkerBackend:
    """The engine ``kind`` (one of :data:`BACKENDS`) for the iterator's worker ``spec``:
    ``num_workers``, ``context``, ``dataset``, ``iterable``, ``auto_collation``,
    ``collate_fn``, ``drop_last``, ``worker_init_fn``, ``base_seed``, ``slots_per_worker``,
    ``thread_limit``, ``on_error`` ("raise"/"skip", for ``workers/fetch.py``),
    ``track_state`` (send each batch's replica position in a ``BatchNote``), ``seeding``,
    ``seed_epoch``, ``snapshot_every`` and ``restore`` (resume, ``loader/state.py``) and
    ``share_dataset`` (``workers/shipping.py``). An engine ignores what does not apply to it
    and says so in its constructor."""
    if kind == "local":
        from loader.workers.pool import WorkerPool
        return WorkerPool(**spec)
    if kind == "ray":
        try:
            import ray  # noqa: F401  (only this engine needs it)
        except ImportError as exc:
            raise ImportError("worker_backend='ray' needs Ray, which is not installed: "
                              "pip install 'loader[ray]'") from exc
        from loader.workers.ray_pool import RayPool
        return RayPool(**spec)
    raise ValueError(f"worker_backend should be one of {BACKENDS!r}, but got {kind!r}")
