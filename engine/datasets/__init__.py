"""Dataset readers and the registry of dataset names (with each one's default task).

``DATASETS[name] = (default task, reader)``; a reader is called as
``reader(data_dir, split, on_error, **options)`` with the options of :func:`read_dataset`.
The named sets (:mod:`.named`) are read from raw Karpathy files or a webdataset folder in
``data_dir``, or downloaded into the cache (:mod:`.sources`). A name is resolved first
(:func:`.aliases.resolve_name`): ``wds/`` dropped, CLIP_benchmark's other names of a set replaced
by the set's (``cifar10`` -> ``vtab/cifar10``), the names of sets clipeval cannot serve refused.
"""

from __future__ import annotations

from ..errors import ConfigError
from .aliases import resolve_name, suggest
from .base import BadItem, RetrievalDataset
from .custom import read_custom
from .named import CLASSIFICATION, RETRIEVAL, read_named_classification, read_named_retrieval

__all__ = ["BadItem", "RetrievalDataset", "DATASETS", "default_task", "read_dataset", "read_classification_dataset"]


def _custom(data_dir, split, on_error, *, limit=None, known_good=None, **_options):
    return read_custom(data_dir, on_error=on_error, split=split, limit=limit, known_good=known_good)


def _named(reader, name):
    return lambda data_dir, split, on_error, **options: reader(name, data_dir, split, on_error, **options)


# name -> (default task, reader(data_dir, split, on_error, **options))
DATASETS = {
    "custom": ("zeroshot_retrieval", _custom),
    **{n: ("zeroshot_retrieval", _named(read_named_retrieval, n)) for n in RETRIEVAL},
    **{n: ("zeroshot_classification", _named(read_named_classification, n)) for n in CLASSIFICATION},
}


def _check(name: str, split: str | None = None) -> str:
    """The registered set ``name`` stands for (:func:`.aliases.resolve_name`). Raises
    :class:`ConfigError` for a name that is not one, listing the known names (the nearest first)."""
    resolved = resolve_name(name, split)
    if resolved not in DATASETS:
        retrieval = sorted(n for n, (task, _) in DATASETS.items() if task == "zeroshot_retrieval" and n != "custom")
        classification = sorted(n for n, (task, _) in DATASETS.items() if task == "zeroshot_classification")
        nearest = suggest(name, DATASETS)
        guess = f" (did you mean {' or '.join(nearest)}?)" if nearest else ""
        raise ConfigError(f"unknown dataset {name!r}{guess}",
                          f"available datasets: custom; retrieval: {', '.join(retrieval)}; "
                          f"classification: {', '.join(classification)}")
    return resolved


def default_task(name: str) -> str:
    """The task of dataset ``name`` (a CLIP_benchmark name of a set too) when none is asked for."""
    return DATASETS[_check(name)][0]


def read_dataset(name: str, data_dir, split: str, on_error: str, **options):
    """A retrieval dataset (:class:`RetrievalDataset`). ``options``: ``language``, ``dataset_url``,
    ``cache_dir``, ``progress``, ``limit`` (readers that can stop early do; the caller still
    applies ``RetrievalDataset.limit``)."""
    return _reader(name, split, "zeroshot_retrieval", "a classification set; it has no texts to retrieve")(
        data_dir, split, on_error, **options)


def read_classification_dataset(name: str, data_dir, split: str, on_error: str, **options):
    """A :class:`~.wds.ClassificationDataset`. ``options`` as :func:`read_dataset`, plus
    ``classnames_file`` and ``templates_file``."""
    return _reader(name, split, "zeroshot_classification", "a retrieval set; it has no class labels")(
        data_dir, split, on_error, **options)


def _reader(name: str, split: str, task: str, mismatch: str):
    """The reader of dataset ``name``, which must be a ``task`` set (else: it is ``mismatch``)."""
    default, reader = DATASETS[_check(name, split)]
    if default != task:
        raise ConfigError(f"dataset {name!r} is {mismatch}", f"use --task {default} (its default)")
    return reader
