"""IR metrics with trec_eval's (and so pytrec_eval's) exact definitions.

For one query, take its retrieved documents in trec_eval's order: **score descending, then
document id descending** (``strcmp`` on the id bytes; trec_eval ignores the rank column of a
run). trec_eval (and so pytrec_eval) holds every score as a float32, so scores are compared
after rounding to float32: two float64 scores that round to the same float32 are a tie. ``rel(i)`` is the qrels score of the document at 0-based position ``i`` (documents not
in the qrels are non-relevant); a document is *relevant* when ``rel >= 1`` (trec_eval's default
``relevance_level``). ``R`` is the number of relevant documents in the qrels of the query,
retrieved or not. Positions past the end of a short run count as non-relevant.

* ``ndcg_at_k`` (trec_eval ``ndcg_cut.k``): ``DCG@k / IDCG@k`` with
  ``DCG@k = sum_{i<k, rel(i)>0} rel(i) / log2(i + 2)``; ``IDCG@k`` is the same sum over the
  query's positive qrels scores sorted descending; 0 when ``IDCG@k`` is 0.
* ``recall_at_k`` (``recall.k``): relevant documents in the first k / ``R``; 0 when ``R = 0``.
* ``map_at_k`` (``map_cut.k``): ``sum_{i<k, relevant(i)} P@(i+1) / R``, where ``P@(i+1)`` is
  the share of relevant documents in the first ``i + 1``; 0 when ``R = 0``.
* ``mrr_at_k`` (``recip_rank`` on the run cut to its first k documents): ``1 / (i + 1)`` for
  the first relevant position ``i < k``, else 0.
* ``precision_at_k`` (``P.k``): relevant documents in the first k / k (k, not the number
  retrieved, as trec_eval divides).
* ``hit_rate_at_k`` (``success.k``, MTEB's ``hit_rate_at_k``): 1 when a relevant document is in
  the first k, else 0.

Each is averaged over the evaluated queries: those in the qrels that were run (pytrec_eval
returns per-query values; BEIR and MTEB average them the same way).

Nothing is ever removed from a ranking: a document whose id equals the query id counts like
any other (BEIR's ``EvaluateRetrieval.evaluate`` drops such hits by default,
``ignore_identical_ids=True``, which removes the gold document whenever query and document
ids share a number space).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["DEFAULT_K", "METRICS", "MTEB_K", "RankedRun", "as_trec_score", "gains_from_run", "metric_name",
           "score_gains", "score_ranked", "score_run_dict", "trec_order"]

DEFAULT_K = (1, 3, 5, 10, 100)
# mteb's k list (mteb/abstasks/retrieval.py, k_values)
MTEB_K = (1, 3, 5, 10, 20, 100, 1000)
METRICS = ("ndcg", "map", "recall", "precision", "mrr", "hit_rate")
RELEVANCE_LEVEL = 1


def as_trec_score(score: float) -> float:
    """``score`` as trec_eval holds it: rounded to float32 (returned as the float64 of that value)."""
    return float(np.float32(score))


def metric_name(metric: str, k: int) -> str:
    """The result key: ``ndcg_at_10``, ``recall_at_5`` ... (MTEB's names)."""
    return f"{metric}_at_{k}"


def trec_order(doc_ids: Sequence[str], scores: Sequence[float]) -> list[int]:
    """Positions of ``doc_ids`` in trec_eval's order: float32 score descending, then id descending."""
    return sorted(range(len(doc_ids)), key=lambda i: (-as_trec_score(scores[i]), _Desc(doc_ids[i])))


class _Desc:
    """Sort key that orders strings descending (by code point, which is UTF-8 byte order)."""

    __slots__ = ("s",)

    def __init__(self, s: str):
        self.s = s

    def __lt__(self, other: "_Desc") -> bool:
        return self.s > other.s

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Desc) and self.s == other.s


@dataclass
class Gains:
    """What the metrics need, for Q queries and runs of depth n.

    ``rel``: int64 ``[Q, n]``, the qrels score at each ranked position (0 for a document not in
    the qrels or past the end of a short run). ``num_rel``: int64 ``[Q]`` (``R``). ``ideal``:
    float64 ``[Q, m]``, each query's positive qrels scores sorted descending, zero-padded.
    """

    rel: np.ndarray
    num_rel: np.ndarray
    ideal: np.ndarray


def _ideal_and_count(judged: Mapping[str, int], width: int) -> tuple[np.ndarray, int]:
    positive = sorted((int(v) for v in judged.values() if v > 0), reverse=True)[:width]
    row = np.zeros(width, dtype=np.float64)
    row[: len(positive)] = positive
    num_rel = sum(1 for v in judged.values() if v >= RELEVANCE_LEVEL)
    return row, num_rel


