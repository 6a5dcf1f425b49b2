"""Reading result files back: one file, or every result in an output folder, and pairing them.

A result file is the JSON object ``clipeval eval`` writes (``{"dataset", "model", "task",
"metrics", "meta"}``). An output folder is searched for ``*.json`` in the folder itself and one
level below (``{output_dir}/{model}/*.json``); files are never recognised by their name (result
names carry tags and digests), only by their content. Results are matched by what they measured:
(dataset, task, split, language) and, when both record one, the data fingerprint
(``meta.data_fingerprint``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import orjson

from ..errors import ResultError
from ..fsutil import not_a_file
from ..textio import read_regular

log = logging.getLogger(__name__)

__all__ = ["LoadedResult", "ZERO_SHOT_TASKS", "find_results", "pair_results", "read_result"]

ZERO_SHOT_TASKS = ("zeroshot_retrieval", "zeroshot_classification")
# meta keys read back as text (null or absent: the default); a result with another type there is refused
META_TEXT_KEYS = ("precision", "language", "split", "data_fingerprint", "data_dir")


@dataclass
class LoadedResult:
    """One result file read back."""

    path: Path
    data: dict[str, Any]

    @property
    def dataset(self) -> str:
        return self.data["dataset"]

    @property
    def task(self) -> str:
        return self.data["task"]

    @property
    def model(self) -> str:
        return self.data["model"]

    @property
    def meta(self) -> dict[str, Any]:
        return self.data["meta"]

    @property
    def metrics(self) -> dict[str, float]:
        return self.data["metrics"]

    @property
    def precision(self) -> str | None:
        return self.meta.get("precision")

    @property
    def fingerprint(self) -> str | None:
        value = self.meta.get("data_fingerprint")
        return value if isinstance(value, str) and value else None

    @property
    def match_key(self) -> tuple:
        """What was measured: (dataset, task, split, language)."""
        return (self.dataset, self.task, self.meta.get("split") or "test", self.meta.get("language") or "en")

    def describe(self) -> dict[str, Any]:
        bundle = self.meta.get("bundle") if isinstance(self.meta.get("bundle"), dict) else {}
        return {"file": str(self.path), "model": self.model, "precision": self.precision,
                "bundle": bundle.get("identity")}


def read_result(path: str | os.PathLike) -> LoadedResult:
    """Read one result file.

    Raises:
        ResultError: unreadable, not JSON, or not a result object (the message says which).
    """
    path = Path(path)
    try:
        data = orjson.loads(read_regular(path))  # a FIFO or a device is refused, never read
    except OSError as exc:
        raise ResultError(f"cannot read {path}: {exc.strerror or exc}", "pass a result file written by clipeval eval, "
                          "or its output folder") from None
    except orjson.JSONDecodeError as exc:
        raise ResultError(f"{path} is not JSON: {exc}", "pass a result file written by clipeval eval") from None
    problem = _shape_problem(data)
    if problem:
        raise ResultError(f"{path} is not a clipeval result: {problem}", "pass a result file written by clipeval eval")
    return LoadedResult(path, data)


def _shape_problem(data) -> str | None:
    if not isinstance(data, dict):
        return f"it holds a JSON {type(data).__name__}, not an object"
    for key in ("dataset", "model", "task"):
        if not isinstance(data.get(key), str):
            return f"{key!r} is missing or not a string"
    if not isinstance(data.get("metrics"), dict) or not all(
            v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in data["metrics"].values()):
        return "'metrics' is missing or not a mapping of numbers"
    if not isinstance(data.get("meta"), dict):
        return "'meta' is missing or not a mapping"
    for key in META_TEXT_KEYS:  # read back as labels, match keys and row keys
        value = data["meta"].get(key)
        if value is not None and not isinstance(value, str):
            return f"'meta.{key}' is not a string"
    return _meta_count_problem(data["meta"])


# Counts of meta that readers check a detail file against (engine/results/detail.py)
META_COUNTS = ("num_images", "num_texts")


def _meta_count_problem(meta: dict) -> str | None:
    for key in META_COUNTS:
        value = meta.get(key)
        if key in meta and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            return f"meta.{key} is not a non-negative integer (got {value!r:.40})"
    return None


def find_results(paths: Iterable[str | os.PathLike], tasks: tuple[str, ...] = ZERO_SHOT_TASKS) -> list[LoadedResult]:
    """Every result of ``tasks`` in ``paths``: files as given, folders searched for ``*.json``
    in themselves and one level below. In folders, JSON files that are not results of these
    tasks are passed over (logged); a file given by name must be one.

    Raises:
        ResultError: a path does not exist, a named file is not such a result, or nothing was found.
    """
    found: list[LoadedResult] = []
    seen: set[Path] = set()
    for raw in paths:
        path = Path(os.path.expanduser(os.fspath(raw)))  # `~` as in every path option
        if path.is_file():
            result = read_result(path)
            if result.task not in tasks:
                raise ResultError(f"{path} is a {result.task} result", f"pass results of {' or '.join(tasks)}")
            results = [result]
        elif path.is_dir():
            results = _folder_results(path, tasks)
        else:
            raise ResultError(f"{path} {not_a_file(path)}", "pass result files or output folders of clipeval eval")
        for result in results:  # a file named twice (or also found in a folder named) counts once
            real = result.path.resolve()
            if real not in seen:
                seen.add(real)
                found.append(result)
    if not found:
        names = ", ".join(str(p) for p in paths)
        raise ResultError(f"no {' or '.join(tasks)} result found in {names}",
                          "pass result files or the --output-dir of clipeval eval (results are searched in the "
                          "folder and one level below)")
    return found


def _folder_results(folder: Path, tasks) -> list[LoadedResult]:
    out = []
    for file in sorted([*folder.glob("*.json"), *folder.glob("*/*.json")]):
        if not file.is_file():
            continue
        try:
            result = read_result(file)
        except ResultError as exc:
            log.info("passed over %s: %s", file, exc.message)
            continue
        if result.task not in tasks:
            log.info("passed over %s: a %s result", file, result.task)
            continue
        out.append(result)
    return out


def same_data(a: LoadedResult, b: LoadedResult) -> bool:
    """Whether two results measured the same thing (data fingerprints compared when both have one)."""
    if a.match_key != b.match_key:
        return False
    return a.fingerprint is None or b.fingerprint is None or a.fingerprint == b.fingerprint


def pair_results(side_a: list[LoadedResult],
                 side_b: list[LoadedResult]) -> tuple[list[tuple[LoadedResult, LoadedResult]], list[str]]:
    """Pair the results of two folders that measured the same thing (:func:`same_data`); where a
    side holds several of one thing, those of the same precision are paired. Returns
    ``(pairs, notes)``, the notes naming what found no counterpart.

    Raises:
        ResultError: a side holds several results of one thing and one precision (the message
            lists them; compare two files instead).
    """
    pairs: list[tuple[LoadedResult, LoadedResult]] = []
    notes: list[str] = []
    for a in side_a:
        bs = [b for b in side_b if same_data(a, b)]
        twins = [x for x in side_a if same_data(a, x)]
        if not bs:
            near = [b for b in side_b if b.match_key == a.match_key]
            if near:  # the same dataset, split and language, measured on other data
                notes.append(f"{a.dataset} {a.task}: A ({a.path}) and B ({near[0].path}) measured other data (their "
                             "data fingerprints differ: another rows file, --limit, or images); not compared")
            else:
                notes.append(f"only in A: {a.dataset} {a.task} ({a.path})")
            continue
        if len(bs) > 1 or len(twins) > 1:
            bs = [b for b in bs if b.precision == a.precision]
            twins = [x for x in twins if x.precision == a.precision]
            if len(bs) > 1 or len(twins) > 1:
                files = "\n    ".join(str(x.path) for x in [*twins, *bs])
                raise ResultError(f"several {a.precision} results of {a.dataset} {a.task} cannot be told apart:\n"
                                  f"    {files}", "compare two result files: clipeval compare FILE_A FILE_B")
            if not bs:
                notes.append(f"no {a.precision} counterpart in B: {a.dataset} {a.task} ({a.path})")
                continue
        pairs.append((a, bs[0]))
    paired = {id(b) for _, b in pairs}
    notes.extend(f"only in B: {b.dataset} {b.task} ({b.path})" for b in side_b
                 if id(b) not in paired and not any(a.match_key == b.match_key for a in side_a))
    return pairs, notes
