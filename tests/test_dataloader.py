"""DataLoader with num_workers=0: ports of torch's test_dataloader.py catalogue (ordering,
batching, samplers, dict and namedtuple batches, construction errors, lengths, warnings)
and differential tests that run torch's own DataLoader on the same dataset and arguments.

Workers are tested in ``test_workers*.py``. Deliberate differences from torch are tested
as our documented behaviour: ``output=`` (numpy or torch batches), ``generator`` (an int,
a numpy Generator or a torch.Generator; shuffles reproducible, not bit-identical).
"""

import collections
import math
import multiprocessing
import pickle
import subprocess
import sys
import textwrap
import warnings
from typing import List

import numpy as np
import pytest
import torch
import torch.utils.data as tud
from torch.utils.data._utils import collate as torch_collate

import loader
from loader import DataLoader
from loader.collate import default_collate_fn_map

from helpers import CustomDict, CustomList, Opaque, Point, assert_same, raised


# --- comparison helpers -----------------------------------------------------------------


def run_recording(fn):
    """``(result, [(category, message), ...])``: what ``fn()`` returns and warns."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn()
    return result, [(w.category, str(w.message)) for w in caught]


def both(dataset, arrays="torch", **kwargs):
    """Run ``dataset`` through torch's DataLoader and ours with the same arguments; assert
    the same length, batches and warnings; return our loader."""
    output = {"torch": "auto", "numpy": "numpy"}[arrays]
    theirs_loader = tud.DataLoader(dataset, **kwargs)
    ours_loader = DataLoader(dataset, output=output, **kwargs)
    if hasattr(dataset, "__len__"):
        assert len(ours_loader) == len(theirs_loader)
    theirs, their_warnings = run_recording(lambda: list(theirs_loader))
    ours, our_warnings = run_recording(lambda: list(ours_loader))
    assert our_warnings == their_warnings
    assert_same(ours, theirs, arrays)
    return ours_loader


# --- datasets (plain classes: both DataLoaders accept them) ------------------------------


class ArrayDataset:
    """torch's fixture: 100 samples of shape (2, 3, 5) and labels 0..49 twice, shuffled."""

    def __init__(self):
        rng = np.random.default_rng(0)
        self.data = rng.standard_normal((100, 2, 3, 5))
        self.labels = np.tile(rng.permutation(50), 2)

    def __getitem__(self, i):
        return self.data[i], self.labels[i]

    def __len__(self):
        return len(self.data)


class CountingDataset:
    def __init__(self, n):
        self.n = n

    def __getitem__(self, i):
        return i

    def __len__(self):
        return self.n


class CountingIterableDataset(tud.IterableDataset):
    """torch's IterableDataset class: our loader recognises it as iterable-style too."""

    def __init__(self, n, reported_len=None):
        self.n = n
        self.reported_len = n if reported_len is None else reported_len

    def __iter__(self):
        return iter(range(self.n))

    def __len__(self):
        return self.reported_len

    def __repr__(self):
        return f"CountingIterableDataset({self.n})"


class OurCountingIterableDataset(loader.IterableDataset):
    def __init__(self, n):
        self.n = n

    def __iter__(self):
        return iter(range(self.n))


class UnsizedIterableDataset(tud.IterableDataset):
    def __iter__(self):
        return iter(range(7))


class DictDataset:
    def __len__(self):
        return 4

    def __getitem__(self, ndx):
        return {"a_tensor": np.full((4, 2), ndx, dtype=np.float32),
                "another_dict": {"a_number": ndx}}


class NamedTupleDataset:
    Batch = collections.namedtuple("Batch", ["data", "label", "random_tensor"])
    Data = collections.namedtuple("Data", ["positive", "negative"])

    def __init__(self):
        self.random = np.random.default_rng(1).standard_normal((4, 3)).astype(np.float32)

    def __getitem__(self, ndx):
        return self.Batch(data=self.Data(positive=ndx, negative=-ndx), label=str(ndx),
                          random_tensor=self.random[ndx])

    def __len__(self):
        return 4


class ContainerDataset:
    """Every container type torch's collate keeps or changes, with numbers, strings and
    arrays of several dtypes inside."""

    def __len__(self):
        return 6

    def __getitem__(self, i):
        return {
            "tuple": (i, float(i), str(i)),
            "list": [np.int16(i), b"x" * i],
            "custom_list": CustomList([i, np.arange(3, dtype=np.uint8) + i]),
            "custom_dict": CustomDict(a=np.float16(i), b=[True, i % 2 == 0]),
            "ordered": collections.OrderedDict(z=i, a=np.array([i, i], dtype=np.int32)),
            "point": Point(x=np.float32(i), y=(i, str(i))),
        }


class TensorSampleDataset:
    def __len__(self):
        return 5

    def __getitem__(self, i):
        return torch.arange(3, dtype=torch.float32) + i, torch.tensor(i)


class ErrorDataset(loader.Dataset):
    """No ``__getitem__``: every fetch raises the base class's NotImplementedError."""

    def __init__(self, size):
        self.size = size

    def __len__(self):
        return self.size


class TorchErrorDataset(tud.Dataset):
    def __init__(self, size):
        self.size = size

    def __len__(self):
        return self.size


class BulkLoadingDataset:
    def __init__(self, length):
        self.length = length

    def __getitem__(self, indices):
        assert isinstance(indices, (list, tuple))
        return np.asarray(indices)

    def __len__(self):
        return self.length


class BulkLoadingSampler:
    def __init__(self, dataset, batch_size):
        self.dataset = dataset
        self.batch_size = batch_size

    def __iter__(self):
        order = np.random.default_rng(3).permutation(len(self.dataset))
        for start in range(0, len(order), self.batch_size):
            yield order[start:start + self.batch_size].tolist()

    def __len__(self):
        return math.ceil(len(self.dataset) / self.batch_size)


class GetitemsDataset:
    """Records how it was asked: one ``__getitems__`` call per batch, or single keys."""

    def __init__(self, n):
        self.n = n
        self.calls = []

    def __getitem__(self, i):
        self.calls.append(("getitem", i))
        return i * 10

    def __getitems__(self, indices):
        self.calls.append(("getitems", list(indices)))
        return [i * 10 for i in indices]

    def __len__(self):
        return self.n


# --- differential: the same batches as torch --------------------------------------------

MAP_CONFIGS = {
    "batch_none": dict(batch_size=None),
    "batch_1": dict(batch_size=1),
    "batch_2": dict(batch_size=2),
    "batch_3": dict(batch_size=3),
    "batch_7_drop_last": dict(batch_size=7, drop_last=True),
    "batch_7": dict(batch_size=7),
    "batch_larger_than_dataset": dict(batch_size=1000),
    "batch_larger_drop_last": dict(batch_size=1000, drop_last=True),
    "sampler_range": dict(sampler=range(2, 12), batch_size=2),
    "sampler_range_nobatch": dict(sampler=range(2, 12), batch_size=None),
    "torch_sequential_sampler": dict(sampler=tud.SequentialSampler(range(100)), batch_size=4),
    "batch_sampler_tuples": dict(batch_sampler=[(0, 1), (2, 3, 4), (5, 6), (99, 98, 0)]),
    "batch_sampler_lists": dict(batch_sampler=[[i, i + 1] for i in range(0, 20, 2)]),
}


