"""Slots, leases and the batch codec, in one process (the worker side and the main side
of the same memfds), so the zero-copy rules are checked without any scheduling."""

from __future__ import annotations

import gc
import os
from collections import OrderedDict, namedtuple

import numpy as np
import pytest

from loader.ipc import codec
from loader.ipc.arena import Arena, SlotWriter
from loader.ipc.channel import Channel
from loader import collate


class Released:
    """The slots whose release counter a lease has stored (the worker's view)."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel

    def __bool__(self) -> bool:
        return bool(list(self))

    def __iter__(self):
        return iter([(0, s) for s in range(self.channel.num_slots) if self.channel.released(s)])


@pytest.fixture
def pair():
    channel = Channel.create(0, 2)
    arena = Arena(0, 2, channel.words, channel.release_index)
    writer = SlotWriter.open(os.getpid(), arena.fds, inherited=False)
    yield arena, writer, Released(channel)
    writer.close()
    arena.close()
    channel.close()


def roundtrip(arena, writer, batch_fn, slot=0):
    writer.begin(slot)
    previous = collate.use_allocator(writer.alloc)
    try:
        batch = batch_fn()
        kind, payload, spans = codec.encode(batch, writer)
    finally:
        collate.use_allocator(previous)
    size = writer.end()
    del batch
    lease = arena.lease(slot, size, 1) if kind != codec.INBAND and size else None
    return kind, codec.decode(kind, payload, lease, spans)


def test_default_collate_batch_is_a_layout_of_views_on_the_slot(pair):
    arena, writer, released = pair
    samples = [(np.full((3, 4), i, np.float32), i, f"s{i}") for i in range(5)]
    kind, out = roundtrip(arena, writer, lambda: collate.collate_arrays(samples))
    assert kind == codec.LAYOUT
    x, y, s = out
    assert x.shape == (5, 3, 4) and x.dtype == np.float32 and x[4, 0, 0] == 4
    assert y.dtype == np.int64 and y.tolist() == list(range(5))
    assert list(s) == [f"s{i}" for i in range(5)]  # torch keeps the zip's tuple here
    assert x.flags.writeable
    assert not released


def test_tensors_over_the_slot_travel_as_a_layout_of_views(pair):
    """default_collate called by a user's collate_fn where torch is in use: tensors over
    the slot's memory. They must not be copied or pickled: the same layout, rebuilt as
    tensors over the lease; a tensor made elsewhere (.float()) is copied in once."""
    import torch
    arena, writer, released = pair
    samples = [(np.full((3, 4), i, np.float32), i) for i in range(5)]
    seen = {}

    def collate_fn():
        x, y = collate.default_collate(samples)
        seen["x"], seen["slot"] = x.data_ptr(), writer.offset_of(x.data_ptr(), x.nbytes)
        return {"x": x, "y": y, "z": y.float()}

    kind, out = roundtrip(arena, writer, collate_fn)
    assert seen["slot"] is not None, "default_collate should write into the slot"
    assert kind == codec.LAYOUT
    assert all(type(v) is torch.Tensor for v in out.values())
    assert out["x"].shape == (5, 3, 4) and out["x"].dtype == torch.float32
    assert torch.equal(out["z"], torch.arange(5, dtype=torch.float32))
    mapped = np.frombuffer(arena._maps[0], np.uint8).__array_interface__["data"][0]
    assert out["x"].data_ptr() - mapped == seen["slot"], "a view on the main's mapping"
    del out
    gc.collect()
    assert list(released) == [(0, 0)]


def test_slot_released_only_when_every_array_is_gone(pair):
    arena, writer, released = pair
    kind, (x, y) = roundtrip(arena, writer, lambda: [np.arange(10.0), np.arange(3)])
    gc.collect()
    assert not released
    del x
    gc.collect()
    assert not released  # y still holds the slot
    view = y[1:]
    del y
    gc.collect()
    assert not released  # a view of y still holds it
    del view
    gc.collect()
    assert list(released) == [(0, 0)]


@pytest.mark.parametrize("make", [
    lambda: {"a": np.arange(100_000, dtype=np.int16), "b": [1.5, None, b"x"]},
    lambda: (np.arange(24).reshape(4, 6)[:, ::2], np.arange(10)[::-1]),  # not contiguous
    lambda: np.zeros((0, 3)),
    lambda: np.array(3.0),  # 0-d
])
def test_layout_roundtrip_values(pair, make):
    arena, writer, _ = pair
    expected = make()
    kind, out = roundtrip(arena, writer, make)
    assert kind == codec.LAYOUT
    flat_e, flat_o = _leaves(expected), _leaves(out)
    assert len(flat_e) == len(flat_o)
    for e, o in zip(flat_e, flat_o):
        if isinstance(e, np.ndarray):
            assert o.dtype == e.dtype and o.shape == e.shape
            np.testing.assert_array_equal(o, e)
        else:
            assert o == e and type(o) is type(e)


def _leaves(obj):
    if isinstance(obj, dict):
        return [x for k in obj for x in _leaves(obj[k])]
    if isinstance(obj, (list, tuple)):
        return [x for v in obj for x in _leaves(v)]
    return [obj]


Point = namedtuple("Point", "x y")


@pytest.mark.parametrize("make", [
    lambda: Point(np.arange(200_000), np.ones(3)),
    lambda: OrderedDict(a=np.arange(200_000)),
    lambda: [np.array(["a", "b"]), np.arange(3)],
])
def test_other_batches_are_pickled_with_large_buffers_in_the_slot(pair, make):
    arena, writer, released = pair
    expected = make()
    kind, out = roundtrip(arena, writer, make)
    assert kind in (codec.PICKLE, codec.INBAND)
    assert type(out) is type(expected)
    for e, o in zip(_leaves(list(expected.values()) if isinstance(expected, dict) else expected),
                    _leaves(list(out.values()) if isinstance(out, dict) else out)):
        np.testing.assert_array_equal(o, e)
    if kind == codec.PICKLE:
        del out, o
        gc.collect()
        assert list(released) == [(0, 0)]


def test_without_a_free_slot_everything_travels_inband(pair):
    arena, writer, released = pair
    writer.begin(-1)
    kind, payload, spans = codec.encode([np.arange(300_000)], writer)
    writer.end()
    assert kind == codec.INBAND and spans == ()
    (out,) = codec.decode(kind, payload, None, spans)
    assert out[-1] == 299_999 and out.flags.writeable


def test_a_slot_grows_and_old_arrays_stay_valid(pair):
    arena, writer, _ = pair
    first = roundtrip(arena, writer, lambda: [np.full(10, 7)])[1]
    big = roundtrip(arena, writer, lambda: [np.full(3_000_000, 9)], slot=1)[1]
    assert first[0].tolist() == [7] * 10 and int(big[0][-1]) == 9
    writer.begin(0)
    arr = writer.alloc((4_000_000,), np.dtype(np.int64))  # grows slot 0 beyond its mapping
    arr[:] = 5
    assert writer.end() >= 32_000_000


def test_torch_tensors_travel_through_the_slot(pair):
    torch = pytest.importorskip("torch")
    arena, writer, _ = pair
    samples = [torch.full((200, 300), float(i)) for i in range(4)]
    kind, out = roundtrip(arena, writer, lambda: collate.default_collate(samples))
    assert kind == codec.LAYOUT  # the tensor's storage is in the slot: described in place
    assert isinstance(out, torch.Tensor) and out.shape == (4, 200, 300) and out[3, 0, 0] == 3
