"""Mid-epoch resume: the state a loader hands out, and how a new loader picks it up.

```
 DataLoader.__iter__ ─▶ Ledger.begin(): a Progress (one per epoch; the loader keeps the last)
   iterator: Ledger.start(): sampler opened (a recorded pass replayed: _sampler_state.py),
             base_seed drawn; per batch handed out: Progress.hand_out(position, worker,
             entry) (O(1)); StopIteration: Progress.finished
 DataLoader.state_dict() ─▶ Ledger.state(): a plain dict, from what is kept ready
 DataLoader.load_state_dict(s) ─▶ Ledger.load(): check_state (ValueError naming the
   field), generators and samplers put back, a Plan ─▶ the next __iter__ starts from it
```

- The state lives in the main process and describes the position after the last batch
  *handed to the user*: batches prefetched by workers are not in it and are fetched again
  after a resume. Map-style data keeps no per-worker state, so any ``num_workers`` (and
  ``persistent_workers``, ``in_order``, ``prefetch_factor``) may resume any state.
- Per-worker state exists only where a worker holds data the main process cannot
  rebuild: an IterableDataset's replicas (their ``state_dict()``, or how many batches to
  replay) and a ``Stateful`` map-style dataset. It is taken in the worker right after a
  batch (``workers/fetch.py``), rides with that batch, and is committed here when the
  batch is handed out; its worker count must match on resume, unless the dataset has a
  ``reshard_state(states, num_workers)`` method.
- ``in_order=False``: the position is the lowest batch not handed out plus the batches
  above it that were (at most ``prefetch_factor * num_workers``); a resume dispatches only
  the others, so every batch is handed out exactly once.

Cost: ``hand_out`` is a few attribute updates per batch; ``state()`` builds one small dict
from values kept ready (a pass record is taken once per pass), so calling it after every
batch costs microseconds. ``snapshot_every_n_steps`` (N) only sets how often a user's
Stateful sampler or IterableDataset is asked for its state (a resume replays < N batches).
"""

from __future__ import annotations

import copy
import warnings
import weakref
from typing import Any, Protocol, runtime_checkable

from loader._sampler_state import SamplerTrack, describe
from loader.workers.fetch import end_state
from loader.workers.replica import is_stateful

__all__ = ["STATE_VERSION", "Ledger", "Plan", "Progress", "Stateful", "check_state",
           "warn_replay"]

STATE_VERSION = 1  # bumped whenever a state written by this code cannot be read by older
_FIELDS = ("version", "kind", "epoch", "started", "finished", "position", "delivered",
           "base_seed", "generator", "sampler", "workers", "num_workers", "seeding",
           "fingerprint")


@runtime_checkable
class Stateful(Protocol):
    """Anything with ``state_dict()`` and ``load_state_dict(state)``: datasets, their
    iterators and samplers that can say where they are (torchdata's protocol)."""

    def state_dict(self) -> dict[str, Any]:
        ...

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        ...


def _mismatch(field: str, saved: Any, current: Any, hint: str = "") -> ValueError:
    return ValueError(f"Cannot load this state: {field} is {saved!r} in the state but "
                      f"{current!r} in this loader{hint}")


def _length(obj: Any) -> int | None:
    try:
        return len(obj)
    except TypeError:
        return None


