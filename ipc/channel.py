"""Per-worker control channel in shared memory: two message rings, slot releases, doorbells.

```
 main process                       one memfd per worker (mapped by both)       worker k
 ------------                       -------------------------------------       --------
 tasks.write(record) ─────────────▶ task ring    (main writes, worker reads) ──▶ tasks.read()
   then rings the worker's doorbell (a pipe byte) when the worker may sleep
 results.read() ◀──────────────── result ring  (worker writes, main reads) ◀── results.write()
   the worker rings the pool's one results doorbell (a pipe byte) after each record
 Lease.__del__ ──store gen────────▶ released[slot] (main writes) ───────────▶ slot is free
                                                                             when released
                                                                             == published
```

- **One writer per word.** Every 8-byte counter has exactly one writer (a ring's head is
  its writer's, its tail its reader's; ``released[s]`` is the main process's), so no
  atomic read-modify-write is ever needed; each counter sits on its own cache line.
- **Ordering.** A record's bytes (and the slot data it describes) are stored before the
  head that publishes it. x86-64 keeps stores in order and loads in order, so a reader
  that sees the new head sees the record. Elsewhere (aarch64) a reader only consumes as
  many records as it has doorbell rings for (:attr:`_Ring.credits`): the pipe's lock
  orders the writer's stores before its ring and the reader's loads after the drain. A
  ring is the writer's 2-byte id, so one shared pipe still tells whose records are
  vouched for (:data:`STRONG_ORDER`).
- **Doorbells are pipes**, not eventfds: a spawned worker opens the parent's pipe
  through ``/proc/<pid>/fd/N`` like its slots (an eventfd cannot be reopened that way);
  a full pipe already means "rung".
- **Ring only a sleeper.** A reader about to sleep stores 1 in its ``asleep`` word,
  fences, and looks at its rings once more before it polls; a writer publishes, fences
  and rings only if the reader's word is 1 (:meth:`Channel.wake_worker`,
  :meth:`Channel.wake_main`). One of the two always sees the other's store (Dekker), so
  no wake-up is lost, and a reader that is awake costs the writer no syscall (a pipe
  write that wakes another vCPU costs tens of microseconds on a VM). The fence is a
  locked instruction (an uncontended lock's acquire and release). Without
  :data:`STRONG_ORDER` every publish rings, as the credits below need.
- **Records.** ``[u32 length][u32 tag][payload, padded to 8 bytes]``. A record that
  does not fit before the end of the buffer leaves a WRAP marker and starts at 0; so does
  a record written into an empty ring past its middle, which keeps laps short (warm
  pages) without ever skipping more than half the ring. A record larger than :data:`MAX_RECORD`, or one that meets a full
  ring, is not written here: the caller sends it by its spill path and writes a SPILL
  record in its place, which keeps the order.
- **Ownership.** The main process creates the memfd and both pipes; nothing has a name.
  The mapping is never closed explicitly: leases the user still holds keep it alive
  through their release view, and it goes when the last of them does.
"""

from __future__ import annotations

import mmap
import os
import platform
import struct
import threading

__all__ = ["Channel", "Doorbell", "MAX_RECORD", "MSG", "RING_BYTES", "SPILL",
           "STRONG_ORDER", "fence", "open_pipe_end"]

RING_BYTES = 1 << 19  # bytes per ring: 512 KiB holds hundreds of large task records;
#                       only the pages a ring actually reaches are ever allocated
MAX_RECORD = RING_BYTES // 4  # larger records take the spill path (zmq), so a big one
#                                never blocks a writer waiting for room
MSG, SPILL, _WRAP = 1, 2, 3  # record tags
_LINE = 64  # bytes: one counter per cache line, so the two sides never share a line
_TASK_HEAD, _TASK_TAIL, _RESULT_HEAD, _RESULT_TAIL = 0, 1, 2, 3  # counter lines
_WORKER_ASLEEP, _MAIN_ASLEEP = 4, 5  # 1 while that side may sleep in poll (its own word)
_FIRST_SLOT_LINE = 6  # released[s] lives on line 6 + s
_HEADER = struct.Struct("@II")  # length, tag
_WORD = _LINE // 8  # int64 words per line
STRONG_ORDER = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")
_BELL_BYTES = 1 << 16  # what one drain reads from a doorbell pipe


_FENCE = threading.Lock()


