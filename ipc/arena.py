"""Per-worker shared-memory arena: reusable slots, written by a worker, read in place.

```
 main: Arena(worker k)                         worker k: SlotWriter
 memfd slot 0..S-1 (size 0) ──fds──▶ opens the same files (inherited, or /proc/<main>/fd/N)
                                      grows a free slot (ftruncate + fallocate), collates
                                      straight into it, pickles the batch with its large
 lease(slot, size, gen) ◀─Result── buffers left in the slot (offset, nbytes)
 zero-copy views; when the last view of a batch is collected the lease stores ``gen`` in
 the channel's released[slot] (ipc/channel.py) ──▶ the worker sees the slot free again
```

- **Ownership.** The main process creates every slot with ``memfd_create``: anonymous
  shared memory with no name in ``/dev/shm`` or anywhere else. It lives exactly as long as
  some process holds a descriptor or a mapping, so nothing outlives the processes, even
  after ``kill -9``, and nothing ever needs unlinking. ``/dev/shm``'s size limit (64 MiB in
  Docker) does not apply; memory is reserved with ``posix_fallocate`` when a slot grows,
  so a shortage is an error at that point, never a SIGBUS later.
- **Who writes.** Only the worker writes a slot, and only while it is free: from the
  release of its previous batch until the worker sends the next result in it. A slot is
  free when ``released[slot]`` equals the number of results the worker published in it,
  so a release is one store by the main process, seen by the worker without a message.
- **Growth.** Slots start empty; a worker grows a slot when a batch needs more room. Both
  sides remap the same file; pages already written stay valid through the old mapping.
"""

from __future__ import annotations

import mmap
import os

import numpy as np

from loader.ipc import capacity

__all__ = ["Arena", "BatchWriter", "INLINE_MAX", "Lease", "SlotWriter", "ShmReserveError"]

INLINE_MAX = 64 * 1024  # bytes: smaller arrays travel inside the pickled header (a copy
#                        there is cheaper than a slot lease and its release message)
_ALIGN = 64  # bytes: every array starts on a cache line
_GROW_QUANTUM = 1 << 20  # bytes: slot sizes are whole MiB, so similar batches reuse a size
_MAP_FLAGS = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)  # prefault once, not per batch


class ShmReserveError(MemoryError):
    """Shared memory for a batch could not be reserved."""


class Lease(np.ndarray):
    """The per-batch view that every array of a batch keeps alive (a subclass, so numpy's
    view collapsing stops here). When it is collected, its ``_release`` token, (words,
    index, gen), stores ``gen`` at ``words[index]``: the slot's release counter in the
    worker's channel. Views of it carry no token and release nothing. (``__del__`` costs
    a tenth of ``weakref.finalize`` per batch; the store is safe from any thread, since a
    slot has one live lease at a time.)"""

    def __del__(self) -> None:
        token = self.__dict__.get("_release")
        if token is not None:
            token[0][token[1]] = token[2]


def _byte_bounds(array: np.ndarray) -> tuple[int, int]:
    """The lowest and one-past-highest addresses ``array`` touches."""
    start = end = array.__array_interface__["data"][0]
    if array.flags.c_contiguous or array.size == 0:
        return start, start + array.nbytes
    for n, stride in zip(array.shape, array.strides):
        if stride < 0:
            start += (n - 1) * stride
        else:
            end += (n - 1) * stride
    return start, end + array.itemsize


