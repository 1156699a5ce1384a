"""The worker inside a Ray actor: the same fetch, collate, seeding and error contract as a
local worker process (``workers/task.py``), carried by Ray calls instead of sockets.

```
 RayPool (main)                                    LoaderWorker actor k (any node)
 ray.put((dataset, collate_fn, worker_init_fn)) ─▶ __init__: job resolved by Ray (once per
   once per pool; the ref goes to every actor       actor), threads capped, epoch state
 where.remote()  ──────────────────────────────▶   (pid, node id, ip)
 fetch.remote(epoch, batch_id, indices) ───────▶   one call per batch: fetch + collate into
                                                   a HeapWriter, encode, return
 ◀── (note, head, payload, buffer) ───────────────  head: packed Result | Failure | IterEnd |
     (buffer lands in the object store)             EmptyBatch (None: no reply, as a local
                                                    worker); note: a packed BatchNote or None
 new_epoch.remote(epoch, base_seed) ───────────▶   reseed, restart the replica
```

- Calls to one actor run one at a time in submission order (a plain, single-threaded
  actor), so an iterable replica yields its batches in dispatch order and ``new_epoch``
  takes effect between the epochs' tasks, as ``Resume`` does locally.
- User code that raises becomes a ``Failure`` in the reply; it never escapes as a Ray
  error, so a Ray error always means the actor or its node is gone.
- Nothing here imports Ray: ``workers/ray_pool.py`` wraps this class with ``ray.remote``,
  and the actor imports this module by name (loader must be installed on every node).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

from loader.ipc import codec
from loader.ipc.heap import HeapWriter
from loader.ipc.messages import Result, pack
from loader.workers.task import SKIP, Encoded, EpochState, RunningTotals, fetch_and_encode
from loader.workers.threads import limit_threads

__all__ = ["ActorSpec", "LoaderWorker"]


@dataclass
class ActorSpec:
    """What ``EpochState`` reads; the actor fills in the dataset and callables."""

    worker_id: int
    num_workers: int
    iterable: bool
    auto_collation: bool
    drop_last: bool
    on_error: str = "raise"
    track_state: bool = False
    seeding: str = "per_worker"
    snapshot_every: int = 0
    dataset: Any = None
    collate_fn: Callable | None = None
    worker_init_fn: Callable | None = None


class LoaderWorker:
    """One DataLoader worker; ``job`` is the resolved (dataset, collate_fn, worker_init_fn)."""

    def __init__(self, job: tuple, worker_id: int, num_workers: int, iterable: bool,
                 auto_collation: bool, drop_last: bool, base_seed: int, epoch: int,
                 thread_limit: int | None, on_error: str = "raise", track_state: bool = False,
                 seeding: str = "per_worker", snapshot_every: int = 0, seed_epoch: int = 0,
                 restore: Any = None, replica_state: dict | None = None) -> None:
        dataset, collate_fn, worker_init_fn = job
        limit_threads(thread_limit)
        self.spec = ActorSpec(worker_id, num_workers, iterable, auto_collation, drop_last,
                              on_error, track_state, seeding, snapshot_every, dataset,
                              collate_fn, worker_init_fn)
        self.writer = HeapWriter()
        self.totals = RunningTotals()  # the actor's running totals ride on every Result
        self.state = EpochState(self.spec, epoch, base_seed, run_init=True,
                                replica_state=replica_state, seed_epoch=seed_epoch,
                                restore=restore)

    def where(self) -> tuple[int, str, str]:
        """(pid, node id, node ip) of this actor, for messages and local stats."""
        import ray  # the actor runs under Ray; the main process imports this module too
        context = ray.get_runtime_context()
        return os.getpid(), context.get_node_id(), ray.util.get_node_ip_address()

    def new_epoch(self, epoch: int, base_seed: int, seed_epoch: int = 0,
                  restore: Any = None) -> None:
        """Persistent workers: reseed and restart iteration (``Resume`` locally)."""
        self.state = EpochState(self.spec, epoch, base_seed, run_init=False,
                                seed_epoch=seed_epoch, restore=restore)

    def fetch(self, epoch: int, batch_id: int, indices: Any) -> tuple:
        """One batch: (packed BatchNote or None, packed reply or None, pickled payload or
        None, buffer or None)."""
        state = self.state
        early = state.precheck(epoch, batch_id, indices)
        if early is not None:
            return None, (None if early is SKIP else pack(early)), None, None
        writer = self.writer
        writer.begin()
        note, out = fetch_and_encode(state, writer, epoch, batch_id, indices)
        note = None if note is None else pack(note)
        if type(out) is not Encoded:  # a Failure, IterEnd or EmptyBatch
            writer.end()
            return note, pack(out), None, None
        buffer = writer.end()
        if out.kind == codec.INBAND:  # everything is in the payload; carved bytes unused
            buffer = None
        size = 0 if buffer is None else buffer.nbytes
        wid = self.spec.worker_id
        totals = self.totals.add(out.timing)
        inline = out.kind == codec.LAYOUT  # a layout rides in the head; a pickle beside it
        head = Result(epoch, batch_id, wid, 0, size, 0, out.kind, out.spans, totals,
                      out.payload if inline else None, out.entry)
        return note, pack(head), None if inline else out.payload, buffer