class Progress:
    """One epoch of one loader: how it began, and which batches were handed out."""

    __slots__ = ("epoch", "base_seed", "source_before", "low", "above", "finished",
                 "last_worker", "sampler_pass", "snaps", "chain", "torch_rng",
                 "entries", "handed", "ends", "inline", "track", "fingerprint",
                 "pass_begun", "template", "streams", "seed_chain")

    def __init__(self, epoch: int, track: SamplerTrack) -> None:
        self.epoch = epoch
        self.track = track
        self.base_seed: int | None = None
        self.source_before: dict | None = None  # the loader's generator before base_seed
        self.low = 0  # the lowest batch position not yet handed out
        self.above: set[int] = set()  # positions above ``low`` already handed out
        self.finished = False
        self.last_worker = -1
        self.sampler_pass = None  # own samplers: the record of this pass
        self.snaps = None  # Stateful samplers: deque of (batches drawn, state)
        self.chain = None  # other samplers: what each in the chain started from
        self.torch_rng = None
        self.entries: list | None = None  # per worker: the committed entry, or None
        self.handed: list[int] | None = None  # per worker: batches handed out
        self.ends: list | None = None  # per worker: what its ended replica left
        self.inline = None  # num_workers=0: the fetcher, asked when a state is taken
        self.fingerprint: dict | None = None  # the loader's, taken once per epoch
        self.pass_begun = False  # the sampler drew this pass's first batch
        self.template: dict | None = None  # the state's fields that stay for the epoch
        self.streams = 1  # replicas of this epoch: max(1, num_workers)
        self.seed_chain: list = [0, 0]  # (first base seed of the pool, this epoch's index)

    def consume(self, position: int) -> None:
        """``position`` will never be handed out (its replica had ended): pass over it."""
        if position == self.low:
            self.hand_out(position, self.last_worker, made=False)
        elif position > self.low:
            self.above.add(position)

    def hand_out(self, position: int, worker: int, entry: Any = None,
                 made: bool = True) -> None:
        """The batch at ``position`` (made by ``worker``, with its replica's ``entry``)
        was handed to the user; ``made`` False: its error was raised to them instead
        (the position is used up, the replica made no batch)."""
        if position == self.low:
            low = position + 1
            above = self.above
            if above:
                while low in above:
                    above.discard(low)
                    low += 1
            self.low = low
            if self.snaps is not None:
                self.track.commit(self, low)
        else:
            self.above.add(position)
        self.last_worker = worker
        handed = self.handed
        if handed is not None and made and worker >= 0:
            handed[worker] += 1
            if entry is not None:
                self.entries[worker] = entry

    def replica_ended(self, worker: int, left: Any) -> None:
        if self.ends is not None:
            self.ends[worker] = left


class Plan:
    """A checked state, waiting for the next ``iter()``."""

    __slots__ = ("state", "epoch", "mid", "workers")

    def __init__(self, state: dict, workers: list | None) -> None:
        self.state = state
        self.mid = state["started"] and not state["finished"]
        self.epoch = state["epoch"] + (1 if state["finished"] else 0)
        self.workers = workers  # per worker of this loader: where its replica starts


