"""A read-only shared image: one sealed memfd, written once by its owner, mapped by readers.

```
 owner (the main process)                         any reader (worker, or the owner itself)
 ImageBuilder: memfd_create ─▶ append(chunks)     attach(ref): /proc/<owner>/fd/<fd> (or an
   ─▶ finish(): seal (no write, grow, shrink)       inherited mapping after fork) ─▶ one
   ─▶ Image: fd + a read-only MAP_SHARED pin        MAP_PRIVATE read-write mapping per image
 Image.ref = (owner pid, fd, token) ──pickled──▶    per process; loads read it in place
```

- **Ownership.** Only the owner writes, and only before :meth:`ImageBuilder.finish`; then the
  file is sealed, so no process can change it (a reader's writes land in its private
  copy-on-write pages). The memfd has no name in ``/dev/shm`` or anywhere else: it lives
  while some process holds its descriptor or a mapping, so nothing outlives the processes,
  even after ``kill -9``. The owner's :meth:`Image.close` closes its descriptor; readers'
  mappings keep the memory alive until they exit.
- **Why a pin.** The owner keeps the whole image mapped (read-only, prefaulted): a page a
  worker reads is then mapped by two processes and counted as shared, which is what it is
  (it is freed only with the image), and the kernel never reclaims a page one worker needs.
- **Readers** map the image ``MAP_PRIVATE`` and writable: reading shares the owner's pages,
  writing (a worker modifying an array in place) copies only the pages it writes, in that
  process only. Exactly fork's semantics, without fork's reference-count copies.
"""

from __future__ import annotations

import fcntl
import itertools
import mmap
import os
import weakref
from typing import Iterable, NamedTuple

from loader.ipc import capacity

__all__ = ["Image", "ImageBuilder", "ImageGoneError", "ImageRef", "attach"]

_MAGIC = b"loaderI1"  # first bytes of every image: a mapping of something else is refused
_TOKEN_BYTES = 16  # random identity of one image: a reused descriptor number cannot alias it
_HEADER_BYTES = 64  # magic + token, padded to a cache line
ALIGN = 64  # bytes: sections and out-of-band array buffers start on a cache line
_WRITE_CHUNK = 1 << 30  # bytes per write(2) call: Linux writes at most ~2 GiB per call
_CHECK_FROM_BYTES = 1 << 20  # appends this large first check that memory is available
_SEALS = 0x1 | 0x2 | 0x4 | 0x8  # F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE
_F_ADD_SEALS = getattr(fcntl, "F_ADD_SEALS", 1033)
_MFD_ALLOW_SEALING = getattr(os, "MFD_ALLOW_SEALING", 2)


_SERIAL = itertools.count()


class ImageGoneError(RuntimeError):
    """The process that owns a shared image has closed it or exited."""


class ImageRef(NamedTuple):
    """Where an image can be found: what a pickled view carries instead of its data."""

    owner_pid: int
    fd: int
    token: bytes


class Image:
    """The owner's handle of a finished image: its descriptor and the read-only pin."""

    def __init__(self, fd: int, size: int, token: bytes) -> None:
        self.fd, self.size, self.token = fd, size, token
        self.ref = ImageRef(os.getpid(), fd, token)
        self._pin = mmap.mmap(fd, size, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0),
                              prot=mmap.PROT_READ)
        _OWNED[token] = self

    def close(self) -> None:
        """Close the descriptor and the pin; readers that mapped the image keep it."""
        fd, self.fd = self.fd, -1
        if fd < 0:
            return
        _OWNED.pop(self.token, None)
        _ATTACHED.pop(self.token, None)  # views still holding the mapping keep it alive
        self._pin.close()
        os.close(fd)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


class ImageBuilder:
    """Writes an image front to back; :meth:`finish` seals it and returns the Image."""

    def __init__(self, name: str = "loader-image") -> None:
        # the name only shows in /proc/<pid>/maps and fd links (debugging, leak checks)
        self.fd = os.memfd_create(f"{name}-{os.getpid()}-{next(_SERIAL)}",
                                  os.MFD_CLOEXEC | _MFD_ALLOW_SEALING)
        self.token = os.urandom(_TOKEN_BYTES)
        self.ref = ImageRef(os.getpid(), self.fd, self.token)
        self.size = 0
        self._write(memoryview(_MAGIC + self.token + bytes(_HEADER_BYTES - len(_MAGIC)
                                                          - _TOKEN_BYTES)))

    def append(self, chunks: Iterable, align: int = ALIGN) -> int:
        """Write ``chunks`` (bytes-like) back to back at the next ``align``-ed offset; the
        offset of the first byte."""
        views = [memoryview(chunk).cast("B") for chunk in chunks]
        needed = sum(v.nbytes for v in views)
        if needed >= _CHECK_FROM_BYTES:
            available = capacity.available_bytes()
            if needed > available:
                raise MemoryError(capacity.shortage_message(needed, available,
                                                            "the shared dataset"))
        pad = -self.size % align
        if pad:
            self._write(memoryview(bytes(pad)))
        offset = self.size
        for view in views:
            self._write(view)
        return offset

    def _write(self, view: memoryview) -> None:
        done = 0
        while done < view.nbytes:
            done += os.write(self.fd, view[done:done + _WRITE_CHUNK])
        self.size += view.nbytes

    def finish(self) -> Image:
        """Seal the file (nobody can write, grow or shrink it again) and pin it."""
        fd, self.fd = self.fd, -1
        try:
            fcntl.fcntl(fd, _F_ADD_SEALS, _SEALS)
            return Image(fd, self.size, self.token)
        except BaseException:
            os.close(fd)
            raise

    def abort(self) -> None:
        """Drop an unfinished image (idempotent)."""
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)


_OWNED: "weakref.WeakValueDictionary[bytes, Image]" = weakref.WeakValueDictionary()
#        images this process owns, by token (weak: a view's image closes with its last view)
_ATTACHED: dict[bytes, memoryview] = {}  # this process's private mapping of each image


def attach(ref: ImageRef) -> memoryview:
    """This process's private, writable mapping of the image ``ref`` (made once per process
    and image; a forked child inherits its parent's, copy-on-write)."""
    view = _ATTACHED.get(ref.token)
    if view is not None:
        return view
    owned = _OWNED.get(ref.token)
    if owned is not None and owned.fd >= 0:
        fd = os.dup(owned.fd)
    else:
        try:
            fd = os.open(f"/proc/{ref.owner_pid}/fd/{ref.fd}", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise ImageGoneError(
                f"the shared dataset owned by process {ref.owner_pid} is gone (that process "
                f"exited or closed it): {exc.strerror}") from None
    try:
        size = os.fstat(fd).st_size
        head = os.pread(fd, len(_MAGIC) + _TOKEN_BYTES, 0)
        if head != _MAGIC + ref.token:
            raise ImageGoneError(
                f"the shared dataset owned by process {ref.owner_pid} is gone (descriptor "
                f"{ref.fd} now holds something else)")
        mapping = mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE,
                            prot=mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)
    view = _ATTACHED[ref.token] = memoryview(mapping)
    return view
