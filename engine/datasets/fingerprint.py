"""A cheap fingerprint of a dataset as it would be read: the key ``--skip-existing`` compares.

No image is decoded or read; what the fingerprint covers, per source:

* ``custom``: the sha256 of ``image_queries.jsonl``, and, when rows name relative image paths
  found relative to the working directory (which the reader tries first, as the reference tool
  does), that directory and how many: a run from another folder reads other images;
* a named set from raw Karpathy files: the sha256 of the annotation file the reader would take
  (``{name}_{split}_karpathy.txt``, ``coco_{split}_karpathy.json``, or their ``_zh`` forms);
* a local webdataset folder: the name, size and modification time of every file of the split's
  folder, plus the content of the small side files (``nshards.txt``, ``dataset_type.txt``, class
  names and templates);
* a downloaded set: the download cache's ``manifest.json`` (URL and the size of every file);
* always: the dataset name, split, limit, language and the content of custom class-name and
  template files;
* a BEIR folder (text retrieval, :func:`beir_fingerprint`): the name, size and modification time
  of ``corpus.jsonl``, ``queries.jsonl`` and the qrels file of the split (a corpus can be large:
  it is not hashed).

A change in any of these gives another fingerprint, so a rows file that grew from 5 to 20 rows,
a shard that was replaced, or another ``limit`` is a different result. Images named by a rows
file are not stat-ed: replacing an image in place under the same name keeps the fingerprint
(the embedding cache still notices; see docs/speed.md).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import orjson

from ..textio import json_lines, open_regular
from . import karpathy, sources, wds
from .custom import FILENAME as CUSTOM_ROWS
from .named import _ALIASES, normalize_language, wds_name

CHUNK = 1 << 20
SIDE_FILES = (wds.NSHARDS, wds.DATASET_TYPE, wds.CLASSNAMES, wds.TEMPLATES)


def _file_digest(path: Path) -> str:
    """``sha256:<hex>`` of a file's bytes, ``missing`` if it is not a readable regular file (a
    FIFO or a device is never read: :func:`~clipeval.engine.textio.open_regular`)."""
    h = hashlib.sha256()
    try:
        with open_regular(path) as f:
            while block := f.read(CHUNK):
                h.update(block)
    except (OSError, ValueError):
        return "missing"
    return "sha256:" + h.hexdigest()


def _stat(path: Path) -> list:
    try:
        st = path.stat()
    except (OSError, ValueError):
        return [path.name, None]
    return [path.name, st.st_size, st.st_mtime_ns]


def rows_found_in_cwd(root: Path) -> int:
    """How many rows of ``root/image_queries.jsonl`` name a relative ``image_path`` that the reader
    finds relative to the working directory (it tries that before the data folder, as the
    reference tool does; :func:`clipeval.engine.datasets.custom._resolve`): one stat or two per
    row, no image read. ``0`` for a file that cannot be read (the reader reports it)."""
    from .custom import _parse_row, _resolve

    found = 0
    try:
        for _, line in json_lines(root / CUSTOM_ROWS):
            try:
                image_path, _ = _parse_row(line)
            except ValueError:
                continue
            if os.path.isabs(image_path) or not os.path.lexists(image_path):  # one stat for most rows
                continue
            if _resolve(image_path, root)[0] == Path(image_path):
                found += 1
    except (OSError, ValueError):
        return 0
    return found


def _wds_folder(root: Path, split: str) -> dict:
    folder = root / split
    try:
        names = sorted(os.listdir(folder)) if folder.is_dir() else []
    except OSError:
        names = []
    side = {name: _file_digest(root / name) for name in SIDE_FILES}
    side.update({f"zh_{name}": _file_digest(root / f"zh_{name}") for name in (wds.CLASSNAMES, wds.TEMPLATES)})
    side[f"{split}/{wds.NSHARDS}"] = _file_digest(folder / wds.NSHARDS)
    return {"kind": "webdataset", "files": [_stat(folder / n) for n in names], "side": side}


def _local_source(name: str, root: Path, split: str, language: str) -> dict:
    if name == "custom":
        source = {"kind": "custom", "rows": _file_digest(root / CUSTOM_ROWS)}
        in_cwd = rows_found_in_cwd(root)
        if in_cwd:  # those images depend on where the run starts: another folder, other images
            source["found_in_cwd"] = [os.getcwd(), in_cwd]
        return source
    base, forced = _ALIASES.get(name, (name, None))
    lang = forced or language
    if base in ("flickr8k", "flickr30k"):
        ann = karpathy.flickr_file(root, base, split, lang)
    elif base.startswith("mscoco"):
        ann = karpathy.coco_file(root, split, lang)
    else:
        ann = None
    if ann is not None and ann.is_file():
        return {"kind": "karpathy", "file": ann.name, "content": _file_digest(ann)}
    return _wds_folder(root, split)


def _downloaded_source(name: str, data_dir: str | None, dataset_url: str | None, cache_dir) -> dict:
    base = _ALIASES.get(name, (name, None))[0]
    url = str(data_dir).rstrip("/") if data_dir else sources.base_url(wds_name(base), dataset_url)
    folder = sources.cache_folder(wds_name(base), url, cache_dir)
    return {"kind": "download", "url": url, "manifest": _file_digest(folder / sources.MANIFEST)}


def data_fingerprint(dataset_name: str, data_dir: str | os.PathLike | None, split: str, *,
                     limit: int | None = None, language: str | None = None, dataset_url: str | None = None,
                     cache_dir: str | os.PathLike | None = None, classnames_file: str | os.PathLike | None = None,
                     templates_file: str | os.PathLike | None = None) -> str:
    """sha256 (hex) of what :func:`~clipeval.engine.datasets.read_dataset` would read for these
    arguments (see the module docstring). Never raises for a missing or unreadable file: that
    is part of the fingerprint (and the reader reports it)."""
    lang = normalize_language(language)
    if data_dir is not None and not sources.is_url(str(data_dir)):
        source = _local_source(dataset_name, Path(os.path.expanduser(os.fspath(data_dir))), split, lang)
    else:
        source = _downloaded_source(dataset_name, None if data_dir is None else str(data_dir), dataset_url, cache_dir)
    key = {
        "dataset": dataset_name, "split": split, "limit": limit, "language": lang, "source": source,
        "classnames_file": _file_digest(Path(classnames_file)) if classnames_file else None,
        "templates_file": _file_digest(Path(templates_file)) if templates_file else None,
    }
    return hashlib.sha256(orjson.dumps(key, option=orjson.OPT_SORT_KEYS)).hexdigest()


def beir_fingerprint(folder: str | os.PathLike, split: str, *, limits: int | None = None) -> str:
    """sha256 (hex) of what :func:`~clipeval.engine.datasets.beir.read_beir` would read: the
    names, sizes and modification times of the corpus, the queries and the split's qrels file
    (``qrels/{split}.tsv``, else ``qrels.jsonl``), the split and ``limits``. Never raises."""
    from .beir import CORPUS, QRELS_JSONL, QUERIES, qrels_tsv_path

    root = Path(os.path.expanduser(os.fspath(folder)))
    tsv = qrels_tsv_path(root, split)
    qrels = tsv if tsv.is_file() else root / QRELS_JSONL
    key = {"kind": "beir", "split": split, "limits": limits,
           "files": [_stat(root / CORPUS), _stat(root / QUERIES), [str(qrels.relative_to(root)), *_stat(qrels)[1:]]]}
    return hashlib.sha256(orjson.dumps(key, option=orjson.OPT_SORT_KEYS)).hexdigest()