class Ledger:
    """The resume side of one DataLoader: builds and reads its states."""

    def __init__(self, loader: Any) -> None:
        # weak: the loader owns its ledger, and a cycle would keep a dropped loader (and
        # its persistent workers) alive until the cycle collector runs
        self._loader = weakref.ref(loader)
        self.iterable = loader._dataset_kind_iterable
        self.every = int(loader.snapshot_every_n_steps or 0)
        self.track = SamplerTrack(loader._index_sampler, self.iterable, self.every)
        self.sampler_name = describe(loader._index_sampler)  # samplers are frozen
        # per-worker entries: an IterableDataset's replicas, or a Stateful map dataset
        self.per_worker = self.iterable or is_stateful(loader.dataset)
        self.progress: Progress | None = None
        self.plan: Plan | None = None
        self.opening: tuple[Progress, Plan | None] | None = None  # for the next iterator
        self.epochs = 0  # epochs started so far

    @property
    def loader(self) -> Any:
        return self._loader()

    @property
    def worker_every(self) -> int:
        """How often a worker takes its replica's entry (0: never)."""
        if not self.per_worker:
            return 0
        return self.every if self.iterable else 1  # a map batch cannot be replayed

    def streams(self) -> int:
        return max(1, self.loader.num_workers)

    # ------------------------------------------------------------------ epochs

    def begin(self) -> Progress:
        """A new epoch for the next iterator (read from ``opening``): fresh, or the
        pending plan's."""
        plan, self.plan = self.plan, None
        epoch = self.epochs if plan is None else plan.epoch
        self.epochs = epoch + 1
        ep = Progress(epoch, self.track)
        ep.streams = self.streams()
        if self.per_worker:
            n = ep.streams
            ep.entries, ep.handed = [None] * n, [0] * n
            ep.ends = [None] * n if self.iterable else None
        self.progress = ep
        self.opening = (ep, plan)
        return ep

    def take_opening(self) -> tuple[Progress, Plan | None]:
        """The epoch the next iterator runs: the one ``begin`` opened, once (an iterator
        made without ``DataLoader.__iter__`` opens its own)."""
        opening, self.opening = self.opening, None
        if opening is None:
            self.begin()
            opening, self.opening = self.opening, None
        return opening

    def start(self, ep: Progress, plan: Plan | None, seed_source: Any,
              chain: tuple[int, int] | None = None) -> tuple[Any, int, bool]:
        """Open the sampler and draw ``base_seed`` for epoch ``ep``, in torch's order
        (``iter(sampler)``, then the seed, then the first index); with a mid-epoch plan,
        replay its pass up to its position instead. ``chain`` (first seed, epoch): a
        persistent pool's later epoch, whose seed is derived, not drawn
        (``SeedSource.epoch_seed``). Returns the sampler iterator, the base seed and
        whether the pass is fresh (its first draw still to come)."""
        track = self.track
        mid = plan is not None and plan.mid
        state = plan.state if mid else None
        part = state["sampler"] if mid else None
        if part is not None and "current" in part:
            part = None  # the state was taken before the pass drew anything: a fresh pass
        skip = state["position"] if mid else 0
        it = track.open(ep, part, skip)
        ep.source_before = seed_source.state()
        if chain is None and plan is not None and plan.state["finished"] and \
                plan.state.get("seed_chain") and self.loader.persistent_workers:
            first, index = plan.state["seed_chain"]  # the pool's next epoch, as it would be
            chain = (first, index + 1)
        if mid:
            saved = plan.state.get("seed_chain") or [state["base_seed"], 0]
            drawn = saved[1] == 0 or not seed_source.follows_torch
            if drawn and ep.source_before is not None:
                seed_source.seed()  # the original drew it here: advance the generator alike
            base_seed = state["base_seed"]
            ep.seed_chain = list(saved)
        elif chain is not None:
            base_seed = seed_source.epoch_seed(*chain)
            ep.seed_chain = list(chain)
        else:
            base_seed = seed_source.seed()
            ep.seed_chain = [base_seed, 0]
        if mid:
            ep.low = skip
            ep.above = set(state["delivered"])
            if self.per_worker and state["workers"] is not None:
                for k, w in enumerate(plan.workers or ()):
                    if k < len(ep.handed) and w is not None:
                        ep.handed[k] = w.get("handed", 0)
                        ep.entries[k] = w.get("entry")
        ep.base_seed = base_seed
        after_finished = plan is not None and plan.state["finished"]
        it = track.position(ep, part, skip, it, after_finished)
        return it, base_seed, part is None

    def restore_for(self, plan: Plan | None, index_template: Any) -> list | None:
        """Per worker of the next iterator: where its replica starts (None: fresh)."""
        if plan is None or plan.workers is None:
            return None
        out = []
        for w in plan.workers:
            if w is None:
                out.append(None)
            elif w.get("epoch_start"):
                out.append({"entry": w.get("entry"), "epoch_start": True})
            else:
                entry = w.get("entry")
                at = entry["at"] if entry is not None else 0
                out.append({"entry": entry, "discard": max(0, w.get("handed", 0) - at),
                            "index": index_template, "epoch_start": False})
        return out

    # ------------------------------------------------------------------ taking a state

    def state(self) -> dict:
        """The loader's state now (see the module docstring)."""
        ep = self.progress
        if ep is not None and ep.template is not None and self.plan is None \
                and not ep.finished:  # the common case, called after every batch: O(1)
            state = ep.template.copy()
            state["position"] = ep.low
            state["delivered"] = sorted(ep.above) if ep.above else []
            if ep.last_worker >= 0:
                state["next_worker"] = (ep.last_worker + 1) % ep.streams
            if ep.handed is not None:
                state["workers"] = self._mid_workers(ep)
            return state
        if self.plan is not None:
            return copy.deepcopy(self.plan.state)  # loaded and not yet used: that state
        loader, ep, track = self.loader, self.progress, self.track
        source = loader._seed_source
        if ep is None:
            return self._assemble(0, False, False, 0, [], None, source.state(),
                                  track.state(None, True), None, -1)
        if ep.finished:
            return self._assemble(ep.epoch, True, True, ep.low, [], ep.base_seed,
                                  source.state(), track.state(ep, True),
                                  self._next_epoch_workers(ep), -1)
        state = self._assemble(ep.epoch, True, False, ep.low, sorted(ep.above), ep.base_seed,
                               ep.source_before, track.state(ep, False),
                               self._mid_workers(ep), ep.last_worker)
        if ep.pass_begun and track.kind != "stateful":  # its sampler part changes
            ep.template = state.copy()
        return state

    def _assemble(self, epoch, started, finished, position, delivered, base_seed, generator,
                  sampler, workers, last_worker) -> dict:
        loader, ep = self.loader, self.progress
        if ep is None:
            fingerprint = self.fingerprint()
        else:
            if ep.fingerprint is None:
                ep.fingerprint = self.fingerprint()
            fingerprint = dict(ep.fingerprint)
        return {
            "version": STATE_VERSION, "kind": "iterable" if self.iterable else "map",
            "epoch": epoch, "started": started, "finished": finished, "position": position,
            "delivered": delivered, "base_seed": base_seed, "generator": generator,
            "sampler": sampler, "workers": workers,
            "next_worker": (last_worker + 1) % self.streams() if last_worker >= 0 else 0,
            "num_workers": loader.num_workers, "seeding": loader.seeding,
            "seed_chain": list(ep.seed_chain) if ep is not None and started else None,
            "fingerprint": fingerprint,
        }

    def fingerprint(self) -> dict:
        loader = self.loader
        return {
            "dataset_length": None if self.iterable else _length(loader.dataset),
            "batch_size": loader.batch_size, "drop_last": loader.drop_last,
            "sampler": self.sampler_name,
            "sampler_length": None if self.iterable else _length(loader._index_sampler),
            "generator": loader._seed_source.kind,
        }

    def _mid_workers(self, ep: Progress) -> list | None:
        if ep.handed is None:
            return None
        entries = list(ep.entries)
        if ep.inline is not None:  # num_workers=0: no prefetch, so the fetcher is exact now
            entries = [copy.deepcopy(ep.inline.capture())]
        return [{"entry": e, "handed": h} for e, h in zip(entries, ep.handed)]

    def _next_epoch_workers(self, ep: Progress) -> list | None:
        """What each replica starts the next epoch from: its dataset as the epoch left it,
        when that dataset lives on (persistent workers, or the main process)."""
        if ep.handed is None:
            return None
        loader = self.loader
        if ep.inline is not None:
            left = end_state(loader.dataset)
            return [{"entry": copy.deepcopy(left), "epoch_start": True}] if left else None
        if not loader.persistent_workers:
            return None
        lefts = ep.ends if ep.ends is not None else ep.entries
        if not any(lefts):
            return None
        return [{"entry": e, "epoch_start": True} if e else None for e in lefts]

    # ------------------------------------------------------------------ loading a state

    def load(self, state: Any) -> None:
        """Check ``state`` against this loader and keep it for the next ``iter()``."""
        check_state(state, self)
        workers = self._workers_for(state)
        self.track.restore(state["sampler"])
        # then the loader's generator (the sampler's may be the same one): mid-epoch, as
        # it was before this epoch's base_seed, which is drawn again so that a sampler
        # sharing it draws after it as in the original; else as it is now
        self.loader._seed_source.set_state(state["generator"])
        self.plan = Plan(state, workers)

    def _workers_for(self, state: dict) -> list | None:
        """The per-worker part of ``state`` for this loader's worker count: as saved,
        resharded by the dataset's hook, or a ValueError naming both counts."""
        saved = state["workers"]
        if saved is None:
            return None
        if not self.per_worker:
            raise _mismatch("workers", f"{len(saved)} per-worker states", None,
                            " (this loader's dataset keeps none)")
        n = self.streams()
        if len(saved) == n:
            return saved
        hook = getattr(self.loader.dataset, "reshard_state", None)
        if hook is None:
            what = "IterableDataset" if self.iterable else "Stateful dataset"
            raise ValueError(
                f"Cannot load this state: it was saved with num_workers="
                f"{state['num_workers']} ({len(saved)} replica state(s) of the {what}), "
                f"but this loader has num_workers={self.loader.num_workers} ({n}). An "
                f"{what}'s state belongs to one replica per worker, so resume with "
                f"num_workers={state['num_workers']}, or give the dataset a "
                f"reshard_state(states, num_workers) method that turns the saved "
                f"replica states into {n} (see DataLoader.load_state_dict).")
        return self._reshard(hook, saved, state, n)

    def _reshard(self, hook: Any, saved: list, state: dict, n: int) -> list:
        old = []
        for w in saved:
            entry = (w or {}).get("entry") or {}
            at = entry.get("at", 0)
            handed = (w or {}).get("handed", at)
            old.append({"dataset": entry.get("dataset"), "iterator": entry.get("iterator"),
                        "batches": handed, "batches_since_state": handed - at})
        new = hook(old, n)
        if not isinstance(new, (list, tuple)) or len(new) != n:
            raise ValueError(
                f"{type(self.loader.dataset).__name__}.reshard_state returned "
                f"{len(new) if isinstance(new, (list, tuple)) else type(new).__name__} "
                f"state(s); this loader needs {n} (one per worker)")
        mid = state["started"] and not state["finished"]
        base = state["position"]  # new replicas number their batches from here on
        out = []
        for item in new:
            item = item or {}
            entry = {"at": base, "dataset": item.get("dataset"),
                     "iterator": item.get("iterator"), "ended": False}
            out.append({"entry": entry, "handed": base} if mid
                       else {"entry": entry, "epoch_start": True})
        return out


