"""Result files: where each result goes, reading them back, and writing them atomically.

Names (README "Output"): ``{output_dir}/{model}/{dataset}_{task}.json`` in the simple case (the
reference layout). A result's *slot* is what makes two results of one (model, dataset, task)
different results: the bundle identity, the precision variant, the language, the data location
(absolute data folder or dataset URL base) and the split. Parts that differ from the defaults
become readable tags, in this order: ``.{precision}`` when the variant is not the bundle's own,
``.{language}`` when it is not ``en``, ``.{split}`` when it is not ``test`` (e.g.
``custom_zeroshot_retrieval.int8.json``). Two slots can still meet at one name (two bundles of
one model name, two data folders): a file that holds a result of another slot is never
replaced; the result goes to ``{name}.{slot digest, 8 hex}.json`` instead (see
:func:`destination`). A result of the same slot is replaced: that is a re-run.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from ..fsutil import write_atomic
from ..paths import safe_name
from ..textio import read_json

log = logging.getLogger(__name__)

DEFAULT_LANGUAGE = "en"
DEFAULT_SPLIT = "test"


@dataclass(frozen=True)
class Slot:
    """What tells results of one (model, dataset, task) apart (see the module docstring)."""

    bundle: str  # bundle identity (sha256 of manifest.json)
    precision: str  # the variant that ran
    language: str  # "en" unless another was asked for
    data: str  # absolute data folder, or "url:" + the dataset URL base
    split: str

    @property
    def digest(self) -> str:
        """sha256 (hex) of the slot's fields; file names use its first 8 (or 16) digits."""
        return hashlib.sha256(orjson.dumps(asdict(self), option=orjson.OPT_SORT_KEYS)).hexdigest()

    @classmethod
    def of_result(cls, result: Any) -> "Slot | None":
        """The slot a result object was made for, from its ``meta``; ``None`` if it does not say."""
        meta = result.get("meta") if isinstance(result, dict) else None
        bundle = meta.get("bundle") if isinstance(meta, dict) else None
        if not isinstance(bundle, dict):
            return None
        fields = (bundle.get("identity"), meta.get("precision"), meta.get("language") or DEFAULT_LANGUAGE,
                  meta.get("data_dir"), meta.get("split"))
        if not all(isinstance(f, str) for f in fields):
            return None
        return cls(*fields)


def slot_tags(precision: str, own_precision: str, language: str | None, split: str) -> list[str]:
    """The readable tags of a file name: precision, language, split, each only when not the default."""
    tags = []
    if precision != own_precision:
        tags.append(precision)
    if language and language != DEFAULT_LANGUAGE:
        tags.append(language)
    if split != DEFAULT_SPLIT:
        tags.append(split)
    return tags


def result_path(output_dir: str | os.PathLike, model: str, dataset: str, task: str,
                tags: list[str] | tuple[str, ...] = ()) -> Path:
    """``{output_dir}/{model}/{dataset}_{task}[.{tag}...].json`` (names made file-system safe)."""
    suffix = "".join(f".{safe_name(t)}" for t in tags)
    return Path(output_dir) / safe_name(model) / f"{safe_name(dataset)}_{task}{suffix}.json"


def slot_candidates(primary: Path, digest: str) -> list[Path]:
    """Where a result of the slot ``digest`` may live: the readable name, then the same name with
    8, 16 and all 64 digits of the digest (the longer ones only matter if a shorter one is taken)."""
    stem = primary.name[: -len(".json")] if primary.name.endswith(".json") else primary.name
    return [primary, *(primary.with_name(f"{stem}.{digest[:n]}.json") for n in (8, 16, 64))]


def read_result(path: str | os.PathLike) -> dict[str, Any] | None:
    """The result object in ``path`` if it is one (an object with ``dataset``, ``model``, ``task``,
    ``metrics`` and ``meta`` of the right types); ``None`` for anything else (missing,
    unreadable, not JSON, JSON of another shape). Never raises."""
    try:
        data = read_json(path)
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    if not all(isinstance(data.get(k), str) for k in ("dataset", "model", "task")):
        return None
    if not isinstance(data.get("metrics"), dict) or not isinstance(data.get("meta"), dict):
        return None
    return data


def _slot_digest(path: Path) -> str | None:
    slot = Slot.of_result(read_result(path))
    return slot.digest if slot is not None else None


def destination(primary: Path, slot: Slot) -> Path:
    """The file a result of ``slot`` is written to: the candidate (:func:`slot_candidates`) that
    already holds this slot's result (a re-run replaces it), else the first free one. A file
    holding anything else (another slot's result, another tool's file, a damaged file) is never
    replaced, and the log says which file holds what."""
    digest = slot.digest
    candidates = slot_candidates(primary, digest)
    for path in candidates:
        if _slot_digest(path) == digest:
            return path
    for path in candidates:
        if not os.path.lexists(path):
            if path != primary:
                log.warning("%s holds %s; this result (%s) goes to %s", primary, _describe(primary),
                            describe_slot(slot), path)
            return path
    log.warning("every name for this result is taken by another slot; replacing %s", candidates[-1])
    return candidates[-1]


def describe_slot(slot: Slot) -> str:
    """``bundle 1a2b3c4d5e6f, fp32, en, /data/x, split test``."""
    return f"bundle {slot.bundle[:12]}, {slot.precision}, {slot.language}, {slot.data}, split {slot.split}"


def _describe(path: Path) -> str:
    result = read_result(path)
    slot = Slot.of_result(result)
    if slot is not None:
        return f"the result of another slot ({describe_slot(slot)})"
    if result is not None:
        return "a result that does not record its slot (made by another tool or version)"
    return "a file that is not a clipeval result"


def find_existing(primary: Path, slot: Slot, key: str) -> tuple[Path, dict[str, Any]] | None:
    """``(path, result)`` of an existing result of ``slot`` made with the parameters ``key``
    (:func:`params_key`), looked for where :func:`destination` would put it; ``None`` if there
    is none (files of other shapes or slots are passed over, never an error)."""
    digest = slot.digest
    for path in slot_candidates(primary, digest):
        result = read_result(path)
        found = Slot.of_result(result)
        if found is not None and found.digest == digest and result["meta"].get("params_key") == key:
            return path, result
    return None


def dumps(obj: Any, indent: bool = False) -> bytes:
    opts = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
    if indent:
        opts |= orjson.OPT_INDENT_2
    return orjson.dumps(obj, option=opts)


def write_result(path: str | os.PathLike, result: dict[str, Any]) -> None:
    write_atomic(path, dumps(result, indent=True) + b"\n")


def params_key(params: dict[str, Any]) -> str:
    """A stable digest of the parameters that change a result."""
    return hashlib.sha256(orjson.dumps(params, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def existing_result(path: str | os.PathLike, identity: str, key: str) -> dict[str, Any] | None:
    """The result at ``path`` if it was made with the same bundle identity and parameters ``key``;
    ``None`` otherwise, also for a file of any other shape."""
    data = read_result(path)
    if data is None:
        return None
    bundle = data["meta"].get("bundle")
    if isinstance(bundle, dict) and bundle.get("identity") == identity and data["meta"].get("params_key") == key:
        return data
    return None
