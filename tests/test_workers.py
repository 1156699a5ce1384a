"""num_workers > 0 (fork): torch's order and batches, round robin, iterable sharding,
the same results as num_workers=0, and torch output.

Differential tests run torch's own DataLoader on the same dataset and compare batch by
batch. Other start methods: ``test_workers_start_methods.py``; errors and timeouts:
``test_workers_errors.py``; held batches, order, seeding, persistence and shutdown:
``test_workers_lifecycle.py``; odd payloads and protocol corners: ``test_workers_edges.py``.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.utils.data as tud

import loader
from loader import DataLoader, IterableDataset, get_worker_info

from helpers import Point, Sized, frozen_heap  # noqa: F401 (frozen_heap: autouse fixture)

pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")


# ---------------------------------------------------------------- comparison helpers


def assert_same(ours, theirs, path="batch"):
    """``ours`` equals ``theirs`` in container types, dtypes, shapes and values."""
    if isinstance(theirs, torch.Tensor):
        assert isinstance(ours, torch.Tensor), f"{path}: {type(ours).__name__}, not a tensor"
        assert ours.dtype == theirs.dtype, f"{path}: {ours.dtype} != {theirs.dtype}"
        assert ours.shape == theirs.shape, f"{path}: {ours.shape} != {theirs.shape}"
        assert torch.equal(ours, theirs), f"{path}: values differ"
    elif isinstance(theirs, np.ndarray):
        assert isinstance(ours, np.ndarray), f"{path}: {type(ours).__name__}, not an array"
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape, path
        np.testing.assert_array_equal(ours, theirs, err_msg=path)
    elif isinstance(theirs, dict):
        assert type(ours) is type(theirs) and list(ours) == list(theirs), path
        for key in theirs:
            assert_same(ours[key], theirs[key], f"{path}[{key!r}]")
    elif isinstance(theirs, (list, tuple)):
        assert type(ours).__name__ == type(theirs).__name__, \
            f"{path}: {type(ours).__name__} != {type(theirs).__name__}"
        assert len(ours) == len(theirs), f"{path}: length {len(ours)} != {len(theirs)}"
        for i, (a, b) in enumerate(zip(ours, theirs)):
            assert_same(a, b, f"{path}[{i}]")
    else:
        assert type(ours) is type(theirs) and ours == theirs, f"{path}: {ours!r} != {theirs!r}"


def to_numpy(obj):
    """The same structure with every tensor turned into a numpy array."""
    if isinstance(obj, torch.Tensor):
        return obj.numpy()
    if isinstance(obj, dict):
        return {k: to_numpy(v) for k, v in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(to_numpy(x) for x in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_numpy(x) for x in obj)
    return obj


# ---------------------------------------------------------------- datasets


class MixedDataset(Sized):
    """Map-style, subclassing no Dataset class; every element kind default_collate knows."""

    def __getitem__(self, i):
        return {"img": np.full((2, 3), i, np.float32), "label": i, "weight": i / 4,
                "flag": i % 3 == 0, "name": f"s{i}", "pt": Point(np.int16(i), [i, -i])}


class WorkerIdDataset:
    """Each sample is the id of the worker that fetched it (TestIndividualWorkerQueue)."""

    def __init__(self, n, use_init_fn=False):
        self.n, self.use_init_fn, self.worker_id = n, use_init_fn, None

    def __len__(self):
        return self.n

    def worker_init_fn(self, worker_id):  # torch's test passes a bound method
        self.worker_id = worker_id

    def __getitem__(self, i):
        if self.use_init_fn:
            return self.worker_id
        return get_worker_info().id


class ShardedRange(IterableDataset):
    """range(start, end) split into contiguous per-worker shards by get_worker_info."""

    def __init__(self, start, end, torch_info=False):
        self.start, self.end, self.torch_info = start, end, torch_info

    def __iter__(self):
        info = tud.get_worker_info() if self.torch_info else get_worker_info()
        if info is None:
            return iter(range(self.start, self.end))
        per = math.ceil((self.end - self.start) / info.num_workers)
        lo = self.start + info.id * per
        return iter(range(lo, min(lo + per, self.end)))


class WorkerSpecificIterable(IterableDataset):
    """torch's WorkerSpecificIterableDataset: worker k yields range(sizes[k])."""

    def __init__(self, sizes, torch_info=False):
        self.sizes, self.torch_info = sizes, torch_info

    def __iter__(self):
        info = tud.get_worker_info() if self.torch_info else get_worker_info()
        assert info is not None
        return iter(range(self.sizes[info.id]))

    def __len__(self):
        return sum(self.sizes)


