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
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence, Sized
from typing import Any, Generic, TypeVar

import numpy as np

from ._random import SeedSource, as_source
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


def _torch_module() -> Any:
    import torch  # only reached when the source follows torch: torch is loaded
    return torch


def _torch_random_indices(n: int, total: int, replacement: bool, generator: Any):
    """torch's RandomSampler draws, call for call; ``generator`` None: a fresh one seeded
    from torch's global RNG, as torch does."""
    torch = _torch_module()
    if generator is None:
        generator = torch.Generator()
        generator.manual_seed(int(torch.empty((), dtype=torch.int64).random_().item()))
    if replacement:
        for _ in range(total // _TORCH_CHUNK):
            yield from torch.randint(high=n, size=(_TORCH_CHUNK,), dtype=torch.int64,
                                     generator=generator).tolist()
        yield from torch.randint(high=n, size=(total % _TORCH_CHUNK,), dtype=torch.int64,
                                 generator=generator).tolist()
        return
    for _ in range(total // n):
        yield from torch.randperm(n, generator=generator).tolist()
    yield from torch.randperm(n, generator=generator).tolist()[: total % n]  # drawn even if empty


class SequentialSampler(Sampler[int]):
    """``0, 1, ..., len(data_source) - 1``, with the length read at each pass."""

    data_source: Sized

    def __init__(self, data_source: Sized) -> None:
        self.data_source = data_source

    def __iter__(self) -> Iterator[int]:
        return iter(range(len(self.data_source)))

    def __len__(self) -> int:
        return len(self.data_source)


class RandomSampler(_Seeded, Sampler[int]):
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
        n = len(self.data_source)
        total = self.num_samples
        source = self._pass_source()
        if source.follows_torch:
            yield from _torch_random_indices(n, total, self.replacement, source.torch_generator)
            return
        rng = source.numpy()
        if self.replacement:
            for start in range(0, total, _DRAW_CHUNK):
                yield from rng.integers(0, n, size=min(_DRAW_CHUNK, total - start)).tolist()
            return
        for _ in range(total // n):
            yield from rng.permutation(n).tolist()
        if total % n:
            yield from rng.permutation(n)[: total % n].tolist()

    def __len__(self) -> int:
        return self.num_samples


class SubsetRandomSampler(_Seeded, Sampler[int]):
    """The elements of ``indices`` in a random order, each once per pass."""

    indices: Sequence[int]

    def __init__(self, indices: Sequence[int], generator: Any = None) -> None:
        self.indices = indices
        self._seed_from(generator)

    def __iter__(self) -> Iterator[int]:
        source = self._pass_source()
        if source.follows_torch:
            order = _torch_module().randperm(len(self.indices), generator=source.torch_generator)
            order = order.numpy()
        else:
            order = source.numpy().permutation(len(self.indices))
        if isinstance(self.indices, np.ndarray):
            yield from self.indices[order].tolist()
        else:
            for i in order.tolist():
                yield self.indices[i]

    def __len__(self) -> int:
        return len(self.indices)


class WeightedRandomSampler(_Seeded, Sampler[int]):
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
        if source.follows_torch:
            yield from _torch_module().multinomial(
                _torch_module().as_tensor(weights), self.num_samples, self.replacement,
                generator=source.torch_generator).tolist()
            return
        if not self.replacement:
            _check_enough_weights(p, self.num_samples)
        rng = source.numpy()
        draws = rng.choice(len(p), size=self.num_samples, replace=self.replacement, p=p)
        yield from draws.tolist()

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


class BatchSampler(Sampler[list[int]]):
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