def mismatches(runs):
    """Run ``both(...)`` for each ``name: (dataset_factory, arrays, kwargs)``; the failures
    by name. (One test per table keeps the suite fast: the leak fixture costs a gc pass
    per test.)"""
    failed = {}
    for name, (make, arrays, kwargs) in runs.items():
        try:
            both(make(), arrays, **kwargs)
        except Exception as exc:  # noqa: BLE001  (report every case, whatever broke)
            failed[name] = f"{type(exc).__name__}: {str(exc).splitlines()[:1]}"
    return failed


def test_map_dataset_batches_match_torch():
    dataset = ArrayDataset()
    assert mismatches({(name, arrays): (lambda: dataset, arrays, kwargs)
                       for name, kwargs in MAP_CONFIGS.items()
                       for arrays in ("torch", "numpy")}) == {}


def test_container_batches_match_torch():
    """Containers (list vs tuple vs dict subclass vs namedtuple), str and bytes fields,
    torch-tensor samples: the same types and values as torch, in both output modes
    (tensor samples collate to tensors in either mode, so they run in torch mode only)."""
    factories = {"containers": ContainerDataset, "dicts": DictDataset,
                 "namedtuples": NamedTupleDataset, "tensors": TensorSampleDataset,
                 "ints": lambda: CountingDataset(5)}
    assert mismatches({(name, arrays, batch_size): (make, arrays, dict(batch_size=batch_size))
                       for name, make in factories.items() for batch_size in (None, 2, 4)
                       for arrays in ("torch", "numpy")
                       if not (name == "tensors" and arrays == "numpy")}) == {}


def test_iterable_dataset_batches_match_torch():
    configs = [dict(batch_size=None), dict(batch_size=1), dict(batch_size=3),
               dict(batch_size=3, drop_last=True), dict(batch_size=20),
               dict(batch_size=20, drop_last=True)]
    assert mismatches({(str(kwargs), arrays): (lambda: CountingIterableDataset(20), arrays, kwargs)
                       for kwargs in configs for arrays in ("torch", "numpy")}) == {}


def test_batches_of_torch_tensor_dataset_match_torch():
    x, y = torch.randn(10, 3), torch.arange(10)
    ours = list(DataLoader(loader.TensorDataset(x, y), batch_size=4))
    theirs = list(tud.DataLoader(tud.TensorDataset(x, y), batch_size=4))
    assert_same(ours, theirs, "torch")
    ours = list(DataLoader(loader.TensorDataset(x.numpy(), y.numpy()), batch_size=4))
    assert_same(ours, theirs, "torch")
    ours = list(DataLoader(tud.TensorDataset(x, y), batch_size=4))  # torch's own dataset
    assert_same(ours, theirs, "torch")


# --- ordering and batching (torch's TestDataLoader) -------------------------------------


@pytest.fixture(scope="module")
def dataset():
    return ArrayDataset()


def check_sequential(dl, dataset):
    batch_size = dl.batch_size
    if batch_size is None:
        for idx, (sample, target) in enumerate(dl):
            assert np.array_equal(sample.numpy(), dataset.data[idx])
            assert target.item() == dataset.labels[idx]
        assert idx == len(dataset) - 1
    else:
        for i, (sample, target) in enumerate(dl):
            idx = i * batch_size
            assert np.array_equal(sample.numpy(), dataset.data[idx:idx + batch_size])
            assert np.array_equal(target.numpy(), dataset.labels[idx:idx + batch_size])
        assert i == math.floor((len(dataset) - 1) / batch_size)


def check_shuffle(dl, dataset):
    """Each sample exactly once per epoch, with its own label."""
    found = np.zeros(len(dataset), dtype=int)
    keys = {row.tobytes(): idx for idx, row in enumerate(dataset.data)}
    count = 0
    for samples, targets in dl:
        if dl.batch_size is None:
            samples, targets = samples[None], targets[None]
        for sample, target in zip(samples.numpy(), targets.numpy()):
            idx = keys[sample.tobytes()]
            assert found[idx] == 0
            found[idx] += 1
            assert target == dataset.labels[idx]
        count += 1
    assert (found == 1).all()
    expected = len(dataset) if dl.batch_size is None else math.ceil(len(dataset) / dl.batch_size)
    assert count == expected


def test_sequential_nonbatch(dataset):
    check_sequential(DataLoader(dataset, batch_size=None), dataset)


def test_sequential_batch(dataset):
    for batch_size in (1, 2, 3):
        check_sequential(DataLoader(dataset, batch_size=batch_size), dataset)


def test_shuffle(dataset):
    for batch_size in (None, 1, 2, 3):
        dl = DataLoader(dataset, batch_size=batch_size, shuffle=True)
        check_shuffle(dl, dataset)
        check_shuffle(dl, dataset)  # a second epoch too


def test_sampler_range(dataset):
    """torch's test_sampler: any iterable of keys is a sampler."""
    dl = DataLoader(dataset, sampler=range(2, 12), batch_size=2)
    assert len(dl) == 5
    for i, (inputs, _target) in enumerate(dl):
        assert len(inputs) == 2
        assert np.array_equal(inputs.numpy(), dataset.data[i * 2 + 2:i * 2 + 4])
    assert i == 4


def test_batch_sampler_list_of_tuples(dataset):
    """torch's test_batch_sampler: [(0, 1), (2, 3, 4), (5, 6), (7, 8, 9), ...]."""
    batches = []
    for i in range(0, 20, 5):
        batches.append(tuple(range(i, i + 2)))
        batches.append(tuple(range(i + 2, i + 5)))
    dl = DataLoader(dataset, batch_sampler=batches)
    assert len(dl) == 8 and dl.batch_size is None and dl.drop_last is False
    for i, (inputs, _target) in enumerate(dl):
        offset = i * 5 // 2
        size = 2 if i % 2 == 0 else 3
        assert len(inputs) == size
        assert np.array_equal(inputs.numpy(), dataset.data[offset:offset + size])
    assert i == 7


