"""Task ``text_retrieval``: score a text embedding model (and optionally a reranker) on any
BEIR-format folder.

Steps: read and check the folder (:mod:`clipeval.engine.datasets.beir`); embed the corpus (``title``
and ``text`` joined by a space, stripped, as BEIR does: :func:`doc_text`) and the evaluated queries (those with qrels and a
non-blank text, the first ``limits`` of them when set), each with its prompt prefix (the
config's, else the checkpoint's sentence-transformers prompts ``query`` / ``document``); rank
the whole corpus for every query with the exact blocked top-k kernel
(:mod:`clipeval.engine.kernels.search`) in trec_eval's order (float32 score descending, then
document id descending); score nDCG, MAP, recall, precision, MRR and hit rate at every k with
trec_eval's definitions (:mod:`clipeval.engine.metrics.ir`); write the result JSON and, beside
it, the TREC run (top ``max(100, largest k)`` per query), from which pytrec_eval or trec_eval
reproduce every number. Corpus and query embeddings, and the reranker's pair scores, come from
the run's embedding stage, through the cache: a second run of the same evaluation computes
nothing.

With a reranker (two-stage retrieval, as evalscope's MTEB backend runs one encoder plus one
cross-encoder): each query's first ``top_k`` documents of stage 1 are scored by the reranker
(query prompt of the reranker, then the document text), re-ordered by that float32 score (ties:
document id descending) and scored again; stage 1 and stage 2 are two results, written as
``{output_dir}/stage1/{encoder}/{dataset}_text_retrieval.json`` and
``{output_dir}/stage2/{reranker}/{dataset}_text_retrieval.json`` (each with its run file), the
reference's ``stage1`` / ``stage2`` folders. A single stage writes
``{output_dir}/{model}/{dataset}_text_retrieval.json``. The names follow the result layout of
every task (:mod:`clipeval.engine.results.layout`); the slot of a text-retrieval result also
holds the encoder's pooling and ``max_seq_length``, the query and document prompts, and (stage 2)
the reranker, its prompt and ``top_k``: two runs that differ in any of them never write the same
file.

No hit is ever dropped because a query id equals a document id (BEIR's evaluator does that by
default); ``meta.identical_id_pairs`` counts the relevant pairs that BEIR would have lost.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..datasets.beir import LEFT_OUT_REASONS, QRELS_JSONL, BeirData, read_beir, splits_sharing_flat_qrels
from ..datasets.fingerprint import beir_fingerprint
from ..embedding.models import describe_bundle, is_normalized
from ..errors import ConfigError, MetricError
from ..metrics.ir import DEFAULT_K, MTEB_K, RankedRun, score_ranked
from ..results.trec import RUN_DEPTH, unwritable_run_ids, write_run
from ..sessions.bundle import Bundle
from .base import Evaluation, ModelRef, Models, ResultSpec, Task, TaskMetadata, TaskOutput, data_key

log = logging.getLogger(__name__)

TASK = "text_retrieval"
MAIN_SCORE = "ndcg_at_10"
GENERIC_NAMES = ("model", "models", "checkpoint", "snapshot", "bundle", "retrieval_data", "data", "beir")


K_LISTS = {"default": DEFAULT_K, "mteb": MTEB_K}
DOCUMENT_PROMPT_NAMES = ("document", "passage", "corpus")


@dataclass
class TextRetrievalParams:
    """Parameters of the task. ``k``: cut-offs asked for (an error when larger than the corpus);
    ``None`` takes the list named by ``k_list`` (``"default"``: 1, 3, 5, 10, 100; ``"mteb"``:
    mteb's 1, 3, 5, 10, 20, 100, 1000), leaving out those larger than the corpus.
    ``query_prompt`` / ``document_prompt``: prefixes (``None``: the checkpoint's prompts; ``""``:
    none). ``limits``: evaluate only the first N evaluable queries (file order). ``top_k``: the
    documents per query a reranker re-scores. ``reranker_prompt``: prefix of the query given to
    the reranker (``None``: the reranker checkpoint's default prompt, if any)."""

    k: list[int] | None = None
    k_list: str = "default"
    batch_size: int = 128
    split: str = "test"
    num_threads: int | None = None
    progress: bool = True
    run_depth: int = RUN_DEPTH
    query_prompt: str | None = None
    document_prompt: str | None = None
    limits: int | None = None
    top_k: int = 10
    reranker_prompt: str | None = None
    reranker_batch_size: int | None = None


@dataclass
class TextRetrievalOutput:
    metrics: dict[str, float]
    meta: dict[str, Any]
    run: RankedRun
    per_query: dict[str, np.ndarray] = field(repr=False, default_factory=dict)


def dataset_name_for(data_dir: str | os.PathLike) -> str:
    """The dataset name of a BEIR folder: its own name, or, when that is one of
    :data:`GENERIC_NAMES` (any case), the name of the nearest folder above it that is not
    (``.../muge/retrieval_data`` -> ``muge``, ``x1/data`` -> ``x1``); docs/text-retrieval.md lists
    the names."""
    path = Path(os.path.abspath(data_dir))
    for part in (path, *path.parents):
        if part.name and part.name.lower() not in GENERIC_NAMES:
            return part.name
    return path.name or "beir"


def model_name_for(bundle: Bundle) -> str:
    """The bundle's name, or its source's parent folder when that name is generic (``model``)."""
    name = bundle.name
    source = bundle.manifest.get("source")
    if name.lower() in GENERIC_NAMES and source:
        parent = Path(str(source).rstrip("/")).parent.name
        if parent:
            return parent
    return name


def _check_ks(ks: list[int] | None, n_docs: int, k_list: str = "default") -> tuple[list[int], list[int]]:
    """``(k list used, default ks left out because the corpus is smaller)``."""
    if ks is None:
        if k_list not in K_LISTS:
            raise ConfigError(f"unknown k list {k_list!r}", f"use one of: {', '.join(K_LISTS)}")
        default = K_LISTS[k_list]
        used = [k for k in default if k <= n_docs]
        return used or [n_docs], [k for k in default if k > n_docs]
    bad = [k for k in ks if k < 1]
    if bad:
        raise MetricError(f"k must be positive, got {bad}")
    too_big = [k for k in ks if k > n_docs]
    if too_big:
        raise MetricError(f"k = {', '.join(map(str, too_big))} is larger than the corpus ({n_docs} documents)",
                          "ask for smaller k values")
    return sorted(set(ks)), []


def doc_text(doc: dict[str, str]) -> str:
    """The text a document is embedded (and reranked) as: ``(title + " " + text).strip()``, or
    ``text.strip()`` without a title, as BEIR's and mteb's models and evalscope's
    ``encode_corpus`` build it (whitespace around the text is never part of it: a tokenizer that
    keeps a trailing newline as a token, as byte-level BPE does, would otherwise embed another text)."""
    title = doc.get("title") or ""
    return f"{title} {doc['text']}".strip() if title else doc["text"].strip()


def trec_tie_keys(doc_ids: list[str]) -> np.ndarray:
    """Tie key of every document: its position when ids are sorted descending (trec_eval breaks
    score ties by document id, descending)."""
    order = sorted(range(len(doc_ids)), key=doc_ids.__getitem__, reverse=True)
    keys = np.empty(len(doc_ids), dtype=np.int64)
    keys[order] = np.arange(len(doc_ids), dtype=np.int64)
    return keys


def resolve_prompts(bundle: Bundle, query_prompt: str | None, document_prompt: str | None) -> dict[str, Any]:
    """The query and document prefixes: given ones win (``""`` is no prefix); else the
    checkpoint's sentence-transformers prompts (``query``; ``document``, ``passage`` or
    ``corpus``), else its ``default_prompt_name`` prompt for both, as ``SentenceTransformer.encode``
    applies it. Returns ``{"query", "document", "source"}``. Raises :class:`ConfigError` when a
    prompt would be used with a Pooling module that excludes prompt tokens (``include_prompt: false``)."""
    spec = bundle.manifest.get("text_model") or {}
    prompts = spec.get("prompts") or {}
    default = prompts.get(spec.get("default_prompt_name") or "", None)
    own_document = next((prompts[n] for n in DOCUMENT_PROMPT_NAMES if n in prompts), None)
    query = query_prompt if query_prompt is not None else prompts.get("query", default)
    document = document_prompt if document_prompt is not None else (
        own_document if own_document is not None else default)
    sources = {"query": "config" if query_prompt is not None else ("checkpoint" if query else None),
               "document": "config" if document_prompt is not None else ("checkpoint" if document else None)}
    if (query or document) and spec.get("include_prompt") is False:
        raise ConfigError(f"{bundle.path}: its Pooling module leaves prompt tokens out "
                          "(include_prompt: false), which the exported graph cannot do",
                          "run it without prompts (prompt: '' in the config)")
    return {"query": query or "", "document": document or "", "source": sources}


SMALL_RESCORED = 1 << 16  # query x depth pairs the numpy ranking path re-scores at most


def _rank(query_emb: np.ndarray, doc_emb: np.ndarray, depth: int, doc_ids: list[str], num_threads):
    """Each query's first ``depth`` documents (:func:`clipeval.engine.kernels.search.top_k`, ties
    in trec_eval's order). At most ``SMALL_PAIRS`` (query, document) pairs take its numpy twin,
    which gives the identical lists and scores without importing numba (about 1.7 s of a cached
    run's start-up on a 2-core VM), when its canonical re-scoring stays small too (at most
    :data:`SMALL_RESCORED` query x depth pairs: numpy re-scores at some tens of ns per pair and
    dimension, numba's kernel several times faster)."""
    from ..kernels.topk_small import SMALL_PAIRS, top_k_small

    tie = trec_tie_keys(doc_ids)
    if len(query_emb) * len(doc_emb) <= SMALL_PAIRS and len(query_emb) * depth <= SMALL_RESCORED:
        return top_k_small(query_emb, doc_emb, depth, tie_keys=tie)
    from ..kernels.search import top_k  # numba: imported when a large search runs

    return top_k(query_emb, doc_emb, depth, tie_keys=tie, num_threads=num_threads)


def _select_queries(data: BeirData, limits: int | None) -> tuple[list[dict[str, str]], dict[str, int]]:
    """The evaluated queries and the left-out counts (the reader's, plus those beyond ``limits``)."""
    queries = data.evaluated_queries()
    left_out = dict(data.left_out)
    if limits is not None and len(queries) > limits:
        beyond = {q["_id"] for q in queries[limits:]}
        queries = queries[:limits]
        left_out["queries_beyond_limits"] = len(beyond)
        rows = sum(1 for q, _, _ in data.qrels if q in beyond)
        left_out["qrels_of_left_out_queries"] = left_out.get("qrels_of_left_out_queries", 0) + rows
        log.warning("%s: left out %d: %s", data.folder, len(beyond), LEFT_OUT_REASONS["queries_beyond_limits"])
    return queries, left_out


def _base_meta(data: BeirData, queries, doc_ids, ks, left_out_k, depth, qrels, run: RankedRun) -> dict[str, Any]:
    query_ids = run.query_ids
    identical = [row for row, q in enumerate(query_ids) if qrels[q].get(q, 0) >= 1]
    identical_retrieved = sum(1 for row in identical
                              if any(doc_ids[j] == query_ids[row] for j in run.indices[row] if j >= 0))
    meta: dict[str, Any] = {
        "num_corpus": len(doc_ids),
        "num_queries": len(data.queries),
        "num_queries_evaluated": len(queries),
        "num_queries_without_qrels": data.left_out.get("queries_without_qrels", 0),
        "num_qrels": len(data.qrels),
        "k": ks,
        "run_depth": depth,
        "main_score": MAIN_SCORE if MAIN_SCORE in ks_names(ks) else None,
        "tie_rule": "float32 score descending, then document id descending (trec_eval)",
        "identical_id_pairs": len(identical),
        "identical_id_pairs_retrieved": identical_retrieved,
        "qrels_file": str(data.qrels_file) if data.qrels_file else None,
        "records": dict(data.records),
    }
    if left_out_k:
        meta["k_left_out"] = left_out_k
        meta["k_note"] = (f"default k {', '.join(map(str, left_out_k))} left out: larger than the corpus "
                          f"({len(doc_ids)} documents)")
    if data.warnings:
        meta["warnings"] = list(data.warnings)
    return meta


def ks_names(ks) -> set[str]:
    return {f"ndcg_at_{k}" for k in ks}


def run_text_retrieval(stage, encoder: Bundle, data: BeirData, params: TextRetrievalParams,
                       reranker: Bundle | None = None, *, precision: str | None = None) -> list[TextRetrievalOutput]:
    """Embed, rank and score ``data`` (already read) with the text tower of ``encoder`` at
    ``precision`` (default: its own), through the embedding ``stage``; nothing is written.
    Returns stage 1 and, with ``reranker`` (a reranker bundle), stage 2.

    Metrics: ``{ndcg,map,recall,precision,mrr,hit_rate}_at_{k}`` (fractions in [0, 1]) with
    trec_eval's definitions (:mod:`clipeval.engine.metrics.ir`). Raises :class:`MetricError` for an
    empty corpus, nothing to evaluate or a k larger than the corpus, :class:`ConfigError` for
    prompts the bundle cannot take or ``top_k`` below 1."""
    if not data.corpus:
        raise MetricError(f"the corpus of {data.folder} is empty", "add documents to corpus.jsonl")
    queries, left_out = _select_queries(data, params.limits)
    if not queries:
        raise MetricError(f"no query of {data.folder} can be evaluated (none has qrels and a text)",
                          f"check {data.qrels_file} and {data.folder}/queries.jsonl")
    precision = precision or encoder.manifest["precision"]
    qrels = data.qrels_dict()
    doc_ids = [d["_id"] for d in data.corpus]
    ks, left_out_k = _check_ks(params.k, len(doc_ids), params.k_list)
    if reranker is not None and params.top_k < 1:
        raise ConfigError(f"top_k must be at least 1, got {params.top_k}")
    depth = min(max(params.run_depth, max(ks), params.top_k if reranker is not None else 0), len(doc_ids))
    prompts = resolve_prompts(encoder, params.query_prompt, params.document_prompt)
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    corpus = stage.texts(encoder, precision, [prompts["document"] + doc_text(d) for d in data.corpus],
                         batch_size=params.batch_size, label="corpus")
    timings["corpus_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    query = stage.texts(encoder, precision, [prompts["query"] + q["text"] for q in queries],
                        batch_size=params.batch_size, label="queries")
    timings["queries_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    indices, scores = _rank(query.embeds, corpus.embeds, depth, doc_ids, params.num_threads)
    timings["search_s"] = time.perf_counter() - t0
    run = RankedRun(query_ids=[q["_id"] for q in queries], doc_ids=doc_ids, indices=indices, scores=scores)
    t0 = time.perf_counter()
    metrics, per_query = score_ranked(run, qrels, ks)
    timings["metrics_s"] = time.perf_counter() - t0

    meta = _base_meta(data, queries, doc_ids, ks, left_out_k, depth, qrels, run)
    meta.update({
        "similarity": "cosine" if is_normalized(encoder) else "dot",
        "prompts": prompts,
        "truncated_texts": {"corpus": corpus.truncated, "queries": query.truncated},
        "left_out": left_out,
        "limits": params.limits,
        "timings": timings,
        "cache": {"corpus_hits": corpus.cache_hits, "query_hits": query.cache_hits},
    })
    if meta["identical_id_pairs"]:
        log.info("%d relevant pair(s) have query id == document id; they are kept (BEIR's evaluator "
                 "would drop them by default)", meta["identical_id_pairs"])
    outputs = [TextRetrievalOutput(metrics=metrics, meta=meta, run=run, per_query=per_query)]
    if reranker is not None:
        outputs.append(_rerank_stage(stage, reranker, data, queries, run, qrels, ks, left_out_k, left_out, params))
    return outputs


def rerank_order(candidates: np.ndarray, flat_scores: np.ndarray, tie_keys: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Each row of ``candidates`` (int64 ``[Q, n]`` document indices, -1 padding at the end)
    re-ordered by its reranker scores (``flat_scores``: the rows' valid entries in order, rounded
    to float32 as trec_eval reads them), descending, ties by ``tie_keys`` ascending. Returns
    ``(indices, scores)``, float64 scores holding float32 values, -1 / -inf padding."""
    indices = np.full(candidates.shape, -1, dtype=np.int64)
    scores = np.full(candidates.shape, -np.inf, dtype=np.float64)
    flat = np.asarray(flat_scores, dtype=np.float32).astype(np.float64)
    pos = 0
    for row, cand in enumerate(candidates):
        cand = cand[cand >= 0]
        s = flat[pos:pos + len(cand)]
        pos += len(cand)
        order = np.lexsort((tie_keys[cand], -s))
        indices[row, :len(cand)] = cand[order]
        scores[row, :len(cand)] = s[order]
    return indices, scores


def _rerank_stage(stage, reranker: Bundle, data: BeirData, queries, stage1: RankedRun, qrels, ks, left_out_k,
                  left_out, params: TextRetrievalParams) -> TextRetrievalOutput:
    """Stage 2: the reranker's float32 scores over each query's first ``top_k`` documents."""
    doc_ids = stage1.doc_ids
    width = min(params.top_k, stage1.indices.shape[1])
    candidates = stage1.indices[:, :width]
    own = reranker.manifest.get("reranker") or {}
    prompt = reranker_prompt(reranker, params.reranker_prompt)
    doc_texts = [doc_text(d) for d in data.corpus]
    pairs = [(prompt + q["text"], doc_texts[j]) for q, row in zip(queries, candidates.tolist()) for j in row if j >= 0]
    t0 = time.perf_counter()
    scored = stage.pair_scores(reranker, pairs, batch_size=params.reranker_batch_size or params.batch_size,
                               label="pairs")
    rerank_s = time.perf_counter() - t0
    indices, scores = rerank_order(candidates, scored.scores, trec_tie_keys(list(doc_ids)))
    run = RankedRun(query_ids=stage1.query_ids, doc_ids=doc_ids, indices=indices, scores=scores)
    t0 = time.perf_counter()
    metrics, per_query = score_ranked(run, qrels, ks)
    meta = _base_meta(data, queries, list(doc_ids), ks, left_out_k, width, qrels, run)
    meta.update({
        "stage": 2,
        "top_k": params.top_k,
        "similarity": f"reranker ({own.get('activation', 'identity')})",
        "reranker_prompt": prompt,
        "truncated_pairs": scored.truncated,
        "left_out": left_out,
        "limits": params.limits,
        "timings": {"rerank_s": rerank_s, "metrics_s": time.perf_counter() - t0},
        "cache": {"pair_hits": scored.cache_hits},
    })
    return TextRetrievalOutput(metrics=metrics, meta=meta, run=run, per_query=per_query)


def reranker_prompt(reranker: Bundle, given: str | None) -> str:
    """The query prefix given to the reranker: ``given``, else the reranker checkpoint's default
    prompt, else none."""
    if given is not None:
        return given
    own = reranker.manifest.get("reranker") or {}
    return (own.get("prompts") or {}).get(own.get("default_prompt_name") or "", "")


def run_path_for(result_file: str | os.PathLike) -> Path:
    """The TREC run beside a result file: ``X_text_retrieval.json`` -> ``X_text_retrieval.trec``."""
    return Path(result_file).with_suffix(".trec")


def _write_run(out: Path, run: RankedRun, meta: dict[str, Any], name: str) -> None:
    """Write the TREC run beside ``out`` and set ``meta.run_file``. A run whose written ids hold
    whitespace (trec_eval and :func:`~clipeval.engine.results.trec.read_run` split lines on it)
    is not written: ``meta.run_file`` is ``None``, ``meta.run_not_written`` names the ids and
    ``meta.warnings`` says why. Only ids the file would hold count; a stale run file of an earlier
    run is removed so that it cannot pass for this one."""
    run_file = run_path_for(out)
    depth = meta["run_depth"]
    bad_ids = unwritable_run_ids(run.query_ids, run.doc_ids, run.indices, depth)
    if bad_ids:
        meta["run_file"] = None
        meta["run_not_written"] = {"reason": "ids hold whitespace or are empty", "count": len(bad_ids),
                                   "ids": bad_ids[:20]}
        message = (f"TREC run not written: {len(bad_ids)} id(s) the run file would hold contain whitespace or are "
                   f"empty (e.g. {bad_ids[0]!r}), and the run format is whitespace-separated; the metrics are "
                   "computed all the same. To get a run file, give those queries/documents ids without spaces, "
                   "tabs or line breaks")
        meta.setdefault("warnings", []).append(message)
        log.warning("%s", message)
        try:
            run_file.unlink()
        except FileNotFoundError:
            pass
    else:
        write_run(run_file, run.query_ids, run.doc_ids, run.indices, run.scores, run_name=f"clipeval-{name}",
                  depth=depth)
        meta["run_file"] = str(run_file)


def _mteb_prompts(entry, task_name: str) -> tuple[str | None, str | None]:
    """(query prompt, document prompt) of an evalscope model entry: ``prompt`` (queries; empty
    means unset, as evalscope treats it), else ``prompts[task name]`` or ``prompts["query"]``;
    documents from ``prompts["document"]`` (or ``passage`` / ``corpus``). ``None``: the
    checkpoint's own."""
    prompts = entry.prompts or {}
    query = entry.prompt or prompts.get(task_name) or prompts.get("query")
    document = next((prompts[k] for k in DOCUMENT_PROMPT_NAMES if k in prompts), None)
    return query, document


def _text_model_ref(bundle: Bundle, name: str | None, entry: Any) -> ModelRef:
    precision = bundle.manifest["precision"]
    return ModelRef(name=name or model_name_for(bundle), identity=bundle.identity, describe=describe_bundle(bundle),
                    bundle=bundle, precision=precision, own_precision=precision, entry=entry)


def _require_text_tower(bundle: Bundle, what: str) -> None:
    """A text bundle, or the text tower of a CLIP-style bundle (as ``clipeval text-eval`` takes
    any bundle with a text tower); a reranker bundle has none."""
    if "text" not in bundle.manifest["variants"][bundle.manifest["precision"]]:
        raise ConfigError(f"task {TASK} needs a model with a text tower; {what} is a {bundle.family} bundle "
                          "without one", "give a text embedding model (a sentence-transformers / BERT-style "
                          "checkpoint or its bundle) or a CLIP-style bundle; a cross-encoder only reranks")


class TextRetrieval(Task):
    metadata = TaskMetadata(
        name=TASK,
        description="text retrieval on a BEIR folder with a text embedding model, optionally reranked by a "
                    "cross-encoder (nDCG, MAP, recall, precision, MRR, hit rate at k)",
        reference="trec_eval's measures (ndcg_cut, map_cut, recall, P, recip_rank, success) as pytrec_eval "
                  "computes them; BEIR's folder layout; evalscope RAGEval tool mteb (two-stage retrieval)",
        dataset_kinds=("beir",),
        embeds=("corpus", "queries", "pairs"),
        models="text",
        main_score=MAIN_SCORE,
    )

    # -- the eval block (task: text_retrieval) --------------------------------------------------

    def check(self, cfg: Any) -> None:
        if getattr(cfg, "task_name", None) == TASK:
            return  # a config of this task's own form, checked where it was parsed
        if not cfg.models:
            raise ConfigError("task text_retrieval needs models",
                              "add models: [{model_name: TEXT_BUNDLE_OR_CHECKPOINT}]")
        if not cfg.data_dir:
            raise ConfigError("task text_retrieval needs data_dir", "set data_dir to a BEIR folder (corpus.jsonl, "
                              "queries.jsonl, qrels/)")

    def evaluations(self, cfg: Any, entry: Any, dataset: str, models: Models) -> list[Evaluation]:
        bundle = models.bundle(entry, "text")
        _require_text_tower(bundle, repr(entry["model_name"]))
        params = TextRetrievalParams(k=cfg.recall_k, batch_size=cfg.batch_size, split=cfg.split,
                                     num_threads=cfg.num_threads, progress=cfg.verbose)
        return [self.evaluation(bundle, cfg.data_dir, params, dataset_name=None if dataset == "custom" else dataset,
                                skip_existing=cfg.skip_existing, entry=entry)]

    # -- its own forms: evalscope's mteb config, clipeval text-eval -----------------------------

    def config_evaluations(self, cfg: Any, models: Models) -> Iterator[Evaluation]:
        if getattr(cfg, "tool", None) in ("mteb", "cmteb"):
            yield from self._mteb(cfg, models)
            return
        from ..config.text_eval import bounded_max_seq_length

        max_seq_length = bounded_max_seq_length(cfg.model, cfg.max_seq_length, "--max-seq-length")
        encoder = models.bundle({"model_name": cfg.model, "pooling_mode": cfg.pooling_mode,
                                 "max_seq_length": max_seq_length}, "text")
        reranker = models.bundle({"model_name": cfg.reranker}, "reranker") if cfg.reranker is not None else None
        params = TextRetrievalParams(k=cfg.k, k_list=cfg.k_list, batch_size=cfg.batch_size, split=cfg.split,
                                     num_threads=cfg.num_threads, progress=cfg.verbose, query_prompt=cfg.query_prompt,
                                     document_prompt=cfg.document_prompt, top_k=cfg.top_k)
        yield self.evaluation(encoder, cfg.data_dir, params, reranker=reranker, dataset_name=cfg.dataset_name,
                              model_name=cfg.model_name, skip_existing=cfg.skip_existing)

    def _mteb(self, cfg: Any, models: Models) -> Iterator[Evaluation]:
        """evalscope's ``tool: mteb`` job (:class:`clipeval.engine.config.mteb.MtebConfig`): each
        encoder on each custom task and split, reranked by the cross-encoder when there is one;
        mteb's k list (1, 3, 5, 10, 20, 100, 1000), those larger than the corpus left out."""
        shared = [_shared_qrels(task) for task in cfg.tasks]  # said once, before any model work
        reranker = models.bundle(cfg.reranker, "reranker") if cfg.reranker is not None else None
        for entry in cfg.encoders:
            bundle = models.bundle(entry, "text")
            _require_text_tower(bundle, repr(entry.model_name_or_path))
            batch = entry.encode_kwargs.get("batch_size") or cfg.batch_size or 32
            if entry.encode_kwargs.get("normalize_embeddings") and not is_normalized(bundle):
                raise ConfigError(f"{entry.model_name_or_path}: normalize_embeddings with a dot-product model is not "
                                  "supported", "remove encode_kwargs.normalize_embeddings")
            for task, task_shared in zip(cfg.tasks, shared):
                query_prompt, document_prompt = _mteb_prompts(entry, task.name)
                for split in task.splits:
                    base = task.name if task.name != "CustomRetrieval" else dataset_name_for(task.data_path)
                    dataset = base if len(task.splits) == 1 else f"{base}-{split}"
                    params = TextRetrievalParams(
                        k=None, k_list="mteb", batch_size=batch, split=split, num_threads=cfg.num_threads,
                        progress=cfg.verbose and entry.encode_kwargs.get("show_progress_bar", True) is not False,
                        query_prompt=query_prompt, document_prompt=document_prompt, limits=cfg.limits,
                        top_k=cfg.top_k,
                        reranker_prompt=(cfg.reranker.prompt or None) if cfg.reranker is not None else None,
                        reranker_batch_size=(cfg.reranker.encode_kwargs.get("batch_size")
                                             if cfg.reranker is not None else None))
                    extra = {"mteb": {"tool": cfg.tool, "config_shape": cfg.shape, "task_name": task.name,
                                      "split": split, "top_k": cfg.top_k if reranker is not None else None,
                                      "overwrite_results": cfg.overwrite_results}}
                    if task_shared and split in task_shared["splits"]:
                        extra["qrels_shared"] = task_shared
                    yield self.evaluation(bundle, task.data_path, params, reranker=reranker, dataset_name=dataset,
                                          skip_existing=not cfg.overwrite_results, extra_meta=extra, entry=entry)

    # -- one evaluation ---------------------------------------------------------------------------

    def evaluation(self, encoder: Bundle, data_dir: str | os.PathLike, params: TextRetrievalParams, *,
                   reranker: Bundle | None = None, dataset_name: str | None = None, model_name: str | None = None,
                   reranker_name: str | None = None, skip_existing: bool = False,
                   extra_meta: dict[str, Any] | None = None, entry: Any = None) -> Evaluation:
        """One encoder (and optional reranker) on the BEIR folder ``data_dir``: one result, or two
        (``stage1/`` and ``stage2/``) with a reranker."""
        data_dir = os.fspath(data_dir)
        model = _text_model_ref(encoder, model_name, entry)
        prompts = resolve_prompts(encoder, params.query_prompt, params.document_prompt)
        spec = encoder.manifest.get("text_model") or {}
        parts = {"pooling": spec.get("pooling"), "max_seq_length": encoder.context_length,
                 "query_prompt": prompts["query"], "document_prompt": prompts["document"]}
        params_dict = {"task": TASK, "data_dir": os.path.abspath(data_dir), "split": params.split,
                       "k": params.k, "k_list": params.k_list, "run_depth": params.run_depth,
                       "precision": model.precision, "query_prompt": params.query_prompt,
                       "document_prompt": params.document_prompt, "limits": params.limits}
        dataset = dataset_name or dataset_name_for(data_dir)
        if reranker is None:
            results = [ResultSpec(model.name, slot_parts=parts)]
        else:
            rname = reranker_name or model_name_for(reranker)
            params_dict.update({"top_k": params.top_k, "reranker": reranker.identity,
                                "reranker_prompt": params.reranker_prompt})
            stage2 = {**parts, "reranker": reranker.identity,
                      "reranker_prompt": reranker_prompt(reranker, params.reranker_prompt), "top_k": params.top_k}
            results = [ResultSpec(model.name, folder="stage1", slot_parts=parts),
                       ResultSpec(rname, folder="stage2", slot_parts=stage2)]
        return Evaluation(task=self, model=model, dataset=dataset, data_dir=data_dir, data_key=data_key(data_dir),
                          split=params.split, params=params_dict, settings=params, results=results,
                          skip_existing=skip_existing,
                          options={"batch_size": params.batch_size, "reranker": reranker,
                                   "extra_meta": extra_meta or {}})

    def fingerprint(self, ev: Evaluation) -> str | None:
        return beir_fingerprint(ev.data_dir, ev.split, limits=ev.settings.limits)

    def complete(self, path: Path, result: dict[str, Any], ev: Evaluation) -> bool:
        # Whole: its run file is there, or it records why none could be written (the same data
        # gives the same ids, so running again would not write one either).
        meta = result.get("meta") or {}
        return run_path_for(path).is_file() or (meta.get("run_file") is None and bool(meta.get("run_not_written")))

    def side_files(self, result_file: Path) -> list[Path]:
        return [run_path_for(result_file)]

    def evaluate(self, ev: Evaluation, stage: Any) -> list[TaskOutput]:
        reranker: Bundle | None = ev.options.get("reranker")
        data = read_beir(ev.data_dir, ev.split)
        stages = run_text_retrieval(stage, ev.model.bundle, data, ev.settings, reranker, precision=ev.model.precision)
        outputs = []
        for stage_no, (result, spec) in enumerate(zip(stages, ev.results), start=1):
            meta = dict(result.meta)
            if reranker is not None:
                meta["stage"] = stage_no
                meta["top_k"] = ev.settings.top_k
                meta["reranker"] = {**describe_bundle(reranker), "provider": stage.provider}
                meta["stage_results"] = [str(t) for t in ev.targets]
            meta.update(ev.options.get("extra_meta") or {})
            outputs.append(TaskOutput(result.metrics, meta, _run_writer(result.run, spec.name)))
        return outputs


def _shared_qrels(task: Any) -> dict[str, Any] | None:
    """``{"file", "splits", "note"}`` when two or more of an mteb custom task's ``eval_splits`` read
    its one flat ``qrels.jsonl`` (no ``qrels/{split}.tsv`` of their own), said once on stderr:
    each of those splits evaluates the same judgements, as evalscope's MTEB custom task does (the
    numbers are kept; the result's ``meta.qrels_shared`` says so). ``None`` otherwise."""
    splits = splits_sharing_flat_qrels(task.data_path, task.splits)
    if not splits:
        return None
    flat = Path(task.data_path) / QRELS_JSONL
    note = (f"{flat} is the only qrels file of splits {', '.join(splits)} (no qrels/SPLIT.tsv of their own): "
            "each of them evaluates the same relevance judgements, as evalscope does")
    log.warning("%s; give each split its own qrels/SPLIT.tsv to evaluate them apart", note)
    return {"file": str(flat), "splits": splits, "note": note}


def _run_writer(run: RankedRun, name: str):
    def write(result_file: Path, meta: dict[str, Any]) -> None:
        _write_run(result_file, run, meta, name)
        if meta["run_file"] is not None:
            log.info("wrote %s", meta["run_file"])

    return write
