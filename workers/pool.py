"""The local engine (``workers/backend.py``'s WorkerBackend): worker processes on this
machine, their memfd slots and control channels; start, talk, notice death, shut down.

```
 WorkerPool ──start──▶ N processes (multiprocess: fork / spawn / forkserver)
   per worker k: Channel (ipc/channel.py): task ring ─▶ k, result ring ◀─ k,
                 released[slot] counters; a task doorbell (pipe) that wakes k;
                 a ProgressWord (the batch in hand)
   one results doorbell (pipe) that every worker rings after publishing
   spill path (records too big for a ring): PUSH ─▶ ipc://@<run>-task-k.g,
                 PULL ◀─ ipc://@<run>-results-k.g (g: the worker's generation)
   poller: the results doorbell, the spill socket and every worker's sentinel
   arenas: one per worker (ipc/arena.py); a lease stores its release in the channel
   shipment: one image of the dataset for all workers (workers/shipping.py)
```

- The parent: before any worker starts, ships the dataset once (forked workers inherit
  views of the image; spawned ones get its ticket and, cheap to start, all start at once).
  :meth:`submit` writes a task record into worker k's ring and rings k;
  :meth:`receive` reads the next record from any ring (the one asked for first), with no
  system call while records are waiting; it sleeps in one ``poll`` only when every ring
  is empty, and wakes at once when a worker rings or dies. A death is reported only after
  every record the dead worker published has been returned and its spill connection has
  closed (``workers/drain.py``), so the iterator can tell exactly which tasks it owes.
- Restart (``worker_restarts``): :meth:`restart` replaces a dead worker by a new process
  with the same id, arena, channel and dump file and new spill sockets. Its task ring is
  emptied (the iterator submits again what is owed), and it starts counting what it has
  published in each slot from the last result the main process received there, so a
  slot whose batch the user still holds is free only once that lease is dropped.
- The worker: ``workers/loop.py``.
- Shutdown: :meth:`shutdown` is the one idempotent path (Stop to every worker, join with a
  timeout, SIGKILL survivors, close sockets, pipes, slots and the image). Iterator
  exhaustion, ``close()``, garbage collection, errors and interpreter exit all end here.
  Sockets live in Linux's abstract namespace and slots, channels, pipes and the image are
  anonymous, so nothing is left on disk even after kill -9.
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
from loader.ipc.channel import MSG, SPILL, STRONG_ORDER, Channel, Doorbell, fence
from loader.ipc.codec import decode
from loader.ipc.messages import Result, Resume, Stop, Task, pack, unpack
from loader.errors import WorkerError, describe_exit
from loader.workers import freeze
from loader.workers.drain import ConnectionLedger
from loader.workers.loop import WorkerSpec, worker_main
from loader.workers.pickling import check_picklable
from loader.workers.progress import ProgressWord
from loader.workers.seeding import warm_before_fork
from loader.workers.shipping import Shipment, prepare
from loader.workers.threads import scan_before_fork

__all__ = ["WorkerPool"]

_JOIN_TIMEOUT_S = 2.0  # how long a worker may take to exit after Stop before it is killed
_DRAIN_TIMEOUT_S = 2.0  # after a death: how long its spilled messages may take to arrive
#                        (milliseconds in practice; a bound so that a death never hangs)
_RECONNECT_MS = 2  # the task socket connects before its worker binds: retry this soon
#                    (zmq's default, 100 ms, was most of the time to the first batch)
_MIN_SLOT_BYTES = 1 << 20  # a slot's smallest size (ipc/arena.py grows in whole MiB)
_DUMP_WAIT_S = 1.0  # how long a stack dump from a stuck worker is waited for
SPILLED_BYTES = 1 << 30  # last_record_bytes of a header that took the spill path
_POLL_MS = 1000  # longest single wait; each wake re-checks the deadline and the workers
_LIVE_POOLS: "weakref.WeakSet[WorkerPool]" = weakref.WeakSet()
_ALL_SLOT_FDS: set[int] = set()  # every shared fd of this process, closed in forked children


@dataclass(frozen=True)
class ExitedWorker:
    """What remains known of a worker after shutdown (its Process object is closed), with
    a Process's interface: code written for torch's ``_workers`` joins or terminates them."""

    pid: int
    name: str
    exitcode: int | None

    def is_alive(self) -> bool:
        return False

    def join(self, timeout: float | None = None) -> None:
        """Returns at once: the worker has exited."""

    def terminate(self) -> None:
        """Nothing to stop: the worker has exited."""

    kill = close = terminate


class WorkerPool:
    """``num_workers`` worker processes, their channels and their shared-memory arenas."""

    def __init__(self, *, num_workers: int, context: Any, dataset: Any, iterable: bool,
                 auto_collation: bool, collate_fn: Any, drop_last: bool,
                 worker_init_fn: Any, base_seed: int, slots_per_worker: int,
                 thread_limit: int | None, on_error: str = "raise",
                 track_state: bool = False, seeding: str = "per_worker", seed_epoch: int = 0,
                 snapshot_every: int = 0, restore: list | None = None,
                 share_dataset: bool = True) -> None:
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
        self.last_record_bytes = 0  # the latest result header's size (the iterator's depth)
        self._bells: list[Doorbell] = []  # per worker: wakes it when a task is posted
        self._spilled: list[deque] = []  # per worker: spill-path messages not yet due
        self._issued: list[dict[int, int]] = []  # per worker: slot -> gen last received
        self._dump_fds: list[int] = []
        self._progress: list[ProgressWord] = []  # per worker: the batch it has in hand
        self._tasks: list[zmq.Socket] = []
        self._generation: list[int] = []  # per worker: how many times it was replaced
        self._settled: set[int] = set()  # dead workers whose every message has arrived
        self._sentinels: dict[int, int] = {}  # worker -> the sentinel fd the poller watches
        self._next = 0  # where the next scan of the rings starts (fairness)
        self._run = f"ipc://@loader-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._results = self._zmq.socket(zmq.PULL)
        self._results.setsockopt(zmq.RCVHWM, 0)
        self._results.setsockopt(zmq.LINGER, 0)
        self._ledger = ConnectionLedger(self._results)  # before any worker can connect
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
                          worker_init_fn=worker_init_fn, thread_limit=thread_limit,
                          on_error=on_error, track_state=track_state, seeding=seeding,
                          snapshot_every=snapshot_every)
        self._seed_epoch = seed_epoch  # the loader's epoch, for per-batch seeds
        # per worker: where its replica starts this epoch after a resume (loader/state.py);
        # a replacement with no replica position of its own starts there too
        self._restore: list = list(restore or [])
        self.shipment: Shipment | None = None
        _LIVE_POOLS.add(self)
        try:
            check_before_start(num_workers * slots_per_worker * _MIN_SLOT_BYTES,
                               f"the first batches of {num_workers} workers")
            if share_dataset:
                self._ship(dataset, collate_fn, worker_init_fn)
            if self._inherited:
                warm_before_fork()
                scan_before_fork()
            elif self.shipment is None:
                check_picklable(dataset=dataset, collate_fn=collate_fn,
                                worker_init_fn=worker_init_fn)
            self.add_workers(num_workers, epoch=0, base_seed=base_seed)
        except BaseException:
            self.shutdown()
            raise

    def _ship(self, dataset: Any, collate_fn: Any, worker_init_fn: Any) -> None:
        """Prepare the one image of the dataset every worker maps (workers/shipping.py);
        the workers then get views of it (fork) or its ticket instead of the objects."""
        shipment = prepare(dataset, collate_fn, worker_init_fn, inherit=self._inherited)
        if shipment is None:
            return  # too little memory: every worker gets its own copy
        self.shipment = shipment
        if shipment.image is not None:
            _ALL_SLOT_FDS.add(shipment.image.fd)  # closed in other pools' forked workers
        if shipment.objects is not None:
            objects = dict(zip(("dataset", "collate_fn", "worker_init_fn"), shipment.objects))
        else:
            objects = dict(dataset=None, collate_fn=None, worker_init_fn=None)
        self._spec.update(objects, shipment=shipment.ticket)

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
            progress = ProgressWord.create(k)
            self._channels.append(channel)
            self._arenas.append(arena)
            self._bells.append(bell)
            self._spilled.append(deque())
            self._issued.append({})
            self._dump_fds.append(dump_fd)
            self._progress.append(progress)
            _ALL_SLOT_FDS.update(self._own_fds(k))
            self._generation.append(0)
            self._tasks.append(self._connect(k))
            self._processes.append(self._process(k, total, epoch, base_seed))
            if len(self._restore) <= k:
                self._restore.append(None)
            self._pids.append(None)
            self.num_workers += 1
        return ids

    def _own_fds(self, worker_id: int) -> set[int]:
        """The descriptors worker ``worker_id`` needs (a forked one closes the others)."""
        k = worker_id
        return set(self._arenas[k].fds) | {self._dump_fds[k], self._channels[k].fd,
                                           self._progress[k].fd, *self._bells[k].fds,
                                           *self._results_bell.fds}

    def _addresses(self, worker_id: int) -> tuple[str, str]:
        """(task, results) spill endpoints of the worker's current generation."""
        name = f"{worker_id}.{self._generation[worker_id]}"
        return f"{self._run}-task-{name}", f"{self._run}-results-{name}"

    def _connect(self, worker_id: int) -> zmq.Socket:
        """The spill task socket of the worker's current generation, and its results
        endpoint."""
        task_address, result_address = self._addresses(worker_id)
        self._results.bind(result_address)
        sock = self._zmq.socket(zmq.PUSH)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RECONNECT_IVL, _RECONNECT_MS)
        sock.connect(task_address)
        return sock

    def _process(self, worker_id: int, num_workers: int, epoch: int, base_seed: int,
                 published: list | None = None, replica_state: dict | None = None) -> Any:
        """A prepared (not started) process for worker ``worker_id``'s current generation."""
        k = worker_id
        arena, channel = self._arenas[k], self._channels[k]
        own = self._own_fds(k)
        task_address, result_address = self._addresses(k)
        restore = self._restore[k] if k < len(self._restore) else None
        spec = WorkerSpec(
            worker_id=k, num_workers=num_workers, base_seed=base_seed, epoch=epoch,
            task_address=task_address, result_address=result_address, main_pid=os.getpid(),
            slot_fds=list(arena.fds), channel_fd=channel.fd,
            task_bell_fd=self._bells[k].read_fd, results_bell_fd=self._results_bell.write_fd,
            fds_inherited=self._inherited,
            close_fds=sorted(_ALL_SLOT_FDS - own) if self._inherited else [],
            dump_fd=self._dump_fds[k], progress_fd=self._progress[k].fd, published=published,
            replica_state=replica_state, seed_epoch=self._seed_epoch,
            restore=restore if replica_state is None else None, **self._spec)
        return self._context.Process(target=worker_main, args=(spec,), daemon=True,
                                     name=f"loader-worker-{k}")

    def start(self, count: int | None = None) -> None:
        """Start prepared worker processes: ``count`` of them, or all. The rest start one
        at a time whenever :meth:`receive` would otherwise wait (so the first batch does
        not wait for every fork)."""
        if self.shipment is not None and self.shipment.ticket is not None:
            count = None  # a start costs the main process a few ms: start all, in parallel
        for k, process in enumerate(self._processes):
            if self._pids[k] is not None:
                continue
            if count is not None:
                if count <= 0:
                    return
                count -= 1
            self._start_process(k)

    def _start_process(self, worker_id: int) -> None:
        process = self._processes[worker_id]
        if self._inherited:
            freeze.fork(process.start)  # the child never walks the parent's objects
        else:
            process.start()
        # the child has its spec now (forked or pickled); the parent's copy would keep the
        # dataset's shared views, and so the image, alive until a gc after shutdown
        process._args = ()
        self._pids[worker_id] = process.pid
        self._sentinels[worker_id] = process.sentinel
        self._poller.register(process.sentinel, zmq.POLLIN)

    # ------------------------------------------------------------------ self-healing

    def restart(self, worker_id: int, epoch: int, base_seed: int,
                replica_state: dict | None = None) -> None:
        """Replace dead worker ``worker_id`` (after :meth:`receive` reported its death) by a
        new process with the same id, seeds (``base_seed``) and ``worker_init_fn``, starting
        at ``epoch``; an iterable replica resumes from ``replica_state``. Tasks submitted
        to the dead worker are gone: submit again what is still owed."""
        k = worker_id
        old = self._processes[k]
        if old.exitcode is None or k not in self._settled:
            raise WorkerError(
                f"DataLoader worker {k} ({self.describe(k)}) cannot be replaced: it died but "
                f"its last messages were not all received within {_DRAIN_TIMEOUT_S} s, so "
                "a batch could be yielded twice", worker_id=k, pid=old.pid,
                exitcode=old.exitcode)
        self._unwatch(k)
        old.join(_JOIN_TIMEOUT_S)
        try:
            old.close()
        except (ValueError, AttributeError):
            pass
        self._settled.discard(k)
        _, result_address = self._addresses(k)
        try:
            self._results.unbind(result_address)
        except zmq.ZMQError:
            pass
        self._ledger.forget(result_address)
        self._tasks[k].close(linger=0)
        self._generation[k] += 1
        self._tasks[k] = self._connect(k)
        channel = self._channels[k]
        channel.drop_tasks()  # the dead worker's queue: the iterator submits what is owed
        self._spilled[k].clear()  # spilled without their SPILL record: never delivered
        if not STRONG_ORDER:
            self._credit(self._results_bell.drain())
            channel.results.credits = 0
        issued = self._issued[k]
        published = [issued.get(slot, 0) for slot in range(self._slots)]
        self._progress[k].reset()
        self._processes[k] = self._process(k, self.num_workers, epoch, base_seed, published,
                                           replica_state)
        self._pids[k] = None
        self._start_process(k)

    def in_hand(self, worker_id: int) -> tuple[int, int] | None:
        """(epoch, batch id) of the task the worker started last, (-1, -1) before its
        first (workers/progress.py)."""
        return self._progress[worker_id].in_hand()

    def _unwatch(self, worker_id: int) -> None:
        """Stop polling the worker's sentinel (the descriptor registered, not whatever the
        process object holds now)."""
        sentinel = self._sentinels.pop(worker_id, None)
        if sentinel is not None:
            self._poller.unregister(sentinel)

    def kill(self, worker_id: int) -> None:
        """SIGKILL a worker (one that is stuck); :meth:`receive` then reports its death."""
        process = self._processes[worker_id]
        if process.exitcode is None:
            process.kill()

    def retire(self, worker_id: int) -> None:
        """Stop a worker on purpose; its exit is not an error. Give it no more tasks."""
        self._retired.add(worker_id)
        self._unwatch(worker_id)
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
        if self._channels[worker_id].wake_worker():
            self._bells[worker_id].ring()

    def new_epoch(self, worker_id: int, epoch: int, base_seed: int, *, seed_epoch: int = 0,
                  restore: Any = None) -> None:
        self._seed_epoch = seed_epoch  # workers added or replaced in this epoch seed alike
        if worker_id < len(self._restore):
            self._restore[worker_id] = restore
        self._post(worker_id, Resume(epoch, base_seed, seed_epoch, restore))

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
                got = self._deliver(prefer, record)
                if got is not None:
                    return got
        deadline = None
        while True:
            got = self._take(prefer)
            if got is not None:
                return got
            if self._start_one():
                continue  # the main process had nothing better to do than fork
            rung = self._results_bell.drain()  # stale rings out, then one last look
            if STRONG_ORDER:  # asking to be rung first (channel.py)
                got = self._asleep_unless_ready(prefer)
            else:
                self._credit(rung)
                got = self._take(prefer)
            if got is not None:
                return got
            if deadline is None and timeout_s is not None:
                deadline = time.monotonic() + timeout_s
            wait_ms = _POLL_MS if deadline is None else \
                max(0, min(_POLL_MS, int((deadline - time.monotonic()) * 1000)))
            blocked = time.perf_counter()
            try:
                events = dict(self._poller.poll(wait_ms))
            finally:
                self._set_asleep(False)
            self.blocked_s += time.perf_counter() - blocked
            if self._results in events:
                self._pull_spilled()
            if len(events) > (self._results in events) + \
                    (self._results_bell.read_fd in events):
                self._raise_if_dead()  # a sentinel fired
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError

    def _set_asleep(self, asleep: bool) -> None:
        for channel in self._channels:
            channel.set_main_asleep(asleep)

    def _asleep_unless_ready(self, prefer: int | None) -> tuple[Any, Any] | None:
        """Mark the main process asleep on every channel; if a record came in meanwhile,
        take it (and stay awake)."""
        self._set_asleep(True)
        fence()
        got = self._take(prefer)
        if got is not None:
            self._set_asleep(False)
        return got

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
        while True:
            record = self._channels[worker_id].results.read()
            if record is None:
                return None
            got = self._deliver(worker_id, record)
            if got is not None:
                return got  # else a spilled message died with its worker: on to the next

    def _deliver(self, worker_id: int, record: tuple) -> tuple[Any, Any] | None:
        tag, payload = record
        # what the header took, beside the slot: a spilled one (> MAX_RECORD) counts as big
        self.last_record_bytes = len(payload) if tag == MSG else SPILLED_BYTES
        message = unpack(payload) if tag == MSG else self._spilled_from(worker_id)
        if message is None:
            return None
        if type(message) is Result:
            lease = None
            if message.slot >= 0 and message.slot_size:
                lease = self._arenas[worker_id].lease(message.slot, message.slot_size,
                                                      message.gen)
                self._issued[worker_id][message.slot] = message.gen
            return message, decode(message.codec, message.payload, lease, message.spans)
        return message, None

    def _pull_spilled(self) -> None:
        """Move every spill-path message that has arrived to its worker's queue."""
        results = self._results
        while results.get(zmq.EVENTS) & zmq.POLLIN:
            message = unpack(results.recv())
            self._spilled[message.worker_id].append(message)

    def _spilled_from(self, worker_id: int) -> Any:
        """Worker k's next spill-path message (its SPILL record says it was sent), or None
        when the worker died before zmq delivered it (the batch is then owed)."""
        queue = self._spilled[worker_id]
        while not queue:
            self._pull_spilled()
            if queue:
                break
            if not self._results.poll(_POLL_MS, zmq.POLLIN):
                if self._processes[worker_id].exitcode is not None and \
                        self._ledger.wait_closed(self._addresses(worker_id)[1],
                                                 _DRAIN_TIMEOUT_S):
                    self._pull_spilled()
                    if not queue:
                        return None
        return queue.popleft()

    def _raise_if_dead(self) -> None:
        """Raise WorkerError for a dead worker once all it sent has been received."""
        for k, process in enumerate(self._processes):
            if k in self._retired or self._pids[k] is None or process.exitcode is None:
                continue
            if any(c.results.ready() for c in self._channels):
                return  # its last words (or others' results) are there: deliver them first
            if k not in self._settled and \
                    self._ledger.wait_closed(self._addresses(k)[1], _DRAIN_TIMEOUT_S):
                self._settled.add(k)
            self._pull_spilled()  # what it spilled without a record never counted
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
        self._ledger.close()
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
        for progress in self._progress:
            _ALL_SLOT_FDS.discard(progress.fd)
            progress.close()
        self._progress = []
        shipment, self.shipment = self.shipment, None
        if shipment is not None:
            if shipment.image is not None:
                _ALL_SLOT_FDS.discard(shipment.image.fd)
            shipment.close()
        self._spec = {}
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
