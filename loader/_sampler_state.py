"""Where a loader's index sampler stands in its pass, as JSON, and how to put it back.

A position is "k batches of this pass handed out"; what a state must add to k so that a
new process draws the very same pass depends on what the sampler lets us see:

- ``own``: our samplers (``sampler.py``'s ``_Resumable``), alone or under our
  BatchSampler. Each records how its pass began, once per pass (a generator state or a
  seed: a few microseconds); a resume replays that pass from item ``k * batch_size``.
  Nothing is done per batch.
- ``stateful``: a user's ``Stateful`` sampler (or the one inside our BatchSampler). It is
  asked for ``state_dict()`` before each pass and after every N-th batch drawn
  (``snapshot_every_n_steps``); a resume loads the latest state the handed-out batches
  cover and draws the few batches after it again.
- ``replay``: any other sampler (torch's, a plain list). Before each pass the loader
  notes what it can: the ``generator`` of every sampler in the ``.sampler`` chain (numpy
  or torch), ``epoch`` where there is ``set_epoch``, our samplers nested inside, and for
  a sampler that draws from torch's global RNG (``generator=None``) that RNG's state just
  before the pass's first draw. A resume puts those back and draws (never fetches) the
  ``k`` batches again; torch's global RNG is swapped in only for that first draw, so the
  user's stream does not move. A sampler drawing from other global state mid-pass
  cannot be replayed exactly.
- ``none``: an IterableDataset's sampler (``None`` forever): nothing to keep.

Nothing here fetches data: a resume costs index generation only.
"""

from __future__ import annotations

import copy
import itertools
import sys
from collections import deque
from typing import Any, Iterator

from loader._rng_state import (capture_generator, capture_torch_global, is_generator,
                               restore_generator, restore_torch_global)
from loader.distributed import DistributedSampler
from loader.sampler import (BatchSampler, RandomSampler, SequentialSampler,
                            SubsetRandomSampler, WeightedRandomSampler)
from loader.workers.replica import is_stateful

__all__ = ["SamplerTrack"]

_OWN_ITERS = {cls.__iter__ for cls in (RandomSampler, SequentialSampler, SubsetRandomSampler,
                                       WeightedRandomSampler, BatchSampler,
                                       DistributedSampler)}
_CHAIN_DEPTH = 4  # how deep the ``.sampler`` chain of a foreign sampler is searched
_END = object()


def _is_own(sampler: Any) -> bool:
    if getattr(type(sampler), "__iter__", None) not in _OWN_ITERS:
        return False
    if type(sampler).__iter__ is BatchSampler.__iter__:
        return _is_own(sampler.sampler)
    return True


def _is_our_batch_sampler(sampler: Any) -> bool:
    return getattr(type(sampler), "__iter__", None) is BatchSampler.__iter__


def _chain(sampler: Any) -> list:
    chain = [sampler]
    while len(chain) < _CHAIN_DEPTH:
        inner = getattr(chain[-1], "sampler", None)
        if inner is None or inner is chain[-1] or not hasattr(inner, "__iter__"):
            break
        chain.append(inner)
    return chain


def _draws_from_torch_global(obj: Any) -> bool:
    """A torch-style sampler whose ``generator`` is None seeds each pass from torch's
    global RNG (torch's RandomSampler, SubsetRandomSampler, WeightedRandomSampler)."""
    return "generator" in getattr(obj, "__dict__", {}) and obj.generator is None \
        and "torch" in sys.modules


def describe(sampler: Any) -> str:
    """The classes of a sampler chain, for the fingerprint: ``BatchSampler/RandomSampler``."""
    return "/".join(f"{type(s).__module__}.{type(s).__qualname__}" for s in _chain(sampler))


