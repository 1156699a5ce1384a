"""The worker process: receive a task, fetch, collate into a slot, publish, repeat.

```
 main ──Task/Resume/Stop──▶ task ring (ipc/channel.py) + this worker's doorbell
                             │ fetch + collate + encode (workers/task.py) into a free slot
 main ◀──Result/Failure/IterEnd/EmptyBatch/BatchNote── result ring + the pool's doorbell
          (a record too big for its ring goes by zmq, its place kept by a SPILL record)
```

- The parent: creates the channel, the doorbells and the slots, binds the spill socket,
  connects to each worker's spill socket, and watches every worker's sentinel.
- The worker: one task at a time, in arrival order; records waiting behind the current
  task are read first, so a ``Resume`` drops stale tasks. A slot is free when the main
  process has stored its release (``released[slot]`` equals what was published in it);
  with none free, the batch travels in-band. User code that raises becomes a
  ``Failure``; a replica that ends becomes ``IterEnd``.
  With ``on_error="skip"`` samples that raise are left out and listed in a ``BatchNote``
  sent just before the reply (an ``EmptyBatch`` when none was left); with restarts on, a
  Stateful replica's position rides in the same note.
- Per batch the worker pays one task record read and one result record write, plus a
  doorbell ``write`` only while the main process has said it may sleep; it sleeps in
  ``poll`` only when its task ring is empty.
- A user's ``collate_fn`` runs with numpy's stack and concatenate landing in the slot
  (``workers/landing.py``); the defaults allocate there already.
- A replacement worker (``WorkerPool.restart``) is this same loop started with the dead
  worker's id, the count of results published in each slot that the main process last
  received (so slots whose batches the user holds stay taken), and the replica position
  the main process last received.
- Shutdown: ``Stop`` ends the loop; so does the death of the main process (a pidfd in the
  same poll, or a parent-pid check where pidfds are missing). The worker leaves with
  ``os._exit`` so nothing inherited from the parent runs at exit.
"""

from __future__ import annotations

import ctypes
import faulthandler
import gc
import os
import select
import signal
import sys
import traceback
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

import zmq

from loader.ipc import codec
from loader.ipc.arena import SlotWriter
from loader import collate
from loader.ipc.channel import (MSG, SPILL, STRONG_ORDER, Channel, Doorbell, fence,
                                open_pipe_end)
from loader.ipc.messages import Result, Resume, Stop, Task, pack, unpack
from loader.workers.landing import landing_collate
from loader.workers.progress import ProgressWord
from loader.workers import shipping
from loader.workers.task import SKIP, Encoded, EpochState, RunningTotals, fetch_and_encode
from loader.workers.threads import limit_threads

__all__ = ["WorkerSpec", "worker_main"]