def test_dict_batches():
    """TestDictDataLoader.test_sequential_batch (num_workers=0)."""
    dl = DataLoader(DictDataset(), batch_size=2, shuffle=False)
    batch_size = dl.batch_size
    for i, sample in enumerate(dl):
        idx = i * batch_size
        assert set(sample.keys()) == {"a_tensor", "another_dict"}
        assert set(sample["another_dict"].keys()) == {"a_number"}
        t = sample["a_tensor"]
        assert t.size() == torch.Size([batch_size, 4, 2])
        assert (t[0] == idx).all() and (t[1] == idx + 1).all()
        n = sample["another_dict"]["a_number"]
        assert n.size() == torch.Size([batch_size])
        assert n[0] == idx and n[1] == idx + 1
    assert i == 1


def test_namedtuple_batches():
    """TestNamedTupleDataLoader.test_dataloader_with_namedtuple (without pinning)."""
    Batch, Data = NamedTupleDataset.Batch, NamedTupleDataset.Data
    for batch in DataLoader(NamedTupleDataset(), batch_size=2):
        assert isinstance(batch, Batch) and isinstance(batch.data, Data)
        assert isinstance(batch.data.positive, torch.Tensor)
        assert isinstance(batch.random_tensor, torch.Tensor)
        assert type(batch.label) is tuple and all(type(s) is str for s in batch.label)
    for batch in DataLoader(NamedTupleDataset(), batch_size=None):
        assert isinstance(batch, Batch) and isinstance(batch.data, Data)
        assert type(batch.data.positive) is int  # no auto-collation: ints stay ints
        assert isinstance(batch.random_tensor, torch.Tensor)


def test_numpy_samples_give_float64_tensors():
    """torch's test_numpy: (2, 3, 4) float64 samples -> a (12, 2, 3, 4) DoubleTensor."""
    dataset = [np.ones((2, 3, 4)) * i for i in range(1000)]
    batch = next(iter(DataLoader(dataset, batch_size=12)))
    assert isinstance(batch, torch.DoubleTensor) and batch.size() == torch.Size([12, 2, 3, 4])


def test_numpy_scalars_keep_dtypes():
    """torch's test_numpy_scalars, through the DataLoader."""
    dtypes = {np.float64: torch.DoubleTensor, np.float32: torch.FloatTensor,
              np.float16: torch.HalfTensor, np.int64: torch.LongTensor,
              np.int32: torch.IntTensor, np.int16: torch.ShortTensor,
              np.int8: torch.CharTensor, np.uint8: torch.ByteTensor}
    for dt, tt in dtypes.items():
        batch = next(iter(DataLoader([dt(i) for i in range(4)], batch_size=2)))
        assert isinstance(batch, tt), dt
        batch = next(iter(DataLoader([dt(i) for i in range(4)], batch_size=2, output="numpy")))
        assert type(batch) is np.ndarray and batch.dtype == np.dtype(dt)


def test_iterable_dataset_unbatched_ints_stay_ints():
    dataset = CountingIterableDataset(20)
    dl = DataLoader(dataset, batch_size=None)
    fetched = list(dl)
    assert len(fetched) == 20
    for i, d in enumerate(fetched):
        assert isinstance(d, int) and d == i
    assert len(dl) == len(dataset)


class ErrorIterableDataset(tud.IterableDataset):
    def __iter__(self):
        raise RuntimeError("Error in __iter__")


class ErrorGeneratorDataset(tud.IterableDataset):
    def __iter__(self):
        raise RuntimeError("Error in __iter__")
        yield


def test_error_in_iterable_init_surfaces_where_torch_raises_it():
    """torch's test_error_in_init (num_workers=0): ``__iter__`` runs when the iterator is
    made, so a plain ``__iter__`` fails on iter() and a generator one on next()."""
    for module in (loader, tud):
        with pytest.raises(RuntimeError, match="Error in __iter__"):
            iter(module.DataLoader(ErrorIterableDataset()))
        it = iter(module.DataLoader(ErrorGeneratorDataset()))
        with pytest.raises(RuntimeError, match="Error in __iter__"):
            next(it)


def test_our_iterable_dataset_and_chain():
    """Our IterableDataset; ``ds1 + ds2`` chains (torch's test_chain_iterable_style_dataset)."""
    ds1, ds2 = OurCountingIterableDataset(5), OurCountingIterableDataset(3)
    assert [int(b) for b in DataLoader(ds1 + ds2)] == [0, 1, 2, 3, 4, 0, 1, 2]
    batches = list(DataLoader(loader.ChainDataset([ds1, ds2]), batch_size=3, drop_last=True))
    assert [b.tolist() for b in batches] == [[0, 1, 2], [3, 4, 0]]
    chain_with_map = loader.ChainDataset([ds1, CountingDataset(2)])
    with pytest.raises(AssertionError, match="ChainDataset only supports IterableDataset"):
        list(DataLoader(chain_with_map))


def test_bulk_loading_nobatch():
    """batch_size=None and a sampler of lists: the dataset gets the lists, no collation."""
    n, bs = 35, 4
    ds = BulkLoadingDataset(n)
    dl = DataLoader(ds, batch_size=None, sampler=BulkLoadingSampler(ds, batch_size=bs))
    assert not dl._auto_collation and len(dl) == 9
    samples = list(dl)
    assert all(isinstance(s, torch.Tensor) for s in samples)
    assert sorted(torch.cat(samples, 0).tolist()) == list(range(n))


def test_getitems_is_used_for_batches_only():
    ds = GetitemsDataset(5)
    batches = list(DataLoader(ds, batch_size=2, output="numpy"))
    assert [b.tolist() for b in batches] == [[0, 10], [20, 30], [40]]
    assert ds.calls == [("getitems", [0, 1]), ("getitems", [2, 3]), ("getitems", [4])]
    ds.calls.clear()
    assert list(DataLoader(ds, batch_size=None)) == [0, 10, 20, 30, 40]
    assert ds.calls == [("getitem", i) for i in range(5)]
    torch_ds = GetitemsDataset(5)
    both(torch_ds, batch_size=2)
    assert [c[0] for c in torch_ds.calls] == ["getitems"] * 6  # torch's loader, then ours


def test_batch_sampler_may_yield_iterators():
    class IteratorBatches:
        def __iter__(self):
            yield iter([0, 1])
            yield iter([2])

        def __len__(self):
            return 2

    both(CountingDataset(3), batch_sampler=IteratorBatches())


def test_getitems_set_to_none_falls_back_to_getitem():
    class NoBulk(GetitemsDataset):
        __getitems__ = None

    ds = NoBulk(3)
    assert [b.tolist() for b in DataLoader(ds, batch_size=3)] == [[0, 10, 20]]
    assert [c[0] for c in ds.calls] == ["getitem"] * 3


def test_builtin_collection_conversion():
    for coll_ty in (list, tuple):
        for dataset in (CountingDataset(20), CountingIterableDataset(20)):
            fetched = coll_ty(DataLoader(dataset, batch_size=None))
            assert fetched == coll_ty(range(20))
            fetched = coll_ty(DataLoader(dataset, batch_size=2))
            assert type(fetched) is coll_ty and len(fetched) == 10
            assert all(torch.equal(b, torch.tensor([i, i + 1]))
                       for b, i in zip(fetched, range(0, 20, 2)))
        assert coll_ty(DataLoader(UnsizedIterableDataset(), batch_size=None)) == coll_ty(range(7))


