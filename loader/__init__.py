"""loader: a multiprocess, zero-copy drop-in replacement for ``torch.utils.data``.

Change ``from torch.utils.data import DataLoader`` to ``from loader import DataLoader``.
Every public name of ``torch.utils.data`` is here with torch's behaviour; batches are
numpy arrays, or torch tensors when torch is in use (see ``DataLoader(output=...)``).
Importing this package never imports torch; where torch is already imported, our classes
are also subclasses of torch's (``loader/_torch_classes.py``).
"""

from loader.backends import RayBackend
from loader.collate import default_collate, default_collate_fn_map, default_convert
from loader.dataloader import DataLoader, StatefulDataLoader
from loader.dataset import (
    ChainDataset,
    ConcatDataset,
    Dataset,
    IterableDataset,
    StackDataset,
    Subset,
    TensorDataset,
    random_split,
)
from loader.distributed import DistributedSampler
from loader.errors import StallWarning, WorkerError
from loader.ipc.shared_dict import SharedDict
from loader.ipc.shared_views import SharedList, SharedTuple
from loader.sampler import (
    BatchSampler,
    RandomSampler,
    Sampler,
    SequentialSampler,
    SubsetRandomSampler,
    WeightedRandomSampler,
)
from loader.state import Stateful
from loader.stats import LoaderStats
from loader.tune import TuneResult, tune_num_workers
from loader.worker_info import WorkerInfo, get_worker_info

__all__ = [
    "BatchSampler",
    "ChainDataset",
    "ConcatDataset",
    "DataLoader",
    "Dataset",
    "DistributedSampler",
    "IterableDataset",
    "RandomSampler",
    "RayBackend",
    "Sampler",
    "SequentialSampler",
    "SharedDict",
    "SharedList",
    "SharedTuple",
    "StackDataset",
    "Stateful",
    "StatefulDataLoader",
    "StallWarning",
    "Subset",
    "SubsetRandomSampler",
    "TensorDataset",
    "LoaderStats",
    "TuneResult",
    "WeightedRandomSampler",
    "WorkerError",
    "WorkerInfo",
    "default_collate",
    "default_collate_fn_map",
    "default_convert",
    "get_worker_info",
    "random_split",
    "tune_num_workers",
]

__version__ = "0.1.0"

from loader._torch_classes import adopt_torch_bases as _adopt_torch_bases

_adopt_torch_bases()  # torch imported before us: our classes are torch's too from now on
