"""Result files, built in one place for every task: where a result goes (its *slot* and file
name), its skip key, the ``meta`` block every result shares, reading results back, and the
atomic write.

Names (README "Result file names"): ``{output_dir}/{model}/{dataset}_{task}.json`` in the
simple case (the reference layout; two-stage text retrieval puts ``stage1/`` and ``stage2/``
above the model folder). A result's *slot* is what makes two results of one (model, dataset,
task) different results: the model identity (a bundle's sha256, or an API model's), the
precision variant, the language, the data location (absolute data folder or dataset URL base),
the split, and the parts a task adds (text retrieval: pooling, ``max_seq_length``, prompts and
the reranker). Parts that differ from the defaults become readable tags, in this order:
``.{precision}`` when the variant is not the bundle's own, ``.{language}`` when it is not ``en``,
``.{split}`` when it is not ``test`` (e.g. ``custom_zeroshot_retrieval.int8.json``). Two slots
can still meet at one name (two bundles of one model name, two data folders, two prompts): a
file that holds a result of another slot is never replaced; the result goes to
``{name}.{slot digest, 8 hex}.json`` instead (see :func:`destination`). A result of the same
slot is replaced: that is a re-run.

The skip key (``meta.params_key``, :func:`params_key`) is the digest of everything else that
changes a result (the task's parameters and the data fingerprint): ``skip_existing`` reuses a
result only when its slot and its key are the same (:func:`find_existing`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import orjson

from ..errors import ConfigError
from ..fsutil import write_atomic
from ..paths import safe_name
from ..textio import kind_of, read_json
from ..versions import versions

log = logging.getLogger(__name__)

DEFAULT_LANGUAGE = "en"
DEFAULT_SPLIT = "test"


@dataclass(frozen=True)
class Slot:
    """What tells results of one (model, dataset, task) apart (see the module docstring).

    ``parts``: the slot parts a task adds, as sorted ``(name, value)`` pairs (values JSON-able);
    a slot without them has the digest it had before tasks could add parts."""

    bundle: str  # bundle identity (sha256 of manifest.json), or an API model's identity
    precision: str  # the variant that ran ("" for an API model)
    language: str  # "en" unless another was asked for
    data: str  # absolute data folder, or "url:" + the dataset URL base
    split: str
    parts: tuple = ()

    @classmethod
    def make(cls, bundle: str, precision: str | None, language: str | None, data: str, split: str,
             parts: dict[str, Any] | None = None) -> "Slot":
        return cls(bundle, precision or "", language or DEFAULT_LANGUAGE, data, split,
                   tuple(sorted((parts or {}).items())))

    def as_dict(self) -> dict[str, Any]:
        out = {"bundle": self.bundle, "precision": self.precision, "language": self.language, "data": self.data,
               "split": self.split}
        if self.parts:
            out["parts"] = dict(self.parts)
        return out

    @property
    def digest(self) -> str:
        """sha256 (hex) of the slot's fields; file names use its first 8 (or 16) digits."""
        return hashlib.sha256(orjson.dumps(self.as_dict(), option=orjson.OPT_SORT_KEYS)).hexdigest()

    @classmethod
    def of_result(cls, result: Any) -> "Slot | None":
        """The slot a result object was made for, from its ``meta``; ``None`` if it does not say."""
        meta = result.get("meta") if isinstance(result, dict) else None
        bundle = meta.get("bundle") if isinstance(meta, dict) else None
        if not isinstance(bundle, dict):
            return None
        precision = meta.get("precision")
        fields = (bundle.get("identity"), "" if precision is None else precision,
                  meta.get("language") or DEFAULT_LANGUAGE, meta.get("data_dir"), meta.get("split"))
        if not all(isinstance(f, str) for f in fields):
            return None
        parts = meta.get("slot_parts") or {}
        if not isinstance(parts, dict):
            return None
        return cls(*fields, tuple(sorted(parts.items())))


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
    unreadable, not a regular file (a FIFO or a device is never read), not JSON, JSON of another
    shape). Never raises."""
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


def destination(primary: Path, slot: Slot, *, say: bool = True,
                side_files: Callable[[Path], list[Path]] | None = None) -> Path:
    """The file a result of ``slot`` is written to: the candidate (:func:`slot_candidates`) that
    already holds this slot's result (a re-run replaces it), else the first free one. A file
    holding anything else (another slot's result, another tool's file, a damaged file) is never
    replaced, and the log says which file holds what (``say=False``: not now; the runner says it
    with :func:`say_destination` when it writes, so a run that fails first says nothing of it).

    ``side_files(path)``: the files the task writes beside a result at ``path``
    (:meth:`clipeval.engine.tasks.base.Task.side_files`); a candidate one of whose side files is
    taken by something that is not a regular file (a folder, a FIFO, a device) is passed over.

    Raises:
        ConfigError: every candidate is taken by something that cannot be replaced (a folder, a
            FIFO...), so no name is left for this result (named with a remedy).
    """
    digest = slot.digest
    candidates = slot_candidates(primary, digest)
    blocked = {path: _blocked(path, side_files) for path in candidates}
    for path in candidates:
        if not blocked[path] and _slot_digest(path) == digest:
            return path
    for path in candidates:
        if not blocked[path] and not os.path.lexists(path):
            if say:
                say_destination(primary, slot, path)
            return path
    last = candidates[-1]
    if blocked[last]:
        raise ConfigError(f"cannot write the result {primary}: it and every other name for it "
                          f"({', '.join(p.name for p in candidates[1:])}) or a file beside them is taken: "
                          f"{blocked[last]}", "move those away, or pass another output folder (--output-dir / output_dir)")
    if say:
        say_destination(primary, slot, last)
    return last


def _blocked(path: Path, side_files: Callable[[Path], list[Path]] | None) -> str | None:
    """What keeps a result from being written at ``path`` (``None``: nothing): ``path`` or one of
    its side files is something a file cannot replace (a folder, a FIFO, a device, a socket)."""
    for p in (path, *(side_files(path) if side_files is not None else ())):
        try:
            mode = os.stat(p).st_mode
        except (OSError, ValueError):  # missing, a broken link (replaced), or not to be looked at
            continue
        if not stat.S_ISREG(mode):
            return f"{p} is {kind_of(mode)}"
    return None


def say_destination(primary: Path, slot: Slot, path: Path,
                    side_files: Callable[[Path], list[Path]] | None = None) -> None:
    """Log why a result of ``slot`` goes to ``path`` rather than its readable name ``primary``."""
    if path == primary:
        return
    if os.path.lexists(path) and _slot_digest(path) != slot.digest:
        log.warning("every name for this result is taken by another slot; replacing %s", path)
    elif _slot_digest(path) != slot.digest:
        held = _blocked(primary, side_files) if not os.path.lexists(primary) else None
        what = f"cannot be written ({held})" if held else f"holds {_describe(primary)}"
        log.warning("%s %s; this result (%s) goes to %s", primary, what, describe_slot(slot), path)


def describe_slot(slot: Slot) -> str:
    """``bundle 1a2b3c4d5e6f, fp32, en, /data/x, split test``."""
    return f"bundle {slot.bundle[:12]}, {slot.precision}, {slot.language}, {slot.data}, split {slot.split}"


def _describe(path: Path) -> str:
    try:
        kind = kind_of(os.stat(path).st_mode)
    except (OSError, ValueError):
        kind = "a regular file"
    if kind != "a regular file":  # a FIFO or a device is never read (nor replaced)
        return kind
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


# --- the layout of an evaluation's results (every task) -------------------------------------------

def slot_of(ev, spec) -> Slot:
    """The slot of result ``spec`` of evaluation ``ev`` (:class:`clipeval.engine.tasks.base.Evaluation`)."""
    model = ev.model
    return Slot.make(model.identity, model.precision, ev.language, ev.data_key, ev.split, spec.slot_parts)


def primary_path(output_dir: str | os.PathLike, ev, spec) -> Path:
    """The readable name of result ``spec`` of ``ev``: ``{output_dir}[/{folder}]/{model}/{dataset}_{task}[.tags].json``."""
    model = ev.model
    root = Path(output_dir) / spec.folder if spec.folder else Path(output_dir)
    tags = slot_tags(model.precision or "", model.own_precision or "", ev.language, ev.split)
    return result_path(root, spec.name, ev.dataset, ev.task.name, tags)


def side_name(result_file: Path, dataset: str, task: str) -> str:
    """The name of a folder that belongs to a result, beside it (captioning's data folder): the
    dataset's name with the result's tags and digest (``custom_image_caption.zh.1a2b3c4d.json``
    -> ``custom.zh.1a2b3c4d``; the simple case is the dataset's name, the reference layout)."""
    stem = result_file.name[: -len(".json")] if result_file.name.endswith(".json") else result_file.name
    head = f"{safe_name(dataset)}_{task}"
    rest = stem[len(head):] if stem.startswith(head) else ""
    return safe_name(dataset) + rest


def result_meta(ev, spec, task_meta: dict[str, Any], *, slot: Slot, key: str, fingerprint: str | None,
                result_file: Path, stage=None, cache_path: str | None = None, total_s: float = 0.0) -> dict[str, Any]:
    """The ``meta`` of a result: the task's own keys (``task_meta``), then what every result
    records, built here for every task: the model (``bundle``), ``precision``, ``language``,
    ``split``, ``limit``, ``data_dir``, ``data_fingerprint``, ``slot_digest``, ``slot_parts``
    (where the task adds any), ``params_key``, ``versions``, ``result_file``, ``warnings``; and,
    for a task that embeds, ``provider``, ``batch_size``, ``num_workers``, ``cache`` (path and hit
    counts) and ``timings.model_load_s``; ``timings.total_s`` last."""
    meta = dict(task_meta)
    timings = dict(meta.pop("timings", {}))
    metadata = ev.task.metadata
    common: dict[str, Any] = {
        "bundle": ev.model.describe,
        "precision": ev.model.precision,
        "language": slot.language,
        "split": ev.split,
        "limit": ev.limit,
        "data_dir": ev.data_key,
        "data_fingerprint": fingerprint,
        "slot_digest": slot.digest,
        "params_key": key,
    }
    if spec.slot_parts:
        common["slot_parts"] = dict(spec.slot_parts)
    warnings = list(meta.pop("warnings", []))
    if metadata.embeds and stage is not None:
        common["provider"] = stage.provider
        for name in ("batch_size", "num_workers"):
            if name in ev.options:
                common[name] = ev.options[name]
        workers = getattr(stage, "decode_workers", None)
        if workers is not None and "num_workers" in ev.options:
            common["num_workers"] = workers  # what decoded, not the --num-workers an executor did not use
        timings = {"model_load_s": stage.load_s, **timings}
        hits = meta.pop("cache", {})
        common["cache"] = {"path": cache_path, **hits} if cache_path is not None else None
        warnings = list(dict.fromkeys([*warnings, *stage.warnings]))
    timings["total_s"] = total_s
    meta.update(common)
    meta["timings"] = timings
    meta["versions"] = versions(*metadata.packages)
    if warnings:
        meta["warnings"] = warnings
    meta["result_file"] = str(result_file)
    return meta
