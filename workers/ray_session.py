"""Who owns the Ray session: the user, or the loader that had to start it.

```
 first Ray iterator of a loader ─▶ join(loader, settings)
     Ray initialised already? ── yes ─▶ the user's session: never shut down by us
                              └─ no ──▶ ray.init(address, **init_args); ours
     the loader and the pool are recorded as holders (weakly)
 loader.close() / pool shutdown / either collected ─▶ leave(...) ─▶ no holder left
     ─▶ ray.shutdown()
 interpreter exit ─▶ live Ray pools shut down first (on_exit hooks), then our session
```

- A session is shut down with the loaders that use it, not with an epoch: the end of a
  non-persistent loader's epoch ends its actors, not the cluster connection (that would
  cost Ray's start-up, seconds, every epoch). A pool holds it too, so
  ``for batch in DataLoader(...)`` keeps Ray up while the unnamed loader is collected.
- Several loaders share one session (train and validation): it ends with the last one.
- Nothing here imports Ray until a loader joins.
"""

from __future__ import annotations

import atexit
import threading
import weakref
from typing import Any

__all__ = ["join", "leave"]

_lock = threading.Lock()
_owned = False  # whether the live Ray session is one we started
_holders: dict[int, weakref.finalize] = {}  # id(loader) -> its finalizer
_exit_hooks: list = []  # run at interpreter exit before the session ends (ray_pool's)
_atexit_registered = False


def join(holders: list, settings: Any) -> None:
    """Make sure Ray is initialised; while a session of ours lives, ``holders`` (objects,
    weakly) keep it up until each has left or been collected."""
    global _owned, _atexit_registered
    import ray
    with _lock:
        if not ray.is_initialized():
            ray.init(address=settings.address, **dict(settings.init_args))
            _owned = True
        if not _atexit_registered:
            # registered after ray.init, so it runs before Ray's own exit handler
            atexit.register(_at_exit)
            _atexit_registered = True
        if _owned:
            for holder in holders:
                if holder is not None and id(holder) not in _holders:
                    _holders[id(holder)] = weakref.finalize(holder, _release, id(holder))


def leave(holder: Any) -> None:
    """``holder`` is done with Ray; ends our session if it was the last one."""
    finalizer = _holders.get(id(holder))
    if finalizer is not None:
        finalizer()  # runs _release once and detaches from the holder


def on_exit(hook: Any) -> None:
    """Run ``hook()`` at interpreter exit before a session of ours is shut down."""
    _exit_hooks.append(hook)


def _release(key: int) -> None:
    global _owned
    with _lock:
        _holders.pop(key, None)
        if _holders or not _owned:
            return
        _owned = False
    import ray
    if ray.is_initialized():
        ray.shutdown()


def _at_exit() -> None:
    global _owned
    for hook in list(_exit_hooks):
        try:
            hook()
        except Exception:
            pass
    with _lock:
        ours, _owned = _owned, False
        _holders.clear()
    if ours:
        import ray
        if ray.is_initialized():
            ray.shutdown()
