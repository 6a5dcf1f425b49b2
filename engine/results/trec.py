"""TREC run files: ``qid Q0 docid rank score run_name``, one line per retrieved document.

Rows are written in trec_eval's order (score descending, then document id descending), with
ranks from 1. Scores are written as the shortest decimal that reads back to the same float64
(``repr``), so a run read back from the file ranks and scores exactly as the one in memory.
The format is whitespace-separated: a run whose written ids (the queries with a row, the
documents within the written depth) hold whitespace, or are empty, cannot be written (see
:func:`unwritable_run_ids`); ids that never reach the file do not matter.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import DatasetError
from ..fsutil import write_atomic

__all__ = ["RUN_DEPTH", "read_run", "unwritable_ids", "unwritable_run_ids", "write_run"]

RUN_DEPTH = 100


def unwritable_ids(ids: Sequence[str]) -> list[str]:
    """The ids that a whitespace-separated run file cannot carry."""
    return [i for i in ids if not i or any(c.isspace() for c in i)]


def unwritable_run_ids(query_ids: Sequence[str], doc_ids: Sequence[str], indices: np.ndarray,
                       depth: int = RUN_DEPTH) -> list[str]:
    """The ids that :func:`write_run` would have to write and cannot: query ids of rows with at
    least one document in the first ``depth`` columns, and the document ids those columns name
    (index -1 ends a short row), each once, queries first, in first-written order. Empty when
    the run can be written, whatever other ids the corpus or the queries hold.

    ``indices``: int [Q, n] positions into ``doc_ids``, rows in trec order."""
    cols = np.asarray(indices)[:, :depth] if np.asarray(indices).ndim == 2 else np.zeros((0, 0), dtype=np.int64)
    bad: dict[str, None] = {}
    for qid, row in zip(query_ids, cols.tolist()):
        if row and row[0] >= 0 and unwritable_ids([qid]):
            bad[qid] = None
    seen: set[int] = set()
    for row in cols.tolist():
        for j in row:
            if j < 0:
                break
            if j not in seen:
                seen.add(j)
                if unwritable_ids([doc_ids[j]]):
                    bad[doc_ids[j]] = None
    return list(bad)


def write_run(path: str | os.PathLike, query_ids: Sequence[str], doc_ids: Sequence[str],
              indices: np.ndarray, scores: np.ndarray, run_name: str, depth: int = RUN_DEPTH) -> Path:
    """Write the first ``depth`` documents of every query (rows already in trec order; index -1
    ends a short row) to ``path``, atomically.

    Raises :class:`DatasetError` when an id the file would hold cannot be written
    (:func:`unwritable_run_ids`); nothing is written then."""
    name = "".join(c if not c.isspace() else "_" for c in run_name) or "clipeval"
    bad = unwritable_run_ids(query_ids, doc_ids, indices, depth)
    if bad:
        raise DatasetError(f"ids with whitespace cannot be written to a TREC run: {bad[:5]!r}",
                           "use ids without spaces or tabs")
    out = io.StringIO()
    idx = indices[:, :depth].tolist()
    val = scores[:, :depth].tolist()
    for qid, row, srow in zip(query_ids, idx, val):
        rank = 0
        for j, s in zip(row, srow):
            if j < 0:
                break
            rank += 1
            out.write(f"{qid} Q0 {doc_ids[j]} {rank} {s!r} {name}\n")
    path = Path(path)
    write_atomic(path, out.getvalue().encode("utf-8"))
    return path


def read_run(path: str | os.PathLike) -> dict[str, dict[str, float]]:
    """A TREC run as ``{qid: {docid: score}}`` (the form pytrec_eval takes)."""
    run: dict[str, dict[str, float]] = {}
    problems = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 6:
                problems.append(f"{path}:{number}: expected 6 fields, got {len(parts)}")
                continue
            qid, _, did, _, score, _ = parts
            try:
                value = float(score)
            except ValueError:
                problems.append(f"{path}:{number}: score {score!r} is not a number")
                continue
            docs = run.setdefault(qid, {})
            if did in docs:
                problems.append(f"{path}:{number}: document {did!r} listed twice for query {qid!r}")
            docs[did] = value
    if problems:
        raise DatasetError(f"run file {path} is malformed:\n    " + "\n    ".join(problems[:50]),
                           "write it again")
    return run
