"""Where torch is in use, we are torch to the code around us: our classes are torch's
(isinstance), torch's get_worker_info() knows our workers (also when torch arrives late in
a spawned worker), default_collate in a user's collate_fn gives tensors in workers without
losing the zero-copy path, and the iterator's ``_workers`` keep a Process's interface.
Without torch, nothing of this imports it."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.utils.data as tud

import loader
from loader import DataLoader, get_worker_info

from helpers import (  # noqa: F401 (frozen_heap, start_method_servers: autouse fixtures)
    LateTorch,
    TorchProbe,
    float_collate,
    frozen_heap,
    start_method_servers,
)
from test_workers import _in_memfd


class Squares(loader.Dataset):
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return i * i


class Stream(loader.IterableDataset):
    def __iter__(self):
        return iter(range(3))


def test_our_classes_are_torchs_where_torch_is_in_use():
    data = list(range(6))
    pairs = [
        (DataLoader(data), tud.DataLoader),
        (Squares(3), tud.Dataset),
        (Stream(), tud.IterableDataset),
        (loader.TensorDataset(np.arange(3)), tud.TensorDataset),
        (loader.ConcatDataset([data, data]), tud.ConcatDataset),
        (loader.ChainDataset([Stream()]), tud.ChainDataset),
        (loader.Subset(data, [0]), tud.Subset),
        (loader.StackDataset(data, data), tud.StackDataset),
        (loader.SequentialSampler(data), tud.SequentialSampler),
        (loader.RandomSampler(data), tud.RandomSampler),
        (loader.SubsetRandomSampler(data), tud.SubsetRandomSampler),
        (loader.WeightedRandomSampler([1.0, 2.0], 2), tud.WeightedRandomSampler),
        (loader.BatchSampler(data, 2, False), tud.BatchSampler),
        (loader.DistributedSampler(data, num_replicas=2, rank=0), tud.DistributedSampler),
    ]
    for ours, torch_cls in pairs:
        assert isinstance(ours, torch_cls), type(ours).__name__
        assert not issubclass(torch_cls, type(ours)), "our class is not replaced by torch's"
    assert isinstance(DataLoader(data).sampler, tud.Sampler)
    # our methods, not torch's, run: a torch DataLoader would hand out tensors of an
    # int list too, but through its own iterator class
    assert type(iter(DataLoader(data))).__module__ == "loader.iterators"
    assert DataLoader.__mro__.index(tud.DataLoader) > DataLoader.__mro__.index(
        loader._torch_classes.TorchNamesake)


def test_loader_attributes_are_readable_by_torch_code():
    """What a framework reads back to build torch's own DataLoader must be accepted by it."""
    dl = DataLoader(list(range(8)), batch_size=2, shuffle=True, num_workers=1,
                    multiprocessing_context="spawn", generator=5)
    assert isinstance(dl.generator, torch.Generator)
    assert dl.multiprocessing_context.get_start_method() == "spawn"
    import multiprocessing
    assert isinstance(dl.multiprocessing_context, multiprocessing.context.BaseContext)
    theirs = tud.DataLoader(dl.dataset, batch_sampler=dl.batch_sampler, num_workers=0,
                            collate_fn=dl.collate_fn, generator=dl.generator)
    assert sorted(int(x) for batch in theirs for x in batch) == list(range(8))
    auto = DataLoader(list(range(8)), num_workers="auto")
    assert isinstance(auto.num_workers, int) and auto.num_workers >= 1
    rebuilt = DataLoader(auto.dataset, num_workers=auto.num_workers)
    assert rebuilt._autotuner is not None, "num_workers='auto' survives a rebuild"


def test_every_constructor_argument_is_an_attribute_of_the_same_name():
    """Lightning rebuilds a loader from vars(loader) by the names in __init__'s signature:
    an argument without a same-named instance attribute (keyword-only ones added later
    included) would silently fall back to its default in the rebuilt loader."""
    import inspect
    dl = DataLoader(list(range(4)), batch_size=2, num_workers=1)
    names = [p for p in inspect.signature(DataLoader.__init__).parameters if p != "self"]
    missing = [p for p in names
               if p not in vars(dl) and p not in ("shuffle", "multiprocessing_context")]
    assert missing == []
    assert hasattr(dl, "multiprocessing_context")  # a property, read by name by Lightning


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_torch_get_worker_info_is_ours_in_every_epoch(method):
    """Persistent workers get a new identity (seed) each epoch; torch's follows it. Under
    spawn torch is first imported by the dataset, after the worker started."""
    dl = DataLoader(LateTorch(4), batch_size=None, num_workers=2, persistent_workers=True,
                    multiprocessing_context=method)
    seen = [list(dl) for _ in range(2)]
    dl.close()
    for epoch, samples in enumerate(seen):
        for s in samples:
            assert s["epoch"] == epoch
            assert s["theirs"] == s["ours"] and s["same_dataset"], s
            assert s["torch_seed"] == s["ours"][2], "torch is seeded with the worker seed"
        assert sorted(s["ours"][0] for s in samples) == [0, 0, 1, 1]
    assert seen[0][0]["ours"][2] != seen[1][0]["ours"][2], "a new seed every epoch"
    assert get_worker_info() is None and tud.get_worker_info() is None


