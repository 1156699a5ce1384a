"""The multi-process iterator: torch's dispatch, prefetch and reorder protocol.

```
 sampler ─▶ _try_put_index ─submit(epoch, batch_id, keys)─▶ worker batch_id % N (round robin)
                                                              │
 user ◀─ _process ◀─ reorder (task_info) ◀─ backend.receive ◀─┘ Result / Failure / IterEnd
```

- The parent keeps at most ``prefetch_factor * num_workers`` batches between dispatch and
  hand-out (results waiting in the reorder buffer count), refilling one task per batch
  handed out, exactly as torch does; with ``in_order=False`` it hands out batches as they
  complete and dispatches to workers by spare capacity.
- Workers run in a backend (``workers/backend.py``; the local one is ``workers/pool.py`` with
  ``workers/loop.py`` in each process). This module never touches a process or a socket.
  Batches arrive as zero-copy views on worker slots.
- Small batches go deeper: when the user left ``prefetch_factor`` to its default (2) and
  a warm worker makes a batch in under :data:`_DEEP_WORK_S`, the batch's size (the larger
  of the bytes it filled in its slot and its header) sets the depth per worker to what
  :data:`_DEEP_BYTES` holds, at most :data:`_DEEP_DEPTH` (a fast batch of a few KiB
  costs a wake-up of each side per batch at depth 2, and a worker that runs dry sleeps).
  Batches of a few KiB go to :data:`_DEEP_INBAND_DEPTH`, as many as a quarter of the
  result ring holds (those a worker makes beyond its slots travel whole in their
  headers): at 8, a worker still ran dry whenever the main process lost its core for a
  time slice. Slow batches (I/O, heavy transforms) and batches of 4 MiB or more keep
  torch's depth, so in-flight memory grows by at most ``_DEEP_BYTES`` per worker. The
  ``prefetch_factor`` attribute stays what torch reports.
- Self-healing (``loader/_healing.py``): a ``next()`` that waits ``stall_warning_s``
  warns with the stuck worker's stacks; with ``worker_restarts`` a dead worker (or one
  stuck past ``timeout``, killed) is replaced and the tasks it owed are submitted again, in
  batch order, to its replacement; each reply is accepted once, so the epoch is unchanged.
- Every batch handed out (or raised, or left empty by skips) is reported to the epoch's
  ``Progress`` (``loader/state.py``) with its position and the worker's replica entry, if
  the batch carried one; a resumed epoch starts dispatching at its saved position, skips
  positions already handed out, and continues the round robin at the saved next worker.
- Shutdown: at the end of an epoch (unless persistent), on ``close()``, on garbage
  collection and on any worker death not healed, through the backend's ``shutdown``.
"""

from __future__ import annotations

import os
import time
from typing import Any

from loader._healing import Healer, HealingMixin, StallWatch, shown
from loader.errors import WorkerError, rebuild_exception
from loader.ipc.channel import RING_BYTES
from loader.ipc.messages import BatchNote, EmptyBatch, Failure, IterEnd, Result
from loader.iterators import SKIPPED, BaseIter, fetch_here
from loader.workers import freeze
from loader.workers.backend import WorkerBackend, make_backend
from loader.workers.fetch import make_fetcher
from loader.workers.seeding import BatchSeeder

__all__ = ["MultiProcessIter"]

_SPARE_SLOTS = 2  # slots per worker beyond prefetch_factor: the batch the user holds while
#                   asking for the next one, and one more, so steady loops never overflow
_DEEP_DEPTH = 8  # in-flight batches per worker for small batches (prefetch_factor defaulted)
_DEEP_BYTES = 8 << 20  # ... holding at most this many bytes per worker
_DEEP_WORK_S = 1e-3  # ... and only while a batch takes less than this to fetch and collate
_DEEP_PROBE = 8  # batches of one worker after which a slow dataset keeps torch's depth
_DEEP_INBAND_DEPTH = 32  # ... and for batches so small that this many fit in
_DEEP_INBAND_BYTES = RING_BYTES // 4  # ... this much of the result ring (beyond the slots)
_THREAD_LIMIT = 1  # BLAS/OpenMP threads per worker unless the user set the variables
_EMPTY = object()  # the outcome of a batch whose every sample was skipped


class _Pending:
    """A dispatched task: its worker, and once it arrives out of order, its outcome (and
    the replica entry that came with it)."""

    __slots__ = ("worker_id", "indices", "data", "arrived", "entry")

    def __init__(self, worker_id: int, indices: Any) -> None:
        self.worker_id, self.indices, self.data, self.arrived = worker_id, indices, None, False
        self.entry = None


