"""The local engine (``workers/backend.py``'s WorkerBackend): worker processes on this
machine, their memfd slots and control channels; start, talk, notice death, shut down.

```
 WorkerPool ──start──▶ N processes (multiprocess: fork / spawn / forkserver)
   per worker k: Channel (ipc/channel.py): task ring ─▶ k, result ring ◀─ k,
                 released[slot] counters; a task doorbell (pipe) that wakes k
   one results doorbell (pipe) that every worker rings after publishing
   spill path (records too big for a ring): PUSH ─▶ ipc://@<run>-task-k,
                 PULL ◀─ ipc://@<run>-results
   poller: the results doorbell, the spill socket and every worker's sentinel
   arenas: one per worker (ipc/arena.py); a lease stores its release in the channel
```

- The parent: :meth:`submit` writes a task record into worker k's ring and rings k;
  :meth:`receive` reads the next record from any ring (the one asked for first), with no
  system call while records are waiting; it sleeps in one ``poll`` only when every ring
  is empty, and wakes at once when a worker rings or dies.
- The worker: ``workers/loop.py``.
- A replacement for a dead worker must get a new Channel and Arena (not the old ones):
  leases the user still holds store releases into the old channel's counters, and a new
  process starts counting what it published from zero.
- Shutdown: :meth:`shutdown` is the one idempotent path (Stop to every worker, join with a
  timeout, SIGKILL survivors, close sockets, pipes and slots). Iterator exhaustion,
  ``close()``, garbage collection, errors and interpreter exit all end here. Sockets live
  in Linux's abstract namespace and slots, channels and pipes are anonymous, so nothing
  is left on disk even after kill -9.
"""

from __future__ import annotations

import atexit
import os
import signal
import time
import uuid
import weakref
from collections import deque
from dataclasses import dataclass
from typing import Any

import zmq

from loader.ipc.arena import Arena
from loader.ipc.capacity import check_before_start
from loader.ipc.channel import MSG, SPILL, STRONG_ORDER, Channel, Doorbell
from loader.ipc.codec import decode
from loader.ipc.messages import Result, Resume, Stop, Task, pack, unpack
from loader.errors import WorkerError, describe_exit
from loader.workers.loop import WorkerSpec, worker_main
from loader.workers.pickling import check_picklable
from loader.workers.seeding import warm_before_fork
from loader.workers.threads import scan_before_fork

__all__ = ["WorkerPool"]

_JOIN_TIMEOUT_S = 2.0  # how long a worker may take to exit after Stop before it is killed
_DEATH_GRACE_MS = 10  # after a sentinel fires and its ring is empty: time for our own zmq
#                       I/O thread to hand over a spilled last message already in the
#                       socket (a dead worker sends nothing more; ring records are there)
_RECONNECT_MS = 2  # the task socket connects before its worker binds: retry this soon
#                    (zmq's default, 100 ms, was most of the time to the first batch)
_MIN_SLOT_BYTES = 1 << 20  # a slot's smallest size (ipc/arena.py grows in whole MiB)
_DUMP_WAIT_S = 1.0  # how long a stack dump from a stuck worker is waited for
_POLL_MS = 1000  # longest single wait; each wake re-checks the deadline and the workers
_LIVE_POOLS: "weakref.WeakSet[WorkerPool]" = weakref.WeakSet()
_ALL_SLOT_FDS: set[int] = set()  # every shared fd of this process, closed in forked children


@dataclass(frozen=True)
class ExitedWorker:
    """What remains known of a worker after shutdown (its Process object is closed)."""

    pid: int
    name: str
    exitcode: int | None

    def is_alive(self) -> bool:
        return False