def test_errors_do_not_end_iteration():
    """torch's test_error: every batch raises, iteration goes on, then StopIteration."""
    for dataset_cls in (ErrorDataset, TorchErrorDataset):
        for dl_cls in (DataLoader, tud.DataLoader):
            it = iter(dl_cls(dataset_cls(7), batch_size=2))
            errors = []
            while True:
                try:
                    next(it)
                except NotImplementedError as exc:
                    errors.append(str(exc))
                except StopIteration:
                    break
            assert errors == ["Subclasses of Dataset should implement __getitem__."] * 4


def test_exhausted_iterator_keeps_stopping_and_iter_gives_new_iterators():
    dl = DataLoader(CountingDataset(3), batch_size=2)
    it = iter(dl)
    assert len(list(it)) == 2
    with pytest.raises(StopIteration):
        next(it)
    assert iter(dl) is not iter(dl)
    assert len(it) == len(dl) == 2
    dl.close()  # nothing to shut down without workers; the loader still works
    assert len(list(dl)) == 2


# --- samplers, as the DataLoader uses them ------------------------------------------------


def test_random_sampler_len_with_replacement(dataset):
    num_samples = 60
    sampler = loader.RandomSampler(dataset, replacement=True, num_samples=num_samples)
    check_len(DataLoader(dataset, batch_size=1, sampler=sampler), num_samples)
    check_len(DataLoader(dataset, batch_size=6, sampler=sampler), 10)
    check_len(DataLoader(dataset, batch_size=7, sampler=sampler), 9)


def test_random_sampler_len_without_replacement(dataset):
    for num_samples in (60, 100, 150):
        sampler = loader.RandomSampler(dataset, replacement=False, num_samples=num_samples)
        check_len(DataLoader(dataset, batch_size=1, sampler=sampler), num_samples)
        check_len(DataLoader(dataset, batch_size=6, sampler=sampler), math.ceil(num_samples / 6))
        labels = [int(i) for i in DataLoader(range(100), batch_size=None, sampler=sampler)]
        assert len(labels) == num_samples
        assert len(set(labels)) == min(num_samples, 100)


def test_torch_samplers_drive_our_loader():
    """Any iterable of keys is a sampler, torch's own included."""
    sampler = tud.SubsetRandomSampler(range(10, 20), generator=torch.Generator().manual_seed(0))
    keys = [int(k) for k in DataLoader(CountingDataset(30), batch_size=None, sampler=sampler)]
    assert sorted(keys) == list(range(10, 20))


def test_duplicating_data_with_drop_last():
    """4 replicas of a DistributedSampler with drop_last batches: no sample twice."""
    num_processes, num_batches = 4, 9
    data = np.arange(num_batches, dtype=np.int32)
    scanned = []
    for rank in range(num_processes):
        sampler = loader.DistributedSampler(data, num_processes, rank)
        dl = DataLoader(data, batch_size=num_batches // num_processes, drop_last=True,
                        sampler=sampler)
        for batch in dl:
            assert batch.dtype == torch.int32
            scanned.extend(batch.tolist())
    assert len(scanned) == len(set(scanned)) == 8


# --- lengths ----------------------------------------------------------------------------


def check_len(dl, expected):
    assert len(dl) == expected
    assert sum(1 for _ in dl) == expected


def test_len(dataset):
    check_len(DataLoader(dataset), 100)
    check_len(DataLoader(dataset, batch_size=2), 50)
    check_len(DataLoader(dataset, batch_size=3), 34)
    check_len(DataLoader(dataset, batch_size=3, drop_last=True), 33)
    check_len(DataLoader(dataset, batch_size=None), 100)
    check_len(DataLoader(dataset, batch_size=None, sampler=range(2, 12)), 10)


def test_iterabledataset_len():
    for batch_size, drop_last, expected in [(1, False, 10), (1, True, 10), (2, False, 5),
                                            (2, True, 5), (3, False, 4), (3, True, 3),
                                            (None, False, 10)]:
        dl = DataLoader(CountingIterableDataset(10), batch_size=batch_size, drop_last=drop_last)
        assert len(dl) == expected
        assert len(tud.DataLoader(CountingIterableDataset(10), batch_size=batch_size,
                                  drop_last=drop_last)) == expected
        assert len(list(dl)) == expected


def test_len_of_unsized_iterable_dataset_raises_like_torch():
    ds = UnsizedIterableDataset()
    assert raised(lambda: len(DataLoader(ds))) == raised(lambda: len(tud.DataLoader(ds)))


def test_len_of_unsized_sampler_raises_like_torch():
    sampler = iter(range(4))
    ours = raised(lambda: len(DataLoader(CountingDataset(4), sampler=sampler, batch_size=None)))
    assert ours == raised(lambda: len(tud.DataLoader(CountingDataset(4), sampler=sampler,
                                                      batch_size=None)))
    assert ours[0] is TypeError


def test_growing_dataset():
    dataset = [np.ones(4) for _ in range(4)]
    dl_seq = DataLoader(dataset, shuffle=False)
    dl_shuffle = DataLoader(dataset, shuffle=True)
    dl_batched = DataLoader(dataset, batch_size=2)
    dataset.append(np.ones(4))
    assert len(dl_seq) == 5 and len(dl_shuffle) == 5 and len(dl_batched) == 3
    assert len(list(dl_shuffle)) == 5


# --- construction errors (torch's test_invalid_ctor_args_combinations) ------------------

MAP = CountingDataset(20)
ITERABLE = CountingIterableDataset(20)
SAMPLER = tud.SequentialSampler(MAP)
BATCH_SAMPLER = tud.BatchSampler(SAMPLER, 3, False)
SPAWN = multiprocessing.get_context("spawn")
OBJECT = object()

