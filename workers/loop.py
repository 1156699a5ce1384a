"""The worker process: receive a task, fetch, collate into a slot, publish, repeat.

```
 main ──Task/Release/Resume/Stop──▶ PULL (bound at ipc://@<run>-task-k)
                                     │ fetch + collate + encode (workers/task.py) into a free slot
 main ◀──Result/Failure/IterEnd───── PUSH (connects to ipc://@<run>-results)
```

- The parent: binds the results socket, connects to each worker's task socket (so tasks
  queue before the worker is up), creates the slots, and watches every worker's sentinel.
- The worker: one task at a time, in arrival order; messages waiting behind the current
  task are read first, so releases return slots early and a ``Resume`` drops stale tasks.
  User code that raises becomes a ``Failure``; a replica that ends becomes ``IterEnd``.
  With ``on_error="skip"`` samples that raise are left out and listed in a ``BatchNote``
  sent just before the reply (an ``EmptyBatch`` when none was left); with restarts on, a
  Stateful replica's position rides in the same note.
- A replacement worker (``WorkerPool.restart``) is this same loop started with the dead
  worker's id, the slots the main process does not hold, and the replica position the main
  process last received.
- Shutdown: ``Stop`` ends the loop; so does the death of the main process (a pidfd in the
  same poll, or a parent-pid check where pidfds are missing). The worker leaves with
  ``os._exit`` so nothing inherited from the parent runs at exit.
"""

from __future__ import annotations

import faulthandler
import gc
import os
import signal
import sys
import traceback
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

import zmq

from loader.ipc import codec
from loader.ipc.arena import SlotWriter
from loader.ipc.messages import Release, Result, Resume, Stop, Task, pack, unpack
from loader.workers.progress import ProgressWord
from loader.workers import shipping
from loader.workers.task import SKIP, Encoded, EpochState, fetch_and_encode
from loader.workers.threads import limit_threads

__all__ = ["WorkerSpec", "worker_main"]

_PARENT_CHECK_MS = 1000  # how often a worker without a pidfd checks that its parent lives


@dataclass
class WorkerSpec:
    """Everything a worker needs, sent once when it starts."""

    worker_id: int
    num_workers: int
    dataset: Any
    iterable: bool
    auto_collation: bool
    collate_fn: Callable
    drop_last: bool
    worker_init_fn: Callable | None
    base_seed: int
    epoch: int
    task_address: str
    result_address: str
    main_pid: int
    slot_fds: list
    fds_inherited: bool
    close_fds: list  # other loaders' slots inherited through fork, closed at start
    thread_limit: int | None
    dump_fd: int  # where faulthandler writes this worker's stacks on SIGUSR1
    progress_fd: int  # where the batch in hand is written (workers/progress.py)
    on_error: str = "raise"  # "skip": samples whose fetch raises are left out
    track_state: bool = False  # send the replica's position with every batch (restarts on)
    free_slots: list | None = None  # a replacement's writable slots (None: all of them)
    replica_state: dict | None = None  # a replacement's replica position (None: the start)
    seeding: str = "per_worker"  # or "per_batch" (workers/seeding.py)
    seed_epoch: int = 0  # the loader's epoch, for per-batch seeds
    snapshot_every: int = 0  # take the replica's resume entry every N batches (0: never)
    restore: Any = None  # where this worker's replica starts after a resume (loader/state.py)
    shipment: Any = None  # spawn / forkserver: where the image holds dataset, collate_fn
    #                       and worker_init_fn (workers/shipping.py); those fields are None


def _parent_watch(main_pid: int) -> int | None:
    try:
        return os.pidfd_open(main_pid)
    except (AttributeError, OSError):
        return None


