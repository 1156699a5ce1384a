"""Samplers: which indices a loader fetches, and in what order.

The ``torch.utils.data.sampler`` API. Every random sampler keeps the user's ``generator``
object as ``self.generator``, reads it when a pass starts (lazily, on the first ``next()``,
as torch does; so a generator set afterwards, as accelerate does, is the one used) and
draws through :func:`loader._random.as_source`:

- a ``torch.Generator``, or none while torch is imported: torch's own draws, in torch's
  order (``randperm`` per pass; ``randint`` in chunks of 32 with replacement;
  ``multinomial``), so the indices are bit-identical to torch's samplers';
- an int seed or a numpy generator (or none without torch): numpy draws, one numpy
  generator per pass; a seeded sampler repeats across runs while changing per epoch.

All samplers yield Python ints.

Every sampler here also takes part in a loader's resume (``loader/state.py``) through
:class:`_Resumable`: it remembers how its latest pass began (a JSON-safe record, taken
once per pass: a generator's state, the seed drawn for the pass, or torch's global RNG
state) and can repeat a recorded pass from any item on, drawing nothing else; so the
loader's state holds a sampler's position as (pass record, items consumed).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence, Sized
from typing import Any, Generic, TypeVar

import numpy as np

from ._random import SeedSource, as_source
from ._rng_state import restore_torch_global
from ._torch_classes import TorchNamesake

__all__ = [
    "BatchSampler",
    "RandomSampler",
    "Sampler",
    "SequentialSampler",
    "SubsetRandomSampler",
    "WeightedRandomSampler",
]

_T_co = TypeVar("_T_co", covariant=True)

_DRAW_CHUNK = 1024  # indices drawn per numpy call with replacement: amortises the call
# overhead while bounding the draws wasted when a pass is abandoned early
_TORCH_CHUNK = 32  # torch's RandomSampler draws with replacement 32 at a time; the same
#                    chunks are what make the same generator give the same indices


class Sampler(TorchNamesake, Generic[_T_co]):
    """Base class: subclasses implement ``__iter__`` and, when they can, ``__len__``.

    There is deliberately no default ``__len__`` (``len()`` then raises ``TypeError``),
    so callers such as ``list()`` and the loader can tell sized from unsized samplers.
    """

    def __iter__(self) -> Iterator[_T_co]:
        raise NotImplementedError


class _Seeded:
    """The source of a random sampler's draws, re-derived whenever ``generator`` changes."""

    generator: Any

    def _seed_from(self, generator: Any, source: SeedSource | None = None) -> None:
        self.generator = generator
        self._origin = generator
        self._source = as_source(generator) if source is None else source

    def _pass_source(self) -> SeedSource:
        if self.generator is not self._origin:  # replaced since (accelerate does this)
            self._seed_from(self.generator)
        return self._source


class _Resumable:
    """The resume protocol of our samplers (used by ``loader/_sampler_state.py``).

    - ``_resume_state(current)``: with ``current`` the state the *next* pass starts
      from (generators and epoch as they are now), else the record of the latest pass
      (None before the first); both carry ``config``, the facts a state must agree on.
    - ``_resume_restore(state)``: put generators and epoch back as ``state`` has them.
    - ``_resume_replay(state, skip)``: the next pass repeats the recorded one, starting
      after its first ``skip`` items (nothing is drawn for the skipped ones twice).

    A subclass that overrides ``__iter__`` is no longer ours: the loader then replays it.
    """

    _pass_record: dict | None = None
    _replay: tuple | None = None

    def _resume_config(self) -> dict:
        return {}

    def _current_record(self) -> dict:
        return {}

    def _resume_state(self, current: bool) -> dict | None:
        record = self._current_record() if current else self._pass_record
        if record is None:
            return None
        return {"config": self._resume_config(), **record}

    def _resume_check(self, state: dict) -> None:
        mine = self._resume_config()
        theirs = state.get("config", {})
        for key in sorted(set(mine) | set(theirs)):
            if mine.get(key) != theirs.get(key):
                raise ValueError(
                    f"Cannot load this state: sampler.{key} is {theirs.get(key)!r} in the "
                    f"state but {mine.get(key)!r} in this loader "
                    f"({type(self).__name__})")

    def _resume_restore(self, state: dict) -> None:
        self._resume_check(state)

    def _resume_replay(self, state: dict, skip: int) -> None:
        self._replay = (state, skip)

    def _take_replay(self) -> tuple[dict | None, int]:
        replay, self._replay = self._replay, None
        return replay if replay is not None else (None, 0)


