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
``\\n`` inside a caption is turned into a newline; a leading UTF-8 byte-order mark is dropped; the
text must be UTF-8), ``cls`` an integer label, ``npy`` a multi-hot
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
are collected as :class:`~clipeval.engine.datasets.base.BadItem` named ``{shard}#{key}``, and
bad shards (0 bytes, not a tar, cut off, without members) by their name. With
``on_error="skip"`` they are left out, counted by reason (:mod:`.leftout`) and reported; with
``"fail"`` they are all listed in one :class:`DatasetError`. Images that do not decode are found
later, by the decode pipeline, and are named the same way. The shard files must match
``nshards.txt`` (or, without it, number ``0.tar`` ... without a gap): see :func:`shard_paths`.
"""

from __future__ import annotations

import io
import logging
import os
import re
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DatasetError, listing
from ..textio import strip_bom
from . import sidefiles
from .base import BadItem, RetrievalDataset
from .leftout import LeftOut
# the layout's file names and readers, re-exported for the callers of this module (wds.CLASSNAMES ...)
from .sidefiles import (CLASSNAMES, DATASET_TYPE, DATASET_TYPES, NSHARDS, TEMPLATES,  # noqa: F401
                        dataset_type, read_lines)

log = logging.getLogger(__name__)

IMAGE_EXTS = ("webp", "png", "jpg", "jpeg")
# A shard's name: its number, without sign or zero padding, then ".tar" (what CLIP_benchmark's
# writer and the "{0..n-1}.tar" pattern of its reader use).
_SHARD_NAME = re.compile(r"(0|[1-9][0-9]{0,8})\.tar")
# Small members (captions, labels) larger than this are refused, so a damaged shard cannot make
# a reader allocate gigabytes; images are bounded by the decoder's own pixel limit.
MAX_SMALL_MEMBER = 16 << 20

_KEY = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")


# --------------------------------------------------------------------------------------------
# Folder-level metadata


def _tar_names(folder: Path) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(folder) if e.name.lower().endswith(".tar"))
    except OSError:
        return []


def _is_split(folder: Path) -> bool:
    return folder.is_dir() and ((folder / NSHARDS).exists() or bool(_tar_names(folder)))


def existing_splits(root: str | os.PathLike) -> list[str]:
    """Sub-folders of ``root`` that hold ``nshards.txt`` or ``.tar`` files."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if _is_split(p))


