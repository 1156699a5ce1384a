"""Self-healing policy of the multi-process iterator: stall warnings, restart budget, notes.

```
 MultiProcessIter._get_data ── receive(wait) ──▶ backend
   │ TimeoutError, stall due ─▶ StallWatch ─▶ warnings.warn(StallWarning: worker, pid,
   │                                          batch, indices, the worker's stacks)
   │ TimeoutError, past timeout ─▶ Healer.can_restart? ─▶ backend.kill(stuck worker)
   │ WorkerError (a death)     ─▶ Healer.record(Death) ─▶ backend.restart + submit owed
   │                                               └──▶ budget spent: the error lists
   │                                                    every death of the epoch
 BatchNote (skips, replica position) ─▶ held per batch ─▶ counted when its reply arrives
```

- The iterator owns *what* is owed: the tasks a dead worker had not answered, in batch
  order, go again to its replacement, so the epoch yields every batch once, in order. The
  backend owns *how* a worker is replaced (``workers/backend.py``'s ``restart``).
- :class:`Healer` keeps this epoch's deaths, how each happened and the indices the worker
  was on, the last replica position each worker delivered (IterableDatasets), and decides
  whether one more restart is allowed (``worker_restarts`` per epoch, reset every epoch).
- :class:`StallWatch` measures how long the current ``next()`` has waited; it warns once
  per ``next()`` when that passes ``stall_warning_s``. It never stops the loader.
- :class:`HealingMixin` is the iterator's side of it: what ``MultiProcessIter`` does on a
  stall, a timeout, a death and a ``BatchNote``.
"""

from __future__ import annotations

import linecache
import re
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

from loader.errors import (DataLoaderTimeoutError, StallWarning, WorkerError, exit_reason,
                           shown)
from loader.ipc.messages import EmptyBatch, IterEnd, Result

__all__ = ["Death", "Healer", "HealingMixin", "StallWatch", "annotate_stacks", "shown"]

_STALL_STACKLEVEL = 6  # warnings.warn -> _warn_stall -> _get_data -> _next_outcome ->
#                        _next_data -> __next__ -> the user's loop

_WORKER_ENTRY = "worker_main"  # workers/loop.py's entry point: the bottom frame worth showing
_FRAME = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+) in (?P<func>\S+)')


def annotate_stacks(dump: str) -> str:
    """A faulthandler dump with each frame's source line below it, where it can be read,
    and without the frames below the worker's entry point (process start-up; after a fork
    they are the main process's frames at the time of the fork, which mislead)."""
    out = []
    below_entry = False
    for line in dump.splitlines():
        match = _FRAME.search(line)
        if match is None:
            below_entry = False  # a new thread's header, or the end
            out.append(line)
            continue
        if below_entry:
            continue
        out.append(line)
        source = linecache.getline(match["file"], int(match["line"])).strip()
        if source:
            out.append(f"    {source}")
        below_entry = match["func"] == _WORKER_ENTRY
    return "\n".join(out)


def _innermost(dump: str) -> str:
    """The most recent frame of the first thread in a faulthandler dump."""
    match = _FRAME.search(dump)
    return f"{match['func']} ({match['file']}, line {match['line']})" if match else ""


class StallWatch:
    """When has the current ``next()`` waited ``threshold_s`` for its batch?"""

    def __init__(self, threshold_s: float) -> None:
        self.threshold_s = threshold_s
        self._due: float | None = None  # monotonic time of the warning; None: off or done

    def begin(self) -> None:
        """A ``next()`` starts waiting (or a replacement starts): the clock restarts."""
        if self.threshold_s > 0:
            self._due = time.monotonic() + self.threshold_s

    def due(self) -> bool:
        return self._due is not None and time.monotonic() >= self._due

    def warned(self) -> None:
        self._due = None  # once per stall: the next next() starts a new clock

    def wait_s(self, deadline: float | None) -> float | None:
        """How long ``receive`` may block: until the warning or ``deadline``, if any."""
        due = self._due
        if due is None:
            if deadline is None:
                return None
            due = deadline
        elif deadline is not None and deadline < due:
            due = deadline
        return max(0.0, due - time.monotonic())


@dataclass
class Death:
    """One worker death in an epoch: who, how, what it owed (batch id, indices, in batch
    order), which of those it was fetching (None: none of them), and whether it had
    started any task this epoch."""

    worker_id: int
    pid: int | None
    how: str
    owed: list[tuple[int, Any]] = field(default_factory=list)
    in_hand: tuple[int, Any] | None = None
    started: bool = True

    def describe(self, iterable: bool) -> str:
        text = f"worker {self.worker_id} (pid {self.pid}) {self.how}"
        if self.in_hand is None:
            if not self.started:
                text += " before its first batch of the epoch (starting up, or idle)"
            else:
                text += " between batches"
            return text + (f", owing {len(self.owed)}" if self.owed else "")
        batch_id, indices = self.in_hand
        text += f" while working on batch {batch_id}"
        if not iterable:
            text += f" (indices {shown(indices)})"
        if len(self.owed) > 1:
            more = len(self.owed) - 1
            text += f"; {more} more {'was' if more == 1 else 'were'} queued for it"
        return text


