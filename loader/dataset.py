"""Dataset classes: the ``torch.utils.data.dataset`` API over numpy arrays.

Map-style datasets answer ``dataset[i]`` (and optionally ``dataset.__getitems__(list)`` for
a whole batch); iterable-style datasets answer ``iter(dataset)``. Anything with
``__getitem__`` and ``__len__`` works where a :class:`Dataset` is expected (duck typing, as in
torch), while iterable-style is decided by :func:`is_iterable_dataset`, which also accepts
torch's own ``IterableDataset`` when torch is loaded. Behaviour and error messages follow
torch so that code and tests written for torch keep working.
"""

from __future__ import annotations

import bisect
import itertools
import math
import sys
import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Generic, TypeVar

import numpy as np

from ._random import as_source
from ._torch_classes import TorchNamesake

__all__ = [
    "ChainDataset",
    "ConcatDataset",
    "Dataset",
    "IterableDataset",
    "StackDataset",
    "Subset",
    "TensorDataset",
    "is_iterable_dataset",
    "random_split",
]

_T = TypeVar("_T")
_T_co = TypeVar("_T_co", covariant=True)


class Dataset(TorchNamesake, Generic[_T_co]):
    """A map from keys (usually ``0 .. len - 1``) to samples.

    Subclasses implement ``__getitem__`` and usually ``__len__``; they may add
    ``__getitems__(indices) -> list`` to fetch a whole batch at once. There is deliberately
    no default ``__len__``: ``len()`` of a dataset without one raises ``TypeError``, so
    ``list(dataset)`` and samplers can tell sized from unsized data.
    """

    def __getitem__(self, index: Any) -> _T_co:
        raise NotImplementedError("Subclasses of Dataset should implement __getitem__.")

    def __add__(self, other: Dataset[_T_co]) -> ConcatDataset[_T_co]:
        return ConcatDataset([self, other])


class IterableDataset(Dataset[_T_co], Iterable[_T_co]):
    """A stream of samples; subclasses implement ``__iter__``.

    With worker processes every worker iterates its own copy, so a dataset that is not
    sharded (by ``get_worker_info()`` in ``__iter__`` or in ``worker_init_fn``) yields one
    copy of the data per worker.
    """

    def __add__(self, other: Dataset[_T_co]) -> ChainDataset:
        return ChainDataset([self, other])


def is_iterable_dataset(obj: Any) -> bool:
    """Whether ``obj`` is iterable-style: ours, or torch's when torch is already imported."""
    if isinstance(obj, IterableDataset):
        return True
    torch_cls = getattr(sys.modules.get("torch.utils.data"), "IterableDataset", None)
    return torch_cls is not None and isinstance(obj, torch_cls)


class TensorDataset(Dataset[tuple[Any, ...]]):
    """Samples are rows: ``dataset[i] == tuple(array[i] for array in arrays)``.

    Takes numpy arrays (anything else without a ``shape`` goes through ``np.asarray``);
    torch tensors are accepted as they are and simply indexed.
    """

    tensors: tuple[Any, ...]

    def __init__(self, *tensors: Any) -> None:
        tensors = tuple(t if hasattr(t, "shape") else np.asarray(t) for t in tensors)
        if any(len(t.shape) == 0 for t in tensors):
            raise IndexError("TensorDataset needs arrays with at least one dimension")
        if any(t.shape[0] != tensors[0].shape[0] for t in tensors):
            raise AssertionError("Size mismatch between tensors")
        self.tensors = tensors

    def __getitem__(self, index: Any) -> tuple[Any, ...]:
        return tuple(t[index] for t in self.tensors)

    def __len__(self) -> int:
        return int(self.tensors[0].shape[0])


class StackDataset(Dataset[Any]):
    """Zips equally long datasets: a tuple per index from ``*args``, a dict from ``**kwargs``."""

    datasets: tuple[Any, ...] | dict[str, Any]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if args and kwargs:
            raise ValueError(
                "Supported either ``tuple``- (via ``args``) or"
                "``dict``- (via ``kwargs``) like input/output, but both types are given."
            )
        if not args and not kwargs:
            raise ValueError("At least one dataset should be passed")
        parts = args or tuple(kwargs.values())
        self._length = len(parts[0])
        if any(len(d) != self._length for d in parts):
            raise ValueError("Size mismatch between datasets")
        self.datasets = args or kwargs

    def __getitem__(self, index: Any) -> tuple[Any, ...] | dict[str, Any]:
        if isinstance(self.datasets, dict):
            return {key: d[index] for key, d in self.datasets.items()}
        return tuple(d[index] for d in self.datasets)

    def __getitems__(self, indices: list) -> list:
        """One batch, using each child's own ``__getitems__`` where it has one."""
        if isinstance(self.datasets, dict):
            columns = {key: _fetch_column(d, indices) for key, d in self.datasets.items()}
            return [dict(zip(columns, row)) for row in zip(*columns.values())]
        return list(zip(*(_fetch_column(d, indices) for d in self.datasets)))

    def __len__(self) -> int:
        return self._length


def _fetch_column(dataset: Any, indices: list) -> list:
    """The samples of one child dataset for ``indices``, checked for count."""
    getitems = getattr(dataset, "__getitems__", None)
    if not callable(getitems):
        return [dataset[i] for i in indices]
    items = getitems(indices)
    if len(items) != len(indices):
        raise ValueError(
            f"Nested dataset's output size mismatch. Expected {len(indices)}, got {len(items)}"
        )
    return items