class _Worker:
    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.ctx = zmq.Context(io_threads=1)
        self.tasks = self.ctx.socket(zmq.PULL)
        self.tasks.setsockopt(zmq.RCVHWM, 0)
        self.tasks.bind(spec.task_address)
        self.out = self.ctx.socket(zmq.PUSH)
        self.out.setsockopt(zmq.SNDHWM, 0)
        self.out.setsockopt(zmq.LINGER, -1)
        self.out.connect(spec.result_address)
        self.writer = SlotWriter.open(spec.main_pid, spec.slot_fds, spec.fds_inherited)
        self.progress = ProgressWord.open(spec.main_pid, spec.progress_fd, spec.fds_inherited)
        self.free = set(range(self.writer.num_slots)) if spec.free_slots is None \
            else set(spec.free_slots)
        self.pending: deque = deque()
        self.parent_fd = _parent_watch(spec.main_pid)
        self.poller = zmq.Poller()
        self.poller.register(self.tasks, zmq.POLLIN)
        if self.parent_fd is not None:
            self.poller.register(self.parent_fd, zmq.POLLIN)
        self.state = EpochState(spec, spec.epoch, spec.base_seed, run_init=True,
                                replica_state=spec.replica_state, seed_epoch=spec.seed_epoch,
                                restore=spec.restore)

    def send(self, msg: Any, payload: bytes | None = None) -> None:
        head = pack(msg)
        if payload is None:
            self.out.send(head)
        else:
            self.out.send_multipart((head, payload), copy=len(payload) < 65536)

    def parent_alive(self, events: dict) -> bool:
        if self.parent_fd is not None:
            return self.parent_fd not in events
        return os.getppid() != 1 and _pid_exists(self.spec.main_pid)

    def read_messages(self, block: bool) -> bool:
        """Take in what is waiting (waiting first if ``block``); False when told to stop."""
        if block:
            while True:
                events = dict(self.poller.poll(_PARENT_CHECK_MS))
                if not self.parent_alive(events):
                    return False
                if self.tasks in events:
                    break
        tasks = self.tasks
        while tasks.get(zmq.EVENTS) & zmq.POLLIN:
            msg = unpack(tasks.recv())
            kind = type(msg)
            if kind is Task:
                self.pending.append(msg)
                if msg.released:
                    self.free.update(msg.released)
            elif kind is Release:
                self.free.update(msg.slots)
            elif kind is Resume:
                self.pending.clear()  # tasks of an abandoned epoch
                self.pending.append(msg)
            elif kind is Stop:
                return False
        return True

    def run(self) -> None:
        while True:
            if not self.read_messages(block=not self.pending):
                return
            if not self.pending:
                continue  # only releases arrived
            item = self.pending.popleft()
            if type(item) is Resume:
                self.state = EpochState(self.spec, item.epoch, item.base_seed, run_init=False,
                                        seed_epoch=item.seed_epoch, restore=item.restore)
            else:
                self.serve(item)

    def serve(self, task: Task) -> None:
        """Answer ``task`` (``EpochState.precheck`` says which tasks get no reply); a
        BatchNote, when there is one, goes just before the reply."""
        state = self.state
        early = state.precheck(task.epoch, task.batch_id, task.indices)
        if early is not None:
            if early is not SKIP:
                self.send(early)
            return
        self.progress.started(task.epoch, task.batch_id)
        slot = self.free.pop() if self.free else -1
        writer = self.writer
        writer.begin(slot)
        note, out = fetch_and_encode(state, writer, task.epoch, task.batch_id, task.indices)
        if type(out) is not Encoded:  # a Failure, IterEnd or EmptyBatch
            self.release_unused(slot)
            if note is not None:
                self.send(note)
            self.send(out)
            return
        size = writer.end()
        if out.kind == codec.INBAND or size == 0:
            self.release_unused(slot)
            slot, size = -1, 0
        if note is not None:
            self.send(note)
        wid = self.spec.worker_id
        if out.kind == codec.LAYOUT:
            self.send(Result(task.epoch, task.batch_id, wid, slot, size, out.kind, out.spans,
                             out.timing, out.payload, out.entry))
        else:
            self.send(Result(task.epoch, task.batch_id, wid, slot, size, out.kind, out.spans,
                             out.timing, None, out.entry), out.payload)

    def release_unused(self, slot: int) -> None:
        self.writer.end()
        if slot >= 0:
            self.free.add(slot)

    def close(self) -> None:
        self.out.close(linger=1000)
        self.tasks.close(linger=0)
        self.ctx.term()


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def worker_main(spec: WorkerSpec) -> None:
    """Entry point of a worker process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    # what the worker inherited (fork, or the fork server's heap) or imported so far leaves
    # the collector's sight: a full collection would write to every page of it
    gc.freeze()
    for fd in spec.close_fds:
        try:
            os.close(fd)
        except OSError:
            pass
    limit_threads(spec.thread_limit)
    dump_fd = spec.dump_fd if spec.fds_inherited else \
        os.open(f"/proc/{spec.main_pid}/fd/{spec.dump_fd}", os.O_WRONLY | os.O_APPEND)
    faulthandler.register(signal.SIGUSR1, file=dump_fd, all_threads=True)
    code = 0
    worker = None
    try:
        if spec.shipment is not None:
            spec.dataset, spec.collate_fn, spec.worker_init_fn = shipping.unpack(spec.shipment)
        worker = _Worker(spec)
        worker.run()
    except BaseException:  # an engine failure: say so on stderr, exit non-zero
        traceback.print_exc()
        code = 1
    finally:
        if worker is not None:
            try:
                worker.close()
            except Exception:
                pass
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
