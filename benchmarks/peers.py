"""Optional peer loaders, used only when importable (never installed by the suite).

- torchdata ``StatefulDataLoader``: torch's interface and transport, plus state snapshots.
- Grain ``DataLoader``: a sampler plus operations; batching by its ``Batch`` (it stacks
  numpy leaves itself, so a custom numpy collate_fn is not needed or passed).
- SPDL ``get_pytorch_dataloader``: the drop-in over a process pool; map-style only, no
  persistent workers, at least one worker; run with ``in_order=True`` to match torch.

These adapters follow each project's documented API; a failure in one is reported as an
error for its rows and never stops the suite.
"""

from __future__ import annotations

import importlib
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


class GrainAdapter(Adapter):
    name = "grain"
    flavour = "plain"
    note = "grain: grain.python.DataLoader + SequentialSampler + Batch (numpy batches)"

    def unavailable(self):
        return _missing("grain.python")

    def unsupported(self, workload, num_workers, start_method, persistent):
        if workload.iterable:
            return "no IterableDataset in its DataLoader"
        if persistent:
            return "no persistent workers across epochs"
        if num_workers and start_method != "fork":
            return "start method is not configurable"
        return None

    def make(self, dataset, *, batch_size, num_workers, collate_fn, start_method, persistent):
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


class SpdlAdapter(Adapter):
    name = "spdl"
    note = "spdl: spdl.dataloader.get_pytorch_dataloader(in_order=True)"

    def unavailable(self):
        return _missing("spdl.dataloader")

    def unsupported(self, workload, num_workers, start_method, persistent):
        if workload.iterable:
            return "map-style datasets only"
        if persistent:
            return "rejects persistent_workers"
        if num_workers == 0:
            return "needs at least one worker"
        return None

    def make(self, dataset, *, batch_size, num_workers, collate_fn, start_method, persistent):
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


TORCHDATA = TorchdataAdapter()
PEERS: list[Adapter] = [TORCHDATA, GrainAdapter(), SpdlAdapter()]