class ShardedByOurInfo(loader.IterableDataset):
    """Shards by loader.get_worker_info(): accelerate runs it in torch's own workers."""

    def __iter__(self):
        info = get_worker_info()
        k, n = (info.id, info.num_workers) if info is not None else (0, 1)
        return iter(range(k, 40, n))


def test_our_get_worker_info_answers_in_torchs_own_workers():
    import threading
    dl = tud.DataLoader(ShardedByOurInfo(), batch_size=5, num_workers=2)
    assert sorted(int(i) for b in dl for i in b) == list(range(40))
    for thread in threading.enumerate():  # torch's queues close their pipes from a feeder
        if thread.name == "QueueFeederThread":  # thread: let it finish before the fd count
            thread.join(10)


def test_a_spawned_worker_does_not_import_torch_for_nothing():
    dl = DataLoader(TorchProbe(4), batch_size=2, num_workers=1,
                    multiprocessing_context="spawn")
    batches = list(dl)
    assert [b["torch"].tolist() for b in batches] == [[False, False]] * 2
    assert isinstance(batches[0]["i"], torch.Tensor), "the main process still gets tensors"


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_default_collate_in_a_users_collate_fn_returns_tensors_in_workers(method):
    """Under spawn the worker has no torch until default_collate needs it; the loader's
    decision (torch in use in the main process) is what counts."""
    samples = [(np.full(3, i, np.uint8), i) for i in range(6)]
    dl = DataLoader(samples, batch_size=3, num_workers=1, collate_fn=float_collate,
                    multiprocessing_context=method)
    theirs = [(tud.default_collate(samples[k:k + 3])[0].float(),
               tud.default_collate(samples[k:k + 3])[1]) for k in (0, 3)]
    for (x, i), (tx, ti) in zip(dl, theirs):
        assert type(x) is torch.Tensor and x.dtype == torch.float32 and torch.equal(x, tx)
        assert type(i) is torch.Tensor and torch.equal(i, ti)


def big_pairs(batch):
    return loader.default_collate(batch)  # what a collate_fn that wraps it returns


def test_default_collate_called_in_a_worker_stays_zero_copy():
    samples = [(np.full(20_000, i, np.float64), i) for i in range(4)]
    dl = DataLoader(samples, batch_size=2, num_workers=1, collate_fn=big_pairs)
    for k, (x, i) in enumerate(dl):
        assert type(x) is torch.Tensor and x.shape == (2, 20_000)
        assert _in_memfd(x.data_ptr()), "the tensor should be a view on a worker slot"
        assert i.tolist() == [2 * k, 2 * k + 1]


def test_workers_keep_a_process_interface_after_exit():
    it = iter(DataLoader(list(range(4)), batch_size=2, num_workers=2))
    running = it._workers
    assert len(running) == 2 and all(w.is_alive() for w in running)
    pids = [w.pid for w in running]
    assert len(list(it)) == 2
    exited = it._workers
    assert [w.pid for w in exited] == pids
    for w in exited:
        w.join()
        w.join(timeout=0.1)
        w.terminate()
        assert not w.is_alive() and w.exitcode is not None and isinstance(w.pid, int)


def test_import_without_torch_stays_without_torch(tmp_path):
    """In a process without torch: nothing imports it, our objects are kept as given and
    numpy draws the shuffles; once torch is imported, a DataLoader built then is torch's.
    The import hook fires once for the awaited module and then leaves sys.meta_path."""
    script = textwrap.dedent("""
        import sys
        import numpy as np
        import loader
        from loader._on_import import when_imported, _FINDER
        dl = loader.DataLoader(list(range(10)), batch_size=5, shuffle=True, generator=5)
        batches = list(dl)
        assert dl.generator == 5 and dl.sampler.generator == 5
        assert type(batches[0]) is np.ndarray
        assert [list(s) for s in loader.random_split(range(10), [4, 6], generator=1)] == [
            np.random.default_rng(1).permutation(10)[:4].tolist(),
            np.random.default_rng(1).permutation(10)[4:].tolist()]
        d = loader.DistributedSampler(range(10), num_replicas=2, rank=0)
        d.set_epoch(3)
        assert list(d) == np.random.default_rng(3).permutation(10).tolist()[0::2]
        assert loader.default_collate([1, 2]).tolist() == [1, 2]
        assert "torch" not in sys.modules, "something imported torch"
        calls = []
        when_imported("colorsys", "probe", lambda m: calls.append(m.__name__))
        assert _FINDER in sys.meta_path and not calls
        import colorsys
        assert calls == ["colorsys"] and _FINDER not in sys.meta_path
        assert colorsys.__spec__.loader is colorsys.__loader__
        assert type(colorsys.__loader__).__name__ == "SourceFileLoader"
        import torch, torch.utils.data as tud
        chain = loader.ChainDataset([])
        assert not isinstance(chain, tud.IterableDataset)  # no DataLoader built since
        assert isinstance(loader.DataLoader(list(range(3))), tud.DataLoader)
        assert isinstance(chain, tud.IterableDataset), "an ABC's cached answer is stale"
        assert isinstance(loader.default_collate([1, 2]), torch.Tensor)
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
