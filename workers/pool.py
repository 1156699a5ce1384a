"""Worker process lifecycle on the main side: start, talk, notice death, shut down.

```
 WorkerPool ──start──▶ N processes (multiprocess: fork / spawn / forkserver)
   PUSH (connect) ─────▶ ipc://@<run>-task-k      one per worker
   PULL (bind)    ◀───── ipc://@<run>-results     shared by all workers
   poller: the PULL socket + every worker's process sentinel
   arenas: one per worker (ipc/arena.py), leases feed ``released``
```

- The parent: :meth:`send` queues a message for worker k; :meth:`receive` returns the next
  decoded message, flushing slot releases first and waking at once if a worker dies.
- The worker: ``workers/loop.py``.
- Shutdown: :meth:`shutdown` is the one idempotent path (Stop to every worker, join with a
  timeout, SIGKILL survivors, close sockets and slots). Iterator exhaustion, ``close()``,
  garbage collection, errors and interpreter exit all end here. Sockets live in Linux's
  abstract namespace and slots are memfds, so nothing is left on disk even after kill -9.
"""

from __future__ import annotations

import atexit
import os
import pickle
import time
import uuid
import weakref
from collections import deque
from typing import Any

import zmq

from ipc.arena import Arena
from ipc.codec import decode
from ipc.messages import Release, Result, Started, Stop
from loader.errors import WorkerError, describe_exit
from workers.loop import WorkerSpec, worker_main
from workers.pickling import check_picklable

__all__ = ["WorkerPool"]

_JOIN_TIMEOUT_S = 5.0  # how long a worker may take to exit after Stop before it is killed
_DEATH_GRACE_MS = 50  # after a sentinel fires: time for the dead worker's last message
_LIVE_POOLS: "weakref.WeakSet[WorkerPool]" = weakref.WeakSet()
_ALL_SLOT_FDS: set[int] = set()  # every slot fd of this process, closed in forked children


