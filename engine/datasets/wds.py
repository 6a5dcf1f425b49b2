"""Webdatasets in CLIP_benchmark's layout, read straight out of the tar shards.

Layout of a dataset folder::

    {root}/{split}/nshards.txt          number of shards n (optional locally: then 0.tar, 1.tar, ...)
    {root}/{split}/0.tar ... {n-1}.tar  samples
    {root}/classnames.txt               classification: one class name per line
    {root}/zeroshot_classification_templates.txt   one template per line, ``{c}`` for the class
    {root}/dataset_type.txt             ``retrieval`` or ``multilabel`` (absent: classification)

A sample is the run of consecutive tar members sharing a key (the member name up to the first
dot of its last path component, as webdataset groups them); the suffix after that dot, lower-cased,
says what the member holds: ``webp``/``png``/``jpg``/``jpeg`` an encoded image (the first present in
that order is used, as the reference reader does), ``txt`` the captions (one per line; a literal
``\\n`` inside a caption is turned into a newline), ``cls`` an integer label, ``npy`` a multi-hot
target vector.

How the shards are read
-----------------------
Nothing is unpacked to disk and member names are never used as paths: they are only keys and
labels in messages. One pass over each shard reads the tar headers and the small members
(captions, labels), and records where each image's bytes lie in the shard (offset, size); the
image bytes themselves are skipped with a seek. The gallery (:class:`ShardImages`) is then a
lazy sequence: iterating it reads the images one after the other from the shards, so the decode
pipeline pulls them as it goes and holds only its bounded prefetch. What stays in memory for the
whole run is O(samples) small records (texts, labels, offsets), never pixels or encoded images.
The retrieval ranking needs every text and every image embedding, not every image, so this is
all it needs.

Bad samples (no image, an unreadable label or caption, a member cut off by a truncated shard)
are collected as :class:`~clipeval.engine.datasets.base.BadItem` named ``{shard}#{key}``. With
``on_error="skip"`` they are left out and reported; with ``"fail"`` they are all listed in one
:class:`DatasetError`. Images that do not decode are found later, by the decode pipeline, and
are named the same way.
"""

from __future__ import annotations

import io
import logging
import os
import re
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DatasetError, listing
from .base import BadItem, RetrievalDataset

log = logging.getLogger(__name__)

IMAGE_EXTS = ("webp", "png", "jpg", "jpeg")
CLASSNAMES = "classnames.txt"
TEMPLATES = "zeroshot_classification_templates.txt"
DATASET_TYPE = "dataset_type.txt"
NSHARDS = "nshards.txt"
DATASET_TYPES = ("classification", "retrieval", "multilabel")
# Small members (captions, labels) larger than this are refused, so a damaged shard cannot make
# a reader allocate gigabytes; images are bounded by the decoder's own pixel limit.
MAX_SMALL_MEMBER = 16 << 20

_KEY = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")


# --------------------------------------------------------------------------------------------
# Folder-level metadata


def existing_splits(root: str | os.PathLike) -> list[str]:
    """Sub-folders of ``root`` that hold ``nshards.txt`` or ``0.tar``."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and ((p / NSHARDS).is_file() or (p / "0.tar").is_file()))


def shard_paths(root: str | os.PathLike, split: str) -> list[Path]:
    """The shard files of ``split``, in order; a missing split names the splits that exist."""
    root = Path(root)
    folder = root / split
    if not folder.is_dir() or not ((folder / NSHARDS).is_file() or (folder / "0.tar").is_file()):
        found = existing_splits(root)
        raise DatasetError(
            f"split {split!r} not found in {root}" + (f" (splits there: {', '.join(found)})" if found else
                                                       " (no split folder with nshards.txt or 0.tar there)"),
            f"pass --split {found[0]}" if found else "point --data-dir at a webdataset folder ({split}/0.tar ...)",
        )
    nfile = folder / NSHARDS
    if nfile.is_file():
        text = nfile.read_text(encoding="utf-8").strip()
        if not text.isdigit() or int(text) < 1:
            raise DatasetError(f"{nfile} must hold a positive integer, not {text[:40]!r}")
        paths = [folder / f"{i}.tar" for i in range(int(text))]
        missing = [p.name for p in paths if not p.is_file()]
        if missing:
            raise DatasetError(f"{folder} lacks {len(missing)} shard(s) listed by nshards.txt: {', '.join(missing[:10])}",
                               "download the dataset again or fix nshards.txt")
        return paths
    paths = []
    while (folder / f"{len(paths)}.tar").is_file():
        paths.append(folder / f"{len(paths)}.tar")
    return paths


def read_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def dataset_type(root: str | os.PathLike) -> str:
    path = Path(root) / DATASET_TYPE
    if not path.is_file():
        return "classification"
    value = path.read_text(encoding="utf-8").strip().lower()
    if value not in DATASET_TYPES:
        raise DatasetError(f"{path} holds {value[:40]!r}", f"expected one of {', '.join(DATASET_TYPES)}")
    return value


def unescape_caption(line: str) -> str:
    """A caption line of a ``.txt`` member: the writer escaped newlines inside a caption as ``\\n``."""
    return line.replace("\\n", "\n").strip()


# --------------------------------------------------------------------------------------------
# The scan


@dataclass
class Sample:
    """One sample's small members, and where its image lies in its shard."""

    key: str
    shard: int
    image_offset: int = -1
    image_size: int = 0
    image_ext: str = ""
    texts: list[str] | None = None
    label: int | None = None
    target: np.ndarray | None = None
    problem: str | None = None


