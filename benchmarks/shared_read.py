"""``python -m benchmarks.shared_read``: what reading a shared dataset costs, in one process.

```
 arrays: 2,048 3x224x224 uint8 images, stacked 64 at a time (what collate does)
   own copy (unpickled, as a spawn worker without sharing has it) vs a SharedList of them
   (views of the image), read one by one; the first pass maps the image's pages
 items: one read of a list element vs a SharedList / SharedDict element (unpickled)
```

CPU time of this thread, so other processes on the machine matter little. The suite's
``shared_arrays_warm`` rows show the same through a DataLoader, with more noise.
"""

from __future__ import annotations

import pickle
import sys
import time
import timeit
from typing import Any

import numpy as np

__all__ = ["main"]

_IMAGES = 2048
_BATCH = 64
_PASSES = 3  # passes after the first, whose median is reported
_ITEMS = 100_000  # dicts for the per-item read cost
_READS = 200_000  # timed item reads


def _pass(arrays: Any, out: np.ndarray) -> float:
    """One pass over ``arrays``, read one by one (as a dataset does) and stacked."""
    t = time.thread_time()
    for k in range(0, len(arrays), _BATCH):
        np.stack([arrays[i] for i in range(k, k + _BATCH)], out=out)
    return time.thread_time() - t


def arrays() -> list[tuple[str, float, float]]:
    """(what, first pass ms, median later pass ms) for an own copy and the image."""
    from loader import SharedList
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (3, 224, 224), dtype=np.uint8) for _ in range(_IMAGES)]
    own = pickle.loads(pickle.dumps(images, 5))
    del images
    view = SharedList(own)
    out = np.empty((_BATCH, 3, 224, 224), np.uint8)
    _pass(own[:_BATCH], out)  # the output buffer's pages, once
    rows = []
    for name, source in (("own copy", own), ("SharedList", view)):
        first = _pass(source, out)
        later = sorted(_pass(source, out) for _ in range(_PASSES))[_PASSES // 2]
        rows.append((name, first * 1e3, later * 1e3))
    return rows


def items() -> list[tuple[str, float]]:
    """(what, microseconds per read)."""
    from loader import SharedDict, SharedList
    dicts = [{"id": i, "file_name": f"images/{i:012d}.jpg", "label": i % 1000}
             for i in range(_ITEMS)]
    names = {d["file_name"]: i for i, d in enumerate(dicts)}
    cases = {"list[i]": (dicts, 5000), "SharedList[i]": (SharedList(dicts), 5000),
             "dict[key]": (names, dicts[5000]["file_name"]),
             "SharedDict[key]": (SharedDict(names), dicts[5000]["file_name"]),
             "SharedList[i] of ints": (SharedList(range(_ITEMS)), 5000),
             "SharedList[i] of arrays": (SharedList([np.zeros(16)] * 2048), 100)}
    rows = []
    for name, (container, key) in cases.items():
        seconds = timeit.timeit(lambda: container[key], number=_READS)
        rows.append((name, seconds / _READS * 1e6))
    return rows


def main() -> int:
    print(f"arrays: {_IMAGES} images of 3x224x224 uint8 ({_IMAGES * 150528 / 2**20:.0f} MiB), "
          f"np.stack {_BATCH} at a time, thread CPU ms per pass")
    print(f"  {'source':14s} {'first pass':>10s} {'later':>8s}")
    for name, first, later in arrays():
        print(f"  {name:14s} {first:10.1f} {later:8.1f}")
    print("items: microseconds per read")
    for name, us in items():
        print(f"  {name:22s} {us:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