class WorkerPool:
    """``num_workers`` worker processes, their channels and their shared-memory arenas."""

    def __init__(self, *, num_workers: int, context: Any, dataset: Any, iterable: bool,
                 auto_collation: bool, collate_fn: Any, drop_last: bool,
                 worker_init_fn: Any, base_seed: int, slots_per_worker: int,
                 thread_limit: int | None) -> None:
        self.num_workers = 0
        self.blocked_s = 0.0  # seconds spent blocked waiting for workers, for stats
        self._closed = False
        self._processes: list = []
        self._pids: list[int | None] = []
        self.exited: list[ExitedWorker] = []
        self._retired: set[int] = set()  # workers told to stop on purpose ("auto" shrinking)
        self._zmq = zmq.Context(io_threads=1)
        self._arenas: list[Arena] = []
        self._channels: list[Channel] = []
        self._bells: list[Doorbell] = []  # per worker: wakes it when a task is posted
        self._spilled: list[deque] = []  # per worker: spill-path messages not yet due
        self._dump_fds: list[int] = []
        self._tasks: list[zmq.Socket] = []
        self._next = 0  # where the next scan of the rings starts (fairness)
        self._run = f"ipc://@loader-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._results = self._zmq.socket(zmq.PULL)
        self._results.setsockopt(zmq.RCVHWM, 0)
        self._results.setsockopt(zmq.LINGER, 0)
        self._results.bind(f"{self._run}-results")
        self._results_bell = Doorbell.create()
        _ALL_SLOT_FDS.update(self._results_bell.fds)
        self._poller = zmq.Poller()
        self._poller.register(self._results, zmq.POLLIN)
        self._poller.register(self._results_bell.read_fd, zmq.POLLIN)
        self._context = context
        self._inherited = context.get_start_method() == "fork"
        self._slots = slots_per_worker
        self._spec = dict(dataset=dataset, iterable=iterable, auto_collation=auto_collation,
                          collate_fn=collate_fn, drop_last=drop_last,
                          worker_init_fn=worker_init_fn, thread_limit=thread_limit)
        _LIVE_POOLS.add(self)
        try:
            check_before_start(num_workers * slots_per_worker * _MIN_SLOT_BYTES,
                               f"the first batches of {num_workers} workers")
            if self._inherited:
                warm_before_fork()
                scan_before_fork()
            else:
                check_picklable(dataset=dataset, collate_fn=collate_fn,
                                worker_init_fn=worker_init_fn)
            self.add_workers(num_workers, epoch=0, base_seed=base_seed)
        except BaseException:
            self.shutdown()
            raise

    def add_workers(self, count: int, *, epoch: int, base_seed: int) -> list[int]:
        """Prepare ``count`` more workers (ids continue from the current count): their
        slots, channels and sockets exist at once, so tasks can be queued for them before
        :meth:`start` forks them, and the first worker starts on its first batch while
        the next ones are still being forked."""
        ids = list(range(self.num_workers, self.num_workers + count))
        total = self.num_workers + count
        for k in ids:
            channel = Channel.create(k, self._slots)
            arena = Arena(k, self._slots, channel.words, channel.release_index)
            bell = Doorbell.create()
            dump_fd = os.memfd_create(f"loader-w{k}-stacks", os.MFD_CLOEXEC)
            self._channels.append(channel)
            self._arenas.append(arena)
            self._bells.append(bell)
            self._spilled.append(deque())
            self._dump_fds.append(dump_fd)
            own = set(arena.fds) | {dump_fd, channel.fd, *bell.fds, *self._results_bell.fds}
            _ALL_SLOT_FDS.update(own)
            sock = self._zmq.socket(zmq.PUSH)
            sock.setsockopt(zmq.SNDHWM, 0)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RECONNECT_IVL, _RECONNECT_MS)
            sock.connect(f"{self._run}-task-{k}")
            self._tasks.append(sock)
            spec = WorkerSpec(
                worker_id=k, num_workers=total, base_seed=base_seed, epoch=epoch,
                task_address=f"{self._run}-task-{k}", result_address=f"{self._run}-results",
                main_pid=os.getpid(), slot_fds=list(arena.fds), channel_fd=channel.fd,
                task_bell_fd=bell.read_fd, results_bell_fd=self._results_bell.write_fd,
                fds_inherited=self._inherited,
                close_fds=sorted(_ALL_SLOT_FDS - own) if self._inherited else [],
                dump_fd=dump_fd, **self._spec)
            process = self._context.Process(target=worker_main, args=(spec,), daemon=True,
                                            name=f"loader-worker-{k}")
            self._processes.append(process)
            self._pids.append(None)
            self.num_workers += 1
        return ids

    def start(self, count: int | None = None) -> None:
        """Start prepared worker processes: ``count`` of them, or all. The rest start one
        at a time whenever :meth:`receive` would otherwise wait (so the first batch does
        not wait for every fork)."""
        for k, process in enumerate(self._processes):
            if self._pids[k] is not None:
                continue
            if count is not None:
                if count <= 0:
                    return
                count -= 1
            process.start()  # fork: the parent's older objects are frozen (workers/freeze.py)
            self._pids[k] = process.pid
            self._poller.register(process.sentinel, zmq.POLLIN)

    def retire(self, worker_id: int) -> None:
        """Stop a worker on purpose; its exit is not an error. Give it no more tasks."""
        self._retired.add(worker_id)
        process = self._processes[worker_id]
        self._poller.unregister(process.sentinel)
        self._post(worker_id, Stop())

    # ------------------------------------------------------------------ introspection

    @property
    def pids(self) -> list[int]:
        self.start()  # whoever asks for the pids gets every worker started
        return list(self._pids)

    @property
    def started_pids(self) -> list[int | None]:
        return self._pids  # the live list: stats see workers that start later

    def describe(self, worker_id: int) -> str:
        return f"pid {self._pids[worker_id]}"

    @property
    def processes(self) -> list:
        self.start()
        return list(self._processes)

    def _start_one(self) -> bool:
        """Fork the next prepared worker, if any is left; True if one was started."""
        if None not in self._pids:
            return False
        self.start(1)
        return True

    # ------------------------------------------------------------------ main -> worker

    def _post(self, worker_id: int, message: Any) -> None:
        """``message`` into worker k's task ring (or by the spill path), then ring k."""
        record = pack(message)
        ring = self._channels[worker_id].tasks
        if not ring.write(record):
            self._tasks[worker_id].send(record)  # copied: zero-copy sends start pyzmq's gc thread
            if not ring.write(b"", SPILL):
                raise RuntimeError(f"the task ring of worker {worker_id} is full of spill "
                                   "markers")
        self._bells[worker_id].ring()

    def new_epoch(self, worker_id: int, epoch: int, base_seed: int) -> None:
        self._post(worker_id, Resume(epoch, base_seed))

    def submit(self, worker_id: int, epoch: int, batch_id: int, indices: Any) -> None:
        """Queue a task for ``worker_id``."""
        self._post(worker_id, Task(epoch, batch_id, indices))

    # ------------------------------------------------------------------ worker -> main

    def receive(self, timeout_s: float | None, prefer: int | None = None) -> tuple[Any, Any]:
        """The next (message, batch) from any worker, worker ``prefer``'s first; batch is
        None except for a Result.

        Raises :class:`WorkerError` when a worker has died, and ``TimeoutError`` when
        ``timeout_s`` passes without a message.
        """
        if prefer is not None:  # the common case: the batch due next is already there
            record = self._channels[prefer].results.read()
            if record is not None:
                return self._deliver(prefer, record)
        deadline = None
        while True:
            got = self._take(prefer)
            if got is not None:
                return got
            if self._start_one():
                continue  # the main process had nothing better to do than fork
            rung = self._results_bell.drain()  # stale rings out, then one last look
            if not STRONG_ORDER:
                self._credit(rung)
            got = self._take(prefer)
            if got is not None:
                return got
            if deadline is None and timeout_s is not None:
                deadline = time.monotonic() + timeout_s
            wait_ms = _POLL_MS if deadline is None else \
                max(0, min(_POLL_MS, int((deadline - time.monotonic()) * 1000)))
            blocked = time.perf_counter()
            events = dict(self._poller.poll(wait_ms))
            self.blocked_s += time.perf_counter() - blocked
            if self._results in events:
                self._pull_spilled()
            if len(events) > (self._results in events) + \
                    (self._results_bell.read_fd in events):
                self._raise_if_dead()  # a sentinel fired
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError

    def _credit(self, rung: bytes) -> None:
        for k in Doorbell.ids(rung):
            if k < len(self._channels):
                self._channels[k].results.credits += 1

    def _take(self, prefer: int | None) -> tuple[Any, Any] | None:
        """The next record of the preferred ring, else of any ring; None if all are empty."""
        channels = self._channels
        if prefer is not None:
            got = self._take_from(prefer)
            if got is not None:
                return got
        n = len(channels)
        start = self._next
        for i in range(n):
            k = (start + i) % n
            if k == prefer:
                continue
            got = self._take_from(k)
            if got is not None:
                self._next = k + 1
                return got
        return None

    def _take_from(self, worker_id: int) -> tuple[Any, Any] | None:
        record = self._channels[worker_id].results.read()
        return None if record is None else self._deliver(worker_id, record)

    def _deliver(self, worker_id: int, record: tuple) -> tuple[Any, Any]:
        tag, payload = record
        message = unpack(payload) if tag == MSG else self._spilled_from(worker_id)
        if type(message) is Result:
            lease = None
            if message.slot >= 0 and message.slot_size:
                lease = self._arenas[worker_id].lease(message.slot, message.slot_size,
                                                      message.gen)
            return message, decode(message.codec, message.payload, lease, message.spans)
        return message, None

    def _pull_spilled(self) -> None:
        """Move every spill-path message that has arrived to its worker's queue."""
        results = self._results
        while results.get(zmq.EVENTS) & zmq.POLLIN:
            message = unpack(results.recv())
            self._spilled[message.worker_id].append(message)

    def _spilled_from(self, worker_id: int) -> Any:
        """Worker k's next spill-path message: its SPILL record says it was sent."""
        queue = self._spilled[worker_id]
        while not queue:
            self._pull_spilled()
            if queue:
                break
            if not self._results.poll(_POLL_MS, zmq.POLLIN):
                process = self._processes[worker_id]
                if process.exitcode is not None:
                    raise WorkerError(describe_exit(worker_id, process.pid, process.exitcode),
                                      worker_id=worker_id, pid=process.pid,
                                      exitcode=process.exitcode)
        return queue.popleft()

    def _raise_if_dead(self) -> None:
        dead = [(k, p) for k, p in enumerate(self._processes)
                if k not in self._retired and self._pids[k] is not None
                and p.exitcode is not None]
        if not dead:
            return
        if any(c.results.ready() for c in self._channels):
            return  # its last words are already here: deliver them first
        if self._results.poll(_DEATH_GRACE_MS):
            return  # ... or still arriving by the spill path
        k, process = dead[0]
        raise WorkerError(describe_exit(k, process.pid, process.exitcode),
                          worker_id=k, pid=process.pid, exitcode=process.exitcode)

    def stack_dump(self, worker_id: int) -> str:
        """The worker's Python stacks right now (faulthandler), or '' if it cannot tell."""
        pid, fd = self._pids[worker_id], self._dump_fds[worker_id]
        try:
            start = os.fstat(fd).st_size
            os.kill(pid, signal.SIGUSR1)
            deadline = time.monotonic() + _DUMP_WAIT_S
            while os.fstat(fd).st_size == start and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.02)  # let the dump finish
            size = os.fstat(fd).st_size
            return os.pread(fd, size - start, start).decode(errors="replace").strip("\0\n")
        except (OSError, TypeError):
            return ""

    # ------------------------------------------------------------------ shutdown

    def shutdown(self) -> None:
        """Stop every worker and free everything; safe to call any number of times."""
        if self._closed:
            return
        self._closed = True
        _LIVE_POOLS.discard(self)
        started = [(k, p) for k, p in enumerate(self._processes) if self._pids[k] is not None]
        for k, process in started:
            if process.exitcode is None and k not in self._retired:
                try:
                    self._post(k, Stop())
                except (zmq.ZMQError, RuntimeError, OSError):
                    pass
        deadline = time.monotonic() + _JOIN_TIMEOUT_S
        for _, process in started:
            process.join(max(0.0, deadline - time.monotonic()))
        for _, process in started:
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
        for channel in self._channels:
            _ALL_SLOT_FDS.discard(channel.fd)
            channel.close()
        for bell in [*self._bells, self._results_bell]:
            _ALL_SLOT_FDS.difference_update(bell.fds)
            bell.close()
        for fd in self._dump_fds:
            _ALL_SLOT_FDS.discard(fd)
            os.close(fd)
        self._dump_fds = []
        self.exited = [ExitedWorker(p.pid, p.name, p.exitcode) for _, p in started]
        for _, process in started:
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