def check_state(state: Any, ledger: Ledger) -> None:
    """Raise ValueError naming the first field of ``state`` that does not fit."""
    if not isinstance(state, dict):
        raise TypeError(f"state_dict must be a dict, but got {type(state).__name__}")
    if "version" not in state:
        raise ValueError("Cannot load this state: it has no 'version' field (not a state "
                         "written by loader.DataLoader.state_dict())")
    if state["version"] != STATE_VERSION:
        raise _mismatch("version", state["version"], STATE_VERSION,
                        " (a state of another version of loader)")
    for field in _FIELDS:
        if field not in state:
            raise ValueError(f"Cannot load this state: the field {field!r} is missing")
    kind = "iterable" if ledger.iterable else "map"
    if state["kind"] != kind:
        raise _mismatch("kind", state["kind"], kind)
    mine = ledger.fingerprint()
    theirs = state["fingerprint"]
    for field, value in mine.items():
        if theirs.get(field) != value:
            raise _mismatch(f"fingerprint.{field}", theirs.get(field), value)
    if state["seeding"] != ledger.loader.seeding:
        raise _mismatch("seeding", state["seeding"], ledger.loader.seeding)
    ledger.track.check(state["sampler"])
    position, delivered = state["position"], state["delivered"]
    if not isinstance(position, int) or position < 0:
        raise ValueError(f"Cannot load this state: position is {position!r}, not a "
                         "non-negative int")
    if not isinstance(delivered, list) or any(not isinstance(p, int) or p <= position
                                              for p in delivered):
        raise ValueError("Cannot load this state: delivered must list positions above "
                         f"position={position}, but is {delivered!r}")


def warn_replay(counts: list[int], every: int) -> None:
    """Say that a resume replays batches of an IterableDataset, and how to avoid it."""
    total = sum(counts)
    if not total:
        return
    why = ("snapshot_every_n_steps is 0, so no replica state was taken" if not every else
           "neither the dataset nor its iterator defines state_dict/load_state_dict")
    warnings.warn(
        f"Resuming an IterableDataset by fast-forwarding: {why}, so the workers fetch and "
        f"drop the {total} batch(es) they had already handed out ({counts} per worker). "
        "To resume without reading them again, implement state_dict() and "
        "load_state_dict() on your IterableDataset or on the iterator its __iter__ "
        "returns (loader.Stateful).", stacklevel=3)
