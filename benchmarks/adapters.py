"""Loader adapters: one small class per loader, so runs treat every loader alike.

An adapter builds a loader from (dataset, batch size, workers, collate_fn, start method,
persistence), shuts it down, and says when it cannot take part (not installed, or the
workload needs something it lacks). Ours and torch's are here; optional peers are in
``benchmarks/peers.py``. A ``-state`` adapter (:class:`EveryBatchState`) is another one
whose loop also calls ``loader.state_dict()`` after every batch, as a training loop that
checkpoints every step would; it runs only where a workload asks for it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ADAPTERS", "Adapter", "DEFAULT_LOADERS", "EveryBatchState", "OursAdapter",
           "TorchAdapter", "BASELINE"]

BASELINE = "torch"  # the loader every ratio is taken against


class Adapter:
    """The interface every loader is driven through."""

    name = ""
    flavour = "torch"  # which dataset flavour (base classes) this loader iterates
    note = ""  # shown under the table, e.g. how the loader was configured

    def unavailable(self) -> str | None:
        """Why this loader cannot run here (not installed), or None."""
        return None

    def unsupported(self, workload: Any, num_workers: int, start_method: str,
                    persistent: bool) -> str | None:
        """Why this loader cannot run this cell, or None."""
        return None

    def applies(self, workload: Any) -> bool:
        """Whether this loader runs ``workload`` at all (a False leaves no row)."""
        wanted = getattr(workload, "loaders", None)
        if wanted is not None:
            return self.name in wanted
        return not self.name.endswith("-state")  # state probes run where asked for

    def make(self, dataset: Any, *, batch_size: int, num_workers: int,
             collate_fn: Any, start_method: str, persistent: bool,
             shuffle: bool = False) -> Any:
        raise NotImplementedError

    def shutdown(self, loader: Any, iterator: Any) -> None:
        """Stop every worker of ``loader``/``iterator`` now (idempotent)."""

    def prepare(self, max_workers: int) -> None:
        """Once before the suite's first run (e.g. start a cluster for its workers)."""

    def finish(self) -> None:
        """Once after the suite's last run."""


class OursAdapter(Adapter):
    """``loader.DataLoader``; batches as numpy (or torch with ``output="torch"``)."""

    flavour = "ours"

    def __init__(self, name: str = "ours", output: str = "numpy",
                 share_dataset: bool = True) -> None:
        self.name = name
        self.output = output
        self.share_dataset = share_dataset
        extra = "" if share_dataset else ", share_dataset=False"
        self.note = f'{name}: loader.DataLoader(output="{output}"{extra})'

    def make(self, dataset, *, batch_size, num_workers, collate_fn, start_method, persistent,
             shuffle=False):
        from loader import DataLoader
        kwargs: dict = {"batch_size": batch_size, "num_workers": num_workers,
                        "output": self.output, "shuffle": shuffle,
                        "share_dataset": self.share_dataset}
        if collate_fn is not None:
            kwargs["collate_fn"] = collate_fn
        if num_workers > 0:
            kwargs["multiprocessing_context"] = start_method
            kwargs["persistent_workers"] = persistent
        return DataLoader(dataset, **kwargs)

    def shutdown(self, loader, iterator):
        close = getattr(iterator, "close", None)
        if close is not None:
            close()
        if loader is not None:
            loader.close()


class TorchAdapter(Adapter):
    """``torch.utils.data.DataLoader`` (and classes with its interface)."""

    name = "torch"
    module = "torch.utils.data"
    attr = "DataLoader"
    note = "torch: torch.utils.data.DataLoader (batches are tensors)"

    def _cls(self) -> Any:
        import importlib
        return getattr(importlib.import_module(self.module), self.attr)

    def unavailable(self):
        try:
            self._cls()
        except ImportError as exc:
            return f"not installed ({exc.name or exc})"
        return None

    def make(self, dataset, *, batch_size, num_workers, collate_fn, start_method, persistent,
             shuffle=False):
        kwargs: dict = {"batch_size": batch_size, "num_workers": num_workers,
                        "shuffle": shuffle}
        if collate_fn is not None:
            kwargs["collate_fn"] = collate_fn
        if num_workers > 0:
            kwargs["multiprocessing_context"] = start_method
            kwargs["persistent_workers"] = persistent
        return self._cls()(dataset, **kwargs)

    def shutdown(self, loader, iterator):
        for it in (iterator, getattr(loader, "_iterator", None)):
            stop = getattr(it, "_shutdown_workers", None)
            if stop is not None:
                stop()


class _StateIterator:
    """The iterator of :class:`_StatefulLoop`: after each batch, ``loader.state_dict()``."""

    __slots__ = ("loader", "it", "state")

    def __init__(self, loader: Any, it: Any) -> None:
        self.loader, self.it, self.state = loader, it, None

    def __iter__(self) -> "_StateIterator":
        return self

    def __next__(self) -> Any:
        batch = next(self.it)
        self.state = self.loader.state_dict()
        return batch


class _StatefulLoop:
    """A loader whose loop takes its state after every batch."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def __iter__(self) -> _StateIterator:
        return _StateIterator(self.loader, iter(self.loader))


class EveryBatchState(Adapter):
    """Another adapter's loader, with ``state_dict()`` called after every batch."""

    def __init__(self, inner: Adapter) -> None:
        self.inner = inner
        self.name = f"{inner.name}-state"
        self.flavour = inner.flavour
        self.note = f"{self.name}: {inner.name}, and loader.state_dict() after every batch"

    def unavailable(self):
        return self.inner.unavailable()

    def unsupported(self, workload, num_workers, start_method, persistent):
        return self.inner.unsupported(workload, num_workers, start_method, persistent)

    def make(self, dataset, **kwargs):
        return _StatefulLoop(self.inner.make(dataset, **kwargs))

    def shutdown(self, loader, iterator):
        self.inner.shutdown(getattr(loader, "loader", None), getattr(iterator, "it", None))


def _registry() -> dict[str, Adapter]:
    from . import peers
    from .ray_adapter import RayAdapter
    ours = OursAdapter()
    adapters: list[Adapter] = [ours, OursAdapter("ours-torch", "torch"),
                               OursAdapter("ours-copy", share_dataset=False), RayAdapter(),
                               TorchAdapter(), *peers.PEERS, EveryBatchState(ours),
                               EveryBatchState(peers.TORCHDATA)]
    return {a.name: a for a in adapters}


ADAPTERS: dict[str, Adapter] = _registry()
# ours-torch is opt-in: it doubles the runs to show the cost of torch.from_numpy; ours-copy
# (every worker its own copy of the dataset, as before issue 10) shows what sharing saves;
# the -state probes run only on workloads that list them (tiny_state)
# (each right after its loader, so that their reps run back to back); ours-ray is opt-in:
# it starts a local Ray cluster (seconds, hundreds of MB)
DEFAULT_LOADERS = ("ours", "ours-state", "torch", "torchdata", "torchdata-state", "grain",
                   "spdl", "spdl-threads")