def _new_fence() -> None:
    """A forked child's own lock: another thread of the parent may have held the old one
    at the fork, and nobody in the child would ever release it."""
    global _FENCE
    _FENCE = threading.Lock()


os.register_at_fork(after_in_child=_new_fence)


def fence() -> None:
    """A full memory barrier: an uncontended lock's acquire and release are locked
    instructions (sem_trywait / sem_post), which order every earlier store before every
    later load on x86-64."""
    lock = _FENCE
    lock.acquire()
    lock.release()


def _pad(n: int) -> int:
    return (n + 7) & ~7


class _Ring:
    """One direction of a channel: a single-producer single-consumer byte ring."""

    __slots__ = ("_buf", "_words", "_head_i", "_tail_i", "_size", "_pos", "credits")

    def __init__(self, buf: memoryview, words: memoryview, head_line: int,
                 tail_line: int, writer: bool) -> None:
        self._buf = buf
        self._words = words
        self._head_i, self._tail_i = head_line * _WORD, tail_line * _WORD
        self._size = len(buf)
        # the writer's own head, or the reader's own tail: each side keeps its counter
        self._pos = words[self._head_i if writer else self._tail_i]
        self.credits = 0  # reader without STRONG_ORDER: records the doorbell vouched for

    # ---------------------------------------------------------------- writer side

    def write(self, payload: bytes, tag: int = MSG) -> bool:
        """Publish one record; False (nothing written) when it does not fit."""
        n = len(payload)
        need = _HEADER.size + _pad(n)
        if n > MAX_RECORD:
            return False
        words, size, head = self._words, self._size, self._pos
        tail = words[self._tail_i]
        at = head % size
        skip = 0
        if at + need > size or (tail == head and at >= size // 2):
            # wrap because the record does not fit before the end, or early when the
            # ring is empty and past its middle: the skipped bytes count as used until
            # the reader passes them, so only a short skip keeps the room for a burst,
            # and laps stay on the ring's first half (cache-warm pages)
            skip = size - at
        if head + skip + need - tail > size:
            return False
        buf = self._buf
        if skip:
            _HEADER.pack_into(buf, at, 0, _WRAP)
            at = 0
        _HEADER.pack_into(buf, at, n, tag)
        buf[at + _HEADER.size:at + _HEADER.size + n] = payload
        self._pos = head + skip + need
        words[self._head_i] = self._pos  # publishes the record (one aligned store)
        return True

    # ---------------------------------------------------------------- reader side

    def ready(self) -> bool:
        return self._words[self._head_i] != self._pos

    def read(self) -> tuple[int, bytes] | None:
        """(tag, payload) of the next record, or None when there is none (yet)."""
        words = self._words
        if words[self._head_i] == self._pos:
            return None
        if not STRONG_ORDER:
            if self.credits <= 0:
                return None
            self.credits -= 1
        size, buf = self._size, self._buf
        at = self._pos % size
        n, tag = _HEADER.unpack_from(buf, at)
        if tag == _WRAP:
            self._pos += size - at
            at = 0
            n, tag = _HEADER.unpack_from(buf, 0)
        start = at + _HEADER.size
        payload = bytes(buf[start:start + n])
        self._pos += _HEADER.size + _pad(n)
        words[self._tail_i] = self._pos  # the writer may reuse the bytes now
        return tag, payload


class Channel:
    """One worker's control block: the task ring, the result ring and slot releases.

    ``Channel.create(worker_id, num_slots)`` in the main process (``main=True``);
    ``Channel(fd, num_slots, main=False)`` in the worker, on the inherited fd or the
    main's reopened through /proc.
    """

    def __init__(self, fd: int, num_slots: int, *, main: bool) -> None:
        self.fd = fd
        self.num_slots = num_slots
        header = _header_bytes(num_slots)
        self._mm = mmap.mmap(fd, header + 2 * RING_BYTES, flags=mmap.MAP_SHARED)
        view = memoryview(self._mm)
        self.words = view[:header].cast("q")
        self.tasks = _Ring(view[header:header + RING_BYTES], self.words,
                           _TASK_HEAD, _TASK_TAIL, writer=main)
        self.results = _Ring(view[header + RING_BYTES:], self.words,
                             _RESULT_HEAD, _RESULT_TAIL, writer=not main)

    @classmethod
    def create(cls, worker_id: int, num_slots: int) -> "Channel":
        fd = os.memfd_create(f"loader-w{worker_id}-control", os.MFD_CLOEXEC)
        os.ftruncate(fd, _header_bytes(num_slots) + 2 * RING_BYTES)
        return cls(fd, num_slots, main=True)

    def drop_tasks(self) -> None:
        """Empty the task ring for a replacement worker (main side, its reader dead): the
        new reader starts at the current head."""
        self.words[_TASK_TAIL * _WORD] = self.words[_TASK_HEAD * _WORD]

    # ------------------------------------------------------ who may be asleep

    def set_worker_asleep(self, asleep: bool) -> None:
        """The worker, around its poll: 1 then :func:`fence` then one last look."""
        self.words[_WORKER_ASLEEP * _WORD] = asleep

    def set_main_asleep(self, asleep: bool) -> None:
        """The main process, around its poll (one word per channel, all its own)."""
        self.words[_MAIN_ASLEEP * _WORD] = asleep

    def wake_worker(self) -> bool:
        """After publishing a task: whether the worker's doorbell must be rung."""
        if not STRONG_ORDER:
            return True
        fence()
        return self.words[_WORKER_ASLEEP * _WORD] != 0

    def wake_main(self) -> bool:
        """After publishing a result: whether the results doorbell must be rung."""
        if not STRONG_ORDER:
            return True
        fence()
        return self.words[_MAIN_ASLEEP * _WORD] != 0

    def release_index(self, slot: int) -> int:
        """Where ``released[slot]`` lives in :attr:`words`."""
        return (_FIRST_SLOT_LINE + slot) * _WORD

    def released(self, slot: int) -> int:
        return self.words[(_FIRST_SLOT_LINE + slot) * _WORD]

    def close(self) -> None:
        """Close the descriptor and let go of the mapping. Leases the user still holds
        keep it (through their view of :attr:`words`); it goes with the last of them
        (mmap keeps a duplicate of the fd until then, as for slots)."""
        fd, self.fd = self.fd, -1
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass
        mm, self._mm = self._mm, None
        self.tasks = self.results = None
        self.words = None
        if mm is not None:
            try:
                mm.close()
            except BufferError:
                pass  # leases still point into it


def _header_bytes(num_slots: int) -> int:
    """The counter lines, rounded up to whole pages so the rings start page-aligned."""
    lines = _LINE * (_FIRST_SLOT_LINE + num_slots)
    return -(-lines // mmap.PAGESIZE) * mmap.PAGESIZE


def open_pipe_end(owner_pid: int, fd: int, inherited: bool, flags: int) -> int:
    """A pipe end the worker can use: the inherited fd, or the owner's reopened."""
    if inherited:
        return fd
    return os.open(f"/proc/{owner_pid}/fd/{fd}", flags | os.O_CLOEXEC)


_ID = struct.Struct("@H")  # a ring: the writer's id, 2 bytes (atomic in a pipe)


class Doorbell:
    """A pipe used only to wake its reader: ``ring()`` by writers, ``drain()`` by the
    reader before it re-checks its rings and sleeps in ``poll`` on :attr:`read_fd`."""

    def __init__(self, read_fd: int, write_fd: int, writer_id: int = 0) -> None:
        self.read_fd, self.write_fd = read_fd, write_fd
        self._token = _ID.pack(writer_id)
        for fd in (read_fd, write_fd):
            if fd >= 0:
                os.set_blocking(fd, False)

    @classmethod
    def create(cls) -> "Doorbell":
        r, w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        return cls(r, w)

    def ring(self) -> None:
        try:
            os.write(self.write_fd, self._token)
        except BlockingIOError:
            pass  # the pipe is full: it has been rung plenty (weak order: see drain)

    def drain(self) -> bytes:
        """Every pending ring, as the writers' ids (``ids()`` decodes them)."""
        chunks = []
        while True:
            try:
                got = os.read(self.read_fd, _BELL_BYTES)
            except BlockingIOError:
                break
            chunks.append(got)
            if len(got) < _BELL_BYTES:
                break
        return b"".join(chunks)

    @staticmethod
    def ids(drained: bytes) -> list[int]:
        """The writer ids in what :meth:`drain` returned, one per ring."""
        return [i for (i,) in _ID.iter_unpack(drained)]

    @property
    def fds(self) -> list[int]:
        return [fd for fd in (self.read_fd, self.write_fd) if fd >= 0]

    def close(self) -> None:
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.read_fd = self.write_fd = -1
