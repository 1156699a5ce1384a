"""num_workers > 0 (fork): zero-copy batches that never change under the user, order
with in_order True/False, seeding, get_worker_info, persistent workers, several loaders
at once, and workers that exit when the user walks away.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import random
import time

import numpy as np
import psutil
import pytest
import torch
import torch.utils.data as tud
from torch.utils.data._utils.worker import _generate_state as torch_generate_state

from loader import DataLoader, IterableDataset, WorkerInfo, get_worker_info

from helpers import (  # noqa: F401 (frozen_heap: autouse fixture)
    GATE_LIMIT_S,
    Sized,
    frozen_heap,
    wait_for_gate,
    wait_gone,
)

pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")


# ---------------------------------------------------------------- held batches


class Patterned:
    """Sample i: ``n`` float64 values i*1e6 + arange(n), so any mix-up shows."""

    def __init__(self, size, n):
        self.size, self.n = size, n

    def __len__(self):
        return self.size

    def __getitem__(self, i):
        return np.arange(self.n, dtype=np.float64) + i * 1e6, i

    def expected(self, indices):
        return np.stack([self[i][0] for i in indices])


@pytest.mark.parametrize("output", ["numpy", "torch"])
def test_held_batches_never_change(output):
    dataset = Patterned(4 * 40, 4096)  # 128 KiB batches: they live in worker slots
    dl = DataLoader(dataset, batch_size=4, num_workers=2, output=output)
    held, copies, views = [], [], []
    for i, (x, y) in enumerate(dl):
        if i < 6:  # more than a worker's slots: the engine must not reuse these
            held.append(x)
            copies.append(np.asarray(x).copy())
        elif i < 9:  # keep only a small view of the batch: it must pin the slot too
            views.append((i, x[1]))
        else:
            np.testing.assert_array_equal(np.asarray(x), dataset.expected(range(4 * i, 4 * i + 4)))
        del x, y
    gc.collect()
    for i, (x, copy) in enumerate(zip(held, copies)):
        np.testing.assert_array_equal(np.asarray(x), copy)
        np.testing.assert_array_equal(copy, dataset.expected(range(4 * i, 4 * i + 4)))
    for i, row in views:
        np.testing.assert_array_equal(np.asarray(row), dataset[4 * i + 1][0])


def test_held_batches_survive_persistent_epochs():
    dataset = Patterned(4 * 6, 4096)
    dl = DataLoader(dataset, batch_size=4, num_workers=2, persistent_workers=True,
                    output="numpy")
    first = [x for x, _ in dl]
    for _ in range(3):
        for j, (x, _) in enumerate(dl):
            np.testing.assert_array_equal(x, dataset.expected(range(4 * j, 4 * j + 4)))
    for j, x in enumerate(first):
        np.testing.assert_array_equal(x, dataset.expected(range(4 * j, 4 * j + 4)))
    dl.close()


def test_list_of_many_large_batches():
    """list(loader) keeps every batch: 60 batches of 2 MiB, all correct."""
    dataset = Patterned(4 * 60, 65536)  # 512 KiB samples, 2 MiB batches
    batches = list(DataLoader(dataset, batch_size=4, num_workers=2, output="numpy"))
    assert len(batches) == 60
    for i, (x, y) in enumerate(batches):
        assert x.nbytes == 2 << 20
        np.testing.assert_array_equal(x, dataset.expected(range(4 * i, 4 * i + 4)))
        assert y.tolist() == list(range(4 * i, 4 * i + 4))


# ---------------------------------------------------------------- in_order


class SlowIndex:
    """torch's _TestSlowIndexDataset; with ``gate``, the slow index waits for a file."""

    def __init__(self, end, slow_index, gate=None, sleep=0.0):
        self.end, self.slow_index, self.gate, self.sleep = end, slow_index, gate, sleep

    def __len__(self):
        return self.end

    def __getitem__(self, i):
        if i == self.slow_index:
            time.sleep(self.sleep)
            if self.gate:
                wait_for_gate(self.gate)
        return i


