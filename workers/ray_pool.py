"""The Ray engine (``workers/backend.py``'s WorkerBackend): N Ray actors, anywhere on a
Ray cluster, fed one remote call per batch; batches come back through Ray's object store.

```
 RayPool (main process)                                   LoaderWorker actors (ray_actor.py)
 ray_session.join ─ Ray initialised (or joined), ownership recorded
 ray.put((dataset, collate_fn, worker_init_fn)) ── once ──▶ resolved by each actor, once
 add_workers: LoaderWorker.options(num_cpus=1, ...).remote(job, k, ...) + where()
 submit  ─ actor_k.fetch.remote(epoch, batch_id, indices) ─▶ fetch + collate + encode
 receive ─ ray.wait(each worker's oldest call, 1, poll) ─ ray.get ◀── (note, head,
   payload, buffer): a worker's replies in the order it made them, as from a socket;
   buffer: a read-only zero-copy view of the object store on this node, wrapped in a
   Lease that holds the ObjectRef: the object is freed when the user drops the batch
 shutdown ─ ray.kill(each of our actors) ─ drop the dataset ─ ray_session.leave
```

- The iterator (``loader/_multiprocess.py``) keeps the sampler, round robin, prefetch
  bound and reorder buffer, so batches and their order are those of the local engine.
- Order: Ray may complete one actor's calls out of order at the caller (a small IterEnd
  before the batch ahead of it), so only each worker's oldest unanswered call is waited
  on; the iterator's rules (an IterEnd ends a replica after its batches) then hold.
- Death: a dead actor or a lost node makes its calls fail with a Ray error, which
  :meth:`receive` turns into a :class:`WorkerError` naming the worker, its node and what
  Ray said, after every reply the worker made before (self-healing relies on that). Every wait is bounded (``_POLL_S``), and an actor that no node can take is
  reported after ``RayBackend.placement_timeout_s``.
- Shutdown: :meth:`shutdown` is idempotent and kills only the actors this pool created;
  a Ray session is ended only by ``workers/ray_session.py``, and only if a loader
  started it. At interpreter exit live pools shut down before the session.
"""

from __future__ import annotations

import time
import weakref
from collections import deque
from typing import Any

import numpy as np
import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayError

from loader.errors import WorkerError
from loader.ipc.arena import Lease
from loader.ipc.codec import LAYOUT, decode
from loader.ipc.messages import Result, unpack
from loader.workers import ray_session
from loader.workers.ray_actor import LoaderWorker

__all__ = ["RayPool"]

_POLL_S = 0.5  # longest single ray.wait: each wake re-checks the deadline and placement
_GET_TIMEOUT_S = 60.0  # ray.get of a result ray.wait reported ready (already local): only
#                        a lost object could take long, and that must not hang
_COPY_BELOW = 100 * 1024  # bytes: Ray returns objects smaller than this (its default
#                          max_direct_call_object_size) inside the reply, not in the object
#                          store, so there is no store memory to share: copy them (writable,
#                          a few us) and free Ray's object at once
_REASON_CHARS = 600  # characters of Ray's error message quoted in a WorkerError
_LIVE_POOLS: "weakref.WeakSet[RayPool]" = weakref.WeakSet()
_actor_class = None


def _remote_class() -> Any:
    global _actor_class
    if _actor_class is None:
        _actor_class = ray.remote(LoaderWorker)
    return _actor_class


def _retyped(exc: BaseException, message: str) -> BaseException:
    """``exc``'s type with ``message`` (a TypeError when that type needs other arguments)."""
    try:
        return type(exc)(message)
    except Exception:
        return TypeError(message)


def _lease_over(buffer: np.ndarray) -> Lease:
    """A Lease on the memory of ``buffer`` (a view of Ray's object store) whose base is
    Ray's buffer object itself: were it the array Ray returned, numpy would collapse the
    batch's views onto that array, past the Lease that holds the ObjectRef."""
    raw = buffer
    while isinstance(raw, np.ndarray) and raw.base is not None:
        raw = raw.base
    if isinstance(raw, np.ndarray):  # owns its memory: nothing of Ray's to hold on to
        return buffer.view(Lease)
    whole = np.frombuffer(raw, np.uint8)
    offset = buffer.__array_interface__["data"][0] - whole.__array_interface__["data"][0]
    return Lease((buffer.nbytes,), np.uint8, raw, offset)


