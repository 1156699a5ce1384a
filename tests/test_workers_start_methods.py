"""num_workers > 0 under every start method: fork, spawn and forkserver.

This module imports neither torch nor anything heavy at module level: spawn and
forkserver workers import it to unpickle the datasets below, and a torch import would
cost each of them seconds. Torch's own DataLoader is the reference, always run with fork
(its batches do not depend on the start method).
"""

from __future__ import annotations

import math
import os
import sqlite3
import threading

import multiprocess
import numpy as np
import psutil
import pytest

from loader import DataLoader, IterableDataset, get_worker_info

from helpers import Sized, frozen_heap, start_method_servers  # noqa: F401 (autouse fixtures)

pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")
METHODS = ["fork", "spawn", "forkserver"]
SLOW_METHODS = ["spawn", "forkserver"]
MODULE_DB = sqlite3.connect(":memory:")  # unpicklable; each spawned worker imports its own


def torch_loader(*args, **kwargs):
    import torch.utils.data as tud
    return tud.DataLoader(*args, multiprocessing_context="fork", **kwargs)


def as_lists(batches):
    """Batches (arrays or tensors, possibly in tuples/lists) as nested Python lists."""
    out = []
    for b in batches:
        if isinstance(b, (list, tuple)):
            out.append([np.asarray(x).tolist() for x in b])
        else:
            out.append(np.asarray(b).tolist())
    return out


def children():
    return {p.pid for p in psutil.Process().children(recursive=True)}


# ---------------------------------------------------------------- datasets


class Squares(Sized):
    """Map-style: (i*i as float32 array of shape 3, i)."""

    def __getitem__(self, i):
        return np.full(3, i * i, np.float32), i


class Shards(IterableDataset):
    """range(n) split into contiguous per-worker shards (torch's or our worker info)."""

    def __init__(self, n, torch_info=False):
        self.n, self.torch_info = n, torch_info

    def __iter__(self):
        if self.torch_info:
            import torch.utils.data as tud
            info = tud.get_worker_info()
        else:
            info = get_worker_info()
        per = math.ceil(self.n / info.num_workers)
        return iter(range(info.id * per, min(self.n, (info.id + 1) * per)))


def as_torch_iterable(dataset):
    import torch.utils.data as tud

    class Adapter(tud.IterableDataset):
        def __iter__(self):
            return iter(dataset)

    return Adapter()


class BadIndex(ValueError):
    pass


class FailsAtThree:
    def __len__(self):
        return 8

    def __getitem__(self, i):
        if i == 3:
            raise BadIndex("three is bad")
        return i


class Locked:
    """Holds a threading.Lock: torch cannot send it to spawn workers; dill can."""

    def __init__(self):
        self.lock = threading.Lock()

    def __len__(self):
        return 4

    def __getitem__(self, i):
        with self.lock:
            return i


class Database:
    """Holds an sqlite3 connection, which no pickler can send to a worker."""

    def __init__(self):
        self.db = sqlite3.connect(":memory:")

    def __len__(self):
        return 4

    def __getitem__(self, i):
        return i


class Outer:
    def __init__(self):
        self.inner = {"files": [1, 2], "handle": Database()}

    def __len__(self):
        return 4

    def __getitem__(self, i):
        return i


# ---------------------------------------------------------------- differential


@pytest.mark.parametrize("num_workers", [1, 2, 3, 4])
@pytest.mark.parametrize("method", SLOW_METHODS)
def test_map_batches_match_torch(method, num_workers):
    """Fork at 1-4 workers is covered in test_workers.py."""
    kwargs = dict(batch_size=3, sampler=[5, 0, 9, 1, 8, 2, 7, 3, 6, 4, 10])
    ours = list(DataLoader(Squares(11), num_workers=num_workers,
                           multiprocessing_context=method, output="numpy", **kwargs))
    theirs = list(torch_loader(Squares(11), num_workers=num_workers, **kwargs))
    assert as_lists(ours) == as_lists(theirs)
    assert ours[0][0].dtype == np.float32 and ours[0][1].dtype == np.int64


@pytest.mark.parametrize("method, drop_lasts", [("fork", (False, True)), ("spawn", (False,)),
                                                ("forkserver", (True,))])
def test_iterable_shards_match_torch(method, drop_lasts):
    """Per-worker partial final batches (shards of 7, 7, 6 by 3), with and without
    drop_last, in torch's order."""
    for drop_last in drop_lasts:
        ours = list(DataLoader(Shards(20), batch_size=3, drop_last=drop_last, num_workers=3,
                               multiprocessing_context=method, output="numpy"))
        theirs = list(torch_loader(as_torch_iterable(Shards(20, torch_info=True)),
                                   batch_size=3, drop_last=drop_last, num_workers=3))
        assert as_lists(ours) == as_lists(theirs)
        assert len(ours) == (6 if drop_last else 8)


def test_context_object_and_string_agree():
    """torch's test_multiprocessing_contexts: a context object (the standard library's
    too) works like its start method's name."""
    import multiprocessing
    by_name = as_lists(DataLoader(Squares(6), batch_size=2, num_workers=1, output="numpy",
                                  multiprocessing_context="spawn"))
    by_object = as_lists(DataLoader(Squares(6), batch_size=2, num_workers=1, output="numpy",
                                    multiprocessing_context=multiprocessing.get_context("spawn")))
    assert by_name == by_object == as_lists(DataLoader(Squares(6), batch_size=2,
                                                       output="numpy"))