class SlowIterable(IterableDataset):
    """torch's _TestSlowIterableDataset: halves per worker; the middle item is slow."""

    def __init__(self, end, gate=None):
        self.end, self.gate = end, gate

    def __iter__(self):
        info = get_worker_info()
        per = -(-self.end // info.num_workers)
        for i in range(info.id * per, min(self.end, (info.id + 1) * per)):
            if i == per and self.gate:  # the first item of worker 1
                wait_for_gate(self.gate)
            yield i


def test_in_order_index_ds():
    """torch's test_in_order_index_ds: a slow index with 2 workers still comes in order."""
    dl = DataLoader(SlowIndex(10, slow_index=2, sleep=0.5), num_workers=2, in_order=True,
                    output="numpy")
    assert [x.item() for x in dl] == list(range(10))


def test_out_of_order_slow_index_arrives_later(tmp_path):
    """in_order=False: batches come as they complete; index 0 is held until 4 others
    have been handed out, which only an out-of-order loader can do."""
    gate = str(tmp_path / "gate")
    dl = DataLoader(SlowIndex(10, slow_index=0, gate=gate), num_workers=2, prefetch_factor=2,
                    in_order=False, output="numpy", timeout=GATE_LIMIT_S / 2)
    output = []
    for x in dl:
        output.append(x.item())
        if len(output) == 4:
            open(gate, "w").close()
    assert 0 not in output[:4]
    assert sorted(output) == list(range(10)) and output != list(range(10))


def test_out_of_order_iterable(tmp_path):
    gate = str(tmp_path / "gate")
    in_order = [x.item() for x in DataLoader(SlowIterable(10), num_workers=2, output="numpy")]
    theirs = [x.item() for x in tud.DataLoader(_TorchSlowIterable(10), num_workers=2)]
    assert in_order == theirs == [0, 5, 1, 6, 2, 7, 3, 8, 4, 9]  # round robin
    output = []
    for x in DataLoader(SlowIterable(10, gate=gate), num_workers=2, in_order=False,
                        output="numpy", timeout=GATE_LIMIT_S / 2):
        output.append(x.item())
        if len(output) == 5:
            open(gate, "w").close()
    assert output == list(range(10))  # worker 0 drained while worker 1 was stuck


class _TorchSlowIterable(tud.IterableDataset):
    def __init__(self, end):
        self.end = end

    def __iter__(self):
        info = tud.get_worker_info()
        per = -(-self.end // info.num_workers)
        return iter(range(info.id * per, min(self.end, (info.id + 1) * per)))


# ---------------------------------------------------------------- seeding


class SeedReport(Sized):
    """Each sample reports what the worker's random state looks like."""

    def __getitem__(self, i):
        info = get_worker_info()
        return {"worker": info.id, "seed": info.seed, "epoch": info.epoch,
                "np": int(np.random.randint(2 ** 31)), "random": random.getrandbits(32),
                "rng": int(info.rng.integers(2 ** 62)), "torch_seed": torch.initial_seed(),
                "torch": int(torch.randint(2 ** 31, ()))}


def _epochs(dl, n):
    return [[{k: int(v) for k, v in sample.items()} for sample in dl] for _ in range(n)]


def test_worker_seeds_follow_torch_rules():
    """seed = base_seed + id; random and torch use it; numpy uses torch's _generate_state."""
    samples = _epochs(DataLoader(SeedReport(4), batch_size=None, num_workers=2), 1)[0]
    base = samples[0]["seed"]
    for i, s in enumerate(samples[:2]):  # the first sample of worker i is index i
        assert s["worker"] == i and s["seed"] == base + i == s["torch_seed"]
        assert s["random"] == random.Random(base + i).getrandbits(32)
        state = torch_generate_state(base, i)
        assert s["np"] == np.random.RandomState(np.array(state, np.uint32)).randint(2 ** 31)
        assert s["torch"] == int(torch.randint(2 ** 31, (), generator=torch.Generator()
                                               .manual_seed(base + i)))


def test_workers_never_share_random_streams():
    dl = DataLoader(SeedReport(12), batch_size=None, num_workers=4)
    samples = _epochs(dl, 1)[0]
    for stream in ("seed", "np", "random", "rng", "torch"):
        by_worker = {}
        for s in samples:
            by_worker.setdefault(s["worker"], []).append(s[stream])
        assert len(by_worker) == 4
        values = [v for vs in by_worker.values() for v in vs]
        if stream == "seed":
            assert len(set(values)) == 4
        else:
            assert len(set(values)) == len(values), f"{stream} draws repeat across workers"


@pytest.mark.parametrize("persistent", [True, False])
def test_reseeded_every_epoch_and_reproducible(persistent):
    """Persistent workers are reseeded at every epoch (torch keeps one stream; we do not,
    so augmentations differ per epoch), and everything follows from the generator."""
    epochs = 3 if persistent else 2

    def run(seed):
        dl = DataLoader(SeedReport(6), batch_size=None, num_workers=2,
                        persistent_workers=persistent,
                        generator=torch.Generator().manual_seed(seed))
        result = _epochs(dl, epochs)
        dl.close()
        return result

    first = run(7)
    assert first == run(7)  # reproducible from the generator
    if persistent:
        assert first != run(8)
        assert [{s["epoch"] for s in epoch} for epoch in first] == [{0}, {1}, {2}]
    for stream in ("seed", "np", "random", "rng", "torch"):
        per_epoch = [tuple(s[stream] for s in epoch) for epoch in first]
        assert len(set(per_epoch)) == epochs, f"{stream} repeats across epochs"


@pytest.mark.parametrize("module", ["loader", "torch"])
def test_shuffle_order_does_not_depend_on_workers(module):
    """With one generator seed, every epoch's shuffle is the same at 0 workers, 2 workers
    and 2 persistent workers (base_seed is drawn before the sampler's seed in each), for
    an int seed, and torch's own order for a torch generator (torch draws a persistent
    pool's base seed once, so its persistent epochs differ from its non-persistent ones)."""

    def orders(loader_cls, generator, **kwargs):
        dl = loader_cls(np.arange(20), batch_size=4, shuffle=True, generator=generator,
                        **kwargs)
        result = [[int(x) for batch in dl for x in batch] for _ in range(3)]
        if hasattr(dl, "close"):
            dl.close()
        return result

    if module == "loader":
        zero = orders(DataLoader, 3)
        assert len({tuple(epoch) for epoch in zero}) == 3
        assert orders(DataLoader, 3, num_workers=2) == zero
        assert orders(DataLoader, 3, num_workers=2, persistent_workers=True) == zero
        return
    for kwargs in ({}, {"num_workers": 2}, {"num_workers": 2, "persistent_workers": True}):
        ours = orders(DataLoader, torch.Generator().manual_seed(3), **kwargs)
        theirs = orders(tud.DataLoader, torch.Generator().manual_seed(3), **kwargs)
        assert ours == theirs, kwargs


def test_int_generator_is_reproducible():
    def run():
        dl = DataLoader(SeedReport(4), batch_size=None, num_workers=2, generator=1234,
                        persistent_workers=True)
        epochs = _epochs(dl, 2)
        dl.close()
        return epochs

    assert run() == run()


# ---------------------------------------------------------------- get_worker_info


class WorkerInfoDataset:
    def __init__(self, size):
        self.size = size

    def __len__(self):
        return self.size

    def __getitem__(self, i):
        return np.array(self.value)


def worker_info_init_fn(worker_id):
    """torch's _test_worker_info_init_fn, ported."""
    info = get_worker_info()
    assert worker_id == info.id and worker_id < info.num_workers == 2
    assert info.seed == torch.initial_seed()
    dataset = info.dataset
    assert isinstance(dataset, WorkerInfoDataset) and not hasattr(dataset, "value")
    for name, value in (("id", 3999), ("a", 3)):
        try:
            setattr(info, name, value)
        except dataclasses.FrozenInstanceError:
            pass
        else:
            raise AssertionError("WorkerInfo should be read-only")
    for k in ("id", "num_workers", "seed", "dataset"):
        assert f"{k}=" in repr(info)
    dataset.value = [worker_id, os.getpid()]


def test_get_worker_info():
    """torch's _test_get_worker_info: consistent fields, the worker's own dataset copy."""
    assert get_worker_info() is None
    dataset = WorkerInfoDataset(6)
    it = iter(DataLoader(dataset, batch_size=2, num_workers=2, output="numpy",
                         worker_init_fn=worker_info_init_fn))
    pids = [w.pid for w in it._workers]
    data = np.concatenate(list(it))
    assert len(data) == 6
    for worker_id, pid in data:
        assert pid == pids[worker_id]
    assert get_worker_info() is None
    assert not hasattr(dataset, "value")  # the main copy was never touched


def test_workers_still_listed_after_the_epoch():
    """torch's test reads ``it._workers`` after the loop; torch keeps the list."""
    it = iter(DataLoader(list(range(4)), num_workers=2))
    during = [w.pid for w in it._workers]
    list(it)
    assert [w.pid for w in it._workers] == during


def test_worker_info_is_read_only_like_torch():
    from torch.utils.data._utils.worker import WorkerInfo as TorchWorkerInfo
    theirs = TorchWorkerInfo(id=0, num_workers=1, seed=1, dataset=None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        theirs.id = 2
    info = WorkerInfo(id=0, num_workers=1, seed=1, dataset=None)
    for name in ("id", "new_attribute"):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(info, name, 2)


# ---------------------------------------------------------------- persistent workers


class NotResetDataset:
    """torch's test_dataset_not_reset: workers keep the dataset as it was at start."""

    def __init__(self):
        self.data = list(range(10))
        self.start = 0

    def __len__(self):
        return len(self.data)

    def __getitem__(self, idx):
        assert self.start == 0
        return self.data[idx]


def test_persistent_same_iterator_and_dataset_not_reset():
    dataset = NotResetDataset()
    dl = DataLoader(dataset, num_workers=2, persistent_workers=True, output="numpy")
    first = iter(dl)
    pids = list(first.worker_pids)
    for i in range(10):
        it = iter(dl)
        assert it is first
        assert [x.item() for x in it] == list(range(10))
        dataset.start = i + 1  # never reaches the workers
    assert list(first.worker_pids) == pids and all(psutil.pid_exists(p) for p in pids)
    dl.close()
    assert wait_gone(pids)


@pytest.mark.parametrize("in_order", [True, False])
def test_abandoned_epoch_then_full_epoch(in_order):
    dl = DataLoader(np.arange(40), batch_size=4, num_workers=2, persistent_workers=True,
                    in_order=in_order, output="numpy")
    it = iter(dl)
    next(it), next(it), next(it)
    batches = [b.tolist() for b in iter(dl)]
    expected = [list(range(i, i + 4)) for i in range(0, 40, 4)]
    assert (batches if in_order else sorted(batches)) == expected
    assert sorted(np.concatenate(list(iter(dl))).tolist()) == list(range(40))
    dl.close()


def test_abandoned_epoch_iterable_restarts_each_replica():
    class Shards(IterableDataset):
        def __iter__(self):
            info = get_worker_info()
            return iter(range(info.id * 100, info.id * 100 + 5))

    dl = DataLoader(Shards(), batch_size=2, num_workers=2, persistent_workers=True,
                    output="numpy")
    expected = [[0, 1], [100, 101], [2, 3], [102, 103], [4], [104]]
    it = iter(dl)
    assert next(it).tolist() == [0, 1]
    for _ in range(2):
        assert [b.tolist() for b in iter(dl)] == expected
    dl.close()


# ---------------------------------------------------------------- several loaders


def test_multiple_interleaved_dataloaders():
    a = DataLoader(np.arange(30), batch_size=3, num_workers=2, output="numpy")
    b = DataLoader(list(range(100, 110)), batch_size=None, num_workers=1, output="numpy")
    c = DataLoader(np.arange(50, 74), batch_size=4, num_workers=3, persistent_workers=True,
                   output="numpy")
    its = {"a": iter(a), "b": iter(b), "c": iter(c)}
    got = {name: [] for name in its}
    while its:
        for name in list(its):
            try:
                got[name].append(np.asarray(next(its[name])).tolist())
            except StopIteration:
                del its[name]
    assert got["a"] == [list(range(i, i + 3)) for i in range(0, 30, 3)]
    assert got["b"] == list(range(100, 110))
    assert got["c"] == [list(range(i, i + 4)) for i in range(50, 74, 4)]
    assert [x.tolist() for x in c] == got["c"]  # the persistent one runs another epoch
    c.close()


# ---------------------------------------------------------------- walking away


def test_break_early_and_del_stops_workers():
    """torch's test_partial_workers: break after a few batches, del → workers exit."""
    it = iter(DataLoader(np.arange(10_000), batch_size=2, num_workers=2))
    pids = list(it.worker_pids)
    assert len(pids) == 2 and all(psutil.pid_exists(p) for p in pids)
    for i, _ in enumerate(it):
        if i == 5:
            break
    del it
    assert wait_gone(pids)


def test_break_early_with_held_batch_stops_workers():
    """The user still holds a batch (a slot lease) when the iterator goes away."""
    it = iter(DataLoader(Patterned(400, 4096), batch_size=4, num_workers=2, output="numpy"))
    pids = list(it.worker_pids)
    kept, _ = next(it)
    del it
    assert wait_gone(pids)
    np.testing.assert_array_equal(kept, Patterned(400, 4096).expected(range(4)))


def test_exhaustion_stops_workers():
    it = iter(DataLoader(np.arange(10), batch_size=2, num_workers=2))
    pids = list(it.worker_pids)
    assert len(list(it)) == 5
    assert wait_gone(pids)


def test_persistent_loader_deleted_stops_workers():
    dl = DataLoader(np.arange(10), batch_size=2, num_workers=2, persistent_workers=True)
    it = iter(dl)
    pids = list(it.worker_pids)
    next(it)
    del dl, it
    assert wait_gone(pids)