def gains_from_run(ranked_doc_ids: Sequence[Sequence[str]], qrels: Sequence[Mapping[str, int]],
                   depth: int) -> Gains:
    """:class:`Gains` from per-query ranked id lists (already in trec order) and per-query qrels."""
    n_q = len(ranked_doc_ids)
    # The ideal ranking may be longer than the run (relevant documents never retrieved).
    width = max([depth] + [sum(1 for v in judged.values() if v > 0) for judged in qrels])
    rel = np.zeros((n_q, depth), dtype=np.int64)
    ideal = np.zeros((n_q, width), dtype=np.float64)
    num_rel = np.zeros(n_q, dtype=np.int64)
    for q, (docs, judged) in enumerate(zip(ranked_doc_ids, qrels)):
        for i, did in enumerate(docs[:depth]):
            rel[q, i] = judged.get(did, 0)
        ideal[q], num_rel[q] = _ideal_and_count(judged, width)
    return Gains(rel, num_rel, ideal)


def score_gains(g: Gains, ks: Sequence[int]) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """``(means, per_query)`` for every metric at every k in ``ks`` (see the module docstring).

    ``per_query`` maps each metric name to a float64 ``[Q]`` array.
    """
    n_q, depth = g.rel.shape
    k_max = max(ks)
    width = max(k_max, 1)
    rel = np.zeros((n_q, width), dtype=np.int64)
    rel[:, : min(depth, width)] = g.rel[:, :width]
    ideal = np.zeros((n_q, width), dtype=np.float64)
    ideal[:, : min(g.ideal.shape[1], width)] = g.ideal[:, :width]

    discount = 1.0 / np.log2(np.arange(width, dtype=np.float64) + 2.0)
    gain = np.where(rel > 0, rel, 0).astype(np.float64)
    dcg = np.cumsum(gain * discount, axis=1)
    idcg = np.cumsum(ideal * discount, axis=1)
    relevant = rel >= RELEVANCE_LEVEL
    hits = np.cumsum(relevant, axis=1)
    precision_at_hit = np.where(relevant, hits / np.arange(1, width + 1, dtype=np.float64), 0.0)
    ap_sum = np.cumsum(precision_at_hit, axis=1)
    first = np.where(relevant.any(axis=1), relevant.argmax(axis=1), width)
    num_rel = g.num_rel.astype(np.float64)
    has_rel = num_rel > 0
    safe_r = np.where(has_rel, num_rel, 1.0)

    per_query: dict[str, np.ndarray] = {}
    for k in ks:
        c = k - 1
        with np.errstate(invalid="ignore", divide="ignore"):
            ndcg = np.where(idcg[:, c] > 0, dcg[:, c] / np.where(idcg[:, c] > 0, idcg[:, c], 1.0), 0.0)
        per_query[metric_name("ndcg", k)] = ndcg
        per_query[metric_name("map", k)] = np.where(has_rel, ap_sum[:, c] / safe_r, 0.0)
        per_query[metric_name("recall", k)] = np.where(has_rel, hits[:, c] / safe_r, 0.0)
        per_query[metric_name("precision", k)] = hits[:, c] / float(k)
        per_query[metric_name("mrr", k)] = np.where(first < k, 1.0 / (first + 1.0), 0.0)
        per_query[metric_name("hit_rate", k)] = np.where(first < k, 1.0, 0.0)
    order = [metric_name(m, k) for m in METRICS for k in ks]
    means = {name: float(per_query[name].mean()) if n_q else 0.0 for name in order}
    return means, {name: per_query[name] for name in order}


@dataclass
class RankedRun:
    """A ranked run over a corpus: row q ranks ``doc_ids[indices[q, i]]`` at position i
    (trec order, best first); ``-1`` pads a row shorter than the others."""

    query_ids: list[str]
    doc_ids: Sequence[str]
    indices: np.ndarray  # int64 [Q, n]
    scores: np.ndarray  # float64 [Q, n]


def score_ranked(run: RankedRun, qrels: Mapping[str, Mapping[str, int]], ks: Sequence[int]
                 ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Metrics of a :class:`RankedRun` whose rows are already in trec order."""
    ranked = [[run.doc_ids[j] for j in row if j >= 0] for row in run.indices.tolist()]
    judged = [qrels.get(qid, {}) for qid in run.query_ids]
    return score_gains(gains_from_run(ranked, judged, run.indices.shape[1] if run.indices.size else 0), ks)


def score_run_dict(run: Mapping[str, Mapping[str, float]], qrels: Mapping[str, Mapping[str, int]],
                   ks: Sequence[int]) -> tuple[dict[str, float], dict[str, np.ndarray], list[str]]:
    """Metrics of a pytrec_eval-style run ``{qid: {docid: score}}`` (e.g. a TREC run file read
    back): each query's documents are put in trec order first. Only queries present in both
    ``run`` and ``qrels`` are evaluated, as pytrec_eval does. Returns ``(means, per_query,
    evaluated query ids)``."""
    qids = [q for q in run if q in qrels]
    ranked = []
    for q in qids:
        docs = list(run[q])
        scores = [run[q][d] for d in docs]
        ranked.append([docs[i] for i in trec_order(docs, scores)])
    depth = max((len(r) for r in ranked), default=0)
    means, per_query = score_gains(gains_from_run(ranked, [qrels[q] for q in qids], depth), ks)
    return means, per_query, qids