class _ActorProcess:
    """A worker actor seen through a Process's interface (``pid`` is None until the
    actor reported it, or when it runs on another node)."""

    def __init__(self, pool: "RayPool", worker_id: int) -> None:
        self._pool, self.worker_id = pool, worker_id
        self.name = f"loader-ray-worker-{worker_id}"
        self.exitcode: int | None = None

    @property
    def pid(self) -> int | None:
        where = self._pool._where[self.worker_id]
        return where[0] if where else None

    def is_alive(self) -> bool:
        return self.exitcode is None

    def join(self, timeout: float | None = None) -> None:
        """Actors are ended by :meth:`RayPool.shutdown`; nothing to wait for here."""

    def terminate(self) -> None:
        self._pool._kill(self.worker_id)

    kill = terminate


class RayPool:
    """``num_workers`` Ray actors running the loader's worker code."""

    def __init__(self, *, num_workers: int, dataset: Any, iterable: bool,
                 auto_collation: bool, collate_fn: Any, drop_last: bool,
                 worker_init_fn: Any, base_seed: int, thread_limit: int | None,
                 options: Any, owner: Any = None, on_error: str = "raise",
                 track_state: bool = False, seeding: str = "per_worker", seed_epoch: int = 0,
                 snapshot_every: int = 0, restore: list | None = None,
                 slots_per_worker: int = 0, context: Any = None,
                 share_dataset: bool = True) -> None:
        # slots_per_worker, context and share_dataset are the local engine's: Ray's object
        # store holds as many batches as are in flight, actors need no start method, and
        # the dataset is put in the object store once (actors on other nodes cannot map a
        # memfd; numpy arrays in it are zero-copy per node already)
        self.num_workers = 0
        self.blocked_s = 0.0
        self._closed = False
        self._options = options
        self._args = dict(iterable=iterable, auto_collation=auto_collation,
                          drop_last=drop_last, thread_limit=thread_limit, on_error=on_error,
                          track_state=track_state, seeding=seeding,
                          snapshot_every=snapshot_every)
        self._seed_epoch = seed_epoch  # the loader's epoch, for per-batch seeds
        self._restore: list = list(restore or [])  # per worker: where its replica starts
        self._queued: deque = deque()  # replies whose BatchNote receive returned first
        self._actors: list[Any] = []
        self._where_refs: list[Any] = []
        self._where: list[tuple | None] = []  # (pid, node id, ip) once reported
        self._created: list[float] = []  # monotonic time each actor was asked for
        self._procs: list[_ActorProcess] = []
        self._pids: list[int | None] = []  # local pids, for stats (None: elsewhere/unknown)
        self._retired: set[int] = set()
        # per worker, its unanswered tasks' ObjectRefs in submission order: only the oldest
        # of each is waited on, so a worker's replies come out in the order it produced
        # them (Ray may deliver them in any order; an IterEnd must not overtake a batch)
        self._pending: list[deque] = []
        self._task_of: dict[Any, tuple[int, int, int]] = {}  # ref -> (epoch, number, worker)
        self._submitted = 0  # tasks numbered in submission order
        self.exited: list[_ActorProcess] = []
        self._job = None
        ray_session.join([owner, self], options)
        self._node = ray.get_runtime_context().get_node_id()
        _LIVE_POOLS.add(self)
        try:
            try:
                self._job = ray.put((dataset, collate_fn, worker_init_fn))
            except Exception as exc:
                raise _retyped(exc, "DataLoader(worker_backend='ray') could not send the "
                               f"dataset, collate_fn and worker_init_fn to Ray: {exc}") from exc
            self.add_workers(num_workers, epoch=0, base_seed=base_seed)
        except BaseException:
            self.shutdown()
            raise

    # ------------------------------------------------------------------ workers

    def _new_actor(self, worker_id: int, total: int, epoch: int, base_seed: int,
                   replica_state: dict | None = None) -> Any:
        restore = self._restore[worker_id] if worker_id < len(self._restore) else None
        return _remote_class().options(**self._options.actor_options()).remote(
            self._job, worker_id, total, base_seed=base_seed, epoch=epoch,
            seed_epoch=self._seed_epoch, replica_state=replica_state,
            restore=restore if replica_state is None else None, **self._args)

    def add_workers(self, count: int, *, epoch: int, base_seed: int) -> list[int]:
        """Ask Ray for ``count`` more actors; tasks may be submitted to them at once (Ray
        queues them until the actor is up)."""
        ids = list(range(self.num_workers, self.num_workers + count))
        total = self.num_workers + count
        for k in ids:
            actor = self._new_actor(k, total, epoch, base_seed)
            self._actors.append(actor)
            self._pending.append(deque())
            self._where_refs.append(actor.where.remote())
            self._where.append(None)
            self._created.append(time.monotonic())
            self._procs.append(_ActorProcess(self, k))
            self._pids.append(None)
            if len(self._restore) <= k:
                self._restore.append(None)
            self.num_workers += 1
        return ids

    def start(self, count: int | None = None) -> None:
        """Actors start as soon as they are created; nothing more to do."""

    def restart(self, worker_id: int, epoch: int, base_seed: int,
                replica_state: dict | None = None) -> None:
        """Replace worker ``worker_id`` (dead, or given up on) by a new actor with the same
        id, seeds and ``worker_init_fn``, iterating ``epoch`` (an iterable replica restored
        to ``replica_state``, ``workers/replica.py``; None: from its start); its unanswered
        tasks are dropped (the caller submits again what it still owes). Batches already
        handed out live in the object store, untouched by the new actor."""
        self._kill(worker_id)
        self._drop_tasks(worker_id)
        self._queued = deque(q for q in self._queued if q[0].worker_id != worker_id)
        actor = self._new_actor(worker_id, self.num_workers, epoch, base_seed, replica_state)
        self._actors[worker_id] = actor
        self._where_refs[worker_id] = actor.where.remote()
        self._where[worker_id] = None
        self._created[worker_id] = time.monotonic()
        self._procs[worker_id] = _ActorProcess(self, worker_id)
        self._pids[worker_id] = None

    def kill(self, worker_id: int) -> None:
        """End a (stuck) worker at once; its unanswered tasks then fail, and
        :meth:`receive` reports its death as any other."""
        try:
            ray.kill(self._actors[worker_id], no_restart=True)
        except Exception:  # already gone, or Ray is shutting down
            pass

    def in_hand(self, worker_id: int) -> tuple[int, int] | None:
        """Which batch the worker is on: Ray does not say, so None."""
        return None

    def retire(self, worker_id: int) -> None:
        """Stop a worker on purpose; its end is not an error. Give it no more tasks."""
        self._retired.add(worker_id)
        self._drop_tasks(worker_id)
        self._kill(worker_id)

    def _kill(self, worker_id: int) -> None:
        """End a worker on purpose: its exit counts as a clean one."""
        proc = self._procs[worker_id]
        if proc.exitcode is None:
            proc.exitcode = 0
        self.kill(worker_id)

    def _drop_tasks(self, worker_id: int, before_epoch: int | None = None) -> None:
        kept = deque()
        for ref in self._pending[worker_id]:
            if before_epoch is None or self._task_of[ref][0] < before_epoch:
                del self._task_of[ref]
            else:
                kept.append(ref)
        self._pending[worker_id] = kept

    # ------------------------------------------------------------------ tasks

    def submit(self, worker_id: int, epoch: int, batch_id: int, indices: Any) -> None:
        ref = self._actors[worker_id].fetch.remote(epoch, batch_id, indices)
        self._submitted += 1
        self._pending[worker_id].append(ref)
        self._task_of[ref] = (epoch, self._submitted, worker_id)

    def new_epoch(self, worker_id: int, epoch: int, base_seed: int, *, seed_epoch: int = 0,
                  restore: Any = None) -> None:
        """Reseed and restart iteration (``restore``: where the replica starts, after a
        resume); answers still due from older epochs are dropped (Ray runs those calls
        first and frees their results unread)."""
        self._seed_epoch = seed_epoch  # workers added or replaced in this epoch seed alike
        if worker_id < len(self._restore):
            self._restore[worker_id] = restore
        self._drop_tasks(worker_id, before_epoch=epoch)
        self._actors[worker_id].new_epoch.remote(epoch, base_seed, seed_epoch, restore)

    def receive(self, timeout_s: float | None, prefer: int | None = None) -> tuple[Any, Any]:
        """The next (message, batch) from any worker; batch is None except for a Result.
        (``prefer``, the worker whose batch is due, is a hint this engine does not need:
        it waits on every worker's oldest call at once.)

        Raises :class:`WorkerError` when a worker's actor or node is gone (or it cannot
        be placed), and ``TimeoutError`` when ``timeout_s`` passes without a message
        while every worker that owes one is up (coming up is bounded by
        ``placement_timeout_s`` instead: it may take an autoscaler minutes).
        """
        if self._queued:
            return self._queued.popleft()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            self._learn_where()
            heads = sorted((q[0] for q in self._pending if q),
                           key=lambda r: self._task_of[r][1])
            wait_s = _POLL_S if deadline is None else \
                max(0.0, min(_POLL_S, deadline - time.monotonic()))
            blocked = time.perf_counter()
            if heads:
                ready, _ = ray.wait(heads, num_returns=1, timeout=wait_s)
            else:  # nothing will arrive; wait out the poll like any other idle wait
                ready = []
                time.sleep(wait_s)
            self.blocked_s += time.perf_counter() - blocked
            if ready:
                out = self._take(ready[0])
                if out is not None:
                    return out
                continue
            starting = self._check_placement()
            if deadline is not None and time.monotonic() >= deadline:
                if not starting:
                    raise TimeoutError
                # an actor still coming up (placement, start-up, worker_init_fn) is bounded
                # by placement_timeout_s, not by the loader's per-batch timeout
                deadline = time.monotonic() + timeout_s

    def _take(self, ref: Any) -> tuple[Any, Any] | None:
        """The reply in ``ref`` (None when the worker had no reply to give)."""
        worker_id = self._task_of.pop(ref)[2]
        self._pending[worker_id].popleft()  # ``ref`` is its oldest: only heads are waited on
        try:
            note, head, payload, buffer = ray.get(ref, timeout=_GET_TIMEOUT_S)
        except (RayError, GetTimeoutError) as exc:
            # every reply of this worker's earlier tasks has been returned already
            raise self._gone(worker_id, exc) from None
        if head is None:
            return None
        reply = self._reply(ref, unpack(head), payload, buffer)
        if note is None:
            return reply
        self._queued.append(reply)  # the note first, as a local worker sends it
        return unpack(note), None

    def _reply(self, ref: Any, message: Any, payload: Any, buffer: Any) -> tuple[Any, Any]:
        if type(message) is not Result:
            return message, None
        lease = None
        if buffer is not None:
            if buffer.nbytes < _COPY_BELOW:
                lease = buffer.copy()
            else:
                lease = _lease_over(buffer)
                lease._ref = ref  # the object lives as long as any view of the batch
        body = message.payload if message.codec == LAYOUT else payload
        return message, decode(message.codec, body, lease, message.spans)

    def _gone(self, worker_id: int, exc: BaseException) -> WorkerError:
        self._learn_where()
        self._procs[worker_id].exitcode = 1
        said = " ".join(str(exc).split())
        if len(said) > _REASON_CHARS:
            said = said[:_REASON_CHARS] + "..."
        where = self._where[worker_id]
        if isinstance(exc, RayActorError) and getattr(exc, "actor_init_failed", False):
            what = ("could not start: its Ray actor failed to receive the dataset, "
                    "collate_fn or worker_init_fn (is their code importable on every node?)")
        elif isinstance(exc, RayActorError):
            what = "is gone: its Ray actor or node died"
        else:
            what = "failed outside your code"
        return WorkerError(
            f"DataLoader worker {worker_id} ({self.describe(worker_id)}) {what}. "
            f"Ray said: {type(exc).__name__}: {said}",
            worker_id=worker_id, pid=where[0] if where else None)

    def _learn_where(self, wait_s: float = 0.0) -> None:
        """Record (pid, node, ip) of actors that have reported it, waiting up to
        ``wait_s`` for all of them; cheap once all have."""
        if self._closed:
            return
        pending = [r for k, r in enumerate(self._where_refs)
                   if r is not None and self._where[k] is None]
        if not pending:
            return
        ready, _ = ray.wait(pending, num_returns=len(pending), timeout=wait_s)
        for ref in ready:
            k = self._where_refs.index(ref)
            self._where_refs[k] = None
            try:
                where = ray.get(ref, timeout=_GET_TIMEOUT_S)
            except (RayError, GetTimeoutError):
                continue  # the actor failed to start; its tasks will say how
            self._where[k] = where
            if where[1] == self._node:
                self._pids[k] = where[0]

    def _check_placement(self) -> bool:
        """Whether a worker with tasks is still coming up; raises if it waited too long."""
        limit = self._options.placement_timeout_s
        now = time.monotonic()
        starting = False
        for k in [k for k, q in enumerate(self._pending) if q]:
            if self._where[k] is not None or self._where_refs[k] is None:
                continue  # up, or failed to start (its tasks will say how)
            starting = True
            if now - self._created[k] > limit:
                raise WorkerError(
                    f"DataLoader worker {k} was not placed on the Ray cluster within "
                    f"{limit:.0f} s: no node has the resources its actor asks for "
                    f"({self._options.actor_options()}); available now: "
                    f"{ray.available_resources()}. Use fewer workers, or other "
                    "RayBackend(remote_args=...)", worker_id=k)
        return starting

    # ------------------------------------------------------------------ introspection

    def describe(self, worker_id: int) -> str:
        self._learn_where()
        actor = self._actors[worker_id] if worker_id < len(self._actors) else None
        name = f"ray actor {actor._actor_id.hex()}" if actor is not None else "ray actor"
        where = self._where[worker_id] if worker_id < len(self._where) else None
        if where is None:
            return f"{name}, not placed yet"
        pid, node, ip = where
        return f"{name} on node {node} ({ip}), pid {pid}"

    def stack_dump(self, worker_id: int) -> str:
        """Not available: an actor runs one call at a time and may be on another node."""
        return ""

    @property
    def started_pids(self) -> list[int | None]:
        return self._pids

    @property
    def processes(self) -> list:
        """Every worker, Process-like; waits (bounded) until each actor is up, so that
        their pids are known, as the local pool starts every process first."""
        self._learn_where(wait_s=self._options.placement_timeout_s)
        return list(self._procs)

    # ------------------------------------------------------------------ shutdown

    def shutdown(self) -> None:
        """Kill every actor of this pool and drop the dataset; safe to call repeatedly."""
        if self._closed:
            return
        self._closed = True
        _LIVE_POOLS.discard(self)
        self._pending = [deque() for _ in self._pending]
        self._task_of.clear()
        self._queued.clear()
        if ray.is_initialized():
            for k in range(len(self._actors)):
                self._kill(k)
        self.exited = list(self._procs)
        self._actors = []
        self._where_refs = []
        self._job = None
        ray_session.leave(self)

    def __del__(self) -> None:
        try:
            self.shutdown()
        except Exception:
            pass


def _shutdown_all() -> None:
    for pool in list(_LIVE_POOLS):
        pool.shutdown()


ray_session.on_exit(_shutdown_all)
