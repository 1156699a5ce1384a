"""How much shared memory a DataLoader may still take, and a clear error when it can't.

Slots are memfds: they draw on RAM (and swap) under the container's memory limit, not on
``/dev/shm``'s size. The available amount is the smaller of what psutil reports and what
the cgroup (v2 ``memory.max`` - ``memory.current``, or v1 ``limit`` - ``usage``) leaves.
"""

from __future__ import annotations

import psutil

__all__ = ["available_bytes", "check_before_start", "shortage_message"]

_CGROUP_FILES = (
    ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
    ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
)
_UNLIMITED = 1 << 60  # cgroup v1 reports "no limit" as a huge number


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    return None if text == "max" else int(text)


def available_bytes() -> int:
    """Bytes of memory that new shared-memory slots may still use."""
    available = psutil.virtual_memory().available
    for limit_path, usage_path in _CGROUP_FILES:
        limit, usage = _read_int(limit_path), _read_int(usage_path)
        if limit is not None and usage is not None and limit < _UNLIMITED:
            available = min(available, max(0, limit - usage))
            break
    return available


def shortage_message(needed: int, available: int, what: str) -> str:
    return (f"DataLoader needs {needed} bytes of shared memory for {what}, but only "
            f"{available} bytes are available (RAM and the container's memory limit; "
            "/dev/shm's size does not matter here). Use a smaller batch_size, fewer "
            "num_workers or a smaller prefetch_factor, or raise the memory limit.")


def check_before_start(needed: int, what: str) -> None:
    """Raise MemoryError before any worker starts if ``needed`` bytes are not available.

    Also pays psutil's first-call cost in the parent, so forked workers inherit it warm.
    """
    available = available_bytes()
    if needed > available:
        raise MemoryError(shortage_message(needed, available, what))