class SamplerTrack:
    """The index sampler of one loader: its kind, and per epoch what a state needs."""

    def __init__(self, index_sampler: Any, iterable: bool, every: int) -> None:
        self.sampler = index_sampler
        self.every = every
        self.subject = None
        if iterable:
            self.kind = "none"
        elif is_stateful(index_sampler):
            self.kind, self.subject = "stateful", index_sampler
        elif _is_our_batch_sampler(index_sampler) and is_stateful(index_sampler.sampler):
            self.kind, self.subject = "stateful", index_sampler.sampler
        elif _is_own(index_sampler):
            self.kind = "own"
        else:
            self.kind = "replay"
            self.chain = _chain(index_sampler)
            self.global_draw = any(_draws_from_torch_global(s) for s in self.chain
                                   if not _is_own(s))

    # ------------------------------------------------------------------ one epoch

    def before_pass(self, ep: Any) -> None:
        """Called before ``iter(index_sampler)`` of a fresh pass: note what the pass
        starts from."""
        if self.kind == "stateful":
            ep.snaps = deque([(0, copy.deepcopy(self.subject.state_dict()))])
        elif self.kind == "replay":
            ep.chain = [self._foreign_entry(s) for s in self.chain]

    def before_first_draw(self, ep: Any) -> None:
        if self.kind == "replay" and self.global_draw and ep.torch_rng is None:
            ep.torch_rng = capture_torch_global()

    def after_first_draw(self, ep: Any) -> None:
        if self.kind == "own":
            ep.sampler_pass = self.sampler._resume_state(False)
        elif self.kind == "replay":  # a new list: states handed out keep the old one
            ep.chain = [{"own": s._resume_state(False)} if _is_own(s) else entry
                        for s, entry in zip(self.chain, ep.chain)]

    def drawn(self, ep: Any, count: int) -> None:
        """``count`` batches of this pass have been drawn (stateful samplers only)."""
        if self.every and count % self.every == 0:
            ep.snaps.append((count, copy.deepcopy(self.subject.state_dict())))

    @staticmethod
    def commit(ep: Any, low: int) -> None:
        """Every batch below ``low`` is handed out: drop snapshots that are superseded."""
        snaps = ep.snaps
        while len(snaps) > 1 and snaps[1][0] <= low:
            snaps.popleft()

    def _foreign_entry(self, s: Any) -> dict:
        if _is_own(s):
            return {"own": s._resume_state(True)}
        entry: dict = {}
        generator = getattr(s, "generator", None)
        if is_generator(generator):
            entry["generator"] = capture_generator(generator)
        if callable(getattr(s, "set_epoch", None)) and isinstance(getattr(s, "epoch", None), int):
            entry["epoch"] = s.epoch
        return entry

    # ------------------------------------------------------------------ the state

    def state(self, ep: Any, current: bool) -> dict:
        """The sampler part of a state: inside the pass of ``ep``, or (``current``)
        where the next pass starts."""
        kind = self.kind
        if kind == "none":
            return {"kind": kind}
        if kind == "own":
            record = None if current else ep.sampler_pass
            if record is None:
                return {"kind": kind, "current": self.sampler._resume_state(True)}
            return {"kind": kind, "pass": record}
        if kind == "stateful":
            if current or ep is None:
                return {"kind": kind, "current": copy.deepcopy(self.subject.state_dict())}
            at, snap = ep.snaps[0]
            return {"kind": kind, "at": at, "state": snap}
        if current or ep is None:
            return {"kind": kind, "chain": [self._foreign_entry(s) for s in self.chain]}
        return {"kind": kind, "chain": ep.chain, "torch_rng": ep.torch_rng}

    def check(self, part: Any) -> None:
        if not isinstance(part, dict) or part.get("kind") != self.kind:
            theirs = part.get("kind") if isinstance(part, dict) else part
            raise ValueError(
                f"Cannot load this state: sampler.kind is {theirs!r} in the state but "
                f"{self.kind!r} in this loader")
        if self.kind == "replay" and len(part.get("chain", ())) != len(self.chain):
            raise ValueError(
                f"Cannot load this state: sampler.chain has {len(part.get('chain', ()))} "
                f"samplers in the state but {len(self.chain)} in this loader")

    # ------------------------------------------------------------------ resuming

    def restore(self, part: dict) -> None:
        """At ``load_state_dict``: put generators, epochs and a finished pass's sampler
        state back (so a ``set_epoch`` after it still wins for the next pass)."""
        if self.kind == "own":
            self.sampler._resume_restore(part.get("pass") or part["current"])
        elif self.kind == "stateful" and "current" in part:
            self.subject.load_state_dict(copy.deepcopy(part["current"]))
        elif self.kind == "replay":
            for s, entry in zip(self.chain, part["chain"]):
                if "own" in entry:
                    s._resume_restore(entry["own"])
                    continue
                if "generator" in entry:
                    restore_generator(s.generator, entry["generator"])
                if "epoch" in entry:
                    s.set_epoch(entry["epoch"])

    def open(self, ep: Any, part: dict | None, skip: int) -> Iterator:
        """``iter(index_sampler)``: a fresh pass (``part`` None), or the pass in progress
        ``part`` describes, positioned ``skip`` batches in by :meth:`position`."""
        kind = self.kind
        if part is None:
            self.before_pass(ep)
        elif kind == "own":
            ep.sampler_pass = part["pass"]
            self.sampler._resume_replay(part["pass"], skip)
        elif kind == "stateful":
            self.subject.load_state_dict(copy.deepcopy(part["state"]))
            ep.snaps = deque([(part["at"], part["state"])])
        elif kind == "replay":
            ep.chain, ep.torch_rng = list(part["chain"]), part.get("torch_rng")
            for s, entry in zip(self.chain, part["chain"]):
                if "own" in entry:
                    s._resume_replay(entry["own"], 0)
        return iter(self.sampler)

    def position(self, ep: Any, part: dict | None, skip: int, it: Iterator,
                 after_finished: bool) -> Iterator:
        """Advance ``it`` past the ``skip`` batches handed out, drawing them again where
        the sampler cannot skip; runs after ``base_seed`` was drawn, as in the original.

        After a finished pass, a Stateful sampler whose loaded state still says "pass
        done" (its next pass is empty) gets a fresh pass, as the original had.
        """
        kind = self.kind
        if after_finished and kind == "stateful":
            first = next(it, _END)
            if first is not _END:
                return itertools.chain((first,), it)
            self.before_pass(ep)
            return iter(self.sampler)
        if part is None or kind in ("none", "own"):
            return it
        todo = skip - part["at"] if kind == "stateful" else skip
        saved = None
        if kind == "replay":
            self.before_first_draw(ep)  # a state taken before the first draw had none
            saved = restore_torch_global(ep.torch_rng)
        try:
            first = next(it, _END)
        finally:
            if saved is not None:
                restore_torch_global(saved)
        if kind == "replay":
            self.after_first_draw(ep)
        if first is _END:
            return it
        if todo <= 0:
            return itertools.chain((first,), it)
        for _ in range(todo - 1):
            if next(it, _END) is _END:
                break
        return it
