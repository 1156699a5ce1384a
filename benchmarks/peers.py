"""Optional peer loaders, used only when importable (never installed by the suite).

- torchdata ``StatefulDataLoader``: torch's interface and transport, plus state snapshots.
- Grain ``DataLoader``: a sampler plus operations; batching by its ``Batch`` (it stacks
  numpy leaves itself, so a custom numpy collate_fn is not needed or passed).
- SPDL ``get_pytorch_dataloader``: the drop-in over a process pool; map-style only, no
  persistent workers, at least one worker; run with ``in_order=True`` to match torch.
- SPDL thread pipeline (``spdl-threads``): SPDL's own recommended mode, a
  ``PipelineBuilder`` whose fetch-and-collate stage runs on ``num_workers`` threads in
  input order; it shines where the work releases the GIL (numpy copies), and it is the
  "SPDL, 2 (threads)" figure of issue 12. Batches are collated by torch's
  ``default_collate`` unless the workload brings its own ``collate_fn``.

These adapters follow each project's documented API; a failure in one is reported as an
error for its rows and never stops the suite.
"""

from __future__ import annotations

import importlib
import os
import time
from typing import Any

from .adapters import Adapter, TorchAdapter

__all__ = ["PEERS", "TORCHDATA"]


def _missing(module: str) -> str | None:
    try:
        importlib.import_module(module)
    except ImportError as exc:
        return f"not installed ({exc.name or module})"
    return None


class TorchdataAdapter(TorchAdapter):
    name = "torchdata"
    module = "torchdata.stateful_dataloader"
    attr = "StatefulDataLoader"
    note = "torchdata: torchdata.stateful_dataloader.StatefulDataLoader (defaults)"

    def unsupported(self, workload, num_workers, start_method, persistent):
        if workload.kind == "memory":
            return "not measured (torch's workers and transport: the torch row shows them)"
        return None


class GrainAdapter(Adapter):
    name = "grain"
    flavour = "plain"
    note = "grain: grain.python.DataLoader + SequentialSampler + Batch (numpy batches)"

    def unavailable(self):
        return _missing("grain.python")

    def unsupported(self, workload, num_workers, start_method, persistent):
        if workload.kind == "memory":
            return "not measured (needs a shuffled epoch of a Python-object dataset)"
        if workload.iterable:
            return "no IterableDataset in its DataLoader"
        if persistent:
            return "no persistent workers across epochs"
        if num_workers and start_method != "fork":
            return "start method is not configurable"
        return None

    def make(self, dataset, *, batch_size, num_workers, collate_fn, start_method, persistent,
             shuffle=False):
        import grain.python as pygrain
        sampler = pygrain.SequentialSampler(num_records=len(dataset),
                                            shard_options=pygrain.NoSharding())
        return pygrain.DataLoader(
            data_source=dataset, sampler=sampler, worker_count=num_workers,
            operations=[pygrain.Batch(batch_size=batch_size, drop_remainder=False)])

    def shutdown(self, loader, iterator):
        close = getattr(iterator, "close", None)
        if close is not None:
            close()


_SHM = "/dev/shm"
_SPDL_BLOCKS = "psm_"  # multiprocessing.shared_memory's names: SPDL's batches travel in them
_SPDL_SETTLE_S = 5.0  # how long SPDL's own trackers get to unlink its blocks after a run


def _blocks() -> set[str]:
    try:
        return {n for n in os.listdir(_SHM) if n.startswith(_SPDL_BLOCKS)}
    except FileNotFoundError:
        return set()


def _held(names: set[str]) -> set[str]:
    """The names some live process still maps or holds open."""
    paths = {f"{_SHM}/{n}": n for n in names}
    held: set[str] = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/maps") as f:
                maps = f.read()
            held.update(n for path, n in paths.items() if path in maps)
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target in paths:
                    held.add(paths[target])
        except OSError:
            continue
    return held