def _read_small(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    if member.size > MAX_SMALL_MEMBER:
        raise ValueError(f"member {member.name} is {member.size} bytes (more than {MAX_SMALL_MEMBER})")
    f = tar.extractfile(member)
    data = f.read() if f is not None else b""
    if len(data) != member.size:
        raise ValueError(f"member {member.name} is cut off ({len(data)} of {member.size} bytes)")
    return data


def _take(sample: Sample, suffix: str, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
    """Record one member of ``sample``; raises ValueError with the reason for a bad member."""
    if suffix in IMAGE_EXTS:
        rank = IMAGE_EXTS.index(suffix)
        if sample.image_offset < 0 or rank < IMAGE_EXTS.index(sample.image_ext):
            sample.image_offset, sample.image_size, sample.image_ext = member.offset_data, member.size, suffix
    elif suffix == "txt":
        try:
            text = _read_small(tar, member).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"captions are not UTF-8 ({exc.reason} at byte {exc.start})") from None
        sample.texts = [c for c in (unescape_caption(line) for line in text.splitlines()) if c]
    elif suffix == "cls":
        raw = _read_small(tar, member).decode("utf-8", "replace").strip()
        if not re.fullmatch(r"-?\d+", raw):
            raise ValueError(f"label {raw[:40]!r} is not an integer")
        sample.label = int(raw)
    elif suffix == "npy":
        try:
            sample.target = np.load(io.BytesIO(_read_small(tar, member)), allow_pickle=False)
        except ValueError:
            raise
        except Exception as exc:  # numpy raises several types for malformed .npy data
            raise ValueError(f"multi-label target is not a readable .npy array ({exc})") from None


def scan_shard(path: Path, index: int, shard_label: str) -> tuple[list[Sample], str | None]:
    """All samples of one shard, in order, and a problem with the shard itself (or None).

    Only regular-file members are looked at. A shard cut off mid-member ends the scan there; the
    sample that was cut off is marked bad.
    """
    samples: list[Sample] = []
    current: Sample | None = None
    file_size = path.stat().st_size
    problem = None
    try:
        with tarfile.open(path, mode="r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                m = _KEY.match(member.name)
                if m is None:
                    continue
                key, suffix = m.group(1), m.group(2).lower()
                if current is None or current.key != key:
                    current = Sample(key=key, shard=index)
                    samples.append(current)
                if member.offset_data + member.size > file_size:
                    current.problem = f"shard is truncated (member {suffix} cut off)"
                    problem = f"{shard_label} is truncated after {len(samples) - 1} complete sample(s)"
                    break
                if current.problem is not None:
                    continue
                try:
                    _take(current, suffix, tar, member)
                except ValueError as exc:
                    current.problem = str(exc)
            if problem is None and not _has_end_marker(path, tar.offset, file_size):
                # cut off at a member boundary: tarfile takes that for the end of the archive
                problem = f"{shard_label} is truncated (no end-of-archive marker after {len(samples)} sample(s))"
                if samples:
                    samples[-1].problem = "shard is truncated after this sample (it may lack members)"
    except tarfile.TarError as exc:
        problem = f"{shard_label} is not a readable tar file after {len(samples)} sample(s) ({exc})"
    return samples, problem


def _has_end_marker(path: Path, offset: int, file_size: int) -> bool:
    """Whether a zero block (the end-of-archive marker) follows the last member."""
    if offset + tarfile.BLOCKSIZE > file_size:
        return False
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(tarfile.BLOCKSIZE) == bytes(tarfile.BLOCKSIZE)


@dataclass
class ShardScan:
    """Every usable sample of a split, the bad ones, and the shards they came from."""

    shards: list[Path]
    samples: list[Sample]
    bad: list[BadItem] = field(default_factory=list)

    def where(self, s: Sample) -> str:
        return f"{self.shards[s.shard].parent.name}/{self.shards[s.shard].name}#{s.key}"


def scan(shards: list[Path], kind: str, on_error: str, limit: int | None = None) -> ShardScan:
    """Read the shards' headers and small members; check each sample has what ``kind`` needs.

    ``limit``: stop after that many usable samples (later shards are not opened). Bad samples
    are listed together in one :class:`DatasetError` unless ``on_error == "skip"``.
    """
    out = ShardScan(shards=shards, samples=[])
    for index, path in enumerate(shards):
        label = f"{path.parent.name}/{path.name}"
        samples, problem = scan_shard(path, index, label)
        for s in samples:
            reason = s.problem or _missing(s, kind)
            if reason:
                out.bad.append(BadItem(out.where(s), reason, source=label))
            elif limit is None or len(out.samples) < limit:
                out.samples.append(s)
        if problem:
            out.bad.append(BadItem(label, problem, source=label))
        if limit is not None and len(out.samples) >= limit:
            break
    if out.bad and on_error != "skip":
        raise DatasetError(
            f"{len(out.bad)} bad sample(s) or shard(s):\n    {listing(out.bad)}",
            "download the dataset again (a truncated shard is fetched anew), "
            "or pass --on-error skip to leave these samples out",
        )
    for it in out.bad:
        log.warning("skipping %s: %s", it.where, it.reason)
    return out


def _missing(s: Sample, kind: str) -> str | None:
    if s.image_offset < 0:
        return f"no image member ({'/'.join(IMAGE_EXTS)})"
    if kind == "retrieval" and s.texts is None:
        return "no .txt captions"
    if kind == "classification" and s.label is None:
        return "no .cls label"
    if kind == "multilabel" and s.target is None:
        return "no .npy target"
    return None


# --------------------------------------------------------------------------------------------
# The lazy gallery


class ShardBytes(bytes):
    """The encoded bytes of one image, labelled ``{shard}#{key}`` in messages (not by its bytes)."""

    label: str = ""

    def __str__(self) -> str:
        return self.label

    __repr__ = __str__

    def __format__(self, spec: str) -> str:
        return format(self.label, spec)


class ShardImages(Sequence):
    """The images of a list of samples, read from their shards when asked for.

    Iterating reads them in order with one open shard at a time; indexing reads one image;
    slicing and :meth:`select` give sub-galleries without reading anything.
    """

    def __init__(self, shards: list[Path], shard_index, offsets, sizes, labels: list[str]):
        self.shards = list(shards)
        self.shard_index = np.asarray(shard_index, dtype=np.int32)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.labels = list(labels)

    @classmethod
    def from_scan(cls, scan_result: ShardScan) -> "ShardImages":
        s = scan_result.samples
        return cls(scan_result.shards, [x.shard for x in s], [x.image_offset for x in s],
                   [x.image_size for x in s], [scan_result.where(x) for x in s])

    def __len__(self) -> int:
        return len(self.labels)

    def select(self, indices) -> "ShardImages":
        idx = np.asarray(indices, dtype=np.int64)
        return ShardImages(self.shards, self.shard_index[idx], self.offsets[idx], self.sizes[idx],
                           [self.labels[i] for i in idx])

    def _read(self, f, i: int) -> ShardBytes:
        f.seek(int(self.offsets[i]))
        data = ShardBytes(f.read(int(self.sizes[i])))
        data.label = self.labels[i]
        return data

    def __getitem__(self, i):
        if isinstance(i, slice):
            return self.select(range(*i.indices(len(self))))
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        with open(self.shards[self.shard_index[i]], "rb") as f:
            return self._read(f, i)

    def __iter__(self):
        f = None
        current = -1
        try:
            for i in range(len(self)):
                shard = int(self.shard_index[i])
                if shard != current:
                    if f is not None:
                        f.close()
                    f = open(self.shards[shard], "rb")
                    current = shard
                yield self._read(f, i)
        finally:
            if f is not None:
                f.close()


# --------------------------------------------------------------------------------------------
# Datasets


class ShardRetrievalDataset(RetrievalDataset):
    """A :class:`RetrievalDataset` whose ``images`` is a :class:`ShardImages`; its ``select`` keeps
    the list lazy through :meth:`limit` and :meth:`drop_images`."""


def read_wds_retrieval(root, split: str, *, name: str, on_error: str = "fail",
                       limit: int | None = None) -> ShardRetrievalDataset:
    """A retrieval split: every caption of a sample is one text whose positive is that sample's image.

    ``limit`` keeps exactly the first ``limit`` images (later shards are not read).
    """
    shards = shard_paths(root, split)
    result = scan(shards, "retrieval", on_error, limit=limit)
    if not result.samples:
        raise DatasetError(f"no usable samples in {Path(root) / split}", "check the shards listed above")
    texts: list[str] = []
    text_to_image: list[int] = []
    for i, s in enumerate(result.samples):
        texts.extend(s.texts)
        text_to_image.extend([i] * len(s.texts))
    return ShardRetrievalDataset(name=name, images=ShardImages.from_scan(result), texts=texts,
                                 text_to_image=text_to_image, skipped=result.bad)


@dataclass
class ClassificationDataset:
    """Images with one label each (``labels``, int64 [N]) or multi-hot ``targets`` ([N, C])."""

    name: str
    images: Sequence
    classnames: list[str]
    templates: list[str] | dict[str, list[str]]
    labels: np.ndarray | None = None
    targets: np.ndarray | None = None
    skipped: list[BadItem] = field(default_factory=list)
    limited_from: int | None = None

    @property
    def multilabel(self) -> bool:
        return self.targets is not None

    @property
    def num_images(self) -> int:
        return len(self.images)

    def select(self, indices) -> "ClassificationDataset":
        idx = np.asarray(indices, dtype=np.int64)
        images = self.images.select(idx) if hasattr(self.images, "select") else [self.images[i] for i in idx]
        return ClassificationDataset(
            name=self.name, images=images, classnames=self.classnames, templates=self.templates,
            labels=None if self.labels is None else self.labels[idx],
            targets=None if self.targets is None else self.targets[idx],
            skipped=self.skipped, limited_from=self.limited_from)


def read_wds_classification(root, split: str, *, name: str, classnames: list[str],
                            templates, on_error: str = "fail", limit: int | None = None) -> ClassificationDataset:
    """A classification split (``.cls`` labels, or ``.npy`` targets when ``dataset_type.txt`` says multilabel).

    Labels outside ``0..len(classnames)-1`` and targets of the wrong length are bad samples.
    """
    kind = dataset_type(root)
    if kind == "retrieval":
        raise DatasetError(f"{root} is a retrieval dataset ({DATASET_TYPE} says so)",
                           "use --task zeroshot_retrieval")
    shards = shard_paths(root, split)
    result = scan(shards, kind, on_error="skip", limit=None)
    n_classes = len(classnames)
    good: list[Sample] = []
    for s in result.samples:
        if kind == "multilabel":
            t = s.target
            if t.ndim != 1 or t.shape[0] != n_classes:
                result.bad.append(BadItem(result.where(s), f"target has shape {t.shape}, expected ({n_classes},)"))
                continue
        elif not 0 <= s.label < n_classes:
            result.bad.append(BadItem(result.where(s), f"label {s.label} is outside 0..{n_classes - 1}"))
            continue
        if limit is None or len(good) < limit:
            good.append(s)
    if result.bad and on_error != "skip":
        raise DatasetError(
            f"{len(result.bad)} bad sample(s) or shard(s):\n    {listing(result.bad)}",
            "download the dataset again (a truncated shard is fetched anew), "
            "or pass --on-error skip to leave these samples out",
        )
    if not good:
        raise DatasetError(f"no usable samples in {Path(root) / split}", "check the shards listed above")
    result.samples = good
    labels = targets = None
    if kind == "multilabel":
        targets = np.stack([s.target for s in good]).astype(bool)
    else:
        labels = np.array([s.label for s in good], dtype=np.int64)
    return ClassificationDataset(name=name, images=ShardImages.from_scan(result), classnames=classnames,
                                 templates=templates, labels=labels, targets=targets, skipped=result.bad)