def _skip_items(chunks: Iterable[list], skip: int) -> Iterator:
    """The items of ``chunks`` (lists) after the first ``skip``."""
    for chunk in chunks:
        if skip >= len(chunk):
            skip -= len(chunk)
            continue
        yield from chunk[skip:] if skip else chunk
        skip = 0


class _SourcePasses(_Resumable):
    """A sampler drawing each pass from its ``generator``: records and replays passes."""

    def _current_record(self) -> dict:
        return {"seed": None, "source": self._pass_source().state()}

    def _resume_restore(self, state: dict) -> None:
        self._resume_check(state)
        if state.get("source") is not None:
            self._pass_source().set_state(state["source"])

    def _passes(self, chunks_of: Any, direct: bool = False) -> Iterator:
        """One pass of ``chunks_of(draw)`` (lists of items; ``draw`` as
        ``SeedSource.begin_pass`` gives it), recorded, or replayed from the armed record."""
        replay, skip = self._take_replay()
        draw, self._pass_record = self._pass_source().begin_pass(replay, direct)
        swapped = None
        if draw is None and replay is not None:  # torch's global RNG, as the pass found it
            swapped = restore_torch_global(replay["torch_rng"])
        try:
            chunks = chunks_of(draw)
            first = next(chunks, None)  # the draws happen here (all, for one-call passes)
        finally:
            if swapped is not None:
                restore_torch_global(swapped)
        if first is None:
            return
        chunks = itertools.chain((first,), chunks)
        if skip:
            yield from _skip_items(chunks, skip)
            return
        for chunk in chunks:
            yield from chunk


def _torch_module() -> Any:
    import torch  # only reached when the source follows torch: torch is loaded
    return torch