# ---------------------------------------------------------------- what must pickle


@pytest.mark.parametrize("method", SLOW_METHODS)
def test_lambdas_and_local_dataset(method):
    """dill: a dataset class defined here, a lambda collate_fn and a lambda
    worker_init_fn all reach spawn and forkserver workers."""

    class Local:
        def __init__(self):
            self.offset = 0

        def __len__(self):
            return 8

        def __getitem__(self, i):
            info = get_worker_info()
            return {"value": i + self.offset, "worker": info.id, "own_copy":
                    info.dataset is self, "pid": os.getpid()}

    dataset = Local()
    dl = DataLoader(dataset, batch_size=2, num_workers=2, multiprocessing_context=method,
                    collate_fn=lambda batch: [dict(s, value=s["value"] * 10) for s in batch],
                    worker_init_fn=lambda wid: setattr(get_worker_info().dataset, "offset",
                                                       1000 * (wid + 1)))
    samples = [s for batch in dl for s in batch]
    assert [s["value"] for s in samples] == [
        10 * (i + 1000 * ((i // 2) % 2 + 1)) for i in range(8)]
    assert [s["worker"] for s in samples] == [(i // 2) % 2 for i in range(8)]
    assert all(s["own_copy"] for s in samples)
    assert os.getpid() not in {s["pid"] for s in samples}
    assert dataset.offset == 0  # the main process's copy was never touched


@pytest.mark.parametrize("method", SLOW_METHODS)
def test_unpicklable_dataset_named_before_workers_start(method):
    before = children()
    for dataset, path in ((Database(), r"dataset\.db\b"),
                          (Outer(), r"dataset\.inner\W+handle\W+\.db\b")):
        with pytest.raises(TypeError, match=path) as info:
            iter(DataLoader(dataset, num_workers=2, multiprocessing_context=method))
        assert "sqlite3.Connection" in str(info.value)
    assert children() == before  # no worker was started


@pytest.mark.parametrize("method", SLOW_METHODS)
def test_unpicklable_collate_fn_is_named(method):
    db = sqlite3.connect(":memory:")

    def collate(batch):
        db.execute("select 1")
        return batch

    before = children()
    with pytest.raises(TypeError, match="collate_fn"):
        iter(DataLoader(Squares(4), num_workers=1, multiprocessing_context=method,
                        collate_fn=collate))
    assert children() == before


@pytest.mark.parametrize("method", SLOW_METHODS)
def test_functions_using_an_unpicklable_module_global_work(method):
    """A lambda (or a local class) that uses a module-level connection reaches the worker
    by reference: the worker imports this module and uses its own connection. The check
    must refuse only what the start itself would refuse."""
    collate = lambda batch: [MODULE_DB.execute("select ?", (x,)).fetchone()[0]  # noqa: E731
                             for x in batch]
    dl = DataLoader(list(range(4)), batch_size=2, num_workers=1, collate_fn=collate,
                    multiprocessing_context=method)
    assert list(dl) == [[0, 1], [2, 3]]


def test_dataset_with_a_lock_works_under_spawn():
    """torch's pickle refuses a threading.Lock (#51836); dill sends a fresh one."""
    dl = DataLoader(Locked(), batch_size=2, num_workers=1, multiprocessing_context="spawn",
                    output="numpy")
    assert [b.tolist() for b in dl] == [[0, 1], [2, 3]]


def test_unpicklable_dataset_is_fine_with_fork():
    assert [b.tolist() for b in DataLoader(Database(), batch_size=2, num_workers=2,
                                           multiprocessing_context="fork",
                                           output="numpy")] == [[0, 1], [2, 3]]


# ---------------------------------------------------------------- errors, persistence


@pytest.mark.parametrize("method", ["spawn"])
def test_errors_keep_their_type_and_iteration_goes_on(method):
    it = iter(DataLoader(FailsAtThree(), batch_size=2, num_workers=2,
                         multiprocessing_context=method, output="numpy"))
    assert next(it).tolist() == [0, 1]
    with pytest.raises(BadIndex, match="Caught BadIndex in DataLoader worker process 1") as e:
        next(it)
    assert "three is bad" in str(e.value)
    assert [b.tolist() for b in it] == [[4, 5], [6, 7]]


@pytest.mark.parametrize("method", ["spawn"])
def test_persistent_workers_epochs(method):
    class Report:
        def __len__(self):
            return 4

        def __getitem__(self, i):
            info = get_worker_info()
            return [i, info.epoch, info.seed, int(np.random.randint(2 ** 31)), os.getpid()]

    dl = DataLoader(Report(), batch_size=None, num_workers=2, persistent_workers=True,
                    multiprocessing_context=method, generator=5, output="numpy")
    epochs = [[list(map(int, s)) for s in dl] for _ in range(3)]
    assert [[s[0] for s in e] for e in epochs] == [[0, 1, 2, 3]] * 3
    assert [{s[1] for s in e} for e in epochs] == [{0}, {1}, {2}]
    assert len({tuple(s[2] for s in e) for e in epochs}) == 3  # reseeded every epoch
    assert len({s[4] for e in epochs for s in e}) == 2  # the same two workers throughout
    dl.close()
