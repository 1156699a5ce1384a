"""The dataset, shipped once: one image of everything workers need, made before they start.

```
 main: prepare(dataset, collate_fn, worker_init_fn, inherit)
   1. find the large containers (workers/dataset_walk.py)        estimate >= SHARE_MIN_BYTES?
   2. pack each plain one into a section of one image (ipc/packing.py)
   3. fork (inherit): copy the objects that hold them, views in their place; workers
      inherit the copies, nothing is pickled
      spawn / forkserver: pickle the three objects once (workers/pickling.py), containers
      as their views' ids, large arrays out of band, all into the image
   4. seal the image (ipc/image.py) ─▶ Shipment(.objects for fork, .ticket otherwise)
 worker: unpack(ticket) ─▶ map the image ─▶ unpickle ─▶ (dataset, collate_fn, worker_init_fn)
```

- The user's objects are never changed; under fork only the objects on the way to a
  shared container are copies, everything else is inherited as always.
- Ownership: the WorkerPool owns the Shipment and closes it at shutdown (the image's
  descriptor); workers' mappings keep the memory until they exit; nothing has a name.
- Fallbacks: no container large enough means nothing is shared (under spawn the objects are
  still pickled once, into the image); too little memory for the image means a warning and
  every worker gets its own copy, as with ``share_dataset=False``.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from loader.ipc.image import Image, ImageBuilder, ImageRef, attach
from loader.ipc.packing import NotPlain, pack_mapping, pack_sequence, write_header
from loader.ipc.shared_dict import SharedDict
from loader.ipc.shared_views import SharedList, SharedTuple, _rebuild
from loader.workers.dataset_walk import clone, find
from loader.workers.pickling import UnpicklableError, dumps_once, loads_once, name_culprit

__all__ = ["SHARE_MIN_BYTES", "Shipment", "Ticket", "prepare", "unpack"]

SHARE_MIN_BYTES = 16 << 20  # bytes of Python objects (estimated) in large containers below
#                             which a dataset is left alone: a copy per worker then costs
#                             less than a worker's own interpreter (15-30 MiB), and every
#                             read of a shared item pays an unpickle (~1 us)
_VIEWS = {"list": SharedList, "tuple": SharedTuple, "dict": SharedDict}
_CODES = {list: "list", tuple: "tuple", dict: "dict"}


class Ticket(NamedTuple):
    """What a spawned worker needs to find its objects: the image and where in it."""

    ref: ImageRef
    codec: str
    stream: tuple  # (offset, length)
    buffers: tuple  # ((offset, length), ...) of the stream's out-of-band buffers
    part: tuple  # the dill part, (offset, length); length 0 when there is none
    part_buffers: tuple


@dataclass
class Shipment:
    """The main process's side: the image, and what the workers get."""

    image: Image | None
    objects: tuple | None  # fork: (dataset, collate_fn, worker_init_fn) as workers see them
    ticket: Ticket | None  # spawn / forkserver
    report: dict = field(default_factory=dict)  # what was shared, how big, how long it took

    def close(self) -> None:
        """Close the image's descriptor (idempotent); workers keep their mappings."""
        image, self.image = self.image, None
        self.objects = None
        if image is not None:
            image.close()


def _pack(builder: ImageBuilder, walk: Any, inherit: bool) -> list[tuple]:
    """(container, view code, header offset, header length) of each container that packs,
    largest first; none when those that pack are estimated under SHARE_MIN_BYTES in all
    (their sections then stay unused in the image)."""
    out, packed_bytes = [], 0
    for estimate, container in sorted(zip(walk.estimates, walk.candidates),
                                      key=lambda pair: -pair[0]):
        pack = pack_mapping if type(container) is dict else pack_sequence
        try:
            header = pack(builder, container, strict=True, oob=not inherit, main_ok=inherit)
        except NotPlain:
            continue  # not plain values: left as it is
        at, length = write_header(builder, header)
        out.append((container, _CODES[type(container)], at, length))
        packed_bytes += estimate
    return out if packed_bytes >= SHARE_MIN_BYTES else []


