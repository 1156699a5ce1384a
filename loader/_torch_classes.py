"""Where torch is in use, our classes are torch's too: ``isinstance`` sees a torch DataLoader.

Frameworks recognise data objects by torch's classes: Lightning and accelerate rebuild a
``torch.utils.data.DataLoader`` with a distributed sampler, Lightning decides whether to
shuffle by ``isinstance(sampler, RandomSampler)`` and treats an ``IterableDataset`` apart.
``import loader`` must not import torch, so our classes cannot name torch's as bases when
they are defined. Instead, once torch is imported (checked when ``loader`` is imported and
whenever a DataLoader is built: the rule of ``output="auto"``), :func:`adopt_torch_bases`
adds each torch namesake to the bases of ours, for every class at once:

```
 loader.DataLoader.__bases__    (TorchNamesake, Generic) -> (TorchNamesake, torch DataLoader, Generic)
 loader.RandomSampler.__bases__ (_Seeded, Sampler)       -> (_Seeded, Sampler, torch RandomSampler)
```

- Our own methods still come first in every MRO (torch's class goes after our bases), so
  behaviour does not change; only ``isinstance``/``issubclass`` against torch's classes do.
- ``type(obj)`` is unchanged, so pickling, ``type(dl)(...)`` rebuilds and user subclasses
  behave as before (subclasses follow their base's new MRO).
- It is one-way and happens once per process; a spawned worker that never imports torch
  never adopts anything.
"""

from __future__ import annotations

import sys
import warnings

__all__ = ["TorchNamesake", "adopt_torch_bases"]


class TorchNamesake:
    """The first base of our root classes (Dataset, Sampler, DataLoader).

    CPython accepts a new ``__bases__`` only if the first base keeps the instance layout;
    a root class whose first base is ``Generic`` could not take torch's (which adds a
    ``__dict__`` below ``Generic``). With this empty class first, the tuple becomes
    ``(TorchNamesake, torch's class, Generic)``."""

    __slots__ = ()

# (our module, our class, torch module, torch class), parents before children
_NAMESAKES = (
    ("loader.dataset", "Dataset", "torch.utils.data.dataset", "Dataset"),
    ("loader.dataset", "IterableDataset", "torch.utils.data.dataset", "IterableDataset"),
    ("loader.dataset", "TensorDataset", "torch.utils.data.dataset", "TensorDataset"),
    ("loader.dataset", "StackDataset", "torch.utils.data.dataset", "StackDataset"),
    ("loader.dataset", "ConcatDataset", "torch.utils.data.dataset", "ConcatDataset"),
    ("loader.dataset", "ChainDataset", "torch.utils.data.dataset", "ChainDataset"),
    ("loader.dataset", "Subset", "torch.utils.data.dataset", "Subset"),
    ("loader.sampler", "Sampler", "torch.utils.data.sampler", "Sampler"),
    ("loader.sampler", "SequentialSampler", "torch.utils.data.sampler", "SequentialSampler"),
    ("loader.sampler", "RandomSampler", "torch.utils.data.sampler", "RandomSampler"),
    ("loader.sampler", "SubsetRandomSampler", "torch.utils.data.sampler", "SubsetRandomSampler"),
    ("loader.sampler", "WeightedRandomSampler", "torch.utils.data.sampler",
     "WeightedRandomSampler"),
    ("loader.sampler", "BatchSampler", "torch.utils.data.sampler", "BatchSampler"),
    ("loader.distributed", "DistributedSampler", "torch.utils.data.distributed",
     "DistributedSampler"),
    ("loader.dataloader", "DataLoader", "torch.utils.data.dataloader", "DataLoader"),
)

_adopted = False


def _ours(base: type) -> bool:
    return base.__module__.split(".", 1)[0] == "loader"


def _add_base(cls: type, torch_cls: type) -> None:
    """Give ``cls`` the base ``torch_cls``, after our own bases where the MRO allows."""
    if torch_cls in cls.__mro__:  # not issubclass: an ABC would cache the answer
        return
    bases = cls.__bases__
    first_foreign = next((i for i, b in enumerate(bases) if not _ours(b)), len(bases))
    positions = list(range(first_foreign, len(bases) + 1)) + list(range(first_foreign))
    for position in positions:
        try:
            cls.__bases__ = bases[:position] + (torch_cls,) + bases[position:]
        except TypeError:  # no consistent MRO there (a subclass mixing both orders)
            continue
        for klass in torch_cls.__mro__:
            # torch's IterableDataset is an ABC (via Iterable): an isinstance() asked
            # before now is cached as False; forget it
            clear = getattr(klass, "_abc_caches_clear", None)
            if clear is not None:
                clear()
        return
    warnings.warn(f"loader.{cls.__name__} could not also become a {torch_cls.__module__}."
                  f"{torch_cls.__name__}: isinstance checks against torch's class will fail",
                  RuntimeWarning, stacklevel=3)


def adopt_torch_bases() -> bool:
    """Make our classes subclasses of torch's namesakes if torch is imported; True if so."""
    global _adopted
    if _adopted:
        return True
    if "torch" not in sys.modules:
        return False
    import importlib
    for our_module, our_name, torch_module, torch_name in _NAMESAKES:
        ours = getattr(sys.modules[our_module], our_name)
        theirs = getattr(importlib.import_module(torch_module), torch_name)
        _add_base(ours, theirs)
    _adopted = True
    return True