class MultiProcessIter(HealingMixin, BaseIter):
    """``num_workers > 0``: batches fetched and collated by worker processes."""

    def __new__(cls, loader: Any) -> "MultiProcessIter":
        if loader._worker_context().get_start_method() == "fork":
            freeze.snapshot()  # before this iterator exists: see workers/freeze.py
        return super().__new__(cls)

    def __init__(self, loader: Any) -> None:
        context = loader._worker_context()
        if context.get_start_method() == "fork":
            freeze.hold(self)
        super().__init__(loader)
        assert loader.prefetch_factor > 0, "prefetch_factor must be positive with workers"
        self._prefetch_factor = loader.prefetch_factor
        kind, engine_args = loader._backend_spec()
        self._deepen = kind == "local" and loader._prefetch_default  # see _maybe_deepen
        self._deep_probe: dict[int, tuple] = {}  # worker -> its latest (batches, work_s)
        self._in_order = loader.in_order
        self._persistent = loader.persistent_workers
        # a local worker's death shows without a call pending (its sentinel); Ray's does not
        self._heal_at_end = kind == "local" and self._persistent and loader.worker_restarts
        self._epoch = 0
        self._retired: set[int] = set()  # workers stopped by "auto" shrinking
        self._draining: set[int] = set()  # workers finishing their tasks before retiring
        self._autotune = loader._autotuner
        self._local = None  # a fetcher when "auto" fell back to the main process
        self._started_processes: list = []
        self._heal = Healer(loader.worker_restarts, self._iterable)
        self._watch = StallWatch(loader.stall_warning_s)
        self._notes: dict[int, BatchNote] = {}  # batch id -> note waiting for its reply
        self._skips: dict[int, tuple] = {}  # batch id -> its skipped samples, until handed out
        self._pool: WorkerBackend | None = None
        self._pool = make_backend(
            kind, **engine_args, num_workers=self._num_workers,
            dataset=self._dataset, iterable=self._iterable,
            auto_collation=self._auto_collation, collate_fn=self._collate_fn,
            drop_last=self._drop_last, worker_init_fn=loader.worker_init_fn,
            base_seed=self._base_seed,
            slots_per_worker=(_DEEP_DEPTH if self._deepen else self._prefetch_factor)
            + _SPARE_SLOTS,
            thread_limit=_THREAD_LIMIT, on_error=loader.on_error,
            track_state=self._heal.tracks_replicas, seeding=self._seeding,
            seed_epoch=self._progress.epoch, snapshot_every=self._ledger.worker_every,
            restore=self._restore, share_dataset=loader.share_dataset)
        if self._autotune is not None:
            self._recorder.autotune = self._autotune.report(self._num_workers)
        self._reset(loader, first_iter=True)  # queues the first tasks before any fork
        try:
            self._pool.start(1)  # the others start while the main waits for batch 0
        except BaseException:
            self._shutdown()
            raise

    # ------------------------------------------------------------------ introspection

    @property
    def _workers(self) -> list:
        """The worker processes (torch's introspection hook; kept after the epoch)."""
        if self._pool is not None:
            self._started_processes = self._pool.processes
        return list(self._started_processes)

    @property
    def worker_pids(self) -> list:
        return [p.pid for p in self._pool.processes] if self._pool is not None else []

    # ------------------------------------------------------------------ epochs

    def _next_chain(self) -> tuple[int, int]:
        """A persistent pool's later epochs derive their base seed from its first (torch
        draws it once per pool: ``SeedSource.epoch_seed``); a resumed epoch goes on from
        the chain its state recorded."""
        first, epoch = self._progress.seed_chain
        return first, epoch + 1

    def _reset(self, loader: Any, first_iter: bool = False) -> None:
        super()._reset(loader, first_iter)
        n = self._num_workers
        self._recorder.start_epoch(n, self._pool.started_pids)
        self._buffered = 0
        self._send_idx = self._rcvd_idx = self._progress.low  # a resumed epoch's position
        self._task_info: dict[int, _Pending] = {}
        self._tasks_outstanding = 0
        self._workers_status = [k not in self._retired for k in range(n)]
        self._workers_num_tasks = [0] * n
        # round robin restarts at worker 0 every epoch, as in torch (a resumed epoch: at
        # the worker after the one that made the last batch handed out)
        plan = self._plan
        self._next_worker = plan.state.get("next_worker", 0) % n \
            if plan is not None and plan.mid else 0
        self._heal.new_epoch()
        self._notes.clear()
        self._skips.clear()
        if not first_iter:
            self._epoch += 1
            restore = self._restore or [None] * n
            for k in range(n):
                if k in self._retired:
                    continue
                self._pool.new_epoch(k, self._epoch, self._base_seed,
                                     seed_epoch=self._progress.epoch,
                                     restore=restore[k] if k < len(restore) else None)
        for _ in range(self._prefetch_factor * n):
            self._try_put_index()

    def _active_workers(self) -> int:
        return self._num_workers - len(self._retired) - len(self._draining)

    def _try_put_index(self) -> None:
        if self._local is not None:
            return  # fetching in the main process (num_workers="auto" fell back)
        max_tasks = self._prefetch_factor * self._active_workers()
        if self._tasks_outstanding >= max_tasks:
            return  # the pool shrank under the tasks already in flight
        try:
            index = self._next_index()
        except StopIteration:
            return
        worker_id = self._pick_worker(max_tasks)
        if worker_id is None:
            return  # every worker is inactive; the epoch is ending
        pos = self._index_pos
        self._pool.submit(worker_id, self._epoch, pos, index)
        self._task_info[pos] = _Pending(worker_id, index)
        self._workers_num_tasks[worker_id] += 1
        self._tasks_outstanding += 1
        self._send_idx = pos + 1

    def _pick_worker(self, max_tasks: int) -> int | None:
        active = max(1, sum(self._workers_status) - len(self._draining))
        n = self._num_workers
        for _ in range(n):
            worker_id = self._next_worker % n
            self._next_worker = worker_id + 1
            if not self._workers_status[worker_id] or worker_id in self._draining:
                continue
            if self._in_order or self._workers_num_tasks[worker_id] < max_tasks // active:
                return worker_id
        return None

    # ------------------------------------------------------------------ receiving

    def _queue_depths(self) -> tuple[int, int]:
        return self._tasks_outstanding, self._buffered

    def _get_data(self) -> tuple[Any, Any]:
        pool = self._pool
        blocked = pool.blocked_s
        deadline = self._deadline()
        try:
            while True:
                if self._watch.due():
                    self._warn_stall()
                info = self._task_info.get(self._rcvd_idx)  # due next: its worker first
                try:
                    message, batch = pool.receive(self._watch.wait_s(deadline),
                                                  None if info is None else info.worker_id)
                except TimeoutError:
                    if deadline is not None and time.monotonic() >= deadline:
                        self._on_timeout()  # raises, or kills the stuck worker to replace it
                        deadline = self._deadline()
                    continue
                except WorkerError as exc:
                    self._on_death(exc)  # raises, or replaced the worker
                    deadline = self._deadline()
                    continue
                if type(message) is Result:
                    self._recorder.worker_result(message.worker_id, message.timing)
                return message, batch
        finally:
            self._waited += pool.blocked_s - blocked

    def _deadline(self) -> float | None:
        return time.monotonic() + self._timeout if self._timeout > 0 else None

    def _waiting_for(self) -> tuple[int, _Pending] | None:
        """The oldest batch not yet arrived (the one ``next()`` waits for, in order)."""
        for batch_id, info in self._task_info.items():
            if not info.arrived and self._workers_status[info.worker_id]:
                return batch_id, info
        return None

    def _timeout_text(self) -> str:
        text = f"DataLoader timed out after {self._timeout} seconds"
        waiting = self._waiting_for()
        if waiting is None or self._pool is None:
            return text
        batch_id, info = waiting
        worker_id = info.worker_id
        text += (f"\nWaiting for batch {batch_id} (indices {shown(info.indices)}) from worker "
                 f"{worker_id} ({self._pool.describe(worker_id)}).")
        stacks = self._pool.stack_dump(worker_id)
        if stacks:
            text += f" Its stacks right now:\n{stacks}"
        return text

    def _next_data(self) -> Any:
        try:
            if self._pool is None:
                raise StopIteration
            self._watch.begin()
            while True:
                data = self._next_outcome()
                if data is not _EMPTY:
                    return data
        except BaseException:  # the epoch ended, or a traceback may hold frozen frames
            freeze.release(self)
            raise

    def _next_outcome(self) -> Any:
        """The next batch in order (``_EMPTY`` for one whose every sample was skipped)."""
        while True:
            while self._rcvd_idx < self._send_idx:
                info = self._task_info.get(self._rcvd_idx)
                if info is not None and (info.arrived or self._workers_status[info.worker_id]):
                    break
                self._task_info.pop(self._rcvd_idx, None)
                self._progress.consume(self._rcvd_idx)  # its replica ended: never handed out
                self._rcvd_idx += 1
            else:
                if self._local is not None:
                    return self._fetch_locally()
                if not self._persistent:
                    self._shutdown()
                elif self._heal_at_end:
                    self._heal_at_epoch_end()
                raise StopIteration

            info = self._task_info[self._rcvd_idx]
            if info.arrived:
                self._buffered -= 1
                del self._task_info[self._rcvd_idx]
                self._rcvd_idx += 1
                return self._process(info.data, info.worker_id, self._rcvd_idx - 1,
                                     info.entry)

            message, batch = self._get_data()
            if message.epoch != self._epoch:
                continue  # a result of an abandoned epoch; its slot lease lapses with it
            kind = type(message)
            if kind is BatchNote:
                self._notes[message.batch_id] = message
                continue
            self._tasks_outstanding -= 1
            if self._notes or self._heal.tracks_replicas:
                self._take_note(message)
            if kind is IterEnd:
                self._workers_status[message.worker_id] = False
                self._task_info.pop(message.batch_id, None)
                self._progress.replica_ended(message.worker_id, message.state)
                self._try_put_index()
                continue
            if kind is Result:
                if self._deepen:
                    self._maybe_deepen(message)
                outcome, entry = batch, message.state
            else:
                outcome, entry = (_EMPTY if kind is EmptyBatch else message), None
            idx = message.batch_id
            if idx != self._rcvd_idx:
                if self._in_order:
                    pending = self._task_info[idx]
                    pending.data, pending.arrived, pending.entry = outcome, True, entry
                    self._buffered += 1
                    continue
                del self._task_info[idx]
                return self._process(outcome, message.worker_id, idx, entry)
            del self._task_info[idx]
            self._rcvd_idx += 1
            return self._process(outcome, message.worker_id, idx, entry)

    def _heal_at_epoch_end(self) -> None:
        """Persistent workers: a worker that died this epoch after its last batch (deep
        prefetch lets a fast worker finish early) is replaced now, on this epoch's restart
        budget, not on the next one's. Only deaths already visible count; one that comes
        later, or with the budget spent, is the next epoch's, as between epochs. (Local
        workers only: a Ray actor's death shows only through a call it owes, and a poll
        there would wait for actors still being placed.)"""
        while self._heal.can_restart():
            try:
                message, _ = self._pool.receive(0)
            except TimeoutError:
                return
            except WorkerError as exc:
                self._on_death(exc)  # nothing of this epoch is owed: a bare replacement
                continue
            # every reply of this epoch was received: what comes is an abandoned epoch's
            assert message.epoch != self._epoch, message

    def _process(self, data: Any, worker_id: int, batch_id: int, entry: Any = None) -> Any:
        self._workers_num_tasks[worker_id] -= 1
        if self._skips:
            skipped = self._skips.pop(batch_id, None)
            if skipped:  # counted as its batch is handed out, so in the order of the batches
                self._recorder.skip(self._skip_items(worker_id, skipped))
        if worker_id in self._draining and not self._workers_num_tasks[worker_id]:
            self._draining.discard(worker_id)
            self._retired.add(worker_id)
            self._workers_status[worker_id] = False
            self._pool.retire(worker_id)
        self._try_put_index()
        autotune = self._autotune
        if autotune is not None and not autotune.settled:
            autotune.observe(self)
        if type(data) is Failure:
            self._progress.hand_out(batch_id, worker_id, made=False)
            raise rebuild_exception(data.exception, data.exc_type, data.worker_id,
                                    data.indices, data.text)
        # an empty batch (every sample skipped) is not handed out, but its replica moved on
        self._progress.hand_out(batch_id, worker_id, entry)
        return data

    def _fetch_locally(self) -> Any:
        """The next batch fetched and collated here, as ``num_workers=0`` would
        (``SingleProcessIter._next_data``): skips, errors and progress alike."""
        while True:
            try:
                index = self._next_index()
            except StopIteration:
                if not self._persistent:
                    self._shutdown()
                raise
            pos = self._index_pos
            self._send_idx = self._rcvd_idx = pos + 1  # positions stay in step
            data = fetch_here(self, self._local, index, pos)
            if data is SKIPPED:
                continue
            autotune = self._autotune
            if autotune is not None and not autotune.settled:
                autotune.observe(self)
            return data

    def stats(self):
        return self._recorder.snapshot(0 if self._local is not None else
                                       self._active_workers())

    # ------------------------------------------------------------------ resizing

    def _go_local(self) -> None:
        """Fetch in the main process from now on (tasks in flight still arrive first), as
        ``SingleProcessIter`` does (map-style datasets only: "auto" never resizes an
        IterableDataset's pool)."""
        seeder = BatchSeeder(self._base_seed, self._progress.epoch, None,
                             keep_user_state=True) if self._seeding == "per_batch" else None
        self._local = make_fetcher(self._iterable, self._dataset, self._auto_collation,
                                   self._collate_fn, self._drop_last, self._on_error,
                                   seeder=seeder)

    def _go_pool(self) -> None:
        """Back to the workers: refill the prefetch budget."""
        self._local = None
        self._fill()

    def _maybe_deepen(self, result: Result) -> None:
        """Raise the per-worker depth for small, fast batches (see the module's docstring)
        and fill the budget it adds, at the first batch a worker made in under
        :data:`_DEEP_WORK_S` (its running totals against its previous result's: a worker's
        first batches are cold); give up after :data:`_DEEP_PROBE` batches of one worker."""
        batches, _, fetch_s, collate_s, encode_s = result.timing[:5]
        work = fetch_s + collate_s + encode_s
        previous = self._deep_probe.get(result.worker_id)
        self._deep_probe[result.worker_id] = (batches, work)
        if previous is None or batches <= previous[0]:
            return
        if (work - previous[1]) / (batches - previous[0]) > _DEEP_WORK_S:
            if batches >= _DEEP_PROBE:
                self._deepen = False  # a batch this slow hides the wake-ups, and a deep
                #                       queue would only tie more work to each worker
            return
        self._deepen = False
        # the larger of the bytes filled in the slot and the header (only the local pool
        # deepens: it has both)
        size = max(result.used if result.slot_size else 0, self._pool.last_record_bytes, 1)
        depth = min(_DEEP_DEPTH, _DEEP_BYTES // size)  # in the worker's slots
        # deeper still for batches so small that the ones a worker makes beyond its slots
        # (written whole into their headers) fit a quarter of its result ring
        depth = max(depth, min(_DEEP_INBAND_DEPTH, _DEEP_INBAND_BYTES // size))
        if depth <= self._prefetch_factor:
            return
        self._prefetch_factor = depth
        self._fill(arriving=1)  # ``result``: handed out next (which refills one) or buffered

    def _fill(self, arriving: int = 0) -> None:
        """Dispatch until the prefetch budget is full (or the sampler is done): batches in
        flight, those waiting in the reorder buffer and ``arriving`` (received, not yet
        handed out or buffered) count, as everywhere."""
        budget = self._prefetch_factor * self._active_workers()
        for _ in range(budget - self._tasks_outstanding - self._buffered - arriving):
            before = self._tasks_outstanding
            self._try_put_index()
            if self._tasks_outstanding == before:
                break

    def _grow(self, count: int) -> None:
        """Start ``count`` more workers and fill the deeper prefetch budget they bring."""
        ids = self._pool.add_workers(count, epoch=self._epoch, base_seed=self._base_seed)
        self._num_workers += len(ids)
        self._workers_status += [True] * len(ids)
        self._workers_num_tasks += [0] * len(ids)
        self._fill()
        self._pool.start()
        self._recorder.resize(self._num_workers, self._pool.started_pids)

    def _shrink_to(self, count: int) -> None:
        """Retire the newest workers down to ``count`` once their tasks are done."""
        for k in range(self._num_workers - 1, -1, -1):
            if self._active_workers() <= count:
                break
            if k in self._retired or k in self._draining:
                continue
            if self._workers_num_tasks[k]:
                self._draining.add(k)
            else:
                self._retired.add(k)
                self._workers_status[k] = False
                self._pool.retire(k)

    def _tree_cpu_s(self) -> float:
        """CPU seconds used so far by this process and its live workers."""
        import psutil
        total = sum(os.times()[:2])
        for pid in self._pool.started_pids if self._pool is not None else ():
            if pid is None:
                continue
            try:
                total += sum(psutil.Process(pid).cpu_times()[:2])
            except psutil.Error:
                continue
        return total

    def _worker_memory(self) -> int | None:
        """Unique memory of one worker (bytes), for the autotuner's memory budget."""
        import psutil
        try:
            return psutil.Process(self._pool.started_pids[0]).memory_full_info().uss
        except (psutil.Error, IndexError, TypeError):
            return None

    # ------------------------------------------------------------------ shutdown

    def _shutdown(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            self._recorder.sample_sched()  # the workers' schedstat goes with them
            pool.shutdown()
            self._started_processes = pool.exited
        freeze.release(self)

    def close(self) -> None:
        """Stop the workers now; the iterator is finished afterwards."""
        self._shutdown()

    def __del__(self) -> None:
        try:
            self._shutdown()
        except Exception:
            pass