def prepare(dataset: Any, collate_fn: Any, worker_init_fn: Any, *,
            inherit: bool) -> Shipment | None:
    """The Shipment for these objects, or None when the image does not fit in memory.

    ``inherit``: workers are forked. Raises :class:`UnpicklableError` (not inherit) naming
    the first object path that cannot be pickled.
    """
    t0 = time.perf_counter()
    roots = [dataset, collate_fn, worker_init_fn]
    walk = find(roots)
    builder = ImageBuilder()
    report = {"candidates": len(walk.candidates), "estimate_bytes": walk.estimate,
              "shared": []}
    image = None
    try:
        sections = _pack(builder, walk, inherit) if walk.estimate >= SHARE_MIN_BYTES else []
        report["shared"] = [(code, len(c)) for c, code, _, _ in sections]
        if inherit:
            if not sections:
                builder.abort()
                return Shipment(None, tuple(roots), None, _done(report, t0, None))
            image = builder.finish()
            views = {id(c): _rebuild(_VIEWS[code], image.ref, at, length, None)
                     for c, code, at, length in sections}
            objects = tuple(clone(walk, roots, views))
            return Shipment(image, objects, None, _done(report, t0, image))
        substitutes = {id(c): (c, (code, at, length)) for c, code, at, length in sections}
        try:
            pickled = dumps_once(tuple(roots), substitutes)
        except Exception as exc:
            error = name_culprit(substitutes, dataset=dataset, collate_fn=collate_fn,
                                 worker_init_fn=worker_init_fn)
            raise (error or UnpicklableError(f"cannot pickle the dataset: {exc}")) from exc
        ticket = [_place(builder, pickled.stream), _place_all(builder, pickled.buffers),
                  _place(builder, pickled.part), _place_all(builder, pickled.part_buffers)]
        image = builder.finish()
        return Shipment(image, None, Ticket(image.ref, pickled.codec, *ticket),
                        _done(report, t0, image))
    except MemoryError as exc:
        builder.abort()
        if image is not None:
            image.close()
        warnings.warn(f"The dataset is not shared with the DataLoader workers: {exc} Each "
                      "worker gets its own copy instead.", RuntimeWarning, stacklevel=4)
        return None
    except BaseException:
        builder.abort()
        if image is not None:
            image.close()
        raise


def _place(builder: ImageBuilder, data: Any) -> tuple[int, int]:
    if not len(data):
        return 0, 0
    return builder.append([data]), len(data)


def _place_all(builder: ImageBuilder, buffers: list) -> tuple:
    return tuple((builder.append([raw]), raw.nbytes) for raw in buffers)


def _done(report: dict, t0: float, image: Image | None) -> dict:
    report["image_bytes"] = image.size if image is not None else 0
    report["seconds"] = time.perf_counter() - t0
    return report


# ---------------------------------------------------------------- worker side


class _Reader:
    """A read-only file over a memoryview (the unpicklers read frames without a copy of
    the whole stream)."""

    def __init__(self, view: memoryview) -> None:
        self._view, self._pos = view, 0

    def read(self, n: int = -1) -> bytes:
        end = len(self._view) if n < 0 else min(len(self._view), self._pos + n)
        data = bytes(self._view[self._pos:end])
        self._pos = end
        return data

    def readinto(self, buffer: Any) -> int:
        target = memoryview(buffer).cast("B")
        n = min(len(target), len(self._view) - self._pos)
        target[:n] = self._view[self._pos:self._pos + n]
        self._pos += n
        return n

    def readline(self) -> bytes:
        rest = self._view[self._pos:]
        end = bytes(rest).find(b"\n")  # protocol 5 never asks: only text protocols do
        return self.read(len(rest) if end < 0 else end + 1)


def unpack(ticket: Ticket) -> tuple:
    """In a worker: (dataset, collate_fn, worker_init_fn) from the image."""
    view = attach(ticket.ref)
    made: dict = {}

    def load_view(pid: tuple) -> Any:
        found = made.get(pid)
        if found is None:
            code, at, length = pid
            found = made[pid] = _rebuild(_VIEWS[code], ticket.ref, at, length, None)
        return found

    def region(where: tuple) -> memoryview:
        at, length = where
        return view[at:at + length]

    stream = _Reader(region(ticket.stream))
    part = _Reader(region(ticket.part)) if ticket.part[1] else None
    return loads_once(ticket.codec, stream, [region(b) for b in ticket.buffers], part,
                      [region(b) for b in ticket.part_buffers], load_view)
