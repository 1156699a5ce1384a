"""A worker's batch buffer in its own memory, for engines that move a finished batch
themselves (Ray copies a task's return value into its object store).

```
 worker: HeapWriter.begin ─▶ collate carves arrays from it (collate.use_allocator)
         codec.encode describes them by offset, copies in what lies elsewhere
         end() ─▶ one contiguous uint8 array of the bytes used ─▶ the engine sends it
 main:   the engine's copy of those bytes becomes the batch's Lease (ipc/arena.py);
         codec.decode builds the batch's arrays as views of it
```

- A ``BatchWriter`` like ``ipc/arena.py``'s SlotWriter (``begin``, ``offset_of``,
  ``has_slot``, ``end`` here; ``alloc``, ``locate``, ``place`` from the base), so
  ``ipc/codec.py`` and collate work unchanged and a batch has the same layout on every
  engine.
- The buffer is reused batch after batch (no page faults once warm), so the array
  ``end()`` returns is valid only until the next ``begin()``: the engine must have copied
  it by then (Ray does, while the task returns).
- A batch bigger than the buffer continues in a new segment at the next offset; ``end()``
  then joins the segments once and keeps the joined buffer, so the next batch of that
  size needs one.
"""

from __future__ import annotations

import numpy as np

from loader.ipc.arena import _ALIGN, _GROW_QUANTUM, BatchWriter, _round_up

__all__ = ["HeapWriter"]


class HeapWriter(BatchWriter):
    """Carves a batch's arrays out of process-local memory; see the module docstring."""

    has_slot = True  # there is always room: the codec never falls back to in-band

    def __init__(self) -> None:
        self._buffer = np.empty(0, np.uint8)
        self._segments: list[tuple[np.ndarray, int]] = []  # (memory, offset of its start)
        self._offset = 0
        self._given: dict[int, tuple[np.ndarray, int]] = {}  # id -> (array, offset)

    def begin(self, slot: int = 0) -> None:
        """Start a batch (``slot`` is accepted for SlotWriter's signature and ignored)."""
        self._segments = [(self._buffer, 0)]
        self._offset = 0
        self._given = {}

    def _carve(self, shape: tuple, dtype: np.dtype) -> tuple[np.ndarray, int]:
        nbytes = dtype.itemsize
        for d in shape:
            nbytes *= d
        offset = _round_up(self._offset, _ALIGN)
        memory, start = self._segments[-1]
        if offset + nbytes > start + memory.size:
            start += memory.size  # a whole number of quanta, so still aligned
            size = _round_up(max(nbytes, start), _GROW_QUANTUM)  # doubles the capacity
            memory = np.empty(size, np.uint8)
            self._segments.append((memory, start))
            offset = start
        self._offset = offset + nbytes
        view = np.ndarray(shape, dtype, buffer=memory, offset=offset - start)
        return view, offset

    def offset_of(self, address: int, nbytes: int) -> int | None:
        """The batch offset of memory at ``address``, or None if it lies elsewhere."""
        for memory, start in self._segments:
            base = memory.__array_interface__["data"][0]
            if base <= address and address + nbytes <= base + memory.size:
                return start + address - base
        return None

    def end(self) -> np.ndarray | None:
        """The batch's bytes as one array (None when it used none); valid until the next
        :meth:`begin`."""
        used, segments = self._offset, self._segments
        self._segments, self._given = [], {}
        if used == 0:
            return None
        if len(segments) > 1:
            joined = np.empty(_round_up(used, _GROW_QUANTUM), np.uint8)
            for memory, start in segments:
                stop = min(start + memory.size, used)
                if stop > start:
                    joined[start:stop] = memory[:stop - start]
            self._buffer = joined
        return self._buffer[:used]
