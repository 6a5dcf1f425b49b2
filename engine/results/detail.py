"""Per-query detail of a result: what each query ranked, kept beside the result file.

A zero-shot retrieval or classification result ``{name}.json`` can keep ``{name}.detail.npz``
(numpy ``savez_compressed``, no pickled objects), written atomically with the result
(:func:`clipeval.engine.results.layout.write_atomic`) before it, so the result's ``meta.detail``
records the detail file's name and sha256 and a stale or foreign detail file is recognised.

Arrays of a retrieval detail (``kind == "retrieval"``; T texts, I gallery images,
``K = min(TOP_K, I)``, ``K' = min(TOP_K, T)``):

=================  ============  ==============================================================
``text_to_image``  int32 [T]     the positive image of each text (a gallery index)
``t2i_rank``       int32 [T]     0-based rank of that image among all I images: the rank
                                 ``image_retrieval_*`` metrics were computed from
``t2i_topk``       int32 [T, K]  the K best images of each text, best first
``i2t_rank``       int32 [I]     0-based best rank of the image's positive texts among all T
                                 texts (-1: an image without texts): the rank of
                                 ``text_retrieval_*``
``i2t_topk``       int32 [I, K'] the K' best texts of each image, best first
``texts``          strings [T]   the texts (queries of text -> image)
``image_ids``      strings [I]   the gallery: absolute file paths for images on disk,
                                 ``{shard}#{key}`` for images in webdataset shards
=================  ============  ==============================================================

Ranks and top-k lists use the scores and tie rule of the metrics (README "Metric
definitions"): the canonical float64 score of each (text, image) pair, ties to the lower index,
so ``t2i_topk[t, t2i_rank[t]] == text_to_image[t]`` whenever ``t2i_rank[t] < K``. The top-k lists
come from the blocked exact top-k (:func:`clipeval.engine.kernels.search.top_k`; its numpy twin
:func:`clipeval.engine.kernels.topk_small.top_k_small` for small inputs), never the full matrix.

Arrays of a classification detail (``kind == "classification"``; N images, C classes):

=================  ============  ==============================================================
``rank``           int32 [N]     0-based rank of the true class among the C class scores (ties
                                 to the lower class index): what ``acc1``/``acc5`` count;
                                 multi-label: the best rank of the image's true classes, -1 none
``predicted``      int32 [N]     the class ranked 0 (arg-max, ties to the lower index)
``label``          int32 [N]     the true class (single-label sets only)
``image_ids``      strings [N]   as above
``classnames``     strings [C]
=================  ============  ==============================================================

Strings are stored as ``{name}_utf8`` (uint8, the UTF-8 bytes one after the other) and
``{name}_offsets`` (int64 ``[n + 1]``). Every file also holds ``format`` (int, 1) and ``kind``.

``--detail auto`` (the default) writes the file when its estimated uncompressed size is at most
:data:`AUTO_MAX_BYTES` (8 MiB: about 150,000 retrieval texts of 20 characters with their
images); ``on`` always, ``off`` never (a detail file left from an earlier run is then removed).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import ResultError, shorten
from ..fsutil import write_atomic
from ..textio import read_regular

log = logging.getLogger(__name__)

__all__ = [
    "AUTO_MAX_BYTES", "DETAIL_MODES", "TOP_K", "ClassificationDetail", "ClassificationPerQuery",
    "RetrievalDetail", "RetrievalPerQuery", "best_true_rank", "detail_path", "detail_satisfied", "gallery_ids",
    "load_detail", "pack_strings", "top_k", "unpack_strings", "write_detail",
]

FORMAT = 1
TOP_K = 10
AUTO_MAX_BYTES = 8 << 20
DETAIL_MODES = ("auto", "on", "off")
SUFFIX = ".detail.npz"


# --------------------------------------------------------------------------- what tasks return


@dataclass
class RetrievalPerQuery:
    """What a retrieval task hands the runner: the ranks its metrics were computed from, and the
    embeddings the top-k lists are computed from if the detail is written."""

    text_emb: np.ndarray  # [T, D] float32
    image_emb: np.ndarray  # [I, D] float32
    text_to_image: np.ndarray  # int [T]
    t2i_rank: np.ndarray  # int [T]
    i2t_rank: np.ndarray  # int [I], -1 for an image without texts
    texts: Sequence[str]
    image_ids: Sequence[str]

    kind = "retrieval"

    def estimated_bytes(self) -> int:
        n_t, n_i = len(self.t2i_rank), len(self.i2t_rank)
        k_t, k_i = min(TOP_K, n_i), min(TOP_K, n_t)
        return (4 * n_t * (2 + k_t) + 4 * n_i * (1 + k_i) + 8 * (n_t + n_i + 2)
                + _utf8_size(self.texts) + _utf8_size(self.image_ids))

    def arrays(self, num_threads: int | None = None) -> dict[str, np.ndarray]:
        n_t, n_i = len(self.t2i_rank), len(self.i2t_rank)
        t2i_topk, _ = top_k(self.text_emb, self.image_emb, min(TOP_K, n_i), num_threads=num_threads)
        i2t_topk, _ = top_k(self.image_emb, self.text_emb, min(TOP_K, n_t), num_threads=num_threads)
        return {
            "text_to_image": _int32(self.text_to_image), "t2i_rank": _int32(self.t2i_rank),
            "t2i_topk": _int32(t2i_topk), "i2t_rank": _int32(self.i2t_rank), "i2t_topk": _int32(i2t_topk),
            **pack_strings("texts", self.texts), **pack_strings("image_ids", self.image_ids),
        }


@dataclass
class ClassificationPerQuery:
    """What a classification task hands the runner (see the module docstring for each array)."""

    rank: np.ndarray  # int [N]
    predicted: np.ndarray  # int [N]
    label: np.ndarray | None  # int [N]; None for a multi-label set
    image_ids: Sequence[str]
    classnames: Sequence[str]

    kind = "classification"

    def estimated_bytes(self) -> int:
        n = len(self.rank)
        return 12 * n + 8 * (n + len(self.classnames) + 2) + _utf8_size(self.image_ids) + _utf8_size(self.classnames)

    def arrays(self, num_threads: int | None = None) -> dict[str, np.ndarray]:
        out = {"rank": _int32(self.rank), "predicted": _int32(self.predicted),
               **pack_strings("image_ids", self.image_ids), **pack_strings("classnames", self.classnames)}
        if self.label is not None:
            out["label"] = _int32(self.label)
        return out


def best_true_rank(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per image of a multi-label set, the best 0-based rank of its true classes among its class
    scores (ties to the lower class index); -1 for an image without a true class. int64 [N]."""
    position = np.empty(scores.shape, dtype=np.int64)
    np.put_along_axis(position, np.argsort(-scores, axis=1, kind="stable"),
                      np.arange(scores.shape[1])[None, :].repeat(scores.shape[0], axis=0), axis=1)
    ranked = np.where(np.asarray(targets, dtype=bool), position, scores.shape[1])
    best = ranked.min(axis=1)
    return np.where(best == scores.shape[1], -1, best)