class ConcatDataset(Dataset[_T_co]):
    """Map-style datasets end to end; index ``i`` is found by bisecting ``cumulative_sizes``."""

    datasets: list[Any]
    cumulative_sizes: list[int]

    @staticmethod
    def cumsum(sequence: Iterable[Any]) -> list[int]:
        """Running totals of the lengths of ``sequence``'s items."""
        return list(itertools.accumulate(len(d) for d in sequence))

    def __init__(self, datasets: Iterable[Any]) -> None:
        self.datasets = list(datasets)
        if not self.datasets:
            raise AssertionError("datasets should not be an empty iterable")
        if any(is_iterable_dataset(d) for d in self.datasets):
            raise AssertionError("ConcatDataset does not support IterableDataset")
        self.cumulative_sizes = self.cumsum(self.datasets)

    def __len__(self) -> int:
        return self.cumulative_sizes[-1]

    def __getitem__(self, idx: int) -> _T_co:
        if idx < 0:
            if -idx > len(self):
                raise ValueError("absolute value of index should not exceed dataset length")
            idx += len(self)
        which = bisect.bisect_right(self.cumulative_sizes, idx)
        offset = self.cumulative_sizes[which - 1] if which else 0
        return self.datasets[which][idx - offset]

    @property
    def cummulative_sizes(self) -> list[int]:
        """Deprecated misspelling of :attr:`cumulative_sizes`."""
        warnings.warn(
            "`cummulative_sizes` attribute is renamed to `cumulative_sizes`",
            FutureWarning,
            stacklevel=2,
        )
        return self.cumulative_sizes


class ChainDataset(IterableDataset):
    """Iterable datasets one after another, chained lazily.

    The children are checked while iterating (as in torch), so chaining a map-style
    dataset fails on iteration, not on construction.
    """

    def __init__(self, datasets: Iterable[Any]) -> None:
        self.datasets = datasets

    def __iter__(self) -> Iterator[Any]:
        for d in self.datasets:
            _check_chainable(d)
            yield from d

    def __len__(self) -> int:
        total = 0
        for d in self.datasets:
            _check_chainable(d)
            total += len(d)
        return total


def _check_chainable(dataset: Any) -> None:
    if not is_iterable_dataset(dataset):
        raise AssertionError("ChainDataset only supports IterableDataset")


class Subset(Dataset[_T_co]):
    """The samples of ``dataset`` at ``indices``, in that order.

    ``subset[list]`` maps each element through ``indices`` and indexes the parent once with
    the list (so slicing an array-backed subset stays one fancy-indexing call).
    """

    dataset: Any
    indices: Sequence[int]

    def __init__(self, dataset: Any, indices: Sequence[int]) -> None:
        self.dataset = dataset
        self.indices = indices

    def __getitem__(self, idx: Any) -> _T_co:
        if isinstance(idx, list):
            return self.dataset[[self.indices[i] for i in idx]]
        return self.dataset[self.indices[idx]]

    def __getitems__(self, indices: list) -> list:
        """One batch, through the parent's ``__getitems__`` where it has one."""
        if type(self).__getitem__ is not Subset.__getitem__:
            # A subclass that customises __getitem__ must not be bypassed by batched
            # fetching (torch issue #163184); torch 2.13 refuses such subclasses instead.
            return [self[i] for i in indices]
        getitems = getattr(self.dataset, "__getitems__", None)
        if callable(getitems):
            return getitems([self.indices[i] for i in indices])
        return [self.dataset[self.indices[i]] for i in indices]

    def __len__(self) -> int:
        return len(self.indices)


def random_split(
    dataset: Any, lengths: Sequence[int | float], generator: Any = None
) -> list[Subset[_T]]:
    """Split ``dataset`` into non-overlapping random :class:`Subset` s of the given lengths.

    ``lengths`` are counts, or fractions summing to 1: each split then gets
    ``floor(fraction * len(dataset))`` and the remainder is dealt out one at a time,
    round-robin from the first split. ``generator`` follows the rules of
    :mod:`loader._random`: a ``torch.Generator``, or none while torch is imported, gives
    exactly torch's splits; an int or numpy generator a numpy permutation.
    """
    n = len(dataset)
    if math.isclose(sum(lengths), 1) and sum(lengths) <= 1:
        lengths = _lengths_from_fractions(lengths, n)
    if sum(lengths) != n:
        raise ValueError("Sum of input lengths does not equal the length of the input dataset!")
    source = as_source(generator)
    if source.follows_torch:  # torch's own draw: the same splits as torch's random_split
        order = sys.modules["torch"].randperm(n, generator=source.torch_generator).tolist()
    else:
        order = source.numpy().permutation(n).tolist()
    ends = itertools.accumulate(lengths)
    return [Subset(dataset, order[end - length : end]) for end, length in zip(ends, lengths)]


def _lengths_from_fractions(fractions: Sequence[float], n: int) -> list[int]:
    """Whole split sizes for fractions summing to 1, warning about empty splits."""
    for i, frac in enumerate(fractions):
        if not 0 <= frac <= 1:
            raise ValueError(f"Fraction at index {i} is not between 0 and 1")
    lengths = [math.floor(n * frac) for frac in fractions]
    for i in range(n - sum(lengths)):
        lengths[i % len(lengths)] += 1
    for i, length in enumerate(lengths):
        if length == 0:
            warnings.warn(
                f"Length of split at index {i} is 0. This might result in an empty dataset.",
                stacklevel=3,
            )
    return lengths