class WorkerPool:
    """``num_workers`` worker processes, their sockets and their shared-memory arenas."""

    def __init__(self, *, num_workers: int, context: Any, dataset: Any, iterable: bool,
                 auto_collation: bool, collate_fn: Any, drop_last: bool,
                 worker_init_fn: Any, base_seed: int, slots_per_worker: int,
                 thread_limit: int | None) -> None:
        self.num_workers = num_workers
        self.released: deque = deque()
        self._closed = False
        self._processes: list = []
        self._pids: list[int | None] = [None] * num_workers
        self._zmq = zmq.Context(io_threads=1)
        self._arenas: list[Arena] = []
        self._tasks: list[zmq.Socket] = []
        run = f"ipc://@loader-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._results = self._zmq.socket(zmq.PULL)
        self._results.setsockopt(zmq.RCVHWM, 0)
        self._results.setsockopt(zmq.LINGER, 0)
        self._results.bind(f"{run}-results")
        _LIVE_POOLS.add(self)
        try:
            start_method = context.get_start_method()
            inherited = start_method == "fork"
            if not inherited:
                check_picklable(dataset=dataset, collate_fn=collate_fn,
                                worker_init_fn=worker_init_fn)
            self._arenas = [Arena(k, slots_per_worker, self.released) for k in range(num_workers)]
            own = {fd for arena in self._arenas for fd in arena.fds}
            _ALL_SLOT_FDS.update(own)
            for k in range(num_workers):
                sock = self._zmq.socket(zmq.PUSH)
                sock.setsockopt(zmq.SNDHWM, 0)
                sock.setsockopt(zmq.LINGER, 0)
                sock.connect(f"{run}-task-{k}")
                self._tasks.append(sock)
            self._poller = zmq.Poller()
            self._poller.register(self._results, zmq.POLLIN)
            for k in range(num_workers):
                spec = WorkerSpec(
                    worker_id=k, num_workers=num_workers, dataset=dataset, iterable=iterable,
                    auto_collation=auto_collation, collate_fn=collate_fn, drop_last=drop_last,
                    worker_init_fn=worker_init_fn, base_seed=base_seed,
                    task_address=f"{run}-task-{k}", result_address=f"{run}-results",
                    main_pid=os.getpid(), slot_fds=list(self._arenas[k].fds),
                    fds_inherited=inherited,
                    close_fds=sorted(_ALL_SLOT_FDS - set(self._arenas[k].fds)) if inherited else [],
                    thread_limit=thread_limit)
                process = context.Process(target=worker_main, args=(spec,), daemon=True,
                                          name=f"loader-worker-{k}")
                process.start()
                self._processes.append(process)
                self._pids[k] = process.pid
                self._poller.register(process.sentinel, zmq.POLLIN)
        except BaseException:
            self.shutdown()
            raise

    # ------------------------------------------------------------------ messages

    @property
    def pids(self) -> list[int | None]:
        return list(self._pids)

    @property
    def processes(self) -> list:
        return list(self._processes)

    def send(self, worker_id: int, message: Any) -> None:
        self._tasks[worker_id].send(pickle.dumps(message, protocol=5))

    def flush_releases(self) -> None:
        """Return the slots whose batches the user has dropped to their workers."""
        released = self.released
        if not released:
            return
        by_worker: dict[int, list[int]] = {}
        while released:
            worker_id, slot = released.popleft()
            by_worker.setdefault(worker_id, []).append(slot)
        for worker_id, slots in by_worker.items():
            self.send(worker_id, Release(tuple(slots)))

    def receive(self, timeout_s: float | None) -> tuple[Any, Any]:
        """The next (message, batch) from any worker; batch is None except for a Result.

        Raises :class:`WorkerError` when a worker has died, and ``TimeoutError`` when
        ``timeout_s`` passes without a message.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            self.flush_releases()
            try:
                frames = self._results.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                frames = None
            if frames is not None:
                message = pickle.loads(frames[0])
                if type(message) is Started:
                    continue
                return message, self._decode(message, frames)
            wait_ms = 1000 if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
            events = dict(self._poller.poll(min(wait_ms, 1000)))
            if self._results not in events and len(events):
                self._raise_if_dead()
            if deadline is not None and time.monotonic() >= deadline and self._results not in events:
                raise TimeoutError

    def _decode(self, message: Any, frames: list) -> Any:
        if type(message) is not Result:
            return None
        buffers = None
        if message.slot >= 0:
            buffers = self._arenas[message.worker_id].lease(message.slot, message.slot_size,
                                                            message.spans)
        return decode(frames[1], buffers)

    def _raise_if_dead(self) -> None:
        dead = [(k, p) for k, p in enumerate(self._processes) if p.exitcode is not None]
        if not dead:
            return
        if self._results.poll(_DEATH_GRACE_MS):
            return  # its last words are still arriving: deliver them first
        k, process = dead[0]
        raise WorkerError(describe_exit(k, process.pid, process.exitcode),
                          worker_id=k, pid=process.pid, exitcode=process.exitcode)

    def check_alive(self) -> None:
        """Raise :class:`WorkerError` if a worker has died (no grace period)."""
        for k, process in enumerate(self._processes):
            if process.exitcode is not None:
                raise WorkerError(describe_exit(k, process.pid, process.exitcode),
                                  worker_id=k, pid=process.pid, exitcode=process.exitcode)

    # ------------------------------------------------------------------ shutdown

    def shutdown(self) -> None:
        """Stop every worker and free everything; safe to call any number of times."""
        if self._closed:
            return
        self._closed = True
        _LIVE_POOLS.discard(self)
        for k, process in enumerate(self._processes):
            if process.exitcode is None:
                try:
                    self.send(k, Stop())
                except zmq.ZMQError:
                    pass
        deadline = time.monotonic() + _JOIN_TIMEOUT_S
        for process in self._processes:
            process.join(max(0.0, deadline - time.monotonic()))
        for process in self._processes:
            if process.exitcode is None:
                process.kill()
                process.join(_JOIN_TIMEOUT_S)
        for sock in self._tasks:
            sock.close(linger=0)
        self._results.close(linger=0)
        self._zmq.term()
        for arena in self._arenas:
            _ALL_SLOT_FDS.difference_update(arena.fds)
            arena.close()
        for process in self._processes:
            try:
                process.close()
            except (ValueError, AttributeError):
                pass

    def __del__(self) -> None:
        try:
            self.shutdown()
        except Exception:
            pass


@atexit.register
def _shutdown_all() -> None:
    for pool in list(_LIVE_POOLS):
        pool.shutdown()