class Healer:
    """This epoch's deaths and restart budget, and the replica positions delivered."""

    def __init__(self, restarts: int, iterable: bool) -> None:
        self.restarts = restarts
        self.iterable = iterable
        self.deaths: list[Death] = []
        self._kills: dict[int, str] = {}  # worker -> why the loader killed it
        self._positions: dict[int, Any] = {}  # worker -> replica state after its last batch
        self._delivered: set[int] = set()  # workers that delivered a batch this epoch
        self.tracks_replicas = iterable and restarts > 0  # per-batch bookkeeping needed

    def new_epoch(self) -> None:
        self.deaths = []
        self._kills.clear()
        self._positions.clear()
        self._delivered.clear()

    # ------------------------------------------------------------------ restarts

    def can_restart(self) -> bool:
        return len(self.deaths) < self.restarts

    def kill_pending(self, worker_id: int) -> bool:
        """The loader killed this worker and its death has not been reported yet."""
        return worker_id in self._kills

    def killing(self, worker_id: int, why: str, stacks: str) -> None:
        """The loader is about to kill ``worker_id``; its death will be told this way."""
        where = _innermost(stacks)
        self._kills[worker_id] = why + (f", in {where}" if where else "")

    def record(self, worker_id: int, pid: int | None, exitcode: int | None,
               owed: list[tuple[int, Any]], in_hand: int | None) -> Death:
        """A death; ``in_hand``: the batch id it had started last this epoch (the
        backend's word), -1 for none yet, None when the backend cannot tell (the oldest
        batch it owed then stands in: the one it was fetching unless its result was lost)."""
        how = self._kills.pop(worker_id, None) or exit_reason(exitcode)
        owed_map = dict(owed)
        if in_hand is None:
            hand = owed[0] if owed else None
        else:
            hand = (in_hand, owed_map[in_hand]) if in_hand in owed_map else None
        death = Death(worker_id, pid, how, owed, hand, started=in_hand != -1)
        self.deaths.append(death)
        return death

    def history(self) -> str:
        """Every death of this epoch, numbered, and the indices they all had in hand."""
        lines = [f"  {n}. {d.describe(self.iterable)}" for n, d in enumerate(self.deaths, 1)]
        text = "\n".join(lines)
        if not self.iterable and len(self.deaths) > 1 and all(d.in_hand for d in self.deaths):
            try:
                common = set(_as_list(self.deaths[0].in_hand[1]))
                for d in self.deaths[1:]:
                    common &= set(_as_list(d.in_hand[1]))
            except TypeError:  # unhashable keys: no common culprit to point at
                common = set()
            if common:
                text += (f"\nIndices {sorted(common)!r} were in the batch in hand every time: "
                         "a sample among them is the likely cause.")
        return text

    def exhausted(self, first_line: str, epoch: int) -> str:
        """The message when a death finds no restart left."""
        n = len(self.deaths)
        allows = f"{self.restarts} restart{'s' if self.restarts != 1 else ''}"
        return (f"{first_line}\nThat is {n} worker deaths in epoch {epoch}; worker_restarts="
                f"{self.restarts} allows {allows} per epoch, so the loader stops. The deaths, "
                f"in order:\n{self.history()}")

    # ------------------------------------------------------------------ replicas

    def delivered(self, worker_id: int, state: Any) -> None:
        """Worker ``worker_id`` delivered a batch; ``state`` is its replica after it."""
        self._delivered.add(worker_id)
        if state is not None:
            self._positions[worker_id] = state

    def replica_state(self, worker_id: int) -> tuple[bool, Any]:
        """(can restart, state to restart from) for an IterableDataset worker: from the
        start if it delivered nothing yet, from its position if it is Stateful."""
        if worker_id in self._positions:
            return True, self._positions[worker_id]
        return worker_id not in self._delivered, None


def _as_list(indices: Any) -> list:
    try:
        return list(indices)
    except TypeError:
        return [indices]