def gallery_ids(images: Sequence) -> list[str]:
    """Ids of a gallery in order, without reading any image: the labels of images in webdataset
    shards (``{shard}#{key}``), absolute paths of image files, else ``#{index}``."""
    labels = getattr(images, "labels", None)
    if labels is not None:
        return [str(x) for x in labels]
    out = []
    for i, img in enumerate(images):
        out.append(os.path.abspath(os.fspath(img)) if isinstance(img, (str, os.PathLike)) else f"#{i}")
    return out


def top_k(query_emb: np.ndarray, doc_emb: np.ndarray, k: int, *, num_threads: int | None = None):
    """The exact top-k of :func:`clipeval.engine.kernels.search.top_k` (canonical scores, ties
    to the lower index): ``(int64 [Q, k] indices, float64 [Q, k] scores)``. Inputs of at most
    ``SMALL_PAIRS`` pairs take the numpy path (no numba import); the results are identical."""
    from ..kernels.topk_small import SMALL_PAIRS, top_k_small

    if len(query_emb) * len(doc_emb) <= SMALL_PAIRS:
        return top_k_small(query_emb, doc_emb, k)
    from ..kernels.search import top_k as top_k_numba

    return top_k_numba(query_emb, doc_emb, k, num_threads=num_threads)


# --------------------------------------------------------------------------- writing


def detail_path(result_file: str | os.PathLike) -> Path:
    """``{result name without .json}.detail.npz`` beside the result file."""
    result_file = Path(result_file)
    stem = result_file.name[:-5] if result_file.name.endswith(".json") else result_file.name
    return result_file.with_name(stem + SUFFIX)