class CountingIterable(IterableDataset):
    def __init__(self, n):
        self.n = n

    def __iter__(self):
        return iter({"i": i, "v": np.ones(2) * i} for i in range(self.n))

    def __len__(self):
        return self.n


class TorchIterable(tud.IterableDataset):
    """Adapts one of our iterable datasets for torch's DataLoader (its isinstance check)."""

    def __init__(self, inner):
        self.inner = inner

    def __iter__(self):
        return iter(self.inner)


# ---------------------------------------------------------------- differential tests


@pytest.mark.parametrize("num_workers", [1, 2, 3, 4])
def test_map_batches_match_torch(num_workers):
    dataset = MixedDataset(23)
    order = [int(i) for i in np.random.default_rng(num_workers).permutation(23)]
    other = ({"batch_size": 5, "drop_last": True, "sampler": order} if num_workers % 2 else
             {"batch_sampler": [(0, 1), (2, 3, 4, 5, 6), (7,), (22, 21, 20), (9, 8)]})
    for kwargs in ({"batch_size": 4}, other):
        ours = list(DataLoader(dataset, num_workers=num_workers, **kwargs))
        theirs = list(tud.DataLoader(dataset, num_workers=num_workers, **kwargs))
        assert len(ours) == len(theirs) > 0
        assert_same(ours, theirs)


@pytest.mark.parametrize("num_workers", [1, 2, 3, 4])
def test_iterable_shards_match_torch(num_workers):
    for batch_size, drop_last in ((None, False), (3, num_workers % 2 == 1)):
        ours = list(DataLoader(ShardedRange(0, 17), batch_size=batch_size, drop_last=drop_last,
                               num_workers=num_workers))
        theirs = list(tud.DataLoader(TorchIterable(ShardedRange(0, 17, torch_info=True)),
                                     batch_size=batch_size, drop_last=drop_last,
                                     num_workers=num_workers))
        assert_same(ours, theirs)


@pytest.mark.parametrize("num_workers", [1, 2, 3, 4])
def test_batch_i_comes_from_worker_i_mod_n(num_workers):
    """torch's TestIndividualWorkerQueue: strict round robin, in order."""
    batch_size = 8
    for use_init_fn in (False, True):
        dataset = WorkerIdDataset(batch_size * num_workers * 3 + 5, use_init_fn)
        dl = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, timeout=30,
                        worker_init_fn=dataset.worker_init_fn if use_init_fn else None,
                        output="numpy")
        batches = list(dl)
        assert len(batches) == len(dl) == 3 * num_workers + 1
        for i, batch in enumerate(batches):
            assert batch.tolist() == [i % num_workers] * len(batch)


def test_sequential_workers_keep_sampler_order_with_prefetch():
    """torch's test_seqential_batch_workers_prefetch: 4 workers, prefetch 3, in order."""
    data = np.arange(100 * 6, dtype=np.float64).reshape(100, 2, 3)
    dl = DataLoader(loader.TensorDataset(data, np.arange(100)), batch_size=2, num_workers=4,
                    prefetch_factor=3, output="numpy")
    for i, (x, y) in enumerate(dl):
        np.testing.assert_array_equal(x, data[2 * i:2 * i + 2])
        assert y.tolist() == [2 * i, 2 * i + 1]
    assert i == 49


