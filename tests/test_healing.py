"""Self-healing without crashes: argument checks, on_error="skip" in every fetch path with
and without workers, the stall watchdog's quiet cases, and what stats() reports.

Deaths, kills and stuck workers are in ``test_faults_healing.py`` (child interpreters).
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest

import loader
from loader import DataLoader, IterableDataset, StallWarning
from loader.workers.backend import WorkerBackend
from loader.workers.pool import WorkerPool

from helpers import frozen_heap  # noqa: F401 (frozen_heap: autouse fixture)

pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")


class Flaky:
    """Raises ``ValueError("bad i")`` for the indices in ``bad``; else returns ``i``."""

    def __init__(self, n, bad):
        self.n, self.bad = n, set(bad)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if i in self.bad:
            raise ValueError(f"bad {i}")
        return i


class FlakyItems(Flaky):
    """The same with a batched ``__getitems__`` that fails for the whole batch."""

    def __getitems__(self, keys):
        self.calls = getattr(self, "calls", 0) + 1
        if self.bad & set(keys):
            raise OSError(f"batch {list(keys)} has a bad one")
        return list(keys)

    def __getitem__(self, i):  # never used: the fallback goes through __getitems__([i])
        raise AssertionError("per-index fallback must use __getitems__")


def run(dl):
    """Every sample of an epoch, and the warnings it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = [int(x) for b in dl for x in np.atleast_1d(np.asarray(b))]
    return out, [w for w in caught if not str(w.message).startswith("This DataLoader will")]


# ---------------------------------------------------------------------------- arguments


@pytest.mark.parametrize("kwargs,message", [
    (dict(stall_warning_s=-1), "stall_warning_s option should be a finite, non-negative"),
    (dict(stall_warning_s=float("nan")), "stall_warning_s option should be a finite"),
    (dict(stall_warning_s=float("inf")), "stall_warning_s option should be a finite"),
    (dict(stall_warning_s="60"), "but got stall_warning_s='60'"),
    (dict(stall_warning_s=True), "but got stall_warning_s=True"),
    (dict(worker_restarts=-1), "worker_restarts option should be a non-negative integer"),
    (dict(worker_restarts=1.5), "but got worker_restarts=1.5"),
    (dict(worker_restarts=True), "but got worker_restarts=True"),
    (dict(worker_restarts=1, num_workers=0), "worker_restarts option needs num_workers > 0"),
    (dict(on_error="ignore"), "on_error option should be one of ('raise', 'skip'), but got "
                              "on_error='ignore'"),
])
def test_bad_healing_arguments_are_refused(kwargs, message):
    kwargs = {"num_workers": 2, **kwargs}
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        DataLoader(list(range(4)), **kwargs)


def test_good_healing_arguments_are_kept():
    dl = DataLoader(list(range(4)), num_workers=2, stall_warning_s=np.float32(1.5),
                    worker_restarts=np.int64(2), on_error="skip")
    assert (dl.stall_warning_s, dl.worker_restarts, dl.on_error) == (1.5, 2, "skip")
    default = DataLoader(list(range(4)))
    assert (default.stall_warning_s, default.worker_restarts, default.on_error) == \
        (60, 0, "raise")


def test_stall_warning_is_a_public_runtime_warning():
    assert issubclass(StallWarning, RuntimeWarning) and "StallWarning" in loader.__all__


def test_the_local_pool_offers_restart_and_kill():
    assert {"restart", "kill"} <= set(dir(WorkerBackend))
    assert callable(WorkerPool.restart) and callable(WorkerPool.kill)


# ---------------------------------------------------------------------------- skipping


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("dataset", [Flaky, FlakyItems])
def test_skip_leaves_out_bad_samples_and_lists_them(num_workers, dataset):
    ds = dataset(50, bad=[3, 17, 18, 49])
    dl = DataLoader(ds, batch_size=4, num_workers=num_workers, on_error="skip")
    out, caught = run(dl)
    assert out == [i for i in range(50) if i not in ds.bad]
    stats = dl.stats()
    kind = "OSError" if dataset is FlakyItems else "ValueError"
    assert [(i, k) for i, k, _ in stats.skipped] == [(i, kind) for i in (3, 17, 18, 49)]
    if dataset is Flaky:
        assert [m for *_, m in stats.skipped] == ["bad 3", "bad 17", "bad 18", "bad 49"]
    assert stats.epoch.skips == 4 and stats.total.skips == 4
    assert "this epoch: 4 samples skipped" in stats.summary
    (warning,) = caught
    assert warning.category is RuntimeWarning
    assert str(warning.message).startswith("DataLoader skipped 4 samples in epoch 0 ")


