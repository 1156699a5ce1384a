"""The synthetic workloads: datasets, collate functions and their default settings.

Every dataset is a module-level class so that spawn can pickle it, builds its data in
``__init__`` from a fixed numpy seed (the same bytes on every run and machine), and takes
its length as an argument so that an epoch ends exactly after the batches a run asks for.
This module must not import torch: a spawned worker of ours unpickles these classes, and
importing torch there would charge torch's start-up to our cold start. The torch-flavoured
iterable dataset lives in ``benchmarks/torch_flavour.py``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

import loader

__all__ = ["WORKLOADS", "Workload", "np_collate"]

_SEED = 20240601  # fixed so every run of the suite sees the same data
_IMAGE_POOL = 64  # preallocated 3x224x224 images; samples index it modulo (9.6 MB)
_IMAGE_SHAPE = (3, 224, 224)
_TINY_POOL = 1 << 20  # in-memory scalars for `tiny` (12 MB); indices wrap past it
_CPU_FFT_SIZE = 4096  # signal length of the `cpu` workload's FFT convolution
_CPU_ROUNDS = 8  # FFT round trips per sample: ~1 ms on the 2-core dev VM. A fixed op
#                  count, not a timed loop, so a faster loader cannot shorten the work
_CPU_POOL = 16  # distinct input signals for `cpu`
_LATENCY_S = 0.002  # simulated remote-storage latency per sample in `latency`
_DICT_IMAGE_SHAPE = (3, 32, 32)  # the small array inside each `dict_strings` sample
_DICT_POOL = 256
_STREAM_FEATURES = 256  # float32 features per `iterable` sample (1 KiB)
_STREAM_POOL = 1024
SHARED_DICT_ITEMS = 1_000_000  # `shared_dicts`: a million small annotation dicts, about
#                               300 MiB as Python objects (torch issue #13246's case)
SHARED_IMAGE_ITEMS = 2048  # `shared_arrays`: a list of 3x224x224 uint8 images (294 MiB)


# ---------------------------------------------------------------------- datasets

class TinyDataset:
    """A pair of numpy scalars per sample: the per-sample overhead regime."""

    def __init__(self, length: int) -> None:
        rng = np.random.default_rng(_SEED)
        self.length = length
        self.x = rng.standard_normal(_TINY_POOL).astype(np.float32)
        self.y = rng.integers(0, 1000, _TINY_POOL, dtype=np.int64)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple:
        i %= _TINY_POOL
        return self.x[i], self.y[i]


class ImageDataset:
    """3x224x224 uint8 images from a preallocated pool: the bandwidth regime."""

    def __init__(self, length: int) -> None:
        rng = np.random.default_rng(_SEED)
        self.length = length
        self.images = rng.integers(0, 256, (_IMAGE_POOL, *_IMAGE_SHAPE), dtype=np.uint8)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple:
        return self.images[i % _IMAGE_POOL], i % 1000


def np_collate(samples: list) -> tuple:
    """A numpy user's collate: stack the images, gather the labels."""
    return np.stack([s[0] for s in samples]), np.array([s[1] for s in samples])