def test_shuffle_workers_each_sample_once():
    """torch's test_shuffle_batch_workers: every sample exactly once, labels aligned."""
    data = np.arange(50, dtype=np.int64) * 10
    dl = DataLoader(loader.TensorDataset(data, np.arange(50)), batch_size=4, shuffle=True,
                    num_workers=2, output="numpy")
    seen = []
    for x, y in dl:
        np.testing.assert_array_equal(x, y * 10)
        seen.extend(y.tolist())
    assert sorted(seen) == list(range(50)) and seen != list(range(50))


# ---------------------------------------------------------------- iterable sharding


def test_iterable_per_worker_sizes_unbatched():
    """torch's test_iterable_style_dataset: sizes [0, 4, 20], batch_size=None, ints stay ints."""
    sizes = [0, 4, 20]
    dataset = WorkerSpecificIterable(sizes)
    for prefetch_factor in (2, 3):
        dl = DataLoader(dataset, batch_size=None, num_workers=3, prefetch_factor=prefetch_factor)
        fetched = list(dl)
        assert all(type(x) is int for x in fetched)
        assert sorted(fetched) == sorted(i for s in sizes for i in range(s))
        assert len(dl) == len(dataset) == 24


def test_iterable_per_worker_partial_batches():
    """Sizes [0, 4, 20], batch_size 7: each worker ends with its own partial batch
    (4 batches), and drop_last drops each of them (2 batches); the order is torch's."""
    full = {tuple(range(4)), tuple(range(7)), tuple(range(7, 14)), tuple(range(14, 20))}
    for drop_last, expected in ((False, full), (True, {tuple(range(7)), tuple(range(7, 14))})):
        dl = DataLoader(WorkerSpecificIterable([0, 4, 20]), batch_size=7, drop_last=drop_last,
                        num_workers=3, output="numpy")
        fetched = list(dl)
        assert len(fetched) == len(expected)
        assert {tuple(b.tolist()) for b in fetched} == expected
        theirs = list(tud.DataLoader(TorchIterable(WorkerSpecificIterable([0, 4, 20], True)),
                                     batch_size=7, drop_last=drop_last, num_workers=3))
        assert [b.tolist() for b in fetched] == [b.tolist() for b in theirs]


def test_iterable_over_length_warning_with_workers():
    """torch's check: an unsharded replica per worker yields too much; once len(loader)
    was taken, every batch beyond it warns, naming the multiprocessing cause."""
    dataset = CountingIterable(20)  # three workers, three copies: 60 samples
    dl = DataLoader(dataset, num_workers=3)
    it = iter(dl)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(40):
            next(it)  # len() was never called: no warning
    del it
    assert len(dl) == 20
    it = iter(dl)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(20):
            next(it)
    for _ in range(3):
        with pytest.warns(UserWarning, match=r"but [0-9]+ samples have been fetched\. For "
                                             r"multiprocessing data-loading, this"):
            next(it)
    del it


# ---------------------------------------------------------------- 0 workers == N workers


class DictDataset:
    def __len__(self):
        return 9

    def __getitem__(self, i):
        return {"a": {"b": np.arange(i, i + 3), "c": float(i)}, "s": str(i) * 2}


class NamedTupleDataset:
    def __len__(self):
        return 9

    def __getitem__(self, i):
        return Point(x=Point(i, "x%d" % i), y=np.float32(i) / 2)


class StringDataset:
    def __len__(self):
        return 9

    def __getitem__(self, i):
        return ("abc"[i % 3] * i, i)


@pytest.mark.parametrize("dataset_cls", [DictDataset, NamedTupleDataset, StringDataset])
def test_same_results_with_and_without_workers(dataset_cls):
    for batch_size in (None, 4):
        zero = list(DataLoader(dataset_cls(), batch_size=batch_size, num_workers=0))
        two = list(DataLoader(dataset_cls(), batch_size=batch_size, num_workers=2))
        assert_same(two, zero, f"batch_size={batch_size}")
        theirs = list(tud.DataLoader(dataset_cls(), batch_size=batch_size))
        assert_same(to_numpy(two), to_numpy(theirs), f"batch_size={batch_size}")