@pytest.mark.parametrize("num_workers", [0, 2])
def test_skip_drops_a_batch_whose_every_sample_is_bad(num_workers):
    dl = DataLoader(Flaky(12, bad=[4, 5, 6, 7]), batch_size=4, num_workers=num_workers,
                    on_error="skip")
    with pytest.warns(RuntimeWarning, match="DataLoader skipped 4 samples in epoch 0 whose"):
        batches = [b.tolist() for b in dl]
    assert batches == [[0, 1, 2, 3], [8, 9, 10, 11]]
    assert [i for i, *_ in dl.stats().skipped] == [4, 5, 6, 7]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_skip_without_auto_batching(num_workers):
    dl = DataLoader(Flaky(6, bad=[2]), batch_size=None, num_workers=num_workers,
                    on_error="skip")
    with pytest.warns(RuntimeWarning, match="DataLoader skipped 1 sample in epoch 0 whose"):
        assert [int(b) for b in dl] == [0, 1, 3, 4, 5]
    assert [i for i, *_ in dl.stats().skipped] == [2]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_collate_errors_are_not_skipped(num_workers):
    def collate(batch):
        if 5 in batch:
            raise TypeError("collate refuses 5")
        return np.array(batch)
    dl = DataLoader(Flaky(8, bad=[]), batch_size=2, num_workers=num_workers,
                    collate_fn=collate, on_error="skip")
    with pytest.raises(TypeError, match="collate refuses 5"):
        list(dl)


def test_default_on_error_raises_as_torch_does():
    with pytest.raises(ValueError, match="bad 3"):
        list(DataLoader(Flaky(8, bad=[3]), batch_size=2, num_workers=2))


class FlakyStream(IterableDataset):
    """An iterator object (not a generator), so it can go on after raising."""

    def __init__(self, n, bad):
        self.n, self.bad = n, set(bad)

    def __iter__(self):
        self.i = -1
        return self

    def __next__(self):
        self.i += 1
        if self.i >= self.n:
            raise StopIteration
        if self.i in self.bad:
            raise RuntimeError(f"bad record {self.i}")
        return self.i


@pytest.mark.parametrize("num_workers", [0, 1])
def test_skip_in_an_iterable_dataset_names_worker_and_position(num_workers):
    dl = DataLoader(FlakyStream(10, bad=[2, 9]), batch_size=3, num_workers=num_workers,
                    on_error="skip")
    out, _ = run(dl)
    assert out == [0, 1, 3, 4, 5, 6, 7, 8]
    assert dl.stats().skipped == [((0, 2), "RuntimeError", "bad record 2"),
                                  ((0, 9), "RuntimeError", "bad record 9")]


def test_skips_are_told_once_per_epoch_and_counted_per_epoch():
    dl = DataLoader(Flaky(20, bad=[7]), batch_size=4, num_workers=2, on_error="skip",
                    persistent_workers=True)
    told = []
    for _ in range(3):
        _, caught = run(dl)
        told += [str(w.message) for w in caught]
        assert [i for i, *_ in dl.stats().skipped] == [7]
    dl.close()
    assert [t.split(" whose")[0] for t in told] == [
        f"DataLoader skipped 1 sample in epoch {e}" for e in range(3)]
    assert dl.stats().total.skips == 3


# ---------------------------------------------------------------------------- watchdog


class Slow:
    def __len__(self):
        return 8

    def __getitem__(self, i):
        if i == 4:
            time.sleep(0.6)
        return i


def test_no_stall_warning_below_the_threshold_or_when_off():
    for threshold in (5, 0):
        _, caught = run(DataLoader(Slow(), batch_size=2, num_workers=2,
                                   stall_warning_s=threshold))
        assert not [w for w in caught if w.category is StallWarning]


def test_a_slow_consumer_is_not_a_stall():
    """Time the user spends between next() calls never counts: only waiting does."""
    dl = DataLoader(list(range(8)), batch_size=2, num_workers=2, stall_warning_s=0.2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", StallWarning)
        for _ in dl:
            time.sleep(0.4)
    assert dl.stats().stalls == 0


def test_stall_warning_points_at_the_users_loop():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in DataLoader(Slow(), batch_size=2, num_workers=2, stall_warning_s=0.2):
            pass
    (stall,) = [w for w in caught if w.category is StallWarning]
    assert stall.filename == __file__
    assert "batch 2 (indices [4, 5]) is with worker 0 (pid " in str(stall.message)
    assert "time.sleep(0.6)" in str(stall.message)  # the source line under its frame
