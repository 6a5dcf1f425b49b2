"""Task ``text_retrieval``: score a text embedding model on any BEIR-format folder.

Steps: read and check the folder (:mod:`clipeval.engine.beir`); embed the corpus (``title``
and ``text`` joined by a space, as BEIR does) and the queries that have qrels; rank the whole
corpus for every query with the exact blocked top-k kernel (:mod:`..textret.search`), in
trec_eval's order (score descending, then document id descending); score nDCG, MAP, recall
and MRR at every k with trec_eval's definitions (:mod:`..textret.ir_metrics`); write the result
JSON ``{output_dir}/{model}/{dataset}_text_retrieval.json`` and, beside it, the TREC run
``{dataset}_text_retrieval.trec`` (top ``max(100, largest k)`` per query), from which
pytrec_eval or trec_eval reproduce the same numbers.

No hit is ever dropped because a query id equals a document id (BEIR's evaluator does that by
default); ``meta.identical_id_pairs`` counts the relevant pairs that BEIR would have lost.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ... import __version__
from ..beir import BeirData, read_beir
from ..errors import MetricError
from ..results import existing_result, params_key, result_path, write_result
from ..textret.embed import TextModel
from ..textret.ir_metrics import DEFAULT_K, RankedRun, score_ranked
from ..textret.search import top_k
from ..textret.trec import RUN_DEPTH, unwritable_ids, write_run

log = logging.getLogger(__name__)

TASK = "text_retrieval"
MAIN_SCORE = "ndcg_at_10"
GENERIC_NAMES = ("model", "models", "checkpoint", "snapshot", "bundle", "retrieval_data", "data", "beir")


@dataclass
class TextRetrievalParams:
    k: list[int] | None = None  # None: DEFAULT_K, leaving out those above the corpus size
    batch_size: int = 128
    split: str = "test"
    num_threads: int | None = None
    progress: bool = True
    run_depth: int = RUN_DEPTH


@dataclass
class TextRetrievalOutput:
    metrics: dict[str, float]
    meta: dict[str, Any]
    run: RankedRun
    per_query: dict[str, np.ndarray] = field(repr=False, default_factory=dict)


def dataset_name_for(data_dir: str | os.PathLike) -> str:
    """``.../muge/retrieval_data`` -> ``muge``; any other folder -> its own name."""
    path = Path(os.path.abspath(data_dir))
    for part in (path, *path.parents):
        if part.name and part.name.lower() not in GENERIC_NAMES:
            return part.name
    return path.name or "beir"


def model_name_for(model: TextModel) -> str:
    """The bundle's name, or its source's parent folder when that name is generic (``model``)."""
    name = model.bundle.name
    source = model.bundle.manifest.get("source")
    if name.lower() in GENERIC_NAMES and source:
        parent = Path(str(source).rstrip("/")).parent.name
        if parent:
            return parent
    return name


def _check_ks(ks: list[int] | None, n_docs: int) -> tuple[list[int], list[int]]:
    """``(k list used, default ks left out because the corpus is smaller)``."""
    if ks is None:
        used = [k for k in DEFAULT_K if k <= n_docs]
        return used or [n_docs], [k for k in DEFAULT_K if k > n_docs]
    bad = [k for k in ks if k < 1]
    if bad:
        raise MetricError(f"k must be positive, got {bad}")
    too_big = [k for k in ks if k > n_docs]
    if too_big:
        raise MetricError(f"k = {', '.join(map(str, too_big))} is larger than the corpus ({n_docs} documents)",
                          "ask for smaller k values")
    return sorted(set(ks)), []


def _doc_text(doc: dict[str, str]) -> str:
    title = doc.get("title") or ""
    return f"{title} {doc['text']}".strip() if title else doc["text"]


def trec_tie_keys(doc_ids: list[str]) -> np.ndarray:
    """Tie key of every document: its position when ids are sorted descending (trec_eval breaks
    score ties by document id, descending)."""
    order = sorted(range(len(doc_ids)), key=doc_ids.__getitem__, reverse=True)
    keys = np.empty(len(doc_ids), dtype=np.int64)
    keys[order] = np.arange(len(doc_ids), dtype=np.int64)
    return keys


def run_text_retrieval(model: TextModel, data: BeirData, params: TextRetrievalParams) -> TextRetrievalOutput:
    """Embed, rank and score ``data`` (already read); nothing is written."""
    if not data.corpus:
        raise MetricError(f"the corpus of {data.folder} is empty", "add documents to corpus.jsonl")
    qrels = data.qrels_dict()
    queries = [q for q in data.queries if q["_id"] in qrels]
    if not queries:
        raise MetricError(f"no query of {data.folder} has qrels", f"check {data.qrels_file}")
    doc_ids = [d["_id"] for d in data.corpus]
    ks, left_out = _check_ks(params.k, len(doc_ids))
    depth = min(max(params.run_depth, max(ks)), len(doc_ids))
    timings: dict[str, float] = {"model_load_s": model.load_s}

    t0 = time.perf_counter()
    doc_emb, doc_truncated = model.embed([_doc_text(d) for d in data.corpus], batch_size=params.batch_size,
                                         progress=params.progress, label="corpus")
    timings["corpus_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    query_emb, query_truncated = model.embed([q["text"] for q in queries], batch_size=params.batch_size,
                                             progress=params.progress, label="queries")
    timings["queries_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    indices, scores = top_k(query_emb, doc_emb, depth, tie_keys=trec_tie_keys(doc_ids),
                            num_threads=params.num_threads)
    timings["search_s"] = time.perf_counter() - t0
    query_ids = [q["_id"] for q in queries]
    run = RankedRun(query_ids=query_ids, doc_ids=doc_ids, indices=indices, scores=scores)

    t0 = time.perf_counter()
    metrics, per_query = score_ranked(run, qrels, ks)
    timings["metrics_s"] = time.perf_counter() - t0

    identical = [row for row, q in enumerate(query_ids) if qrels[q].get(q, 0) >= 1]
    identical_retrieved = sum(1 for row in identical
                              if any(doc_ids[j] == query_ids[row] for j in indices[row] if j >= 0))
    unjudged_queries = len(data.queries) - len(queries)
    meta: dict[str, Any] = {
        "num_corpus": len(doc_ids),
        "num_queries": len(data.queries),
        "num_queries_evaluated": len(queries),
        "num_queries_without_qrels": unjudged_queries,
        "num_qrels": len(data.qrels),
        "k": ks,
        "run_depth": depth,
        "main_score": MAIN_SCORE if MAIN_SCORE in metrics else None,
        "similarity": "cosine" if model.normalized else "dot",
        "tie_rule": "score descending, then document id descending (trec_eval)",
        "identical_id_pairs": len(identical),
        "identical_id_pairs_retrieved": identical_retrieved,
        "truncated_texts": {"corpus": doc_truncated, "queries": query_truncated},
        "qrels_file": str(data.qrels_file) if data.qrels_file else None,
        "timings": timings,
    }
    if left_out:
        meta["k_left_out"] = left_out
        meta["k_note"] = (f"default k {', '.join(map(str, left_out))} left out: larger than the corpus "
                          f"({len(doc_ids)} documents)")
    if identical:
        log.info("%d relevant pair(s) have query id == document id; they are kept (BEIR's evaluator "
                 "would drop them by default)", len(identical))
    if data.warnings:
        meta["warnings"] = list(data.warnings)
    return TextRetrievalOutput(metrics=metrics, meta=meta, run=run, per_query=per_query)


def _versions() -> dict[str, str]:
    import numba
    import onnxruntime

    return {"clipeval": __version__, "onnxruntime": onnxruntime.__version__, "numpy": np.__version__,
            "numba": numba.__version__, "python": platform.python_version()}


def run_path_for(result_file: str | os.PathLike) -> Path:
    """The TREC run beside a result file: ``X_text_retrieval.json`` -> ``X_text_retrieval.trec``."""
    return Path(result_file).with_suffix(".trec")


def text_retrieval_task(model: TextModel, data_dir: str | os.PathLike, params: TextRetrievalParams, *,
                        output_dir: str | os.PathLike = "outputs", dataset_name: str | None = None,
                        model_name: str | None = None, skip_existing: bool = False) -> dict[str, Any]:
    """Run the task on the BEIR folder ``data_dir``; write the result JSON and the TREC run;
    return the result object ``{"dataset", "model", "task", "metrics", "meta"}``."""
    t_start = time.perf_counter()
    dataset = dataset_name or dataset_name_for(data_dir)
    name = model_name or model_name_for(model)
    out = result_path(output_dir, name, dataset, TASK)
    params_dict = {"task": TASK, "data_dir": os.path.abspath(data_dir), "split": params.split,
                   "k": params.k, "run_depth": params.run_depth, "precision": model.precision}
    key = params_key(params_dict)
    if skip_existing:
        previous = existing_result(out, model.bundle.identity, key)
        if previous is not None and run_path_for(out).is_file():
            log.info("skip_existing: %s already holds this result", out)
            return previous
    data = read_beir(data_dir, params.split)
    result = run_text_retrieval(model, data, params)
    meta = result.meta
    run_file = run_path_for(out)
    bad_ids = unwritable_ids(result.run.query_ids) + unwritable_ids(list(result.run.doc_ids))
    if bad_ids:
        meta.setdefault("warnings", []).append(
            f"TREC run not written: {len(bad_ids)} id(s) hold whitespace (e.g. {bad_ids[0]!r})")
        meta["run_file"] = None
    else:
        write_run(run_file, result.run.query_ids, result.run.doc_ids, result.run.indices, result.run.scores,
                  run_name=f"clipeval-{name}", depth=meta["run_depth"])
        meta["run_file"] = str(run_file)
    meta["timings"]["total_s"] = time.perf_counter() - t_start
    meta.update({
        "bundle": model.describe(),
        "provider": model.provider,
        "precision": model.precision,
        "batch_size": params.batch_size,
        "split": params.split,
        "data_dir": params_dict["data_dir"],
        "params_key": key,
        "versions": _versions(),
        "result_file": str(out),
    })
    if model.warnings:
        meta.setdefault("warnings", []).extend(model.warnings)
    obj = {"dataset": dataset, "model": name, "task": TASK, "metrics": result.metrics, "meta": meta}
    write_result(out, obj)
    log.info("wrote %s and %s", out, run_file)
    return obj
