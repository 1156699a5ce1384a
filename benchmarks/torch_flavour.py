"""The torch-flavoured twin of ``workloads.OurStream``: same logic, torch's base class.

Kept apart from ``workloads.py`` because it imports torch, which our spawned workers
must not pay for when they unpickle a workload dataset.
"""

from __future__ import annotations

import torch.utils.data

from .workloads import StreamLogic

__all__ = ["TorchStream"]


class TorchStream(StreamLogic, torch.utils.data.IterableDataset):
    """The stream as a ``torch.utils.data.IterableDataset``."""

    get_worker_info = staticmethod(torch.utils.data.get_worker_info)