def _round_up(n: int, quantum: int) -> int:
    return -(-n // quantum) * quantum


def _map(fd: int, size: int) -> np.ndarray:
    return np.frombuffer(mmap.mmap(fd, size, flags=_MAP_FLAGS), np.uint8)


class Arena:
    """Main-process side of one worker's slots: creates them, maps them, leases them.

    ``words`` and ``release_index(slot)`` say where a slot's release counter lives (the
    worker's channel, ``ipc/channel.py``)."""

    def __init__(self, worker_id: int, num_slots: int, words: memoryview,
                 release_index) -> None:
        self.worker_id = worker_id
        self.fds: list[int] = [os.memfd_create(f"loader-w{worker_id}-s{i}", os.MFD_CLOEXEC)
                               for i in range(num_slots)]
        self._maps: list[mmap.mmap | None] = [None] * num_slots
        self._words = words
        self._index = [release_index(i) for i in range(num_slots)]

    def lease(self, slot: int, size: int, gen: int) -> Lease:
        """The whole of ``slot`` as one array; the slot is released when it is collected.

        Arrays of the batch must be built on it (``np.ndarray(buffer=lease)`` or slices of
        it): the Lease's own base is the mmap, so numpy keeps it as their base.
        """
        mapping = self._maps[slot]
        if mapping is None or len(mapping) < size:
            mapping = self._maps[slot] = mmap.mmap(self.fds[slot], size, flags=_MAP_FLAGS)
        lease = Lease((len(mapping),), np.uint8, mapping)
        lease._release = (self._words, self._index[slot], gen)
        return lease

    def close(self) -> None:
        """Close the descriptors; mappings live on in whatever views the user still holds."""
        fds, self.fds = self.fds, []
        self._maps = []
        self._words = None  # leases keep their own reference to the release counters
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass


class BatchWriter:
    """What every batch writer does over its own memory: hands collate its arrays
    (``alloc``), and tells the codec where an array lies, copying in one that lies
    elsewhere (``locate``, ``place``). A writer supplies ``_carve(shape, dtype)`` (a new
    C-contiguous array at the next aligned offset, and that offset), ``offset_of(address,
    nbytes)`` (the batch offset of memory it holds, or None), ``has_slot`` and a
    ``_given`` dict of this batch's arrays (id -> (array, offset))."""

    has_slot: bool
    _given: dict

    def alloc(self, shape: tuple, dtype: np.dtype) -> np.ndarray:
        """An uninitialised array in the batch's memory (on the heap when there is none)."""
        if not self.has_slot:
            return np.empty(shape, dtype)
        array, offset = self._carve(shape, dtype)
        self._given[id(array)] = (array, offset)  # the array itself keeps the id unique
        return array

    def locate(self, array: np.ndarray) -> tuple[int, tuple | None]:
        """(offset, strides) describing ``array`` in the batch; strides is None for a
        C-contiguous layout. An array that lies elsewhere is first copied in."""
        given = self._given.get(id(array))
        if given is not None and given[0] is array:
            return given[1], None  # handed out by alloc(): C-contiguous at a known offset
        if array.size == 0:
            return 0, None  # touches no memory; rebuilt as an empty array
        start, end = _byte_bounds(array)
        low = self.offset_of(start, end - start)
        if low is None:  # lies elsewhere (a custom collate_fn): one copy in
            dst, offset = self._carve(array.shape, array.dtype)
            dst[...] = array
            return offset, None
        strides = None if array.flags.c_contiguous else array.strides
        return low + array.__array_interface__["data"][0] - start, strides

    def place(self, raw: memoryview) -> int:
        """Copy a contiguous buffer that lies elsewhere into the batch; its offset."""
        dst, offset = self._carve((raw.nbytes,), np.dtype(np.uint8))
        dst[:] = np.frombuffer(raw, np.uint8)
        return offset

    def _carve(self, shape: tuple, dtype: np.dtype) -> tuple[np.ndarray, int]:
        raise NotImplementedError

    def offset_of(self, address: int, nbytes: int) -> int | None:
        raise NotImplementedError


class SlotWriter(BatchWriter):
    """Worker side: opens the arena's files, and allocates batch arrays inside a slot."""

    def __init__(self, fds: list[int]) -> None:
        self._fds = fds
        self._views: list[np.ndarray | None] = [None] * len(fds)
        self._sizes = [os.fstat(fd).st_size for fd in fds]
        self._slot = -1
        self._offset = 0
        self._maps: list[tuple[int, int]] = []  # (address, size) of this batch's mappings
        self._spans: list[tuple[int, int] | None] = [None] * len(fds)  # each slot's mapping
        self._given: dict[int, tuple[np.ndarray, int]] = {}  # id -> (array, offset) this batch

    @classmethod
    def open(cls, owner_pid: int, fds: list[int], inherited: bool) -> "SlotWriter":
        """Inherited descriptors are used as they are; others are opened through /proc."""
        if not inherited:
            fds = [os.open(f"/proc/{owner_pid}/fd/{fd}", os.O_RDWR) for fd in fds]
        return cls(fds)

    @property
    def num_slots(self) -> int:
        return len(self._fds)

    def begin(self, slot: int) -> None:
        """Start writing a batch into ``slot`` (-1: no slot; everything goes inline)."""
        self._slot, self._offset = slot, 0
        span = self._spans[slot] if slot >= 0 else None
        if span is None and slot >= 0 and self._sizes[slot]:
            # a replacement worker (worker_restarts) finds slots its predecessor grew
            self._views[slot] = view = _map(self._fds[slot], self._sizes[slot])
            span = self._spans[slot] = (view.__array_interface__["data"][0], view.size)
        self._maps = [span] if span is not None else []
        self._given = {}

    @property
    def used(self) -> int:
        """Bytes of the slot the current batch has filled so far."""
        return self._offset

    def end(self) -> int:
        """Finish the batch; returns the slot's size, which the main process must map."""
        self._maps = []
        self._given = {}
        return self._sizes[self._slot] if self._slot >= 0 else 0

    def _note_map(self, slot: int, view: np.ndarray) -> None:
        span = self._spans[slot] = (view.__array_interface__["data"][0], view.size)
        self._maps.append(span)

    def _grow(self, needed: int) -> None:
        slot, fd = self._slot, self._fds[self._slot]
        size = _round_up(max(needed, self._sizes[slot] + self._sizes[slot] // 2), _GROW_QUANTUM)
        extra = size - self._sizes[slot]
        available = capacity.available_bytes()
        if extra > available:
            raise ShmReserveError(capacity.shortage_message(extra, available, "a batch"))
        try:
            os.ftruncate(fd, size)
            os.posix_fallocate(fd, 0, size)
        except OSError as exc:
            raise ShmReserveError(
                capacity.shortage_message(extra, capacity.available_bytes(), "a batch")
                + f" ({exc.strerror})") from None
        self._sizes[slot] = size
        view = self._views[slot] = _map(fd, size)
        self._note_map(slot, view)

    def _carve(self, shape: tuple, dtype: np.dtype) -> tuple[np.ndarray, int]:
        """A C-contiguous array at the next aligned offset of the slot, and that offset."""
        nbytes = dtype.itemsize
        for d in shape:
            nbytes *= d
        offset = _round_up(self._offset, _ALIGN)
        if offset + nbytes > self._sizes[self._slot]:
            self._grow(offset + nbytes)
        self._offset = offset + nbytes
        return np.ndarray(shape, dtype, buffer=self._views[self._slot], offset=offset), offset

    def offset_of(self, address: int, nbytes: int) -> int | None:
        """The slot offset of memory at ``address``, or None if it lies outside the slot."""
        base = self._base_of(address, nbytes)
        return None if base is None else address - base

    @property
    def has_slot(self) -> bool:
        return self._slot >= 0

    def _base_of(self, address: int, nbytes: int) -> int | None:
        for base, size in self._maps:
            if base <= address and address + nbytes <= base + size:
                return base
        return None

    def close(self) -> None:
        self._views = [None] * len(self._fds)
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass
