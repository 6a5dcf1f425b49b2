"""BEIR text-retrieval folders: reader and writer.

Layout (the one ``beir.datasets.data_loader.GenericDataLoader`` reads)::

    corpus.jsonl        {"_id": ID, "text": str[, "title": str]}  one per line
    queries.jsonl       {"_id": ID, "text": str}                   one per line
    qrels/{split}.tsv   header ``query-id<TAB>corpus-id<TAB>score``, then one row per pair
    qrels.jsonl         {"query-id": ID, "corpus-id": ID, "score": int}  (the flat form read by
                        evalscope's MTEB custom tasks)

An ID is a string or an integer in the JSON files (the reference caption converter writes
integers); the reader turns every ID into a string, as BEIR does, so ``0`` and ``"0"`` are the
same ID.

Writing (:func:`write_beir`): every file is written whole to a temporary file and renamed into
place, so a reader never sees half a file. JSON lines are UTF-8 (no ASCII escaping); newlines
inside a text are escaped by JSON, so each record is exactly one line. IDs that a TSV cannot carry
(a tab, carriage return or newline, or a leading double quote, which the ``csv`` reader BEIR uses
would take for quoting) are refused before anything is written.

Reading (:func:`read_beir`): lines are split on ``\\n`` only (a text may hold U+2028 and other
characters that :meth:`str.splitlines` would break on); a UTF-8 byte-order mark is allowed
(:mod:`clipeval.engine.textio`). Every malformed line of every file is collected and reported in
one :class:`~clipeval.engine.errors.DatasetError` with file and line number. Every other record
is used or left out and counted by reason (:data:`LEFT_OUT_REASONS`); nothing is dropped
silently and no missing value becomes the string ``"None"``. A qrels score is ASCII digits with
an optional sign within a signed 64-bit integer (:func:`_is_int`, :func:`_score_problem`); a
score below :data:`MIN_TREC_SCORE` is used (not relevant) with a warning. The qrels come from
``qrels/{split}.tsv`` when it exists, else from ``qrels.jsonl`` (:func:`qrels_path`): the flat file
has no split, so every split without a TSV of its own reads the same judgements
(:func:`splits_sharing_flat_qrels` names them, as evalscope's MTEB custom task reads it for each
of its ``eval_splits``).
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ..errors import DatasetError, shorten
from ..fsutil import write_atomic
from ..textio import json_lines, open_regular
from .base import refuse_if_not_regular

log = logging.getLogger(__name__)

__all__ = ["BeirData", "CORPUS", "LEFT_OUT_REASONS", "QUERIES", "QRELS_JSONL", "QRELS_HEADER", "qrels_path",
           "qrels_tsv_path", "read_beir", "splits_sharing_flat_qrels", "write_beir"]

CORPUS = "corpus.jsonl"
QUERIES = "queries.jsonl"
QRELS_JSONL = "qrels.jsonl"
QRELS_HEADER = ("query-id", "corpus-id", "score")
MAX_LISTED = 50

# Field names accepted in a qrels.jsonl row, first match wins (evalscope's MTEB loader accepts
# the same spellings).
_QID_KEYS = ("query-id", "qid", "query_id")
_DID_KEYS = ("corpus-id", "pid", "docid", "doc_id", "corpus_id")
_SCORE_KEYS = ("score", "label", "relevance")


def qrels_tsv_path(folder: str | os.PathLike, split: str = "test") -> Path:
    return Path(folder) / "qrels" / f"{split}.tsv"


def qrels_path(folder: str | os.PathLike, split: str = "test") -> Path | None:
    """The qrels file :func:`read_beir` reads for ``split``: ``qrels/{split}.tsv`` when it exists,
    else the flat ``qrels.jsonl`` (which has no split: every split without its own TSV reads it);
    ``None`` when there is neither."""
    tsv = qrels_tsv_path(folder, split)
    if tsv.is_file():
        return tsv
    flat = Path(folder) / QRELS_JSONL
    return flat if flat.is_file() else None


def splits_sharing_flat_qrels(folder: str | os.PathLike, splits: Sequence[str]) -> list[str]:
    """Those of ``splits`` that read the one flat ``qrels.jsonl`` (no ``qrels/{split}.tsv`` of
    their own), when two or more do: each of them evaluates the same relevance judgements. Empty
    otherwise."""
    flat = Path(folder) / QRELS_JSONL
    shared = [split for split in splits if qrels_path(folder, split) == flat]
    return shared if len(shared) > 1 else []


@dataclass
class BeirData:
    """A BEIR folder in memory. IDs are strings; lists keep file order.

    ``corpus`` rows are ``{"_id", "text"}`` plus ``"title"`` when the file has one; ``queries``
    rows are ``{"_id", "text"}``; ``qrels`` are ``(query_id, corpus_id, score)``.
    """

    corpus: list[dict[str, str]]
    queries: list[dict[str, str]]
    qrels: list[tuple[str, str, int]]
    folder: Path | None = None
    qrels_file: Path | None = None
    warnings: list[str] = field(default_factory=list)
    left_out: dict[str, int] = field(default_factory=dict)  # reason -> records left out (LEFT_OUT_REASONS)
    records: dict[str, int] = field(default_factory=dict)  # file -> non-blank records read

    def qrels_dict(self) -> dict[str, dict[str, int]]:
        """``{query_id: {corpus_id: score}}``, the form pytrec_eval and BEIR take."""
        out: dict[str, dict[str, int]] = {}
        for qid, did, score in self.qrels:
            out.setdefault(qid, {})[did] = score
        return out

    def evaluated_queries(self) -> list[dict[str, str]]:
        """The queries that are evaluated: named by a qrels row and with a non-blank text (file order)."""
        judged = {q for q, _, _ in self.qrels}
        return [q for q in self.queries if q["_id"] in judged and q["text"].strip()]


# --------------------------------------------------------------------------- writing


def _check_id(value: Any, where: str, problems: list[str]) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        problems.append(f"{where}: id must be a string or an integer, got {type(value).__name__}")
        return None
    text = str(value)
    if not text:
        problems.append(f"{where}: id is empty")
        return None
    if any(c in text for c in "\t\r\n") or text.startswith('"'):
        problems.append(f"{where}: id {_id(text)} cannot be stored in a TSV qrels file "
                        "(tab, newline or a leading double quote)")
        return None
    return text


def _records(rows: Sequence[Mapping[str, Any]], name: str, problems: list[str]) -> tuple[bytes, set[str]]:
    lines = []
    seen: set[str] = set()
    for i, row in enumerate(rows):
        where = f"{name}[{i}]"
        if not isinstance(row, Mapping) or "_id" not in row or "text" not in row:
            problems.append(f"{where}: must be a mapping with '_id' and 'text'")
            continue
        ident = _check_id(row["_id"], where, problems)
        text = row["text"]
        if not isinstance(text, str):
            problems.append(f"{where}: text must be a string, got {type(text).__name__}")
            continue
        if "title" in row and not isinstance(row["title"], str):
            problems.append(f"{where}: title must be a string, got {type(row['title']).__name__}")
            continue
        if ident is None:
            continue
        if ident in seen:
            problems.append(f"{where}: duplicate id {_id(ident)}")
            continue
        seen.add(ident)
        record = {"_id": row["_id"]}
        if "title" in row:
            record["title"] = row["title"]
        record["text"] = text
        lines.append(orjson.dumps(record))
    return b"".join(line + b"\n" for line in lines), seen


def _check_qrels(qrels: Iterable[Sequence[Any]], query_ids: set[str], corpus_ids: set[str],
                 problems: list[str]) -> list[tuple[Any, Any, int]]:
    out = []
    pairs: set[tuple[str, str]] = set()
    for i, row in enumerate(qrels):
        where = f"qrels[{i}]"
        if not isinstance(row, Sequence) or isinstance(row, (str, bytes)) or len(row) != 3:
            problems.append(f"{where}: must be a (query_id, corpus_id, score) triple")
            continue
        qid, did, score = row
        q = _check_id(qid, where, problems)
        d = _check_id(did, where, problems)
        if isinstance(score, bool) or not isinstance(score, int):
            problems.append(f"{where}: score must be an integer, got {score!r}")
            continue
        if _score_problem(score) is not None:
            problems.append(f"{where}: {_score_problem(score)}")
            continue
        if q is None or d is None:
            continue
        if q not in query_ids:
            problems.append(f"{where}: query id {_id(q)} is not in the queries")
        if d not in corpus_ids:
            problems.append(f"{where}: corpus id {_id(d)} is not in the corpus")
        if (q, d) in pairs:
            problems.append(f"{where}: duplicate pair ({_id(q)}, {_id(d)})")
        pairs.add((q, d))
        out.append((qid, did, score))
    return out


def write_beir(
    folder: str | os.PathLike,
    corpus: Sequence[Mapping[str, Any]],
    queries: Sequence[Mapping[str, Any]],
    qrels: Iterable[Sequence[Any]],
    *,
    split: str = "test",
) -> Path:
    """Write a BEIR folder: ``corpus.jsonl``, ``queries.jsonl``, ``qrels/{split}.tsv`` and
    ``qrels.jsonl``, each atomically. Returns ``folder``.

    ``corpus`` and ``queries`` are ``{"_id": str | int, "text": str}`` mappings (a corpus row
    may carry ``"title"``); ``qrels`` are ``(query_id, corpus_id, score)`` with an integer score
    and ids present in ``queries`` / ``corpus``. IDs are written as given (an integer stays an
    integer in the JSON files). Raises :class:`DatasetError` listing every problem before any
    file is written.
    """
    if not split or any(c in split for c in "/\\\0"):
        raise DatasetError(f"split {split!r} cannot be a file name", "use a plain name such as 'test'")
    problems: list[str] = []
    corpus_bytes, corpus_ids = _records(corpus, "corpus", problems)
    query_bytes, query_ids = _records(queries, "queries", problems)
    rows = _check_qrels(qrels, query_ids, corpus_ids, problems)
    if problems:
        raise DatasetError(f"cannot write the BEIR folder {folder}:\n    " + _listing(problems),
                           "fix the ids and texts listed")
    folder = Path(folder)
    tsv = io.StringIO()
    tsv.write("\t".join(QRELS_HEADER) + "\n")
    for qid, did, score in rows:
        tsv.write(f"{qid}\t{did}\t{score}\n")
    jsonl = b"".join(orjson.dumps({"query-id": q, "corpus-id": d, "score": s}) + b"\n" for q, d, s in rows)
    write_atomic(folder / CORPUS, corpus_bytes)
    write_atomic(folder / QUERIES, query_bytes)
    write_atomic(qrels_tsv_path(folder, split), tsv.getvalue().encode("utf-8"))
    write_atomic(folder / QRELS_JSONL, jsonl)
    return folder


# --------------------------------------------------------------------------- reading


def _listing(problems: list[str]) -> str:
    lines = problems[:MAX_LISTED]
    if len(problems) > MAX_LISTED:
        lines = lines + [f"... and {len(problems) - MAX_LISTED} more"]
    return "\n    ".join(lines)


def _row_id(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None
    text = str(value)
    return text or None


def _json_objects(path: Path, problems: list[str], counts: dict[str, int]):
    """``(line number, where, object)`` for each JSON-object line of ``path``; other lines go to
    ``problems``. ``counts[path.name]`` counts the non-blank lines (the file's records)."""
    counts.setdefault(path.name, 0)
    for number, line in json_lines(path):
        counts[path.name] += 1
        where = f"{path}:{number}"
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            problems.append(f"{where}: not valid JSON ({exc})")
            continue
        if not isinstance(obj, dict):
            problems.append(f"{where}: expected a JSON object, got {type(obj).__name__}")
            continue
        yield number, where, obj


def _read_records(path: Path, problems: list[str], left_out: Counter, counts: dict[str, int],
                  with_title: bool, kind: str) -> list[dict[str, str]]:
    """The records of ``corpus.jsonl`` / ``queries.jsonl``. A repeated id with the same content is
    left out (``duplicate_{kind}_ids``); with different content it is a problem (which one is
    meant cannot be told). A missing, null or non-string ``text`` is a problem, never ``"None"``."""
    rows: list[dict[str, str]] = []
    seen: dict[str, tuple[int, dict[str, str]]] = {}
    for number, where, obj in _json_objects(path, problems, counts):
        ident = _row_id(obj.get("_id"))
        if ident is None:
            problems.append(f"{where}: no usable \"_id\" (a non-empty string or an integer)")
            continue
        text = obj.get("text")
        if not isinstance(text, str):
            got = "missing" if "text" not in obj else type(text).__name__
            problems.append(f"{where}: \"text\" must be a string, got {got}")
            continue
        row = {"_id": ident, "text": text}
        if with_title and "title" in obj:
            title = obj["title"]
            if title is not None and not isinstance(title, str):
                problems.append(f"{where}: \"title\" must be a string, got {type(title).__name__}")
                continue
            row["title"] = title or ""
        if ident in seen:
            first_line, first_row = seen[ident]
            if first_row == row:
                left_out[f"duplicate_{kind}_ids"] += 1
            else:
                problems.append(f"{where}: id {_id(ident)} again, with other content than on line {first_line}")
            continue
        seen[ident] = (number, row)
        rows.append(row)
    return rows


def _read_qrels_tsv(path: Path, problems: list[str], warnings: list[str], counts: dict[str, int]
                    ) -> list[tuple[str, str, int, str]]:
    rows: list[tuple[str, str, int, str]] = []
    name = f"qrels/{path.name}"
    counts[name] = 0
    with io.TextIOWrapper(open_regular(path), encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_MINIMAL)
        for number, row in enumerate(reader, start=1):
            if not row or all(not c.strip() for c in row):
                continue
            where = f"{path}:{number}"
            if number == 1 and (len(row) < 3 or not _is_int(row[2])):
                if [c.strip() for c in row[:3]] != list(QRELS_HEADER):
                    warnings.append(f"{path}: first line {shorten(repr(row))} taken as the header")
                continue
            counts[name] += 1
            if number == 1:
                warnings.append(f"{path}: no header line; the first line is read as data "
                                "(BEIR's loader would skip it)")
            if len(row) != 3:
                problems.append(f"{where}: expected 3 tab-separated columns, got {len(row)}")
                continue
            qid, did, score = row[0], row[1], row[2].strip()
            if not qid or not did:
                problems.append(f"{where}: empty query or corpus id")
                continue
            value = int(score) if _is_int(score) else score
            problem = _score_problem(value, score)
            if problem is not None:
                problems.append(f"{where}: {problem}")
                continue
            rows.append((qid, did, value, where))
    return rows


# A qrels score: ASCII digits with an optional sign, within a signed 64-bit integer (what
# trec_eval's and pytrec_eval's ``long`` holds). Python's ``int()`` would also take other
# scripts' digits (``٣``), underscores (``1_0``) and values of any size; trec_eval's ``atol``
# would read ``٣`` as 0, so such a file means different gains to different tools: refused.
_SCORE = re.compile(r"[+-]?[0-9]+")
SCORE_MIN, SCORE_MAX = -(2**63), 2**63 - 1


def _is_int(text: str) -> bool:
    """Whether ``text`` (surrounding whitespace aside) is written as a score: ASCII digits with an
    optional sign (its range is checked by :func:`_score_problem`)."""
    return bool(_SCORE.fullmatch(text.strip()))


def _score_problem(value: Any, written: Any = None) -> str | None:
    """Why ``value`` (a parsed score; ``written``: as the file has it) cannot be one; ``None``
    when it is a 64-bit integer."""
    shown = _shown(value if written is None else written)
    if isinstance(value, bool) or not isinstance(value, int):
        return f"score {shown} is not an integer (ASCII digits, optionally signed)"
    if not SCORE_MIN <= value <= SCORE_MAX:
        return f"score {shown} is out of range (a qrels score is a 64-bit integer, at most {SCORE_MAX})"
    return None


def _id(value: Any) -> str:
    """An id for a message: its repr, shortened (:func:`~clipeval.engine.errors.shorten`)."""
    return shorten(repr(value))


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


_MISSING = object()


def _first(obj: dict, keys: Sequence[str]) -> Any:
    """The value of the first of ``keys`` present in ``obj`` (``_MISSING`` when none is)."""
    for key in keys:
        if key in obj:
            return obj[key]
    return _MISSING


def _read_qrels_jsonl(path: Path, problems: list[str], counts: dict[str, int]) -> list[tuple[str, str, int, str]]:
    rows: list[tuple[str, str, int, str]] = []
    for _, where, obj in _json_objects(path, problems, counts):
        qid, did = _first(obj, _QID_KEYS), _first(obj, _DID_KEYS)
        qid = None if qid is _MISSING else _row_id(qid)
        did = None if did is _MISSING else _row_id(did)
        if qid is None or did is None:
            problems.append(f"{where}: needs \"query-id\" and \"corpus-id\" (non-empty strings or integers)")
            continue
        score = _first(obj, _SCORE_KEYS)
        if score is _MISSING:
            score = 1  # evalscope's MTEB loader: a row without a score is relevant
        if isinstance(score, float) and score.is_integer():
            score = int(score)
        if isinstance(score, str) and _is_int(score):
            score = int(score)
        problem = _score_problem(score)
        if problem is not None:
            problems.append(f"{where}: {problem}")
            continue
        rows.append((qid, did, score, where))
    return rows


def _use_qrels(rows: list[tuple[str, str, int, str]], query_ids: set[str], corpus_ids: set[str],
                 qrels_file: Path, problems: list[str], warnings: list[str], left_out: Counter
                 ) -> list[tuple[str, str, int]]:
    """Rows used: a repeated pair with the same score and a row naming a query id that has no
    query text are left out; a repeated pair with another score is a problem. A row naming a
    corpus id outside the corpus is used (a relevant document that cannot be retrieved)."""
    used: list[tuple[str, str, int]] = []
    seen: dict[tuple[str, str], tuple[int, str]] = {}
    unknown_docs = 0
    for qid, did, score, where in rows:
        if (qid, did) in seen:
            first_score, first_where = seen[(qid, did)]
            if first_score == score:
                left_out["duplicate_qrels"] += 1
            else:
                problems.append(f"{where}: pair ({_id(qid)}, {_id(did)}) again with score {score} "
                                f"(score {first_score} at {first_where})")
            continue
        seen[(qid, did)] = (score, where)
        if qid not in query_ids:
            left_out["qrels_unknown_query"] += 1
            continue
        if did not in corpus_ids:
            unknown_docs += 1
        used.append((qid, did, score))
    if unknown_docs:
        warnings.append(f"{qrels_file}: {unknown_docs} row(s) name a corpus id that is not in {CORPUS}; "
                        "they count as relevant documents that cannot be retrieved")
    below = [(q, d, s) for q, d, s in used if s < MIN_TREC_SCORE]
    if below:
        q, d, s = below[0]
        warnings.append(f"{qrels_file}: {len(below)} row(s) have a score below {MIN_TREC_SCORE} (first: "
                        f"({_id(q)}, {_id(d)}) score {s}); clipeval counts them as not relevant (gain 0), but "
                        f"trec_eval keeps only -1 and -2 as special values and indexes its arrays with lower "
                        f"ones (pytrec_eval can crash on them), so no tool can check these numbers: use 0 for "
                        f"a non-relevant document")
    return used


# The lowest qrels score trec_eval handles: -1 and -2 are its special values (not pooled,
# unjudged); a lower one indexes its relevance-level arrays out of bounds.
MIN_TREC_SCORE = -2


LEFT_OUT_REASONS = {
    "duplicate_corpus_ids": f"{CORPUS} lines repeating an earlier id with the same content",
    "duplicate_query_ids": f"{QUERIES} lines repeating an earlier id with the same content",
    "duplicate_qrels": "qrels rows repeating an earlier (query, document) pair with the same score",
    "qrels_unknown_query": f"qrels rows naming a query id that is not in {QUERIES}",
    "queries_without_qrels": "queries that no qrels row names (not evaluated, as in BEIR and MTEB)",
    "empty_queries": "queries whose text is empty or only whitespace (not evaluated)",
    "qrels_of_left_out_queries": "qrels rows of queries that are not evaluated (empty text, or beyond limits)",
    "queries_beyond_limits": "queries after the first `limits` evaluable ones",
}


def read_beir(folder: str | os.PathLike, split: str = "test") -> BeirData:
    """Read and check a BEIR folder (see the module docstring).

    Every record is either used or left out and counted (``BeirData.left_out``, reasons in
    :data:`LEFT_OUT_REASONS`, also logged as one warning each): repeated ids or qrels pairs with
    the same content, qrels rows naming a query id without a query, queries without qrels and
    queries with an empty text. ``BeirData.records`` counts the records of each file, so that
    used + left out == records. Raises :class:`DatasetError` when a file is missing, or listing
    every malformed line and every repeated id or pair whose content differs. A qrels row whose
    corpus id is not in the corpus is kept (it counts as a relevant document that cannot be
    retrieved, as in BEIR and trec_eval) and reported in ``warnings``.
    """
    root = Path(folder)
    if not root.is_dir():
        raise DatasetError(f"BEIR folder {root} does not exist",
                           "pass the folder holding corpus.jsonl, queries.jsonl and qrels/")
    tsv = qrels_tsv_path(root, split)
    jsonl = root / QRELS_JSONL
    for path in (root / CORPUS, root / QUERIES, tsv, jsonl):
        refuse_if_not_regular(path, path.name)
    missing = [name for name in (CORPUS, QUERIES) if not (root / name).is_file()]
    qrels_file = qrels_path(root, split)
    if qrels_file is None:
        missing.append(f"qrels/{split}.tsv (or {QRELS_JSONL})")
    if missing:
        found = sorted(p.name for p in root.iterdir())[:20]
        raise DatasetError(
            f"{root} is not a BEIR folder: missing {', '.join(missing)} (it holds: {', '.join(found) or 'nothing'})",
            "pass the retrieval_data folder written by `clipeval caption`, or any BEIR-format folder"
            + (f"; for another split pass --split, or in a config split / eval_splits (qrels/ holds: {', '.join(sorted(p.stem for p in (root / 'qrels').glob('*.tsv')))})"
               if (root / "qrels").is_dir() else ""),
        )
    problems: list[str] = []
    warnings: list[str] = []
    left_out: Counter = Counter()
    counts: dict[str, int] = {}
    corpus = _read_records(root / CORPUS, problems, left_out, counts, with_title=True, kind="corpus")
    queries = _read_records(root / QUERIES, problems, left_out, counts, with_title=False, kind="query")
    if qrels_file == tsv:
        raw = _read_qrels_tsv(tsv, problems, warnings, counts)
    else:
        raw = _read_qrels_jsonl(jsonl, problems, counts)
    qrels = _use_qrels(raw, {q["_id"] for q in queries}, {d["_id"] for d in corpus}, qrels_file,
                         problems, warnings, left_out)
    if problems:
        raise DatasetError(f"BEIR folder {root} has {len(problems)} problem(s):\n    " + _listing(problems),
                           "fix the lines listed")
    judged = {q for q, _, _ in qrels}
    empty = {q["_id"] for q in queries if not q["text"].strip()}
    left_out["queries_without_qrels"] += sum(1 for q in queries if q["_id"] not in judged)
    left_out["empty_queries"] += sum(1 for q in queries if q["_id"] in empty and q["_id"] in judged)
    left_out["qrels_of_left_out_queries"] += sum(1 for q, _, _ in qrels if q in empty)
    empty_docs = sum(1 for d in corpus if not (d["text"].strip() or d.get("title", "").strip()))
    if empty_docs:
        warnings.append(f"{root / CORPUS}: {empty_docs} document(s) have an empty text; they stay in the corpus")
    data = BeirData(corpus=corpus, queries=queries, qrels=qrels, folder=root, qrels_file=qrels_file,
                    warnings=warnings, left_out={k: v for k, v in left_out.items() if v}, records=counts)
    for w in warnings:
        log.warning(w)
    for reason, count in data.left_out.items():
        log.warning("%s: left out %d: %s", root, count, LEFT_OUT_REASONS[reason])
    return data