def test_same_results_iterable_one_worker():
    """An unsharded iterable dataset at 1 worker gives exactly what 0 workers give."""
    for batch_size in (None, 4):
        zero = list(DataLoader(CountingIterable(10), batch_size=batch_size, num_workers=0))
        one = list(DataLoader(CountingIterable(10), batch_size=batch_size, num_workers=1))
        assert_same(one, zero, f"batch_size={batch_size}")


def test_same_results_numpy_output_sharded_iterable():
    """Sharded by worker, N workers yield the same samples as 0 workers (order aside)."""
    zero = list(DataLoader(ShardedRange(0, 30), batch_size=None, output="numpy"))
    three = list(DataLoader(ShardedRange(0, 30), batch_size=None, num_workers=3,
                            output="numpy"))
    assert sorted(three) == zero == list(range(30))


def test_bulk_loading_nobatch():
    """batch_size=None with a sampler that yields lists: the dataset receives the lists."""

    class Bulk:
        def __len__(self):
            return 10

        def __getitem__(self, keys):
            assert isinstance(keys, list)
            return np.array(keys) * 2

    sampler = [[0, 1, 2], [3, 4], [5, 6, 7, 8, 9]]
    dl = DataLoader(Bulk(), batch_size=None, sampler=sampler, num_workers=2, output="numpy")
    assert [b.tolist() for b in dl] == [[0, 2, 4], [6, 8], [10, 12, 14, 16, 18]]


# ---------------------------------------------------------------- torch output


def _memfd_ranges():
    """Address ranges of this process's memfd mappings (the engine's slots)."""
    ranges = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            if "/memfd:" in line:
                lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
                ranges.append((lo, hi))
    return ranges


def _in_memfd(address):
    return any(lo <= address < hi for lo, hi in _memfd_ranges())


class BigArrays:
    """Samples of 128 KiB, so a batch goes through a shared slot, not inline."""

    def __len__(self):
        return 8

    def __getitem__(self, i):
        return np.full(16384, i, np.float64), i


def test_torch_output_is_zero_copy_tensors():
    dl = DataLoader(BigArrays(), batch_size=2, num_workers=2)  # torch imported: auto → torch
    for i, (x, y) in enumerate(dl):
        assert isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)
        assert x.dtype == torch.float64 and y.dtype == torch.int64
        assert torch.equal(x[:, 0], torch.tensor([2 * i, 2 * i + 1], dtype=torch.float64))
        assert _in_memfd(x.data_ptr()), "the batch should be a view on a worker slot"
    assert_same(list(DataLoader(BigArrays(), batch_size=2, num_workers=2)),
                list(tud.DataLoader(BigArrays(), batch_size=2, num_workers=2)))


def test_numpy_output_is_zero_copy_arrays():
    dl = DataLoader(BigArrays(), batch_size=2, num_workers=2, output="numpy")
    for x, y in dl:
        assert type(x) is np.ndarray and type(y) is np.ndarray
        assert _in_memfd(x.__array_interface__["data"][0])


class TorchSamples:
    def __len__(self):
        return 10

    def __getitem__(self, i):
        return torch.arange(3, dtype=torch.float32) + i, torch.tensor(i), {"big": torch.full(
            (20000,), i, dtype=torch.int32)}


def test_torch_samples_collate_to_tensors():
    theirs = list(tud.DataLoader(TorchSamples(), batch_size=3, num_workers=2))
    for output in ("auto", "torch"):
        ours = list(DataLoader(TorchSamples(), batch_size=3, num_workers=2, output=output))
        assert_same(ours, theirs)
        assert _in_memfd(ours[0][2]["big"].data_ptr())


def test_torch_samples_unbatched():
    ours = list(DataLoader(TorchSamples(), batch_size=None, num_workers=2))
    theirs = list(tud.DataLoader(TorchSamples(), batch_size=None, num_workers=2))
    assert_same(ours, theirs)
