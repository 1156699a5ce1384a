"""num_workers > 0 (fork): odd payloads that must cross the process boundary unchanged,
and protocol corners (two iterators of one loader, persistent epochs after errors or
ended replicas, prefetch limits, huge index lists).
"""

from __future__ import annotations

import gc
import time

import numpy as np
import pytest
import torch
import torch.utils.data as tud

from loader import DataLoader, IterableDataset, get_worker_info

from helpers import Sized, frozen_heap, wait_gone  # noqa: F401 (frozen_heap: autouse fixture)

pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")


def assert_same(ours, ref, path="batch"):
    """Same containers, array types, dtypes, shapes and values (NaN-aware)."""
    if isinstance(ref, torch.Tensor):
        assert isinstance(ours, torch.Tensor), path
        assert (ours.dtype, ours.shape) == (ref.dtype, ref.shape), path
        assert torch.equal(ours, ref), path
    elif isinstance(ref, np.ndarray):
        assert type(ours) is np.ndarray, f"{path}: {type(ours)}"
        assert (ours.dtype, ours.shape) == (ref.dtype, ref.shape), \
            f"{path}: {ours.dtype}{ours.shape} != {ref.dtype}{ref.shape}"
        if ref.dtype.kind == "O":
            assert ours.tolist() == ref.tolist(), path
        else:
            np.testing.assert_array_equal(ours, ref, err_msg=path)
    elif isinstance(ref, dict):
        assert type(ours) is type(ref) and list(ours) == list(ref), path
        for key in ref:
            assert_same(ours[key], ref[key], f"{path}[{key!r}]")
    elif isinstance(ref, (list, tuple)):
        assert type(ours) is type(ref) and len(ours) == len(ref), path
        for i, (a, b) in enumerate(zip(ours, ref)):
            assert_same(a, b, f"{path}[{i}]")
    else:
        assert type(ours) is type(ref) and ours == ref, f"{path}: {ours!r} != {ref!r}"


# ---------------------------------------------------------------- payloads


def odd_collate(batch):
    """Arrays of every layout and dtype kind, large (slot) and small (inline)."""
    i = batch[0]
    big = np.arange(40000, dtype=np.float64).reshape(200, 200) + i
    return {
        "strided": big[:, ::2], "transposed": big.T, "fortran": np.asfortranarray(big),
        "reversed": big[::-1], "broadcast": np.broadcast_to(np.arange(200.0) + i, (300, 200)),
        "empty": np.zeros((0, 5), np.float32), "zero_d": np.array(3.5 + i),
        "np_scalar": np.float32(2.5), "big_endian": (np.arange(20000) + i).astype(">i4"),
        "structured": np.array([(j, j / 2) for j in range(10000)],
                               dtype=[("a", "<i4"), ("b", "<f8")]),
        "bool": np.arange(100000) % (i + 2) == 0, "complex": np.arange(10000) * (1 + 1j),
        "datetime": np.arange(10000).astype("datetime64[s]"), "float16": big.astype(np.float16),
        "object": np.array([{"k": i}, None], dtype=object),
        "unicode": np.array(["a", "bcd"] * 9000),
        "aliased": [big, big], "small_view": np.arange(100.0)[10:20:3], "int": i,
        "bytes": b"xy" * 50000, "none": None, "nan": np.full(20000, np.nan),
    }


class Indices(Sized):
    def __getitem__(self, i):
        return i


def test_custom_collate_arrays_of_every_layout_and_dtype():
    reference = list(DataLoader(Indices(6), batch_size=2, collate_fn=odd_collate,
                                output="numpy"))
    batches = list(DataLoader(Indices(6), batch_size=2, num_workers=2, collate_fn=odd_collate,
                              output="numpy"))
    assert_same(batches, reference)
    batches[0]["fortran"][0, 0] = -1.0  # batches are writable, as torch's are
    assert batches[0]["fortran"][0, 0] == -1.0


class TorchOddSamples:
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return {"bfloat16": torch.arange(40000, dtype=torch.bfloat16) + i,
                "transposed": torch.arange(40000.0).reshape(200, 200).T + i,
                "complex": torch.arange(100.0).to(torch.complex64),
                "bool": torch.ones(3, dtype=torch.bool)}


def test_torch_samples_without_numpy_dtype_match_torch():
    theirs = list(tud.DataLoader(TorchOddSamples(), batch_size=2, num_workers=2))
    assert_same(list(DataLoader(TorchOddSamples(), batch_size=2, num_workers=2)), theirs)


class Growing:
    """Sample i has 20000 * (i + 1) float64 values: slots must grow while batches are held."""

    def __len__(self):
        return 12

    def __getitem__(self, i):
        return np.full(20000 * (i + 1), i, np.float64)