class HealingMixin:
    """``MultiProcessIter``'s reactions to stalls, timeouts, deaths and batch notes.

    It uses the iterator's ``_pool`` (a ``WorkerBackend``), ``_task_info`` (batch id ->
    pending task, in batch order), ``_workers_status``, ``_tasks_outstanding``, ``_epoch``,
    ``_base_seed``, ``_timeout``, ``_iterable``, ``_dataset``, ``_recorder``, ``_heal``
    (:class:`Healer`), ``_watch`` (:class:`StallWatch`), ``_notes`` and ``_skips``, and its
    methods ``_waiting_for()``, ``_timeout_text()``, ``_skip_items()`` and ``_shutdown()``.
    """

    def _warn_stall(self) -> None:
        """Name the worker the current next() waits for, with its stacks; go on waiting."""
        self._watch.warned()
        waiting = self._waiting_for()
        if waiting is None or self._pool is None:
            return
        batch_id, info = waiting
        k = info.worker_id
        self._recorder.stalled()
        stacks = annotate_stacks(self._pool.stack_dump(k)) or "(its stacks could not be read)"
        others = self._tasks_outstanding - 1
        others = f"{others} other batch{' is' if others == 1 else 'es are'} outstanding"
        text = (f"DataLoader has waited {self._watch.threshold_s:g} s for a batch "
                f"(stall_warning_s={self._watch.threshold_s:g}): batch {batch_id} (indices "
                f"{shown(info.indices)}) is with worker {k} ({self._pool.describe(k)}), which "
                f"is alive but has not delivered it; {others}. "
                f"Worker {k}'s Python stacks right now:\n{stacks}\nThe loader keeps waiting. "
                "timeout=<seconds> makes a stall an error (with worker_restarts=<n> the stuck "
                "worker is replaced instead); stall_warning_s=0 turns this warning off.")
        warnings.warn(StallWarning(text), stacklevel=_STALL_STACKLEVEL)

    def _on_timeout(self) -> None:
        """Past ``timeout`` with nothing received: kill the worker the loader waits for when
        a restart is left (its death then replaces it), else torch's timeout error."""
        waiting = self._waiting_for()
        killed = waiting is not None and self._heal.kill_pending(waiting[1].worker_id)
        if waiting is None or killed or not self._heal.can_restart():
            text = self._timeout_text()
            if killed:  # e.g. in uninterruptible I/O: SIGKILL waits for it to return
                text += (f"\nIt was killed {self._timeout:g} s ago (it was stuck) and has "
                         "not exited yet.")
            if self._heal.deaths:
                text += f"\nWorker deaths this epoch:\n{self._heal.history()}"
            raise DataLoaderTimeoutError(text)
        k = waiting[1].worker_id
        self._heal.killing(k, f"was stuck for {self._timeout:g} s (timeout) and was killed",
                           self._pool.stack_dump(k))
        self._pool.kill(k)

    def _on_death(self, exc: WorkerError) -> None:
        """A worker died: replace it and submit again what it owed, or shut down and raise."""
        k = exc.worker_id
        active = self._workers_status[k]
        owed = [(b, info.indices) for b, info in self._task_info.items()
                if info.worker_id == k and not info.arrived] if active else []
        for batch_id, _ in owed:
            self._notes.pop(batch_id, None)  # a note counts only with its reply
        hand = self._pool.in_hand(k)
        started = None if hand is None else hand[1] if hand[0] == self._epoch else -1
        self._heal.record(k, exc.pid, exc.exitcode, owed, started)
        if self._heal.restarts == 0:
            self._shutdown()
            raise exc  # torch's behaviour: the death ends the epoch
        if len(self._heal.deaths) > self._heal.restarts:
            self._shutdown()
            raise WorkerError(self._heal.exhausted(str(exc), self._epoch), worker_id=k,
                              pid=exc.pid, exitcode=exc.exitcode) from None
        state = None
        if self._iterable and active:
            possible, state = self._heal.replica_state(k)
            if not possible:
                self._shutdown()
                raise WorkerError(
                    f"{exc}\nworker_restarts={self._heal.restarts} cannot replace it: "
                    "restarting an IterableDataset worker needs a Stateful dataset "
                    "(state_dict() and load_state_dict(), on the dataset or on the iterator "
                    "it returns) so that the replacement goes on after the last batch "
                    f"received, and {type(self._dataset).__name__} is not.", worker_id=k,
                    pid=exc.pid, exitcode=exc.exitcode) from None
        try:
            self._pool.restart(k, self._epoch, self._base_seed, state)
            for batch_id, indices in owed:
                self._pool.submit(k, self._epoch, batch_id, indices)
        except BaseException:
            self._shutdown()
            raise
        self._recorder.restarted()
        self._watch.begin()  # the replacement needs its start-up time before a stall counts

    def _take_note(self, message: Any) -> None:
        """A reply arrived: count the note that came before it (skips, replica position)."""
        note = self._notes.pop(message.batch_id, None)
        if note is not None and note.skipped:
            if type(message) is IterEnd:  # no batch to hand out: count them now
                self._recorder.skip(self._skip_items(message.worker_id, note.skipped))
            else:
                self._skips[message.batch_id] = note.skipped
        if self._heal.tracks_replicas and type(message) in (Result, EmptyBatch):
            self._heal.delivered(message.worker_id, note.state if note is not None else None)