def _torch_random_chunks(n: int, total: int, replacement: bool, generator: Any):
    """torch's RandomSampler draws, call for call, as lists (``generator``: the pass's,
    from ``SeedSource.begin_pass``; for none, torch seeds a fresh one from its global RNG
    and so does ``begin_pass``)."""
    torch = _torch_module()
    if replacement:
        for _ in range(total // _TORCH_CHUNK):
            yield torch.randint(high=n, size=(_TORCH_CHUNK,), dtype=torch.int64,
                                generator=generator).tolist()
        yield torch.randint(high=n, size=(total % _TORCH_CHUNK,), dtype=torch.int64,
                            generator=generator).tolist()
        return
    for _ in range(total // n):
        yield torch.randperm(n, generator=generator).tolist()
    yield torch.randperm(n, generator=generator).tolist()[: total % n]  # drawn even if empty


def _is_numpy(draw: Any) -> bool:
    return isinstance(draw, np.random.Generator)


class SequentialSampler(_Resumable, Sampler[int]):
    """``0, 1, ..., len(data_source) - 1``, with the length read at each pass."""

    data_source: Sized

    def __init__(self, data_source: Sized) -> None:
        self.data_source = data_source

    def __iter__(self) -> Iterator[int]:
        _, skip = self._take_replay()
        self._pass_record = {}
        return iter(range(skip, len(self.data_source)))

    def __len__(self) -> int:
        return len(self.data_source)


class RandomSampler(_Seeded, _SourcePasses, Sampler[int]):
    """Random indices into ``data_source``.

    Without replacement it yields ``num_samples // n`` full permutations and then the
    start of one more; with replacement, ``num_samples`` independent uniform draws.
    ``num_samples`` defaults to ``len(data_source)``, read at each use.
    """

    data_source: Sized
    replacement: bool

    def __init__(
        self,
        data_source: Sized,
        replacement: bool = False,
        num_samples: int | None = None,
        generator: Any = None,
    ) -> None:
        self.data_source = data_source
        self.replacement = replacement
        self._num_samples = num_samples
        self._seed_from(generator)
        if not isinstance(replacement, bool):
            raise TypeError(
                f"replacement should be a boolean value, but got replacement={replacement}"
            )
        if not isinstance(self.num_samples, int) or self.num_samples <= 0:
            raise ValueError(
                "num_samples should be a positive integer value, "
                f"but got num_samples={self.num_samples}"
            )

    @property
    def num_samples(self) -> int:
        """How many indices one pass yields."""
        if self._num_samples is None:
            return len(self.data_source)
        return self._num_samples

    def __iter__(self) -> Iterator[int]:
        return self._passes(self._chunks)

    def _chunks(self, draw: Any) -> Iterator[list]:
        n = len(self.data_source)
        total = self.num_samples
        if not _is_numpy(draw):
            yield from _torch_random_chunks(n, total, self.replacement, draw)
            return
        rng = draw
        if self.replacement:
            for start in range(0, total, _DRAW_CHUNK):
                yield rng.integers(0, n, size=min(_DRAW_CHUNK, total - start)).tolist()
            return
        for _ in range(total // n):
            yield rng.permutation(n).tolist()
        if total % n:
            yield rng.permutation(n)[: total % n].tolist()

    def _resume_config(self) -> dict:
        return {"replacement": self.replacement, "num_samples": self.num_samples}

    def __len__(self) -> int:
        return self.num_samples


class SubsetRandomSampler(_Seeded, _SourcePasses, Sampler[int]):
    """The elements of ``indices`` in a random order, each once per pass."""

    indices: Sequence[int]

    def __init__(self, indices: Sequence[int], generator: Any = None) -> None:
        self.indices = indices
        self._seed_from(generator)

    def __iter__(self) -> Iterator[int]:
        return self._passes(self._chunks, direct=True)

    def _resume_config(self) -> dict:
        return {"num_samples": len(self.indices)}

    def _chunks(self, draw: Any) -> Iterator[list]:
        if _is_numpy(draw):
            order = draw.permutation(len(self.indices))
        else:  # torch's draw: on the pass's generator, or (None) torch's global RNG
            order = _torch_module().randperm(len(self.indices), generator=draw).numpy()
        if isinstance(self.indices, np.ndarray):
            yield self.indices[order].tolist()
        else:
            indices = self.indices
            yield [indices[i] for i in order.tolist()]

    def __len__(self) -> int:
        return len(self.indices)


class WeightedRandomSampler(_Seeded, _SourcePasses, Sampler[int]):
    """``num_samples`` indices into ``weights``, index ``i`` with probability ∝ ``weights[i]``.

    Weights are checked when a pass starts, with torch's ``multinomial`` messages. With
    torch's draws (a torch generator, or none while torch is in use) the pass is torch's
    ``multinomial`` itself, so without replacement it fills up with zero-weight indices
    when too few weights are nonzero, as torch does. With numpy's draws (an int or numpy
    generator) such a pass raises ``RuntimeError`` instead: numpy cannot draw them.
    """

    weights: np.ndarray
    num_samples: int
    replacement: bool

    def __init__(
        self,
        weights: Sequence[float],
        num_samples: int,
        replacement: bool = True,
        generator: Any = None,
    ) -> None:
        if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples <= 0:
            raise ValueError(
                f"num_samples should be a positive integer value, but got num_samples={num_samples}"
            )
        if not isinstance(replacement, bool):
            raise ValueError(
                f"replacement should be a boolean value, but got replacement={replacement}"
            )
        weights_array = np.asarray(weights, dtype=np.float64)
        if weights_array.ndim != 1:
            raise ValueError(
                "weights should be a 1d sequence but given "
                f"weights have shape {tuple(weights_array.shape)}"
            )
        self.weights = weights_array
        self.num_samples = num_samples
        self.replacement = replacement
        self._seed_from(generator)

    def __iter__(self) -> Iterator[int]:
        source = self._pass_source()
        weights = np.asarray(self.weights, dtype=np.float64)
        p = _probabilities(weights)  # torch's messages (and a clear one for no weights)
        if not self.replacement and not source.follows_torch:
            _check_enough_weights(p, self.num_samples)
        yield from self._passes(lambda draw: self._chunks(draw, weights, p), direct=True)

    def _chunks(self, draw: Any, weights: np.ndarray, p: np.ndarray) -> Iterator[list]:
        if not _is_numpy(draw):  # torch's multinomial: the pass's generator, or the global
            torch = _torch_module()
            yield torch.multinomial(torch.as_tensor(weights), self.num_samples,
                                    self.replacement, generator=draw).tolist()
            return
        yield draw.choice(len(p), size=self.num_samples, replace=self.replacement,
                          p=p).tolist()

    def _resume_config(self) -> dict:
        return {"num_samples": self.num_samples, "replacement": self.replacement,
                "weights": len(self.weights)}

    def __len__(self) -> int:
        return self.num_samples


def _probabilities(weights: np.ndarray) -> np.ndarray:
    """Weights normalised to sum to 1, rejected with torch's ``multinomial`` messages."""
    if np.isnan(weights).any() or (weights < 0).any():
        raise RuntimeError("invalid multinomial distribution (encountering probability entry < 0)")
    if np.isinf(weights).any():
        raise RuntimeError(
            "invalid multinomial distribution (encountering probability entry = infinity or NaN)"
        )
    total = weights.sum()
    if not total > 0:
        raise RuntimeError("invalid multinomial distribution (sum of probabilities <= 0)")
    return weights / total


def _check_enough_weights(p: np.ndarray, num_samples: int) -> None:
    if num_samples > len(p):
        raise RuntimeError(
            "cannot sample n_sample > prob_dist.size(-1) samples without replacement"
        )
    nonzero = int(np.count_nonzero(p))
    if num_samples > nonzero:
        raise RuntimeError(
            f"cannot draw {num_samples} samples without replacement: "
            f"only {nonzero} of the {len(p)} weights are nonzero"
        )


_END = object()  # pads the last batch inside zip_longest; never a real index


class BatchSampler(_Resumable, Sampler[list[int]]):
    """Groups the indices of ``sampler`` (any iterable) into lists of ``batch_size``.

    The last, shorter batch is kept unless ``drop_last``. ``len()`` needs ``len(sampler)``.
    """

    def __init__(
        self, sampler: Sampler[int] | Iterable[int], batch_size: int, drop_last: bool
    ) -> None:
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size <= 0:
            raise ValueError(
                f"batch_size should be a positive integer value, but got batch_size={batch_size}"
            )
        if not isinstance(drop_last, bool):
            raise ValueError(f"drop_last should be a boolean value, but got drop_last={drop_last}")
        self.sampler = sampler
        self.batch_size = batch_size
        self.drop_last = drop_last

    def __iter__(self) -> Iterator[list[int]]:
        # zip over one iterator repeated batch_size times cuts full batches in C, about
        # twice as fast as islice per batch for small batches; zip_longest's padding
        # marks the short last batch without needing len(sampler).
        repeated = [iter(self.sampler)] * self.batch_size
        if self.drop_last:
            for batch in zip(*repeated):
                yield [*batch]
            return
        for batch in itertools.zip_longest(*repeated, fillvalue=_END):
            if batch[-1] is _END:
                yield [i for i in batch if i is not _END]
            else:
                yield [*batch]

    def __len__(self) -> int:
        if self.drop_last:
            return len(self.sampler) // self.batch_size
        return (len(self.sampler) + self.batch_size - 1) // self.batch_size

    # The resume protocol for a BatchSampler over one of our samplers: a batch position
    # is ``batch_size`` items of the inner sampler (loader/_sampler_state.py checks
    # that the inner sampler is ours before using these).

    def _resume_config(self) -> dict:
        return {"batch_size": self.batch_size, "drop_last": self.drop_last}

    def _resume_state(self, current: bool) -> dict | None:
        inner = self.sampler._resume_state(current)
        if inner is None:
            return None
        return {"config": self._resume_config(), "sampler": inner}

    def _resume_restore(self, state: dict) -> None:
        self._resume_check(state)
        self.sampler._resume_restore(state["sampler"])

    def _resume_replay(self, state: dict, skip: int) -> None:
        self.sampler._resume_replay(state["sampler"], skip * self.batch_size)