class SpdlAdapter(Adapter):
    """SPDL's process pool. Its workers hand batches over in ``psm_*`` shared-memory
    blocks that its trackers unlink after the run; a block of a batch in flight when the
    loop closed is sometimes never unlinked, so :meth:`finish` removes the blocks that
    appeared during the suite and that no live process holds any more."""

    name = "spdl"
    note = "spdl: spdl.dataloader.get_pytorch_dataloader(in_order=True)"

    def __init__(self) -> None:
        self._before: set[str] | None = None

    def prepare(self, max_workers):
        self._before = _blocks()

    def finish(self):
        if self._before is None:
            return
        deadline = time.monotonic() + _SPDL_SETTLE_S
        while (new := _blocks() - self._before) and time.monotonic() < deadline:
            time.sleep(0.2)
        from multiprocessing import shared_memory
        for name in new - _held(new):
            try:  # through the API, so this process's resource tracker forgets it too
                block = shared_memory.SharedMemory(name=name)
            except (FileNotFoundError, ValueError):
                continue
            block.close()
            block.unlink()
        self._before = None

    def unavailable(self):
        return _missing("spdl.dataloader")

    def unsupported(self, workload, num_workers, start_method, persistent):
        if workload.kind == "memory":
            return "not measured (needs a shuffled epoch of a Python-object dataset)"
        if workload.iterable:
            return "map-style datasets only"
        if persistent:
            return "rejects persistent_workers"
        if num_workers == 0:
            return "needs at least one worker"
        return None

    def make(self, dataset, *, batch_size, num_workers, collate_fn, start_method, persistent,
             shuffle=False):
        from spdl.dataloader import get_pytorch_dataloader
        kwargs: dict[str, Any] = {"batch_size": batch_size, "num_workers": num_workers,
                                  "multiprocessing_context": start_method, "in_order": True}
        if collate_fn is not None:
            kwargs["collate_fn"] = collate_fn
        return get_pytorch_dataloader(dataset, **kwargs)

    def shutdown(self, loader, iterator):
        close = getattr(iterator, "close", None)  # its __iter__ is a generator
        if close is not None:
            close()


_SPDL_SINK = 2  # batches the thread pipeline buffers ahead (torch's prefetch_factor)


class _SpdlThreadLoader:
    """An iterable over a map-style dataset's batches through an SPDL thread pipeline."""

    def __init__(self, dataset: Any, batch_size: int, num_workers: int,
                 collate_fn: Any) -> None:
        self.dataset, self.batch_size, self.num_workers = dataset, batch_size, num_workers
        if collate_fn is None:
            from torch.utils.data import default_collate
            collate_fn = default_collate
        self.collate_fn = collate_fn

    def __len__(self) -> int:
        return -(-len(self.dataset) // self.batch_size)

    def _batches(self):
        n, b = len(self.dataset), self.batch_size
        for start in range(0, n, b):
            yield range(start, min(n, start + b))

    def _fetch(self, keys: range) -> Any:
        dataset = self.dataset
        return self.collate_fn([dataset[i] for i in keys])

    def __iter__(self):
        from spdl.pipeline import PipelineBuilder
        pipeline = (PipelineBuilder()
                    .add_source(self._batches())
                    .pipe(self._fetch, concurrency=self.num_workers, output_order="input")
                    .add_sink(_SPDL_SINK)
                    .build(num_threads=self.num_workers, report_stats_interval=-1))
        with pipeline.auto_stop():
            yield from pipeline


class SpdlThreadsAdapter(Adapter):
    name = "spdl-threads"
    note = ("spdl-threads: spdl.pipeline.PipelineBuilder, fetch+collate on num_workers "
            "threads, input order")

    def unavailable(self):
        return _missing("spdl.pipeline")

    def unsupported(self, workload, num_workers, start_method, persistent):
        if workload.kind == "memory":
            return "not measured (threads: no worker processes to measure)"
        if workload.iterable:
            return "map-style datasets only (this adapter)"
        if persistent:
            return "no persistent workers (threads)"
        if num_workers == 0:
            return "needs at least one thread"
        if start_method != "fork":
            return "threads: no start method"
        return None

    def make(self, dataset, *, batch_size, num_workers, collate_fn, start_method, persistent):
        return _SpdlThreadLoader(dataset, batch_size, num_workers, collate_fn)

    def shutdown(self, loader, iterator):
        close = getattr(iterator, "close", None)  # a generator: closing stops the pipeline
        if close is not None:
            close()


TORCHDATA = TorchdataAdapter()
PEERS: list[Adapter] = [TORCHDATA, GrainAdapter(), SpdlAdapter(), SpdlThreadsAdapter()]