def write_detail(result_file: str | os.PathLike, per_query, mode: str = "auto", *,
                 num_threads: int | None = None) -> dict:
    """Write the detail of ``per_query`` beside ``result_file`` as ``mode`` says; returns the
    result's ``meta.detail``: ``{"file", "sha256", "bytes", "top_k", "seconds"}`` when written,
    else ``{"file": None, "reason": ...}``. Call it before writing the result itself.

    Raises:
        ValueError: ``mode`` is not one of :data:`DETAIL_MODES`.
    """
    if mode not in DETAIL_MODES:
        raise ValueError(f"detail mode must be one of {', '.join(DETAIL_MODES)}, got {mode!r}")
    path = detail_path(result_file)
    reason = None
    if per_query is None:
        reason = "this task keeps no per-query detail"
    elif mode == "off":
        reason = "detail: off"
    elif mode == "auto" and per_query.estimated_bytes() > AUTO_MAX_BYTES:
        reason = (f"estimated {per_query.estimated_bytes() / 2**20:.1f} MiB, above the "
                  f"{AUTO_MAX_BYTES >> 20} MiB bound of detail: auto (detail: on / --detail on writes it)")
    if reason is not None:
        if path.exists():  # an earlier run's file would no longer describe this result
            path.unlink()
        log.info("no per-query detail for %s: %s", result_file, reason)
        return {"file": None, "reason": reason}
    t0 = time.perf_counter()
    arrays = {"format": np.array(FORMAT, dtype=np.int64), "kind": np.array(per_query.kind),
              **per_query.arrays(num_threads)}
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    data = buf.getvalue()
    write_atomic(path, data)
    info = {"file": path.name, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
            "top_k": TOP_K, "seconds": time.perf_counter() - t0}
    log.info("wrote %s (%d bytes)", path, len(data))
    return info


def detail_satisfied(result_file: str | os.PathLike, result: dict, mode: str) -> bool:
    """Whether an existing result meets ``mode``: ``on`` needs its detail file present and
    matching (``--skip-existing`` recomputes the result otherwise); ``auto`` and ``off`` take the
    result as it is."""
    if mode != "on":
        return True
    try:
        load_detail(result_file, result)
    except ResultError:
        return False
    return True


# --------------------------------------------------------------------------- reading


@dataclass
class RetrievalDetail:
    """A retrieval detail file, checked (arrays as described in the module docstring, int64)."""

    path: Path
    text_to_image: np.ndarray
    t2i_rank: np.ndarray
    t2i_topk: np.ndarray
    i2t_rank: np.ndarray
    i2t_topk: np.ndarray
    texts: list[str]
    image_ids: list[str]

    kind = "retrieval"

    @property
    def num_texts(self) -> int:
        return len(self.t2i_rank)

    @property
    def num_images(self) -> int:
        return len(self.i2t_rank)


@dataclass
class ClassificationDetail:
    """A classification detail file, checked."""

    path: Path
    rank: np.ndarray
    predicted: np.ndarray
    label: np.ndarray | None
    image_ids: list[str]
    classnames: list[str]

    kind = "classification"

    @property
    def multilabel(self) -> bool:
        return self.label is None


def load_detail(result_file: str | os.PathLike, result: dict) -> RetrievalDetail | ClassificationDetail:
    """The detail file of the result ``result`` read from ``result_file``, checked against the
    sha256 the result recorded and for shape, dtype and range.

    Raises:
        ResultError: no detail was written, the file is missing, changed since the result was
            written, or malformed (the message says which and how to write it again).
    """
    result_file = Path(result_file)
    remedy = (f"run the evaluation again with --detail on (config key detail: on) to write "
              f"{detail_path(result_file).name} beside {result_file.name}")
    meta = result.get("meta") if isinstance(result, dict) else None
    info = meta.get("detail") if isinstance(meta, dict) else None
    if not isinstance(info, dict) or not isinstance(info.get("file"), str) or not isinstance(info.get("sha256"), str):
        why = f" ({info['reason']})" if isinstance(info, dict) and isinstance(info.get("reason"), str) else ""
        raise ResultError(f"{result_file} has no per-query detail{why}", remedy)
    name = info["file"]
    if name != Path(name).name or name in ("", ".", "..") or "\0" in name:
        raise ResultError(f"{result_file}: meta.detail.file {shorten(repr(name))} is not the name of a file beside "
                          "it", remedy)
    path = result_file.with_name(name)
    try:
        data = read_regular(path)  # a FIFO or a device at that name is refused, never read
    except OSError as exc:
        raise ResultError(f"cannot read the detail file of {result_file}: {path}: {exc.strerror or exc}",
                          remedy) from None
    if hashlib.sha256(data).hexdigest() != info["sha256"]:
        raise ResultError(f"{path} does not belong to {result_file} (its sha256 differs from the one the result "
                          "recorded: written by another run)", remedy)
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise ResultError(f"{path} is not a readable detail file: {exc}", remedy) from None
    try:
        return _checked(path, arrays, meta)
    except (KeyError, ValueError, TypeError) as exc:
        raise ResultError(f"{path} is malformed: {exc}", remedy) from None