class CpuDataset:
    """About 1 ms of single-threaded numpy work per sample (FFT convolutions).

    FFT rather than matmul: numpy's FFT runs on one thread, BLAS does not, and the
    loaders set worker BLAS threads differently; this keeps the work identical.
    """

    def __init__(self, length: int) -> None:
        rng = np.random.default_rng(_SEED)
        self.length = length
        self.signals = rng.standard_normal((_CPU_POOL, _CPU_FFT_SIZE))
        self.kernel = np.exp(-np.arange(_CPU_FFT_SIZE // 2 + 1) / 200.0)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple:
        x = self.signals[i % _CPU_POOL]
        for _ in range(_CPU_ROUNDS):
            x = np.fft.irfft(np.fft.rfft(x) * self.kernel, _CPU_FFT_SIZE)
        return x[:64].astype(np.float32), i % 10


class LatencyDataset:
    """A fixed sleep per sample, standing in for remote storage: the I/O-wait regime."""

    def __init__(self, length: int) -> None:
        self.length = length
        self.payload = np.arange(64, dtype=np.float32)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple:
        time.sleep(_LATENCY_S)
        return self.payload, i


class DictStringsDataset:
    """Nested dict samples with strings: the Python-object regime of the default collate."""

    def __init__(self, length: int) -> None:
        rng = np.random.default_rng(_SEED)
        self.length = length
        self.images = rng.integers(0, 256, (_DICT_POOL, *_DICT_IMAGE_SHAPE), dtype=np.uint8)
        self.labels = rng.random(_DICT_POOL)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        j = i % _DICT_POOL
        return {
            "image": self.images[j],
            "meta": {"id": i, "path": f"/data/shard-{i % 100:03d}/img-{i:08d}.jpg",
                     "tags": [f"class-{i % 17}", "train" if i % 5 else "val"]},
            "label": float(self.labels[j]),
        }


class DictListDataset:
    """Annotations kept as a Python list of small dicts (file name, id, label): the
    dataset every DataLoader worker used to copy, by reference counts under fork and by
    unpickling under spawn."""

    def __init__(self, length: int) -> None:
        self.items = [{"id": i, "file_name": f"images/{i:012d}.jpg", "label": i % 1000}
                      for i in range(length)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


class ArrayListDataset:
    """Images kept as a Python list of numpy arrays, with their labels."""

    def __init__(self, length: int) -> None:
        rng = np.random.default_rng(_SEED)
        self.images = [rng.integers(0, 256, _IMAGE_SHAPE, dtype=np.uint8)
                       for _ in range(length)]
        self.labels = rng.integers(0, 1000, length).tolist()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple:
        return self.images[i], self.labels[i]


_SHARED_BUILT: dict = {}  # one instance per (class, size) for every loader: ~300 MiB each


def _shared(cls: type) -> Callable[[str, int], Any]:
    def build(flavour: str, length: int) -> Any:
        key = (cls, length)
        if key not in _SHARED_BUILT:
            _SHARED_BUILT.clear()  # at most one of them alive at a time
            _SHARED_BUILT[key] = cls(length)
        return _SHARED_BUILT[key]
    return build


class StreamLogic:
    """An endless-looking stream of 1 KiB samples, sharded by ``get_worker_info``.

    Worker k of n yields the samples k, k+n, k+2n, ... below ``length``. The two flavours
    differ only in base class and in which ``get_worker_info`` they ask.
    """

    get_worker_info: Callable[[], Any] = staticmethod(loader.get_worker_info)

    def __init__(self, length: int) -> None:
        rng = np.random.default_rng(_SEED)
        self.length = length
        self.rows = rng.standard_normal((_STREAM_POOL, _STREAM_FEATURES)).astype(np.float32)

    def __iter__(self):
        info = type(self).get_worker_info()
        start, step = (0, 1) if info is None else (info.id, info.num_workers)
        rows = self.rows
        for i in range(start, self.length, step):
            yield rows[i % _STREAM_POOL], i


class OurStream(StreamLogic, loader.IterableDataset):
    """The stream as a ``loader.IterableDataset``."""


def make_stream(flavour: str, length: int) -> Any:
    if flavour == "torch":
        from .torch_flavour import TorchStream  # imports torch
        return TorchStream(length)
    return OurStream(length)


# ---------------------------------------------------------------------- the registry

@dataclass(frozen=True)
class Workload:
    """A named dataset recipe with its batch size and default worker counts.

    ``kind`` picks the measurement: "throughput" (steady-state batches), "cold_start"
    (a fresh loader per run, time to first batch), "warm_epochs" (persistent workers
    over several short epochs) or "memory" (one shuffled epoch of a fixed dataset: each
    worker's USS at its start and end, the PSS of all processes, TTFB).
    """

    name: str
    description: str
    build: Callable[[str, int], Any]  # (flavour, length) -> dataset
    batch_size: int
    workers: tuple = (0, 2)
    kind: str = "throughput"
    collate_fn: Callable | None = None
    iterable: bool = False
    latency_s: float | None = None  # per-sample sleep, for the ideal-throughput column
    resizable: bool = True  # the dataset has a settable ``length`` (ours do; a user's not)
    start_methods: tuple = field(default=("fork",))
    loaders: tuple | None = None  # only these loaders run it (None: every loader)
    items: int = 0  # a fixed dataset size, for "memory" workloads (--items overrides it)


def _map(cls: type) -> Callable[[str, int], Any]:
    return lambda flavour, length: cls(length)


WORKLOADS: dict[str, Workload] = {w.name: w for w in [
    Workload("tiny", "two numpy scalars per sample from in-memory arrays",
             _map(TinyDataset), 256),
    Workload("tiny_state", "tiny, with loader.state_dict() after every batch (-state rows)",
             _map(TinyDataset), 256,
             loaders=("ours", "ours-state", "torch", "torchdata", "torchdata-state")),
    Workload("image", "3x224x224 uint8 images from a pool of 64, default collate",
             _map(ImageDataset), 64),
    Workload("image_npcollate", "the same images, numpy collate_fn (np.stack)",
             _map(ImageDataset), 64, collate_fn=np_collate),
    Workload("cpu", "~1 ms of numpy FFT work per sample (fixed op count)",
             _map(CpuDataset), 16),
    Workload("latency", f"{_LATENCY_S * 1e3:g} ms sleep per sample (remote storage)",
             _map(LatencyDataset), 16, workers=(0, 2, 4, 8), latency_s=_LATENCY_S),
    Workload("dict_strings", "nested dicts with strings, a small array and a float",
             _map(DictStringsDataset), 64),
    Workload("iterable", "IterableDataset stream sharded by get_worker_info",
             make_stream, 64, iterable=True),
    Workload("cold_start", "time to first batch of a fresh loader (image data)",
             _map(ImageDataset), 64, workers=(2,), kind="cold_start",
             start_methods=("fork", "spawn")),
    Workload("warm_epochs", "persistent workers over several short epochs (image data)",
             _map(ImageDataset), 64, workers=(2,), kind="warm_epochs"),
    Workload("shared_dicts", f"{SHARED_DICT_ITEMS:,} small dicts in a list: worker memory "
             "and TTFB over one shuffled epoch", _shared(DictListDataset), 512,
             workers=(2,), kind="memory", resizable=False, items=SHARED_DICT_ITEMS,
             start_methods=("fork", "spawn", "forkserver")),
    Workload("shared_arrays", f"{SHARED_IMAGE_ITEMS:,} 3x224x224 uint8 arrays in a list: "
             "worker memory, TTFB, reading speed", _shared(ArrayListDataset), 64,
             workers=(2,), kind="memory", resizable=False, items=SHARED_IMAGE_ITEMS,
             start_methods=("fork", "spawn", "forkserver")),
    Workload("shared_arrays_warm", "the same list of arrays read by persistent workers: "
             "reading speed once every page is mapped", _shared(ArrayListDataset), 64,
             workers=(2,), kind="warm_epochs", resizable=False, items=SHARED_IMAGE_ITEMS,
             start_methods=("fork", "spawn", "forkserver")),
]}