# Every construction error torch raises, in torch's order of checks: where several apply,
# the first in this list is the one reported.
CTOR_ERRORS = [
    ("num_workers<0", dict(num_workers=-1),
     "num_workers option should be non-negative; use num_workers=0 to disable multiprocessing."),
    ("num_workers<0 beats timeout", dict(num_workers=-1, timeout=-1),
     "num_workers option should be non-negative"),
    ("timeout<0", dict(timeout=-1), "timeout option should be non-negative"),
    ("timeout beats prefetch", dict(timeout=-1, prefetch_factor=2),
     "timeout option should be non-negative"),
    ("prefetch without workers", dict(prefetch_factor=2),
     "prefetch_factor option could only be specified in multiprocessing.let num_workers > 0 "
     "to enable multiprocessing, otherwise set prefetch_factor to None."),
    ("prefetch<0", dict(num_workers=1, prefetch_factor=-1),
     "prefetch_factor option should be non-negative"),
    ("persistent without workers", dict(persistent_workers=True),
     "persistent_workers option needs num_workers > 0"),
    ("prefetch beats persistent", dict(prefetch_factor=2, persistent_workers=True),
     "prefetch_factor option could only be specified"),
    ("context without workers", dict(multiprocessing_context=SPAWN),
     "multiprocessing_context can only be used with multi-process loading (num_workers > 0), "
     "but got num_workers=0"),
    ("context string without workers", dict(multiprocessing_context="spawn"),
     "multiprocessing_context can only be used"),
    ("bad start method", dict(num_workers=1, multiprocessing_context="bad"),
     "multiprocessing_context option should specify a valid start method in ["),
    ("context not a context", dict(num_workers=1, multiprocessing_context=OBJECT),
     f"multiprocessing_context option should be a valid context object or a string "
     f"specifying the start method, but got multiprocessing_context={OBJECT}"),
    ("context beats sampler checks", dict(multiprocessing_context=SPAWN, sampler=SAMPLER,
                                          shuffle=True),
     "multiprocessing_context can only be used"),
    ("sampler and shuffle", dict(batch_size=11, sampler=SAMPLER, shuffle=True),
     "sampler option is mutually exclusive with shuffle"),
    ("sampler+shuffle beats batch_sampler", dict(batch_sampler=BATCH_SAMPLER, sampler=SAMPLER,
                                                 shuffle=True),
     "sampler option is mutually exclusive with shuffle"),
    ("shuffle=3", dict(batch_sampler=BATCH_SAMPLER, sampler=SAMPLER, shuffle=3),
     "sampler option is mutually exclusive with shuffle"),
    ("batch_sampler and batch_size", dict(batch_size=11, batch_sampler=BATCH_SAMPLER),
     "batch_sampler option is mutually exclusive with batch_size, shuffle, sampler, and "
     "drop_last"),
    ("batch_sampler and batch_size=None", dict(batch_size=None, batch_sampler=BATCH_SAMPLER),
     "batch_sampler option is mutually exclusive"),
    ("batch_sampler and shuffle", dict(shuffle=True, batch_sampler=BATCH_SAMPLER),
     "batch_sampler option is mutually exclusive"),
    ("batch_sampler and sampler", dict(sampler=SAMPLER, batch_sampler=BATCH_SAMPLER),
     "batch_sampler option is mutually exclusive"),
    ("batch_sampler and drop_last", dict(drop_last=True, batch_sampler=BATCH_SAMPLER),
     "batch_sampler option is mutually exclusive"),
    ("batch_sampler and drop_last=3", dict(drop_last=3, batch_sampler=BATCH_SAMPLER),
     "batch_sampler option is mutually exclusive"),
    ("no batching and drop_last", dict(batch_size=None, drop_last=True),
     "batch_size=None option disables auto-batching and is mutually exclusive with drop_last"),
    ("batch_size=0", dict(batch_size=0),
     "batch_size should be a positive integer value, but got batch_size=0"),
    ("batch_size=-3", dict(batch_size=-3), "batch_size should be a positive integer value"),
    ("batch_size=2.0", dict(batch_size=2.0), "batch_size should be a positive integer value"),
    ("batch_size=True", dict(batch_size=True), "batch_size should be a positive integer value"),
    ("drop_last=3", dict(drop_last=3), "drop_last should be a boolean value, but got drop_last=3"),
]

ITERABLE_CTOR_ERRORS = [
    ("shuffle=True", dict(shuffle=True),
     "DataLoader with IterableDataset: expected unspecified shuffle option, but got shuffle=True"),
    ("shuffle=3", dict(shuffle=3), "expected unspecified shuffle option, but got shuffle=3"),
    ("sampler", dict(sampler=SAMPLER),
     f"DataLoader with IterableDataset: expected unspecified sampler option, but got "
     f"sampler={SAMPLER}"),
    ("sampler=3", dict(sampler=3), "expected unspecified sampler option, but got sampler=3"),
    ("batch_sampler", dict(batch_sampler=BATCH_SAMPLER),
     f"DataLoader with IterableDataset: expected unspecified batch_sampler option, but got "
     f"batch_sampler={BATCH_SAMPLER}"),
    ("batch_sampler=3", dict(batch_sampler=3), "but got batch_sampler=3"),
    ("shuffle beats sampler", dict(shuffle=True, sampler=SAMPLER, batch_sampler=3),
     "expected unspecified shuffle option"),
    ("sampler beats batch_sampler", dict(sampler=3, batch_sampler=3),
     "expected unspecified sampler option"),
    ("iterable checks beat drop_last", dict(shuffle=True, batch_size=None, drop_last=True),
     "expected unspecified shuffle option"),
    ("workers checks beat iterable checks", dict(timeout=-1, shuffle=True),
     "timeout option should be non-negative"),
    ("no batching and drop_last", dict(batch_size=None, drop_last=True),
     "batch_size=None option disables auto-batching"),
    ("batch_size=0", dict(batch_size=0), "batch_size should be a positive integer value"),
    ("drop_last=3", dict(drop_last=3), "drop_last should be a boolean value"),
]


def ctor_failures(dataset, table, against_torch=True):
    """The cases of ``table`` where we do not raise what torch raises (type and message),
    or where the message does not contain the table's text."""
    failed = {}
    for name, kwargs, message in table:
        ours = raised(lambda: DataLoader(dataset, **kwargs))
        theirs = raised(lambda: tud.DataLoader(dataset, **kwargs)) if against_torch else ours
        if ours != theirs or ours[0] not in (ValueError, TypeError) or message not in ours[1]:
            failed[name] = (ours, theirs)
    return failed


def test_invalid_ctor_args_combinations_map_style():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # num_workers=1 on a small machine
        assert ctor_failures(MAP, CTOR_ERRORS) == {}


def test_invalid_ctor_args_combinations_iterable():
    assert ctor_failures(ITERABLE, ITERABLE_CTOR_ERRORS) == {}
    ours = OurCountingIterableDataset(20)  # torch's DataLoader takes it for map-style
    assert ctor_failures(ours, [(name, kwargs, message.replace(repr(ITERABLE), repr(ours)))
                                for name, kwargs, message in ITERABLE_CTOR_ERRORS],
                         against_torch=False) == {}


