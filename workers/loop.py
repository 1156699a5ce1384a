"""The worker process: receive a task, fetch, collate into a slot, publish, repeat.

```
 main ──Task/Resume/Stop──▶ task ring (ipc/channel.py) + this worker's doorbell
                             │ fetch + collate (workers/fetch.py) into a free slot
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
- Per batch the worker pays one task record read, one result record write and one
  doorbell ``write``; it sleeps in ``poll`` only when its task ring is empty.
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
import os
import pickle
import select
import signal
import sys
import traceback
from collections import deque
from dataclasses import dataclass
from time import perf_counter, thread_time
from typing import Any, Callable

import zmq

from loader.ipc import codec
from loader.ipc.arena import SlotWriter
from loader.ipc.channel import MSG, SPILL, STRONG_ORDER, Channel, Doorbell, open_pipe_end
from loader.ipc.messages import (BatchNote, EmptyBatch, Failure, IterEnd, Result, Resume,
                                 Stop, Task, pack, unpack)
from loader import collate
from loader.worker_info import WorkerInfo, _set_worker_info
from loader.workers.fetch import BatchSkipped, end_state, load_dataset_state, make_fetcher
from loader.workers.landing import landing_collate
from loader.workers.progress import ProgressWord
from loader.workers.seeding import BatchSeeder, seed_worker
from loader.workers.threads import limit_threads

__all__ = ["WorkerSpec", "worker_main"]

# collate functions that allocate their arrays in the slot already (loader/collate.py)
_DEFAULT_COLLATES = (collate.collate_arrays, collate.convert_arrays, collate.default_collate,
                     collate.default_convert)

_PARENT_CHECK_MS = 1000  # how often a worker without a pidfd checks that its parent lives
_TIMER_SLACK_NS = 1_000  # a worker's timer slack (Linux default 50 us): a dataset that waits
#                         with sleeps or timeouts (rate limits, retries, remote queues) wakes
#                         within ~1 us of its deadline; 16 sleeps of 2 ms overshot by ~3%
_PR_SET_TIMERSLACK = 29  # prctl option (linux/prctl.h)


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


class _Epoch:
    """Per-epoch state: seeds, worker info, the fetcher and any start-up failure.

    A resume's ``restore`` marked ``epoch_start`` (a persistent worker's dataset as the
    last epoch left it) is loaded before seeding, as that dataset was when its worker was
    reseeded; any other (a position inside the epoch) after ``worker_init_fn``, where it
    was taken.
    """

    def __init__(self, spec: WorkerSpec, epoch: int, base_seed: int, run_init: bool,
                 collate_fn: Callable, replica_state: dict | None = None,
                 seed_epoch: int = 0, restore: Any = None) -> None:
        self.epoch = epoch
        self.ended = False
        self.fetcher = None
        self.init_error: Failure | None = None
        if restore is not None and restore.get("epoch_start"):
            try:
                load_dataset_state(spec.dataset, restore.get("entry"), copy_state=False)
            except Exception as exc:
                self.init_error = _failure(exc, epoch, -1, spec.worker_id, None)
            restore = None
        seed, rng = seed_worker(base_seed, spec.worker_id)
        _set_worker_info(WorkerInfo(id=spec.worker_id, num_workers=spec.num_workers, seed=seed,
                                    dataset=spec.dataset, rng=rng, epoch=epoch))
        if run_init and spec.worker_init_fn is not None:
            try:
                spec.worker_init_fn(spec.worker_id)
            except Exception as exc:  # reported as the reply to this epoch's first task
                self.init_error = _failure(exc, epoch, -1, spec.worker_id, None)
        seeder = BatchSeeder(base_seed, seed_epoch, rng, keep_user_state=False) \
            if spec.seeding == "per_batch" else None
        try:
            self.fetcher = make_fetcher(spec.iterable, spec.dataset, spec.auto_collation,
                                        collate_fn, spec.drop_last, spec.on_error,
                                        replica_state, seeder=seeder,
                                        every=spec.snapshot_every, worker_id=spec.worker_id,
                                        restore=restore)
        except Exception as exc:  # an IterableDataset's __iter__ (or a restore) raised
            self.init_error = self.init_error or _failure(exc, epoch, -1, spec.worker_id, None)


def _failure(exc: BaseException, epoch: int, batch_id: int, worker_id: int,
             indices: Any) -> Failure:
    try:
        exc_type = pickle.dumps(type(exc))
    except Exception:  # a local exception class: the main process raises RuntimeError
        exc_type = None
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return Failure(epoch, batch_id, worker_id, type(exc).__name__, exc_type, text, indices)


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
        self.totals = [0, 0, 0.0, 0.0, 0.0, 0.0]  # batches, samples, fetch, collate, encode, cpu
        collate_fn = spec.collate_fn
        if collate_fn not in _DEFAULT_COLLATES:
            collate_fn = landing_collate(collate_fn, self.writer.alloc)  # workers/landing.py
        self.collate_fn = collate_fn
        self.state = _Epoch(spec, spec.epoch, spec.base_seed, True, collate_fn,
                            replica_state=spec.replica_state, seed_epoch=spec.seed_epoch,
                            restore=spec.restore)
        self.cpu0 = thread_time()  # CPU before the first task (start-up is not per batch)
        self.pid = os.getpid()  # sent with the totals: a restarted worker counts anew

    def send(self, msg: Any) -> None:
        self.send_record(pack(msg))

    def send_record(self, record: bytes) -> None:
        """One record in the result ring, or the spill path when it does not fit."""
        ring = self.result_ring
        if not ring.write(record):
            self.out.send(record)
            if not ring.write(b"", SPILL):
                raise RuntimeError("the result ring is full of spill markers")
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
            ready = {fd for fd, _ in self.poller.poll(_PARENT_CHECK_MS)}
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
                self.state = _Epoch(self.spec, item.epoch, item.base_seed, False,
                                    self.collate_fn, seed_epoch=item.seed_epoch,
                                    restore=item.restore)
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
        """Answer ``task``: every task gets exactly one reply, unless it is stale or this
        replica has already reported its end (the main process then expects none)."""
        state, wid = self.state, self.spec.worker_id
        if task.epoch != state.epoch or state.ended:
            return
        if state.init_error is not None:
            failure, state.init_error = state.init_error, None
            self.send(failure._replace(batch_id=task.batch_id, indices=task.indices))
            return
        if state.fetcher is None:  # the replica could not start: it has nothing to give
            state.ended = True
            self.send(IterEnd(task.epoch, task.batch_id, wid))
            return
        self.progress.started(task.epoch, task.batch_id)
        slot = self.free_slot()
        writer = self.writer
        writer.begin(slot)
        previous = collate.use_allocator(writer.alloc)
        note = None
        try:
            batch = state.fetcher.fetch(task.indices, task.batch_id)
            note = self.note(task, state.fetcher)
            t0 = perf_counter()
            kind, payload, spans = codec.encode(batch, writer)
            encode_s = perf_counter() - t0
            del batch
        except StopIteration as exc:
            writer.end()
            if not self.spec.iterable:  # a map dataset raised it: an error, as in torch
                self.send(_failure(exc, task.epoch, task.batch_id, wid, task.indices))
                return
            state.ended = True
            self.send_note(task, state.fetcher, with_state=False)
            self.send(IterEnd(task.epoch, task.batch_id, wid, self.end_state()))
            return
        except BatchSkipped:
            writer.end()
            self.send_note(task, state.fetcher)
            self.send(EmptyBatch(task.epoch, task.batch_id, wid))
            return
        except Exception as exc:
            writer.end()
            self.send(_failure(exc, task.epoch, task.batch_id, wid, task.indices))
            return
        finally:
            collate.use_allocator(previous)
        size = writer.end()
        gen = 0
        if kind == codec.INBAND or size == 0:
            slot, size = -1, 0
        else:
            self.published[slot] += 1
            gen = self.published[slot]
        fetcher, totals = state.fetcher, self.totals
        totals[0] += 1
        totals[1] += fetcher.count
        totals[2] += fetcher.fetch_s
        totals[3] += fetcher.collate_s
        totals[4] += encode_s
        totals[5] = thread_time() - self.cpu0  # the whole loop's, read once per batch
        if note is not None:
            self.send_record(note)
        entry = getattr(fetcher, "entry", None)  # a resume entry (TrackedFetcher)
        self.send(Result(task.epoch, task.batch_id, wid, slot, size, gen, kind, spans,
                         (*totals, self.pid), payload, entry))

    def end_state(self) -> Any:
        """The Stateful dataset's state as its ended replica leaves it (None otherwise);
        a persistent worker's next epoch starts from it after a resume."""
        try:
            return end_state(self.spec.dataset)
        except Exception:  # nowhere to report it: such a resumed next epoch starts fresh
            return None

    def note(self, task: Task, fetcher: Any, with_state: bool = True) -> bytes | None:
        """The packed BatchNote for the batch just fetched, or None when there is nothing to
        say (the default path: no skips, no restarts). Raises what ``state_dict()`` or
        pickling its result raises, so that it becomes this batch's Failure."""
        skipped = fetcher.skipped
        position = fetcher.state() if with_state and self.spec.track_state else None
        if not skipped and position is None:
            return None
        return pack(BatchNote(task.epoch, task.batch_id, self.spec.worker_id, tuple(skipped),
                              position))

    def send_note(self, task: Task, fetcher: Any, with_state: bool = True) -> None:
        try:
            note = self.note(task, fetcher, with_state)
        except Exception:  # the batch has no samples to lose; its skips are lost with it
            note = pack(BatchNote(task.epoch, task.batch_id, self.spec.worker_id,
                                  tuple(fetcher.skipped), None))
        if note is not None:
            self.send_record(note)

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
