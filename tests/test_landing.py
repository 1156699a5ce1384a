"""A user's numpy collate_fn lands in the slot (workers/landing.py): same results as
numpy, in the slot when it applies, numpy's own behaviour when it does not."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

from loader import DataLoader
from loader.ipc.arena import Arena, SlotWriter
from loader.ipc.channel import Channel
from loader.workers.landing import landing_collate


@pytest.fixture
def writer():
    channel = Channel.create(0, 1)
    arena = Arena(0, 1, channel.words, channel.release_index)
    w = SlotWriter.open(os.getpid(), arena.fds, inherited=False)
    w.begin(0)
    yield w
    w.end()
    w.close()
    arena.close()
    channel.close()


def in_slot(writer, array):
    address = array.__array_interface__["data"][0]
    return writer.offset_of(address, array.nbytes) is not None


CASES = [
    ("stack", lambda s: np.stack(s)),
    ("stack axis 1", lambda s: np.stack(s, axis=1)),
    ("stack axis -1", lambda s: np.stack(s, -1)),
    ("stack dtype", lambda s: np.stack(s, dtype=np.float32)),
    ("concatenate", lambda s: np.concatenate(s)),
    ("concatenate axis 1", lambda s: np.concatenate(s, axis=1)),
    ("concatenate dtype", lambda s: np.concatenate(s, dtype=np.int64)),
]


@pytest.mark.parametrize("name,fn", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("dtypes", [(np.uint8, np.uint8), (np.int64, np.float32),
                                    (np.uint8, np.int8), (np.bool_, np.int16)])
def test_results_equal_numpy_and_land_in_the_slot(writer, name, fn, dtypes):
    samples = [np.arange(12).reshape(3, 4).astype(dtypes[i % 2]) for i in range(5)]
    try:
        expected = fn(samples)
    except TypeError as exc:  # a cast numpy refuses: the same refusal, word for word
        with pytest.raises(TypeError) as landed:
            landing_collate(fn, writer.alloc)(samples)
        assert str(landed.value) == str(exc)
        return
    got = landing_collate(fn, writer.alloc)(samples)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)
    assert in_slot(writer, got)
    assert np.stack is not fn and np.stack.__module__.startswith("numpy")  # restored


@pytest.mark.parametrize("call", [
    lambda: np.stack([np.ones(3), np.ones(4)]),  # shapes differ: numpy's error
    lambda: np.stack([np.ones(3)], axis=5),
    lambda: np.concatenate([np.ones((2, 2)), np.ones((2, 3))]),
    lambda: np.concatenate([np.float64(1.0), np.float64(2.0)]),
])
def test_numpy_errors_are_numpys_own(writer, call):
    with pytest.raises(Exception) as plain:
        call()
    with pytest.raises(type(plain.value)) as landed:
        landing_collate(lambda _: call(), writer.alloc)(None)
    assert str(landed.value) == str(plain.value)


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # np.matrix, on purpose
def test_what_it_does_not_handle_goes_to_numpy_untouched(writer):
    matrices = [np.matrix([[1, 2]]), np.matrix([[3, 4]])]
    lists = [[1, 2], [3, 4]]
    out = np.empty((2, 2))

    def collate(_):
        return (np.stack(lists), np.concatenate(matrices), np.stack(lists, out=out),
                np.concatenate([np.ones((2, 2))] * 2, axis=None))

    a, b, c, d = landing_collate(collate, writer.alloc)(None)
    assert not in_slot(writer, a) and a.tolist() == [[1, 2], [3, 4]]
    assert type(b) is np.matrix and c is out and d.shape == (8,)


def test_other_threads_get_heap_arrays(writer):
    seen = {}

    def collate(samples):
        t = threading.Thread(target=lambda: seen.update(other=np.stack(samples)))
        t.start()
        t.join()
        return np.stack(samples)

    got = landing_collate(collate, writer.alloc)([np.ones(3)] * 4)
    assert in_slot(writer, got) and not in_slot(writer, seen["other"])
    np.testing.assert_array_equal(got, seen["other"])


class Images:
    def __len__(self):
        return 40

    def __getitem__(self, i):
        return np.full((3, 8, 8), i, np.uint8), i


def np_collate(samples):
    return np.stack([s[0] for s in samples]), np.array([s[1] for s in samples])


def test_numpy_collate_batches_equal_the_main_process_ones():
    expected = [(x.copy(), y.copy()) for x, y in
                DataLoader(Images(), batch_size=6, collate_fn=np_collate, output="numpy")]
    got = list(DataLoader(Images(), batch_size=6, num_workers=2, collate_fn=np_collate,
                          output="numpy"))
    assert len(got) == len(expected) == 7
    for (x, y), (ex, ey) in zip(got, expected):
        np.testing.assert_array_equal(x, ex)
        np.testing.assert_array_equal(y, ey)
        assert x.dtype == ex.dtype and y.dtype == ey.dtype
    assert [int(x[0, 0, 0, 0]) for x, _ in got] == list(range(0, 40, 6))  # none overwritten