def test_slots_grow_while_earlier_batches_are_held():
    batches = list(DataLoader(Growing(), batch_size=None, num_workers=2, output="numpy"))
    gc.collect()
    for i, b in enumerate(batches):
        assert b.shape == (20000 * (i + 1),) and (b == i).all(), i


def test_unbatched_large_samples_are_held_safely():
    """batch_size=None: the dataset's own arrays are copied into a slot, then leased."""
    ds = Growing()
    it = iter(DataLoader(ds, batch_size=None, num_workers=2, output="numpy"))
    first = next(it)
    rest = [b.copy() for b in it]
    assert (first == 0).all() and [b[0] for b in rest] == list(range(1, 12))


# ---------------------------------------------------------------- protocol corners


def test_two_iterators_of_one_loader_interleaved():
    dl = DataLoader(np.arange(20), batch_size=2, num_workers=2, output="numpy")
    a, b = iter(dl), iter(dl)
    pairs = [(x.tolist(), y.tolist()) for x, y in zip(a, b)]
    assert pairs == [([i, i + 1], [i, i + 1]) for i in range(0, 20, 2)]


def test_next_after_the_end_keeps_stopping():
    it = iter(DataLoader(np.arange(10), batch_size=3, num_workers=2))
    assert len(it) == 4
    assert len(list(it)) == 4
    for _ in range(2):
        with pytest.raises(StopIteration):
            next(it)


def test_prefetch_factor():
    for prefetch_factor in (1, 5):
        dl = DataLoader(np.arange(10), batch_size=3, num_workers=2,
                        prefetch_factor=prefetch_factor, output="numpy")
        assert [b.tolist() for b in dl] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]


class CountingSampler(tud.Sampler):
    """A sequential batch sampler that counts the batches drawn from it."""

    def __init__(self, batches: int, batch_size: int) -> None:
        self.batches, self.batch_size, self.drawn = batches, batch_size, 0

    def __len__(self) -> int:
        return self.batches

    def __iter__(self):
        for b in range(self.batches):
            self.drawn += 1
            yield list(range(b * self.batch_size, (b + 1) * self.batch_size))


class Rows:
    """Samples of ``row_bytes`` bytes each."""

    def __init__(self, n: int, row_bytes: int) -> None:
        self.n, self.row = n, np.zeros(row_bytes, np.uint8)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return self.row, i


_HANDED = 12  # batches handed out before counting: the workers are warm by then