def shard_paths(root: str | os.PathLike, split: str) -> list[Path]:
    """The shard files of ``split``, in order: ``0.tar`` ... ``{n-1}.tar``.

    ``n`` is what ``nshards.txt`` says, else one more than the highest shard number present.
    Every mismatch between the two and the files present is an error that lists all of them
    (none is passed over): a shard listed but missing, a gap in the numbering, a shard beyond
    ``nshards.txt``'s count, a ``.tar`` not named as a shard (``00.tar``, ``a.tar``, ``0.TAR``), a
    shard that is not a file, and an ``nshards.txt`` that is not a count
    (:func:`~.sidefiles.parse_count`). A missing split names the splits that exist.
    """
    root = Path(root)
    folder = root / split
    if not _is_split(folder):
        found = existing_splits(root)
        raise DatasetError(
            f"split {split!r} not found in {root}" + (f" (splits there: {', '.join(found)})" if found else
                                                       " (no split folder with nshards.txt or .tar shards there)"),
            f"pass --split {found[0]}" if found else "point --data-dir at a webdataset folder ({split}/0.tar ...)",
        )
    numbered: dict[int, Path] = {}
    odd: list[str] = []
    for name in _tar_names(folder):
        m = _SHARD_NAME.fullmatch(name)
        if m is None:
            odd.append(name)
        elif not (folder / name).is_file():
            odd.append(f"{name} (not a file)")
        else:
            numbered[int(m.group(1))] = folder / name
    nfile = folder / NSHARDS
    listed = nfile.exists()
    n = sidefiles.read_count(nfile) if listed else (max(numbered) + 1 if numbered else 0)
    missing = _missing_numbers(numbered, n)
    extra = sorted(i for i in numbered if i >= n)
    problems, remedies = [], []
    if odd:
        problems.append(f"{len(odd)} .tar file(s) not named as shards: {_names(odd)}")
        remedies.append("shards are named 0.tar, 1.tar, ... (no zero padding): rename these files, or move them "
                        f"out of {folder}")
    if missing:
        count = n - sum(1 for i in numbered if i < n)
        names = _names([f"{i}.tar" for i in missing], total=count)
        if listed:
            problems.append(f"{count} of the {n} shard(s) nshards.txt lists are missing: {names}")
            remedies.append("copy the missing shards there (or download the dataset again), or correct nshards.txt")
        else:
            problems.append(f"{count} shard(s) missing from 0.tar ... {n - 1}.tar: {names} (there is no nshards.txt; "
                            f"the numbering runs up to {n - 1}.tar)")
            remedies.append(f"put the missing shard(s) back (copy or download them again), or, if the split really "
                            f"ends before the gap, move the shards after it out of {folder}")
    if extra:
        problems.append(f"{len(extra)} shard(s) beyond the {n} nshards.txt lists: {_names([f'{i}.tar' for i in extra])}")
        remedies.append("correct nshards.txt (the number of shards), or move the extra shards away")
    if problems:
        raise DatasetError(f"the shards of {folder} do not match" + (f" {NSHARDS}" if listed else " their numbering")
                           + ":\n    " + "\n    ".join(problems), "; ".join(remedies))
    return [numbered[i] for i in range(n)]


def _missing_numbers(numbered: dict[int, Path], n: int, show: int = 10) -> list[int]:
    """The first ``show`` numbers in ``0..n-1`` that have no shard (without building ``range(n)``)."""
    out, i = [], 0
    while i < n and len(out) < show:
        if i not in numbered:
            out.append(i)
        i += 1
    return out


def _names(names: list[str], total: int | None = None, show: int = 10) -> str:
    total = len(names) if total is None else total
    text = ", ".join(names[:show])
    return text + (f" ... ({total - show} more)" if total > show else "")


def unescape_caption(line: str) -> str:
    """A caption line of a ``.txt`` member: the writer escaped newlines inside a caption as ``\\n``."""
    return line.replace("\\n", "\n").strip()


# --------------------------------------------------------------------------------------------
# The scan


@dataclass
class Sample:
    """One sample's small members, and where its image lies in its shard.

    ``problem`` is ``(reason, message)`` for a sample that cannot be used (the reason is the key
    counted in ``meta.data_left_out``); ``text_lines`` is the number of lines of its ``.txt``
    (``texts`` holds the non-blank ones), so that left-out captions can be counted."""

    key: str
    shard: int
    image_offset: int = -1
    image_size: int = 0
    image_ext: str = ""
    texts: list[str] | None = None
    text_lines: int = 0
    label: int | None = None
    target: np.ndarray | None = None
    problem: tuple[str, str] | None = None


