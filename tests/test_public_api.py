"""The public face: __all__ matches the README, and torch's names are all there."""

from __future__ import annotations

import re
from pathlib import Path

import loader

README = Path(__file__).resolve().parents[1] / "README.md"

TORCH_NAMES = {
    "DataLoader", "Dataset", "IterableDataset", "TensorDataset", "StackDataset",
    "ConcatDataset", "ChainDataset", "Subset", "random_split", "Sampler",
    "SequentialSampler", "RandomSampler", "SubsetRandomSampler", "WeightedRandomSampler",
    "BatchSampler", "DistributedSampler", "get_worker_info", "default_collate",
    "default_convert",
}


def _readme_names() -> set[str]:
    text = README.read_text()
    section = text.split("## Public names", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"`([A-Za-z_]+)`", section)) - {"loader"}


def test_all_matches_readme():
    assert set(loader.__all__) == _readme_names()


def test_every_torch_name_is_exported():
    assert TORCH_NAMES <= set(loader.__all__)
    for name in loader.__all__:
        assert hasattr(loader, name), name


def test_torch_names_match_torch_module():
    import torch.utils.data as tud
    for name in TORCH_NAMES:
        assert hasattr(tud, name), name


def test_readme_commands_are_the_ci_commands():
    ci = (README.parent / ".ci" / "run").read_text()
    assert "pip install -q -e '.[test]'" in ci
    assert "python -m pytest -q" in ci
    assert ".venv/bin/python -m pytest -q" in README.read_text()