def _drawn_beyond_handed(dataset, batch_size: int, **kwargs) -> tuple[int, list]:
    """How many batches the loader had drawn beyond those it handed out, after
    :data:`_HANDED` of them; and every batch's sample ids."""
    sampler = CountingSampler(len(dataset) // batch_size, batch_size)
    dl = DataLoader(dataset, batch_sampler=sampler, num_workers=2, output="numpy", **kwargs)
    it = iter(dl)
    ids = [next(it)[1].tolist() for _ in range(_HANDED)]
    ahead = sampler.drawn - _HANDED
    ids += [b[1].tolist() for b in it]
    return ahead, ids


def test_small_fast_batches_go_deeper_only_when_prefetch_factor_was_left_to_its_default():
    """Batches made in microseconds, once a warm worker has made one: a few hundred bytes,
    32 in flight per worker (more than its slots: the rest ride in their headers); 32 KiB,
    8 (a quarter of the result ring would hold only 3); prefetch_factor=2 given: torch's 2
    per worker, exactly. The batches are the same every time."""
    for row, depth in ((64, 32), (8 << 10, 8)):
        data = Rows(120 * 4, row)
        expected = [list(range(b * 4, b * 4 + 4)) for b in range(120)]
        ahead, ids = _drawn_beyond_handed(data, 4)
        assert (ahead, ids) == (2 * depth, expected), row
        ahead, ids = _drawn_beyond_handed(data, 4, prefetch_factor=2)
        assert (ahead, ids) == (2 * 2, expected), row
    assert DataLoader(data, num_workers=2).prefetch_factor == 2  # what torch reports


class MarkedRows(Rows):
    def __getitem__(self, i: int):
        return np.full(len(self.row), i % 251, np.uint8), i


def test_deep_small_batches_held_beyond_the_slots_stay_intact():
    """32 batches in flight per worker and only 10 slots each: with every batch held,
    the later ones travel in their headers, and none is overwritten."""
    data = MarkedRows(200 * 4, 64)
    held = list(DataLoader(data, batch_size=4, num_workers=2, output="numpy"))
    assert [b[1].tolist() for b in held] == [list(range(k * 4, k * 4 + 4)) for k in range(200)]
    for rows, ids in held:
        assert (rows == (ids % 251).astype(np.uint8)[:, None]).all()


class SlowRows(Rows):
    def __getitem__(self, i: int):
        time.sleep(0.0005)  # 4 samples: 2 ms a batch, an I/O-bound dataset
        return super().__getitem__(i)


class TextRows(Rows):
    def __getitem__(self, i: int):
        return "x" * len(self.row), i  # strings ride in the batch's header, not its slot


def test_large_or_slow_batches_keep_torchs_depth():
    """4 MiB batches in the slot or in the header (8 MiB per worker hold only two), and
    2 ms batches (wake-ups are lost in them; a deep queue would only tie work to a
    worker): torch's depth."""
    for data in (Rows(30 * 4, 1 << 20), TextRows(30 * 4, 1 << 20), SlowRows(30 * 4, 64)):
        ahead, ids = _drawn_beyond_handed(data, 4)
        assert ahead == 2 * 2 and ids == [list(range(b * 4, b * 4 + 4)) for b in range(30)]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # torch's __del__
def test_prefetch_factor_zero_fails_on_iter_like_torch():
    with pytest.raises(AssertionError):
        iter(DataLoader(np.arange(10), num_workers=2, prefetch_factor=0))
    with pytest.raises(AssertionError):
        iter(tud.DataLoader(np.arange(10), num_workers=2, prefetch_factor=0))


class CountsInit:
    def __init__(self):
        self.inits = 0

    def __len__(self):
        return 4

    def __getitem__(self, i):
        return self.inits


def count_init(worker_id):
    get_worker_info().dataset.inits += 1


def test_worker_init_fn_runs_once_with_persistent_workers():
    """As in torch: a new epoch does not re-run worker_init_fn."""
    dl = DataLoader(CountsInit(), batch_size=None, num_workers=2, persistent_workers=True,
                    worker_init_fn=count_init)
    assert [list(dl) for _ in range(3)] == [[1, 1, 1, 1]] * 3
    dl.close()


class FailsInFirstEpoch:
    def __len__(self):
        return 4

    def __getitem__(self, i):
        if get_worker_info().epoch == 0 and i == 1:
            raise ValueError("first epoch only")
        return i


def test_persistent_epoch_after_errors_is_clean():
    dl = DataLoader(FailsInFirstEpoch(), batch_size=None, num_workers=2,
                    persistent_workers=True)
    it = iter(dl)
    assert next(it) == 0
    with pytest.raises(ValueError, match="first epoch only"):
        next(it)
    assert list(it) == [2, 3]
    assert list(dl) == [0, 1, 2, 3]
    dl.close()


class UnevenShards(IterableDataset):
    def __init__(self, sizes):
        self.sizes = sizes

    def __iter__(self):
        wid = get_worker_info().id
        return iter(range(100 * wid, 100 * wid + self.sizes[wid]))


@pytest.mark.parametrize("in_order", [True, False])
def test_persistent_iterable_abandoned_after_a_replica_ended(in_order):
    dl = DataLoader(UnevenShards([1, 6]), batch_size=None, num_workers=2,
                    persistent_workers=True, in_order=in_order)
    full = [0, 100, 101, 102, 103, 104, 105]
    for _ in range(2):
        it = iter(dl)
        partial = [next(it) for _ in range(4)]  # worker 0's replica has ended by now
        assert partial == full[:4] if in_order else set(partial) <= set(full)
        epoch = list(iter(dl))
        assert (epoch if in_order else sorted(epoch)) == full
    dl.close()


class EmptySamples:
    def __len__(self):
        return 1_000_000

    def __getitem__(self, i):
        return np.empty(0)

    def __getitems__(self, indices):
        return [np.empty(0)] * len(indices)


def test_large_sampler_indices_and_an_error_in_the_loop():
    """torch's test_large_sampler_indices: big index lists, then the loop raises while
    the iterator is held; the error comes out and the workers still go away."""
    dl = DataLoader(EmptySamples(), batch_size=40960, num_workers=2, output="numpy")
    it = iter(dl)
    pids = list(it.worker_pids)
    with pytest.raises(RuntimeError, match="My Error"):
        for i, batch in enumerate(it):
            assert batch.shape == (40960, 0)
            if i == 2:
                raise RuntimeError("My Error")
    del it
    assert wait_gone(pids)


def test_sampler_error_propagates_and_workers_go_away():
    """An exception from the sampler comes out of next(), as in torch."""

    class Breaks:
        def __iter__(self):
            for i in range(10):
                if i == 6:
                    raise KeyError("sampler broke")
                yield i

        def __len__(self):
            return 10

    it = iter(DataLoader(list(range(10)), sampler=Breaks(), num_workers=2))
    pids = list(it.worker_pids)
    with pytest.raises(KeyError, match="sampler broke"):
        for _ in it:
            pass
    del it
    assert wait_gone(pids)