_PARENT_CHECK_MS = 1000  # how often a worker without a pidfd checks that its parent lives
_TIMER_SLACK_NS = 1_000  # a worker's timer slack (Linux default 50 us): a dataset that waits
#                         with sleeps or timeouts (rate limits, retries, remote queues) wakes
#                         within ~1 us of its deadline; 16 sleeps of 2 ms overshot by ~3%
_PR_SET_TIMERSLACK = 29  # prctl option (linux/prctl.h)
# collate functions that allocate their arrays in the slot already (loader/collate.py)
_DEFAULT_COLLATES = (collate.collate_arrays, collate.convert_arrays, collate.default_collate,
                     collate.default_convert)


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
    channel_fd: int  # the control block: rings and slot releases (ipc/channel.py)
    task_bell_fd: int  # read end of this worker's doorbell
    results_bell_fd: int  # write end of the pool's results doorbell
    fds_inherited: bool
    close_fds: list  # other loaders' slots inherited through fork, closed at start
    thread_limit: int | None
    dump_fd: int  # where faulthandler writes this worker's stacks on SIGUSR1
    progress_fd: int  # where the batch in hand is written (workers/progress.py)
    on_error: str = "raise"  # "skip": samples whose fetch raises are left out
    track_state: bool = False  # send the replica's position with every batch (restarts on)
    published: list | None = None  # a replacement's results per slot so far (None: none)
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
        inherited, main = spec.fds_inherited, spec.main_pid
        channel_fd = spec.channel_fd if inherited else \
            os.open(f"/proc/{main}/fd/{spec.channel_fd}", os.O_RDWR | os.O_CLOEXEC)
        self.channel = Channel(channel_fd, len(spec.slot_fds), main=False)
        self.task_ring, self.result_ring = self.channel.tasks, self.channel.results
        self.bell = Doorbell(open_pipe_end(main, spec.task_bell_fd, inherited, os.O_RDONLY), -1)
        self.results_bell = Doorbell(
            -1, open_pipe_end(main, spec.results_bell_fd, inherited, os.O_WRONLY),
            writer_id=spec.worker_id)
        self.ctx = zmq.Context(io_threads=1)  # the spill path only: records too big to ring
        self.tasks = self.ctx.socket(zmq.PULL)
        self.tasks.setsockopt(zmq.RCVHWM, 0)
        self.tasks.bind(spec.task_address)
        self.out = self.ctx.socket(zmq.PUSH)
        self.out.setsockopt(zmq.SNDHWM, 0)
        self.out.setsockopt(zmq.LINGER, -1)
        self.out.connect(spec.result_address)
        self.writer = SlotWriter.open(main, spec.slot_fds, inherited)
        self.progress = ProgressWord.open(main, spec.progress_fd, inherited)
        # results sent in each slot (a replacement goes on from what the main received)
        self.published = list(spec.published) if spec.published is not None \
            else [0] * self.writer.num_slots
        self.pending: deque = deque()
        self.parent_fd = _parent_watch(main)
        self.poller = select.poll()
        self.poller.register(self.bell.read_fd, select.POLLIN)
        if self.parent_fd is not None:
            self.poller.register(self.parent_fd, select.POLLIN)
        self.totals = RunningTotals()
        if spec.collate_fn not in _DEFAULT_COLLATES:  # workers/landing.py
            spec.collate_fn = landing_collate(spec.collate_fn, self.writer.alloc)
        self.state = EpochState(spec, spec.epoch, spec.base_seed, run_init=True,
                                replica_state=spec.replica_state, seed_epoch=spec.seed_epoch,
                                restore=spec.restore)

    def send(self, msg: Any) -> None:
        """One record in the result ring, or the spill path when it does not fit."""
        record = pack(msg)
        ring = self.result_ring
        if not ring.write(record):
            self.out.send(record)
            if not ring.write(b"", SPILL):
                raise RuntimeError("the result ring is full of spill markers")
        if self.channel.wake_main():
            self.results_bell.ring()

    def parent_alive(self, ready: set) -> bool:
        if self.parent_fd is not None:
            return self.parent_fd not in ready
        return os.getppid() != 1 and _pid_exists(self.spec.main_pid)

    def wait_for_tasks(self) -> bool:
        """Sleep until the task ring has a record; False when the main process is gone."""
        ring, bell = self.task_ring, self.bell
        while True:
            rung = bell.drain()  # before the check: a ring after it wakes the poll
            if not STRONG_ORDER:
                ring.credits += len(Doorbell.ids(rung))
            if ring.ready() and (STRONG_ORDER or ring.credits > 0):
                return True
            if STRONG_ORDER:  # ask to be rung, then one last look (channel.py)
                self.channel.set_worker_asleep(True)
                fence()
                if ring.ready():
                    self.channel.set_worker_asleep(False)
                    return True
            try:
                ready = {fd for fd, _ in self.poller.poll(_PARENT_CHECK_MS)}
            finally:
                self.channel.set_worker_asleep(False)
            if not self.parent_alive(ready):
                return False

    def spilled(self) -> Any:
        """The next message the main process sent by the spill path (it is on its way)."""
        while not self.tasks.poll(_PARENT_CHECK_MS, zmq.POLLIN):
            if not self.parent_alive(set()):
                return Stop()
        return unpack(self.tasks.recv())

    def read_messages(self, block: bool) -> bool:
        """Take in what is waiting (waiting first if ``block``); False when told to stop."""
        if block and not self.wait_for_tasks():
            return False
        ring = self.task_ring
        while True:
            record = ring.read()
            if record is None:
                return True
            tag, payload = record
            msg = unpack(payload) if tag == MSG else self.spilled()
            kind = type(msg)
            if kind is Task:
                self.pending.append(msg)
            elif kind is Resume:
                self.pending.clear()  # tasks of an abandoned epoch
                self.pending.append(msg)
            elif kind is Stop:
                return False

    def run(self) -> None:
        while True:
            if not self.read_messages(block=not self.pending):
                return
            if not self.pending:
                continue
            item = self.pending.popleft()
            if type(item) is Resume:
                self.state = EpochState(self.spec, item.epoch, item.base_seed, run_init=False,
                                        seed_epoch=item.seed_epoch, restore=item.restore)
            else:
                self.serve(item)

    def free_slot(self) -> int:
        """The lowest slot the main process has released (cache-hot first), or -1."""
        channel, published = self.channel, self.published
        for slot in range(len(published)):
            if channel.released(slot) == published[slot]:
                return slot
        return -1

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
        slot = self.free_slot()
        writer = self.writer
        writer.begin(slot)
        note, out = fetch_and_encode(state, writer, task.epoch, task.batch_id, task.indices)
        used = writer.used
        size = writer.end()
        if note is not None:
            self.send(note)
        if type(out) is not Encoded:  # a Failure, IterEnd or EmptyBatch
            self.send(out)
            return
        gen = 0
        if out.kind == codec.INBAND or size == 0:
            slot, size = -1, 0
        else:
            self.published[slot] += 1
            gen = self.published[slot]
        self.send(Result(task.epoch, task.batch_id, self.spec.worker_id, slot, size, gen,
                         out.kind, out.spans, self.totals.add(out.timing), out.payload,
                         out.entry, used))

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


def _tight_timers() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_TIMERSLACK, _TIMER_SLACK_NS, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux, or no prctl: the default slack stays
        pass


def worker_main(spec: WorkerSpec) -> None:
    """Entry point of a worker process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    _tight_timers()
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
