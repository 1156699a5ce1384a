"""ipc/heap.py: a batch carved from process memory encodes and decodes as from a slot,
including batches that outgrow the buffer mid-way (segments joined once)."""

from __future__ import annotations

import numpy as np

from loader import collate
from loader.collate import collate_arrays  # numpy batches whether torch is in use or not
from loader.ipc import codec
from loader.ipc.heap import HeapWriter

from helpers import frozen_heap  # noqa: F401 (autouse fixture)


def roundtrip(writer: HeapWriter, make_batch):
    writer.begin()
    previous = collate.use_allocator(writer.alloc)
    try:
        batch = make_batch()
        kind, payload, spans = codec.encode(batch, writer)
    finally:
        collate.use_allocator(previous)
    buffer = writer.end()
    copy = None if buffer is None else buffer.copy()  # what Ray would have stored
    return batch, codec.decode(kind, payload, copy, spans), kind


def same(a, b):
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            same(x, y)
    else:
        assert a == b


def test_collated_batches_roundtrip_and_grow_across_segments():
    writer = HeapWriter()
    samples = [{"x": np.full((300, 1024), i, np.float32), "s": f"s{i}", "i": i,
                "y": np.full((300, 1024), -i, np.float32)} for i in range(3)]
    # x fills the first segment exactly (3.5 MiB rounds up to 4 MiB); y needs a second
    writer.begin()
    writer.alloc((3, 300, 1024), np.dtype(np.float32))
    writer.alloc((3, 300, 1024), np.dtype(np.float32))
    assert len(writer._segments) == 3  # the empty start, and two carved segments
    writer.end()
    batch, back, kind = roundtrip(writer, lambda: collate_arrays(samples))
    assert kind == codec.LAYOUT
    same(batch, back)
    size = writer._buffer.nbytes
    assert size >= batch["x"].nbytes + batch["y"].nbytes  # joined: one segment next time
    batch, back, _ = roundtrip(writer, lambda: collate_arrays(samples[::-1]))
    same(batch, back)
    assert writer._buffer.nbytes == size

    grown = HeapWriter()  # segments joined in the very batch that outgrew the buffer
    batch, back, _ = roundtrip(grown, lambda: collate_arrays(samples))
    same(batch, back)


def test_strided_foreign_and_pickled_arrays_roundtrip():
    writer = HeapWriter()
    base = np.arange(200_000, dtype=np.int64)

    def make():
        inside = collate.allocate((1000, 8), np.dtype(np.float64))
        inside[...] = np.arange(8000).reshape(1000, 8)
        return [inside[::3, 1:5], inside[::-1], base[::7], np.zeros(0, np.uint8)]
    batch, back, kind = roundtrip(writer, make)
    assert kind == codec.LAYOUT
    same(batch, back)

    objects = np.array([{"a": 1}, None], dtype=object)  # no layout: pickle, big buffers out
    batch, back, kind = roundtrip(writer, lambda: (objects, base.copy()))
    assert kind == codec.PICKLE
    assert list(back[0]) == list(objects) and np.array_equal(back[1], base)


def test_a_batch_without_arrays_uses_no_buffer():
    writer = HeapWriter()
    writer.begin()
    kind, payload, spans = codec.encode({"a": 1, "b": ["x", 2.5]}, writer)
    assert writer.end() is None
    assert codec.decode(kind, payload, None, spans) == {"a": 1, "b": ["x", 2.5]}
