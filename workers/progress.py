"""Which batch a worker has in hand: two integers in shared memory, written per task.

```
 main: ProgressWord (memfd, 16 bytes) ──fd──▶ worker: ProgressWord.open
       in_hand() after a death          ◀──── started(epoch, batch_id) before each fetch
```

When a worker dies, the main process knows which tasks it had not answered, but not which
of them it was fetching: a result the worker had sent may have died with it in its own
socket queue. The worker writes (epoch, batch id) here before each fetch (two stores into a
mapped page, no system call), so the error after a crash names the batch that crashed it.
Ownership as for slots: the main process creates the memfd; nothing has a name.
"""

from __future__ import annotations

import mmap
import os

__all__ = ["ProgressWord"]

_SIZE = 16  # bytes: two int64, (epoch, batch id); -1 until the first task starts


class ProgressWord:
    """One worker's (epoch, batch id) in hand, mapped by the main process and the worker."""

    def __init__(self, fd: int, create: bool = False) -> None:
        self.fd = fd
        if create:
            os.ftruncate(fd, _SIZE)
        self._map = mmap.mmap(fd, _SIZE)
        self._words = memoryview(self._map).cast("q")
        if create:
            self._words[0] = self._words[1] = -1

    @classmethod
    def create(cls, worker_id: int) -> "ProgressWord":
        return cls(os.memfd_create(f"loader-w{worker_id}-progress", os.MFD_CLOEXEC), True)

    @classmethod
    def open(cls, owner_pid: int, fd: int, inherited: bool) -> "ProgressWord":
        """The worker's side: the inherited descriptor, or the main's through /proc."""
        if not inherited:
            fd = os.open(f"/proc/{owner_pid}/fd/{fd}", os.O_RDWR)
        return cls(fd)

    def started(self, epoch: int, batch_id: int) -> None:
        words = self._words
        words[0] = epoch
        words[1] = batch_id

    def in_hand(self) -> tuple[int, int]:
        """(epoch, batch id) of the task started last; (-1, -1) before the first."""
        return self._words[0], self._words[1]

    def reset(self) -> None:
        """A replacement starts with nothing in hand."""
        self._words[0] = self._words[1] = -1

    def close(self) -> None:
        """Unmap and close the descriptor (the worker's copy or the main's)."""
        self._words.release()
        self._map.close()
        try:
            os.close(self.fd)
        except OSError:
            pass
