"""Dataset readers and the registry of dataset names (with each one's default task)."""

from __future__ import annotations

from ..errors import ConfigError
from .base import BadItem, RetrievalDataset
from .custom import read_custom

__all__ = ["BadItem", "RetrievalDataset", "DATASETS", "default_task", "read_dataset"]

# name -> (default task, reader(data_dir, split, on_error))
DATASETS = {
    "custom": ("zeroshot_retrieval", lambda data_dir, split, on_error: read_custom(data_dir, on_error=on_error)),
}


def _check(name: str) -> None:
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}", f"available datasets: {', '.join(sorted(DATASETS))}")


def default_task(name: str) -> str:
    _check(name)
    return DATASETS[name][0]


def read_dataset(name: str, data_dir, split: str, on_error: str):
    _check(name)
    return DATASETS[name][1](data_dir, split, on_error)