class _Bad(ValueError):
    """A member that cannot be used: ``reason`` (a ``data_left_out`` key) and a message."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def _read_small(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    if member.size > MAX_SMALL_MEMBER:
        raise _Bad("bad_member", f"member {member.name} is {member.size} bytes (more than {MAX_SMALL_MEMBER})")
    f = tar.extractfile(member)
    data = f.read() if f is not None else b""
    if len(data) != member.size:
        raise _Bad("truncated_shard", f"member {member.name} is cut off ({len(data)} of {member.size} bytes)")
    return data


def _take(sample: Sample, suffix: str, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
    """Record one member of ``sample``; raises :class:`_Bad` for a member that cannot be used."""
    if suffix in IMAGE_EXTS:
        rank = IMAGE_EXTS.index(suffix)
        if sample.image_offset < 0 or rank < IMAGE_EXTS.index(sample.image_ext):
            sample.image_offset, sample.image_size, sample.image_ext = member.offset_data, member.size, suffix
    elif suffix == "txt":
        raw = strip_bom(_read_small(tar, member))  # a byte-order mark is not part of the first caption
        sample.text_lines = len(raw.splitlines())
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _Bad("bad_member", f"captions are not UTF-8 ({exc.reason} at byte {exc.start})") from None
        lines = text.splitlines()
        sample.text_lines = len(lines)
        sample.texts = [c for c in (unescape_caption(line) for line in lines) if c]
    elif suffix == "cls":
        raw = strip_bom(_read_small(tar, member)).decode("utf-8", "replace").strip()
        if not re.fullmatch(r"-?[0-9]+", raw):
            raise _Bad("bad_member", f"label {raw[:40]!r} is not an integer")
        sample.label = int(raw)
    elif suffix == "npy":
        data = _read_small(tar, member)
        try:
            sample.target = np.load(io.BytesIO(data), allow_pickle=False)
        except Exception as exc:  # numpy raises several types for malformed .npy data
            raise _Bad("bad_member", f"multi-label target is not a readable .npy array ({exc})") from None


def scan_shard(path: Path, index: int, shard_label: str) -> tuple[list[Sample], str | None]:
    """All samples of one shard, in order, and a problem with the shard itself (or None).

    Only regular-file members are looked at. A shard cut off mid-member ends the scan there; the
    sample that was cut off is marked bad. A shard of 0 bytes, one that is not a tar file, one
    cut off (no end-of-archive marker) and one holding no sample are problems of the shard.
    """
    samples: list[Sample] = []
    current: Sample | None = None
    try:
        file_size = path.stat().st_size
    except OSError as exc:
        return samples, f"{shard_label} cannot be read ({exc.strerror or exc})"
    if file_size == 0:
        return samples, f"{shard_label} is empty (0 bytes)"
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
                    current.problem = ("truncated_shard", f"shard is truncated (member {suffix} cut off)")
                    problem = f"{shard_label} is truncated after {len(samples) - 1} complete sample(s)"
                    break
                if current.problem is not None:
                    continue
                try:
                    _take(current, suffix, tar, member)
                except _Bad as exc:
                    current.problem = (exc.reason, str(exc))
            if problem is None and not _has_end_marker(path, tar.offset, file_size):
                # cut off at a member boundary: tarfile takes that for the end of the archive
                problem = f"{shard_label} is truncated (no end-of-archive marker after {len(samples)} sample(s))"
                if samples:
                    samples[-1].problem = ("truncated_shard", "shard is truncated after this sample (it may lack members)")
    except (tarfile.TarError, OSError) as exc:
        problem = f"{shard_label} is not a readable tar file after {len(samples)} sample(s) ({exc})"
    if problem is None and not samples:
        problem = f"{shard_label} holds no samples (a tar file without members)"
    return samples, problem


def check_tar(path: Path, label: str) -> str | None:
    """What is wrong with a shard file as a whole (see :func:`scan_shard`), or None: the check a
    download makes before it keeps a shard."""
    return scan_shard(path, 0, label)[1]


def _has_end_marker(path: Path, offset: int, file_size: int) -> bool:
    """Whether a zero block (the end-of-archive marker) follows the last member."""
    if offset + tarfile.BLOCKSIZE > file_size:
        return False
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(tarfile.BLOCKSIZE) == bytes(tarfile.BLOCKSIZE)


@dataclass
class ShardScan:
    """Every usable sample of a split, the bad ones, what was left out, and the shards."""

    shards: list[Path]
    samples: list[Sample]
    bad: list[BadItem] = field(default_factory=list)
    left_out: LeftOut = field(default_factory=LeftOut)
    damaged: list[Path] = field(default_factory=list)

    def where(self, s: Sample) -> str:
        return f"{self.shards[s.shard].parent.name}/{self.shards[s.shard].name}#{s.key}"

    def leave_out(self, s: Sample, reason: str, message: str) -> None:
        """Count ``s`` (and its captions) as left out for ``reason``."""
        self.bad.append(BadItem(self.where(s), message, source=f"{self.shards[s.shard].parent.name}/"
                                                                f"{self.shards[s.shard].name}"))
        self.left_out.add("images", reason)
        self.left_out.add("texts", "image_left_out", s.text_lines)

    def fail_or_report(self, on_error: str, damaged_remedy: str | None = None) -> None:
        """Raise one :class:`DatasetError` listing every bad sample and shard (``on_error`` fail),
        else log each and the counts."""
        if self.bad and on_error != "skip":
            fix = (damaged_remedy or "replace the damaged shard(s) (copy or download them again)") if self.damaged \
                else "fix or remove these samples"
            raise DatasetError(f"{len(self.bad)} bad sample(s) or shard(s):\n    {listing(self.bad)}",
                               f"{fix}, or pass --on-error skip to leave these samples out")
        for it in self.bad[:50]:
            log.warning("skipping %s: %s", it.where, it.reason)


def scan(shards: list[Path], kind: str, on_error: str, limit: int | None = None, *,
         on_damaged: Callable[[Path], None] | None = None, damaged_remedy: str | None = None,
         raise_now: bool = True) -> ShardScan:
    """Read the shards' headers and small members; check each sample has what ``kind`` needs.

    ``limit``: stop after that many usable samples (later shards are not opened). Bad samples
    are listed together in one :class:`DatasetError` unless ``on_error == "skip"`` (or
    ``raise_now`` is False: the caller checks more and calls :meth:`ShardScan.fail_or_report`).
    ``on_damaged(path)`` is called for every shard that cannot be read as a whole (a download
    cache forgets it, so that the next run fetches it again); ``damaged_remedy`` then replaces
    the remedy of the error.
    """
    out = ShardScan(shards=shards, samples=[])
    for index, path in enumerate(shards):
        label = f"{path.parent.name}/{path.name}"
        samples, problem = scan_shard(path, index, label)
        for s in samples:
            if limit is not None and len(out.samples) >= limit:
                break  # what follows is beyond the limit: neither used nor left out
            reason, message = s.problem or _missing(s, kind) or (None, None)
            if reason:
                out.leave_out(s, reason, message)
            else:
                out.samples.append(s)
        if problem:
            out.bad.append(BadItem(label, problem, source=label))
            out.left_out.add("shards", "damaged")
            out.damaged.append(path)
            if on_damaged is not None:
                on_damaged(path)
        if limit is not None and len(out.samples) >= limit:
            break
    if raise_now:
        out.fail_or_report(on_error, damaged_remedy)
    return out


def _missing(s: Sample, kind: str) -> tuple[str, str] | None:
    if s.image_offset < 0:
        return "no_image", f"no image member ({'/'.join(IMAGE_EXTS)})"
    if kind == "retrieval" and s.texts is None:
        return "no_captions", "no .txt captions"
    if kind == "classification" and s.label is None:
        return "no_label", "no .cls label"
    if kind == "multilabel" and s.target is None:
        return "no_label", "no .npy target"
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


def read_wds_retrieval(root, split: str, *, name: str, on_error: str = "fail", limit: int | None = None,
                       on_damaged: Callable[[Path], None] | None = None,
                       damaged_remedy: str | None = None) -> ShardRetrievalDataset:
    """A retrieval split: every caption of a sample is one text whose positive is that sample's image.

    ``limit`` keeps exactly the first ``limit`` images (later shards are not read). A sample
    whose ``.txt`` holds no non-blank line stays in the gallery as a distractor (its image has no
    positive text); blank lines are counted in ``left_out`` (``texts: blank``), as are bad samples
    and their captions. ``on_damaged`` / ``damaged_remedy``: see :func:`scan`.
    """
    shards = shard_paths(root, split)
    result = scan(shards, "retrieval", on_error, limit=limit, on_damaged=on_damaged, damaged_remedy=damaged_remedy)
    if not result.samples:
        raise DatasetError(f"no usable samples in {Path(root) / split}", "check the shards listed above")
    texts: list[str] = []
    text_to_image: list[int] = []
    for i, s in enumerate(result.samples):
        texts.extend(s.texts)
        text_to_image.extend([i] * len(s.texts))
        result.left_out.add("texts", "blank", s.text_lines - len(s.texts))
    result.left_out.report(name, log)
    return ShardRetrievalDataset(name=name, images=ShardImages.from_scan(result), texts=texts,
                                 text_to_image=text_to_image, skipped=result.bad, left_out=result.left_out.as_dict())


@dataclass
class ClassificationDataset:
    """Images with one label each (``labels``, int64 [N]) or multi-hot ``targets`` ([N, C]).

    ``left_out``: what the reader left out, ``{kind: {reason: count}}`` (see :mod:`.leftout`)."""

    name: str
    images: Sequence
    classnames: list[str]
    templates: list[str] | dict[str, list[str]]
    labels: np.ndarray | None = None
    targets: np.ndarray | None = None
    skipped: list[BadItem] = field(default_factory=list)
    limited_from: int | None = None
    left_out: dict = field(default_factory=dict)

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
            skipped=self.skipped, limited_from=self.limited_from, left_out=self.left_out)


def read_wds_classification(root, split: str, *, name: str, classnames: list[str],
                            templates, on_error: str = "fail", limit: int | None = None,
                            on_damaged: Callable[[Path], None] | None = None,
                            damaged_remedy: str | None = None) -> ClassificationDataset:
    """A classification split (``.cls`` labels, or ``.npy`` targets when ``dataset_type.txt`` says multilabel).

    Labels outside ``0..len(classnames)-1`` and targets of the wrong length are bad samples.
    """
    kind = dataset_type(root)
    if kind == "retrieval":
        raise DatasetError(f"{root} is a retrieval dataset ({DATASET_TYPE} says so)",
                           "use --task zeroshot_retrieval")
    shards = shard_paths(root, split)
    result = scan(shards, kind, on_error, limit=None, on_damaged=on_damaged, raise_now=False)
    n_classes = len(classnames)
    good: list[Sample] = []
    for s in result.samples:
        if kind == "multilabel":
            t = s.target
            if t.ndim != 1 or t.shape[0] != n_classes:
                result.leave_out(s, "target_shape", f"target has shape {t.shape}, expected ({n_classes},)")
                continue
            if t.dtype.kind not in "biuf" or (t.dtype.kind == "f" and not np.isfinite(t).all()):
                result.leave_out(s, "target_values", f"target holds {t.dtype} values that are not all finite numbers")
                continue
        elif not 0 <= s.label < n_classes:
            result.leave_out(s, "label_out_of_range", f"label {s.label} is outside 0..{n_classes - 1}")
            continue
        if limit is None or len(good) < limit:
            good.append(s)
    result.fail_or_report(on_error, damaged_remedy)
    if not good:
        raise DatasetError(f"no usable samples in {Path(root) / split}", "check the shards listed above")
    result.samples = good
    result.left_out.report(name, log)
    labels = targets = None
    if kind == "multilabel":
        targets = np.stack([s.target for s in good]).astype(bool)
    else:
        labels = np.array([s.label for s in good], dtype=np.int64)
    return ClassificationDataset(name=name, images=ShardImages.from_scan(result), classnames=classnames,
                                 templates=templates, labels=labels, targets=targets, skipped=result.bad,
                                 left_out=result.left_out.as_dict())
