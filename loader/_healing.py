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
"""

from __future__ import annotations

import linecache
import re
import time
from dataclasses import dataclass, field
from typing import Any

from loader.errors import exit_reason

__all__ = ["Death", "Healer", "StallWatch", "annotate_stacks", "shown"]

_MAX_INDEX_TEXT = 200  # characters of a batch's indices shown in a message
_WORKER_ENTRY = "worker_main"  # workers/loop.py's entry point: the bottom frame worth showing
_FRAME = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+) in (?P<func>\S+)')


def shown(indices: Any) -> str:
    text = repr(indices)
    return text if len(text) <= _MAX_INDEX_TEXT else text[:_MAX_INDEX_TEXT] + "...]"


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
    """One worker death in an epoch: who, how, and what it owed (batch id, indices)."""

    worker_id: int
    pid: int | None
    how: str
    owed: list[tuple[int, Any]] = field(default_factory=list)

    def describe(self, iterable: bool) -> str:
        text = f"worker {self.worker_id} (pid {self.pid}) {self.how}"
        if not self.owed:
            return text + " with no batch in hand"
        batch_id, indices = self.owed[0]
        text += f" while working on batch {batch_id}"
        if not iterable:
            text += f" (indices {shown(indices)})"
        if len(self.owed) > 1:
            text += f"; {len(self.owed) - 1} more queued"
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
               owed: list[tuple[int, Any]]) -> Death:
        how = self._kills.pop(worker_id, None) or exit_reason(exitcode)
        death = Death(worker_id, pid, how, owed)
        self.deaths.append(death)
        return death

    def history(self) -> str:
        """Every death of this epoch, numbered, and the indices they all had in hand."""
        lines = [f"  {n}. {d.describe(self.iterable)}" for n, d in enumerate(self.deaths, 1)]
        text = "\n".join(lines)
        if not self.iterable and len(self.deaths) > 1 and all(d.owed for d in self.deaths):
            try:
                common = set(_as_list(self.deaths[0].owed[0][1]))
                for d in self.deaths[1:]:
                    common &= set(_as_list(d.owed[0][1]))
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