def test_valid_combinations_build():
    """The allowed neighbours of the errors above build, in both DataLoaders."""
    for kwargs in (dict(sampler=SAMPLER, shuffle=False), dict(batch_sampler=BATCH_SAMPLER),
                   dict(batch_sampler=BATCH_SAMPLER, shuffle=False, drop_last=False,
                        batch_size=1), dict(batch_size=None, drop_last=False),
                   dict(num_workers=1, multiprocessing_context=SPAWN),
                   dict(num_workers=1, multiprocessing_context="spawn", prefetch_factor=0)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ours, theirs = DataLoader(MAP, **kwargs), tud.DataLoader(MAP, **kwargs)
        assert ours.batch_size == theirs.batch_size and ours.drop_last == theirs.drop_last
        assert ours.prefetch_factor == theirs.prefetch_factor
    for kwargs in (dict(shuffle=False), dict(shuffle=None, batch_size=None)):
        DataLoader(ITERABLE, **kwargs)


def test_attributes_after_construction_match_torch():
    for kwargs in (dict(), dict(batch_size=None), dict(batch_sampler=BATCH_SAMPLER),
                   dict(shuffle=True, batch_size=4, drop_last=True)):
        ours, theirs = DataLoader(MAP, **kwargs), tud.DataLoader(MAP, **kwargs)
        for attr in ("batch_size", "drop_last", "num_workers", "prefetch_factor", "timeout",
                     "pin_memory", "persistent_workers", "_auto_collation", "generator"):
            assert getattr(ours, attr) == getattr(theirs, attr), (kwargs, attr)
        assert type(ours.sampler).__name__ == type(theirs.sampler).__name__
        assert (ours.batch_sampler is None) == (theirs.batch_sampler is None)
        assert ours.collate_fn.__name__ == theirs.collate_fn.__name__
    assert DataLoader(ITERABLE).sampler.__class__.__name__ == "_InfiniteConstantSampler"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert DataLoader(MAP, num_workers=1).prefetch_factor == 2


# --- frozen attributes ------------------------------------------------------------------


def test_invalid_assign_after_init():
    dl = DataLoader(CountingDataset(4))
    for attr in ("batch_size", "sampler", "batch_sampler", "drop_last", "dataset",
                 "persistent_workers"):
        ours = raised(lambda: setattr(dl, attr, {}))
        assert ours == raised(lambda: setattr(tud.DataLoader(CountingDataset(4)), attr, {}))
        assert ours == (ValueError, f"{attr} attribute should not be set after DataLoader "
                                    "is initialized")
    dl.num_workers = 2  # not frozen, as in torch
    dl.collate_fn = list
    assert dl.num_workers == 2 and dl.collate_fn is list
    dl.num_workers = 0


def test_frozen_attribute_message_names_the_subclass():
    class MyLoader(DataLoader):
        pass

    with pytest.raises(ValueError, match="^batch_size attribute should not be set after "
                                         "MyLoader is initialized$"):
        MyLoader(CountingDataset(4)).batch_size = 3


# --- warnings ---------------------------------------------------------------------------


def test_excessive_worker_warning_at_construction():
    """num_workers=1000: construct only (no worker starts before iteration)."""
    ours = run_recording(lambda: DataLoader(MAP, num_workers=1000))[1]
    theirs = run_recording(lambda: tud.DataLoader(MAP, num_workers=1000))[1]
    assert ours == theirs and len(ours) == 1
    assert ours[0][0] is UserWarning
    assert "This DataLoader will create 1000 worker processes in total." in ours[0][1]
    assert ("excessive worker creation might get DataLoader running slow or even freeze"
            in ours[0][1])


def test_no_worker_warning_without_workers():
    assert run_recording(lambda: DataLoader(MAP, num_workers=0))[1] == []


@pytest.mark.skipif(torch.accelerator.is_available(), reason="an accelerator is present")
def test_pin_memory_warns_without_accelerator():
    """On a CPU machine torch warns once per iterator and pins nothing; so do we."""
    dl = both(CountingDataset(5), pin_memory=True, batch_size=2)
    message = ("'pin_memory' argument is set as true but no accelerator is found, then device "
               "pinned memory won't be used.")
    for output in ("torch", "numpy"):
        batches, caught = run_recording(lambda: list(DataLoader(CountingDataset(5), batch_size=2,
                                                                pin_memory=True, output=output)))
        assert caught == [(UserWarning, message)]
        assert len(batches) == 3
    assert dl.pin_memory is True


def test_pin_memory_device_is_deprecated():
    both(CountingDataset(3), pin_memory=True, pin_memory_device="cuda")
    caught = run_recording(lambda: list(DataLoader(CountingDataset(3), pin_memory=True,
                                                   pin_memory_device="cuda")))[1]
    assert caught[0] == (UserWarning, "pin_memory_device is deprecated, the current accelerator "
                                      "will be used as the device,ignore pin_memory_device='cuda'.")
    assert run_recording(lambda: list(DataLoader(CountingDataset(3),
                                                 pin_memory_device="cuda")))[1] == []


class Pinnable:
    """Stands for a tensor on a machine with an accelerator: anything with pin_memory()."""

    def __init__(self, value, pinned=False):
        self.value, self.pinned = value, pinned

    def pin_memory(self):
        return Pinnable(self.value, pinned=True)

    def __eq__(self, other):
        return (type(other) is Pinnable and (self.value, self.pinned) ==
                (other.value, other.pinned))


def test_pinning_keeps_containers_like_torch():
    """Pinning (reached only with an accelerator) rebuilds containers as torch's
    pin_memory does: dict subclasses, defaultdicts, list subclasses, namedtuples."""
    from torch.utils.data._utils.pin_memory import pin_memory as torch_pin

    from loader._output import pin

    def batch():
        return [collections.defaultdict(list, a=Pinnable(1)), CustomDict(b=Pinnable(2)),
                CustomList([Pinnable(3), "s"]), Point(Pinnable(4), b"b"), (Pinnable(5),)]

    ours, theirs = pin(batch()), torch_pin(batch())
    assert_same(ours, theirs, "torch")
    assert ours[0].default_factory is list and ours[3].x == Pinnable(4, pinned=True)


def over_length_run(module, dataset, call_len=True, **kwargs):
    dl = module.DataLoader(dataset, **kwargs)
    if call_len:
        len(dl)
    return run_recording(lambda: [b for b in dl])


def test_iterable_over_length_warning():
    """After len(loader), every batch past the reported length warns, with torch's text."""
    for batch_size in (None, 1):
        ours = over_length_run(loader, CountingIterableDataset(8, reported_len=5),
                               batch_size=batch_size)
        theirs = over_length_run(tud, CountingIterableDataset(8, reported_len=5),
                                 batch_size=batch_size)
        assert len(ours[0]) == 8
        assert ours[1] == theirs[1] == [
            (UserWarning, f"Length of IterableDataset CountingIterableDataset(8) was reported to "
                          f"be 5(when accessing len(dataloader)), but {k} samples have been "
                          "fetched. ") for k in (6, 7, 8)]


def test_iterable_over_length_warning_needs_len_and_counts_batches():
    """No warning if len() was never asked; and torch's quirk: batches are compared with
    the *sample* count, so 6 batches of 12 samples against a reported 10 do not warn."""
    assert over_length_run(loader, CountingIterableDataset(8, 5), call_len=False)[1] == []
    ours = over_length_run(loader, CountingIterableDataset(12, 10), batch_size=2)
    theirs = over_length_run(tud, CountingIterableDataset(12, 10), batch_size=2)
    assert len(ours[0]) == 6 and ours[1] == theirs[1] == []


def test_len_called_after_iter_does_not_count_for_that_iterator():
    """The reported length is read when the iterator is made, as torch does."""
    for module in (loader, tud):
        dl = module.DataLoader(CountingIterableDataset(8, 5), batch_size=None)
        it = iter(dl)
        len(dl)
        assert run_recording(lambda: list(it))[1] == []
        assert len(run_recording(lambda: list(iter(dl)))[1]) == 3


# --- iterator quirks --------------------------------------------------------------------


def test_timeout_without_workers_fails_on_iter():
    dl = DataLoader(CountingDataset(3), timeout=5)
    assert dl.timeout == 5
    ours = raised(lambda: iter(dl))
    assert ours == raised(lambda: iter(tud.DataLoader(CountingDataset(3), timeout=5)))
    assert ours == (AssertionError, "_SingleProcessDataLoaderIter requires timeout == 0")


def test_iterator_pickling_is_refused():
    """Both refuse with NotImplementedError; torch's message is a mangled tuple, ours reads."""
    it = iter(DataLoader(CountingDataset(3)))
    with pytest.raises(NotImplementedError, match="^SingleProcessIter cannot be pickled$"):
        pickle.dumps(it)
    with pytest.raises(NotImplementedError):
        pickle.dumps(iter(tud.DataLoader(CountingDataset(3))))


def test_subscripting_the_class():
    """torch's test_typing: DataLoader[List[...]] must work."""
    for alias in (DataLoader[list], DataLoader[List[int]], DataLoader[List[torch.Tensor]]):
        dl = alias(CountingDataset(2))
        assert type(dl) is DataLoader and len(dl) == 2


# --- output= -----------------------------------------------------------------------------


def leaves(obj):
    """Every non-container value inside ``obj``."""
    if isinstance(obj, collections.abc.Mapping):
        return [x for v in obj.values() for x in leaves(v)]
    if isinstance(obj, (list, tuple)):
        return [x for v in obj for x in leaves(v)]
    return [obj]


def test_output_modes():
    """torch is imported here, so "auto" (and None) means tensors. String arrays stay numpy."""
    for output, array_type in [("auto", torch.Tensor), (None, torch.Tensor),
                               ("torch", torch.Tensor), ("numpy", np.ndarray)]:
        dl = DataLoader(ContainerDataset(), batch_size=3, output=output)
        assert dl.output == output
        for batch, theirs in zip(dl, tud.DataLoader(ContainerDataset(), batch_size=3)):
            found = [type(x) for x in leaves(batch) if isinstance(x, (np.ndarray, torch.Tensor))]
            expected = sum(isinstance(x, torch.Tensor) for x in leaves(theirs))
            assert found == [array_type] * expected, output
        batch = next(iter(DataLoader([np.array(["a", "b"])], batch_size=None, output=output)))
        assert type(batch) is np.ndarray and batch.dtype.kind == "U"  # torch cannot hold str


def test_output_numpy_keeps_python_values_when_not_batching():
    batches = list(DataLoader(NamedTupleDataset(), batch_size=None, output="numpy"))
    assert type(batches[0].data.positive) is int
    assert type(batches[0].random_tensor) is np.ndarray
    assert type(list(DataLoader([np.float32(1)], batch_size=None, output="numpy"))[0]) is np.ndarray


def test_custom_collate_fn_output_is_converted():
    """Every array a custom collate_fn returns becomes a tensor in torch mode (torch's
    DataLoader would hand back the numpy arrays); numpy mode leaves them alone."""
    def collate(samples):
        return {"x": np.stack(samples), "n": len(samples), "pair": (np.zeros(1), "s")}

    data = [np.full(2, i, dtype=np.int32) for i in range(4)]
    batch = next(iter(DataLoader(data, batch_size=2, collate_fn=collate, output="torch")))
    assert type(batch["x"]) is torch.Tensor and batch["x"].dtype == torch.int32
    assert batch["n"] == 2 and type(batch["pair"]) is tuple
    assert type(batch["pair"][0]) is torch.Tensor and batch["pair"][1] == "s"
    batch = next(iter(DataLoader(data, batch_size=2, collate_fn=collate, output="numpy")))
    assert type(batch["x"]) is np.ndarray and type(batch["pair"][0]) is np.ndarray
    torch_batch = next(iter(tud.DataLoader(data, batch_size=2, collate_fn=collate)))
    assert type(torch_batch["x"]) is np.ndarray  # the documented difference


def test_custom_collate_fn_containers_keep_their_types_in_torch_mode():
    def collate(samples):
        return CustomList([CustomDict(x=np.asarray(samples)), Point(np.zeros(1), 1)])

    batch = next(iter(DataLoader([1, 2], batch_size=2, collate_fn=collate, output="torch")))
    assert type(batch) is CustomList and type(batch[0]) is CustomDict and type(batch[1]) is Point
    assert type(batch[0]["x"]) is torch.Tensor and type(batch[1].x) is torch.Tensor


def test_output_numpy_forces_numpy_even_for_tensor_samples():
    """An explicit output="numpy" is a promise: collate stacks the tensors, then the
    batch is handed over as numpy arrays sharing the tensors' memory."""
    batch = next(iter(DataLoader(TensorSampleDataset(), batch_size=2, output="numpy")))
    assert all(type(x) is np.ndarray for x in batch)
    expected = next(iter(torch.utils.data.DataLoader(TensorSampleDataset(), batch_size=2)))
    for ours, theirs in zip(batch, expected):
        np.testing.assert_array_equal(ours, theirs.numpy())


def test_output_torch_shares_memory_with_the_collated_array():
    arrays = []

    def collate(samples):
        arrays.append(np.asarray(samples, dtype=np.float64))
        return arrays[-1]

    batch = next(iter(DataLoader([1.0, 2.0], batch_size=2, collate_fn=collate, output="torch")))
    assert batch.data_ptr() == arrays[0].ctypes.data


def test_bad_output_value():
    with pytest.raises(ValueError, match=r"^output should be one of \('auto', 'numpy', "
                                         r"'torch'\), but got output='tensor'$"):
        DataLoader(MAP, output="tensor")


def test_output_auto_without_torch_gives_numpy():
    """In a fresh interpreter: no torch -> numpy batches, and a loader built before torch
    is imported stays numpy; without torch, numpy's global seed governs the shuffle."""
    code = textwrap.dedent("""
        import sys
        import numpy as np
        from loader import DataLoader
        assert "torch" not in sys.modules
        dl = DataLoader([(i, float(i)) for i in range(6)], batch_size=4, shuffle=True)
        batch = next(iter(dl))
        assert [type(x) for x in batch] == [np.ndarray, np.ndarray], batch
        assert batch[0].dtype == np.int64 and batch[1].dtype == np.float64
        np.random.seed(5); first = [b[0].tolist() for b in dl]
        np.random.seed(5); again = [b[0].tolist() for b in dl]
        assert first == again and sorted(sum(first, [])) == list(range(6)), (first, again)
        import torch
        assert type(next(iter(dl))[0]) is np.ndarray
        assert type(next(iter(DataLoader([1, 2], batch_size=2)))) is torch.Tensor
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


# --- generator: reproducible shuffles ---------------------------------------------------

GENERATORS = {
    "int": lambda seed: seed,
    "numpy": lambda seed: np.random.default_rng(seed),
    "torch": lambda seed: torch.Generator().manual_seed(seed),
}


def epochs(dl, n=3):
    return [[int(x) for batch in dl for x in batch] for _ in range(n)]


@pytest.mark.parametrize("kind", sorted(GENERATORS))
def test_shuffle_reproducibility(kind):
    """torch's test_shuffle_reproducibility, for each kind of generator: the same seed
    gives the same epochs; epochs differ from each other; another seed differs."""
    make = GENERATORS[kind]
    first = epochs(DataLoader(CountingDataset(50), batch_size=4, shuffle=True,
                              generator=make(42)))
    again = epochs(DataLoader(CountingDataset(50), batch_size=4, shuffle=True,
                              generator=make(42)))
    other = epochs(DataLoader(CountingDataset(50), batch_size=4, shuffle=True,
                              generator=make(43)))
    assert first == again
    assert first != other
    assert first[0] != first[1] != first[2]
    assert all(sorted(e) == list(range(50)) for e in first + other)


def test_generator_object_is_shared_with_the_sampler_and_readable_by_torch():
    """A torch generator is kept as it is. Where torch is in use (as here) an int or numpy
    generator is shown as a torch.Generator (torch code reads ``generator``: accelerate
    builds torch's DataLoader from it), standing for the original stream: a loader rebuilt
    from the attribute continues that stream, as a rebuilt torch loader continues a shared
    torch generator. Without torch the object is kept (test_import_without_torch...)."""
    for kind, make in GENERATORS.items():
        g = make(1)
        dl = DataLoader(CountingDataset(5), shuffle=True, generator=g)
        assert dl.sampler.generator is dl.generator, kind
        assert type(dl.sampler) is loader.RandomSampler
        assert isinstance(dl.generator, torch.Generator), kind
        if kind == "torch":
            assert dl.generator is g
            continue
        expected = epochs(DataLoader(CountingDataset(20), shuffle=True, generator=make(1)), 4)
        first = DataLoader(CountingDataset(20), shuffle=True, generator=make(1))
        seen = epochs(first, 2)
        rebuilt = DataLoader(CountingDataset(20), shuffle=True, generator=first.generator)
        assert seen + epochs(rebuilt, 2) == expected, kind


def test_torch_generator_is_advanced_like_torch():
    """Each iterator draws from the generator (the base seed), even without shuffling."""
    for module in (loader, tud):
        g = torch.Generator().manual_seed(0)
        state = g.get_state().clone()
        iter(module.DataLoader(CountingDataset(5), generator=g))
        assert not torch.equal(state, g.get_state()), module


def test_numpy_generator_is_advanced():
    g = np.random.default_rng(0)
    state = g.bit_generator.state
    list(DataLoader(CountingDataset(5), shuffle=True, generator=g))
    assert g.bit_generator.state != state


def test_global_torch_seed_governs_unseeded_shuffles():
    state = torch.get_rng_state()
    try:
        torch.manual_seed(7)
        first = epochs(DataLoader(CountingDataset(30), shuffle=True), 2)
        torch.manual_seed(7)
        again = epochs(DataLoader(CountingDataset(30), shuffle=True), 2)
        torch.manual_seed(8)
        other = epochs(DataLoader(CountingDataset(30), shuffle=True), 2)
    finally:
        torch.set_rng_state(state)
    assert first == again and first != other


def test_bad_generator_is_refused_at_construction():
    """torch would fail later, on iter(); we say so at once."""
    with pytest.raises(TypeError, match="generator must be None, an int seed, a "
                                        "numpy.random.Generator or a torch.Generator, but "
                                        "got str"):
        DataLoader(MAP, generator="seed")


def chi_square_positions(dl, n, epochs_count):
    """Chi-square statistic of where each element lands, over ``epochs_count`` epochs."""
    counts = np.zeros((n, n))
    for _ in range(epochs_count):
        order = [int(x) for x in dl]
        counts[order, np.arange(n)] += 1
    expected = epochs_count / n
    return ((counts - expected) ** 2 / expected).sum()


def test_shuffle_statistics_match_torch():
    """Every element is equally likely at every position, as with torch's shuffles.

    With n=6 and 600 epochs the statistic has (n-1)**2 = 25 degrees of freedom; 60 is
    beyond its 99.99th percentile. Seeds are fixed, so this is deterministic."""
    n, count = 6, 600
    ours = chi_square_positions(DataLoader(CountingDataset(n), batch_size=None, shuffle=True,
                                           generator=0), n, count)
    theirs = chi_square_positions(tud.DataLoader(CountingDataset(n), batch_size=None,
                                                 shuffle=True,
                                                 generator=torch.Generator().manual_seed(0)),
                                  n, count)
    assert ours < 60 and theirs < 60
    assert chi_square_positions(range(n), n, count) > 60  # the statistic sees a fixed order


# --- default_collate_fn_map through the DataLoader --------------------------------------


def collate_opaque(batch, *, collate_fn_map=None):
    return np.array([b.value for b in batch]) * 100


def test_collate_fn_map_extension_reaches_the_dataloader(monkeypatch):
    monkeypatch.setitem(default_collate_fn_map, Opaque, collate_opaque)
    monkeypatch.setitem(torch_collate.default_collate_fn_map, Opaque, collate_opaque)
    dataset = [{"o": Opaque(i), "i": i} for i in range(4)]
    both(dataset, "numpy", batch_size=2)
    batch = next(iter(DataLoader(dataset, batch_size=2)))
    assert type(batch["o"]) is torch.Tensor and batch["o"].tolist() == [0, 100]


def test_unknown_type_fails_like_torch():
    dataset = [Opaque(1), Opaque(2)]
    ours = raised(lambda: list(DataLoader(dataset, batch_size=2)))
    assert ours == raised(lambda: list(tud.DataLoader(dataset, batch_size=2)))
    assert ours[0] is TypeError
    assert [type(x) for x in DataLoader(dataset, batch_size=None)] == [Opaque, Opaque]