def _checked(path: Path, a: dict[str, np.ndarray], meta: dict):
    if int(_scalar(a, "format")) != FORMAT:
        raise ValueError(f"format {int(_scalar(a, 'format'))} is not {FORMAT}")
    kind = str(_scalar(a, "kind"))
    if kind == "retrieval":
        text_to_image, t2i_rank, i2t_rank = (_ints(a, k, 1) for k in ("text_to_image", "t2i_rank", "i2t_rank"))
        t2i_topk, i2t_topk = _ints(a, "t2i_topk", 2), _ints(a, "i2t_topk", 2)
        texts, image_ids = unpack_strings(a, "texts"), unpack_strings(a, "image_ids")
        n_t, n_i = len(t2i_rank), len(i2t_rank)
        _same_length({"text_to_image": text_to_image, "texts": texts, "t2i_topk": t2i_topk}, n_t, "t2i_rank")
        _same_length({"image_ids": image_ids, "i2t_topk": i2t_topk}, n_i, "i2t_rank")
        _within(text_to_image, 0, n_i, "text_to_image")
        _within(t2i_rank, 0, n_i, "t2i_rank")
        _within(i2t_rank, -1, n_t, "i2t_rank")
        _within(t2i_topk, 0, n_i, "t2i_topk")
        _within(i2t_topk, 0, n_t, "i2t_topk")
        _meta_counts(meta, {"num_texts": n_t, "num_images": n_i})
        return RetrievalDetail(path, text_to_image, t2i_rank, t2i_topk, i2t_rank, i2t_topk, texts, image_ids)
    if kind == "classification":
        rank, predicted = _ints(a, "rank", 1), _ints(a, "predicted", 1)
        label = _ints(a, "label", 1) if "label" in a else None
        image_ids, classnames = unpack_strings(a, "image_ids"), unpack_strings(a, "classnames")
        n, n_c = len(rank), len(classnames)
        _same_length({"predicted": predicted, "image_ids": image_ids,
                      **({"label": label} if label is not None else {})}, n, "rank")
        _within(rank, 0 if label is not None else -1, n_c, "rank")
        _within(predicted, 0, n_c, "predicted")
        if label is not None:
            _within(label, 0, n_c, "label")
        _meta_counts(meta, {"num_images": n})
        return ClassificationDetail(path, rank, predicted, label, image_ids, classnames)
    raise ValueError(f"unknown kind {kind!r}")


def _scalar(a, name):
    value = a[name]
    if value.shape != ():
        raise ValueError(f"{name} must be a scalar")
    return value[()]


def _ints(a, name, ndim) -> np.ndarray:
    value = a[name]
    if value.dtype.kind not in "iu" or value.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}-D integer array, got {value.dtype} {value.shape}")
    return value.astype(np.int64)


def _same_length(items: dict, n: int, of: str) -> None:
    for name, value in items.items():
        if len(value) != n:
            raise ValueError(f"{name} has {len(value)} rows, {of} has {n}")


def _within(values: np.ndarray, lo: int, hi: int, name: str) -> None:
    if values.size and (values.min() < lo or values.max() >= hi):
        raise ValueError(f"{name} must lie in [{lo}, {hi})")


def _meta_counts(meta: dict, counts: dict[str, int]) -> None:
    for key, n in counts.items():
        if key not in meta:
            continue
        value = meta[key]
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"the result's meta.{key} is not an integer (got {value!r:.40})")
        if value != n:
            raise ValueError(f"it holds {n} {key[4:]}, the result says {value}")


# --------------------------------------------------------------------------- strings


def pack_strings(name: str, strings: Sequence[str]) -> dict[str, np.ndarray]:
    """``{name}_utf8`` (uint8) and ``{name}_offsets`` (int64 [n + 1]) holding ``strings``."""
    encoded = [s.encode("utf-8", "surrogatepass") for s in strings]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    return {f"{name}_utf8": np.frombuffer(b"".join(encoded), dtype=np.uint8),
            f"{name}_offsets": offsets}


def unpack_strings(a: dict[str, np.ndarray], name: str) -> list[str]:
    """The strings of :func:`pack_strings` back (raises ValueError on inconsistent arrays)."""
    blob, offsets = a[f"{name}_utf8"], a[f"{name}_offsets"]
    if blob.dtype != np.uint8 or blob.ndim != 1 or offsets.dtype.kind not in "iu" or offsets.ndim != 1:
        raise ValueError(f"{name} strings must be uint8 bytes and integer offsets")
    if offsets.size == 0 or offsets[0] != 0 or offsets[-1] != blob.size or np.any(np.diff(offsets) < 0):
        raise ValueError(f"{name} offsets do not cover its bytes")
    raw = blob.tobytes()
    return [raw[int(s):int(e)].decode("utf-8", "surrogatepass") for s, e in zip(offsets[:-1], offsets[1:])]


def _utf8_size(strings: Sequence[str]) -> int:
    return sum(len(s.encode("utf-8", "surrogatepass")) for s in strings)


def _int32(x) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.int32)
