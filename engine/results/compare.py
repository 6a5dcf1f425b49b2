"""Paired comparison of two results on the same queries: bootstrap intervals and McNemar's test.

Both results must have ranked the same queries against the same gallery (same dataset, split,
data fingerprint, texts and positives). Each metric is recomputed from the per-query detail
files (:mod:`clipeval.engine.results.detail`) and checked against the value in the result file, so a
detail file that does not describe its result is refused rather than compared.

Per-query values of each metric (the definitions of README "Metric definitions"):

- ``image_retrieval_recall@k``: per text, ``[t2i_rank < k]``; ``*_mean_rank`` /
  ``*_median_rank``: ``rank + 1``. ``text_retrieval_*``: the same per image with at least one
  text (``i2t_rank >= 0``).
- ``acc{k}``: per image, ``[rank < k]``; ``mean_per_class_recall``: the mean over the classes
  present of the mean of ``[rank == 0]`` within the class.

Paired bootstrap (Efron & Tibshirani, *An Introduction to the Bootstrap*, 1993, ch. 13, the
percentile interval): B resamples of the n queries drawn with replacement, the same index rows
for A and B (queries resampled jointly, so the interval accounts for how the two models' errors
go together) and for every metric over the same queries. Each resample's row is drawn as
``numpy.random.default_rng(seed).integers(0, n, size=n)``, one row after the other, so the
intervals depend only on (seed, B, n) and a plain loop reproduces them. The interval of B - A
is the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles (numpy's default linear
interpolation) of the B resampled differences.

McNemar's exact test (McNemar 1947; the exact form is the two-sided binomial test of the
discordant pairs): for a metric of per-query hits, ``a_only`` queries A gets right and B wrong,
``b_only`` the reverse; under equal accuracy ``min(a_only, b_only)`` is Binomial(a_only + b_only,
1/2), and ``p = min(1, 2 * P(X <= min))``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .detail import ClassificationDetail, RetrievalDetail, load_detail
from ..errors import ResultError
from .read import LoadedResult

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_RESAMPLES", "PairedStatistic", "binomial_two_sided_p", "bootstrap_intervals", "compare_results",
           "mcnemar_exact", "per_query_statistics"]

DEFAULT_RESAMPLES = 2000
MIN_RESAMPLES = 1000
DEFAULT_SEED = 0
DEFAULT_CONFIDENCE = 0.95
# Resampled values held at once: rows per chunk = this // n (at least one row).
CHUNK_ELEMENTS = 1 << 22
# Metric values from the detail must equal the result's within this (they are the same numbers).
METRIC_TOLERANCE = 1e-9
KINDS = ("mean", "median", "class_mean")


@dataclass
class PairedStatistic:
    """One metric over one set of queries, for both results.

    ``a``, ``b``: float64 ``[n]`` per-query values; ``kind``: ``mean``, ``median`` or
    ``class_mean`` (mean over the classes present of the per-class mean; ``groups`` int64
    ``[n]`` holds each query's class, ``n_groups`` the class count); ``queries`` names the query
    set (statistics over the same set share their resamples); ``hits``: the values are 0/1
    per-query hits, for which McNemar's test applies.
    """

    name: str
    queries: str
    kind: str
    a: np.ndarray
    b: np.ndarray
    hits: bool = False
    groups: np.ndarray | None = None
    n_groups: int = 0

    @property
    def n(self) -> int:
        return len(self.a)

    def value(self, values: np.ndarray) -> float:
        """The statistic over all queries."""
        return float(_evaluate(self, values[None, :], np.arange(self.n)[None, :])[0])


def _evaluate(stat: PairedStatistic, values: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """The statistic of each resample row: ``values`` [1, n], ``idx`` int64 [rows, n] -> [rows]."""
    sample = values[0][idx]
    if stat.kind == "mean":
        return sample.mean(axis=1)
    if stat.kind == "median":
        return np.median(sample, axis=1)
    rows = idx.shape[0]
    flat = (np.arange(rows)[:, None] * stat.n_groups + stat.groups[idx]).ravel()
    sums = np.bincount(flat, weights=sample.ravel(), minlength=rows * stat.n_groups).reshape(rows, stat.n_groups)
    counts = np.bincount(flat, minlength=rows * stat.n_groups).reshape(rows, stat.n_groups)
    present = counts > 0
    per_class = np.divide(sums, counts, out=np.zeros_like(sums), where=present)
    return per_class.sum(axis=1) / present.sum(axis=1)


def resample_rows(n: int, resamples: int, seed: int):
    """Yield int64 ``[rows, n]`` chunks of bootstrap index rows, ``resamples`` rows in all, each
    drawn as ``rng.integers(0, n, size=n)`` from ``numpy.random.default_rng(seed)`` in order."""
    rng = np.random.default_rng(seed)
    per_chunk = max(1, CHUNK_ELEMENTS // max(n, 1))
    done = 0
    while done < resamples:
        rows = min(per_chunk, resamples - done)
        chunk = np.empty((rows, n), dtype=np.int64)
        for r in range(rows):
            chunk[r] = rng.integers(0, n, size=n)
        done += rows
        yield chunk


def bootstrap_intervals(stats: Sequence[PairedStatistic], *, resamples: int = DEFAULT_RESAMPLES,
                        seed: int = DEFAULT_SEED, confidence: float = DEFAULT_CONFIDENCE) -> list[tuple[float, float]]:
    """Paired percentile bootstrap interval of ``b - a`` for every statistic (module docstring).

    Returns one ``(low, high)`` per statistic, in order.

    Raises:
        ValueError: fewer than :data:`MIN_RESAMPLES` resamples, a confidence outside (0, 1), an
            unknown kind, or statistics of one query set with different query counts.
    """
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < MIN_RESAMPLES:
        raise ValueError(f"resamples must be an integer of at least {MIN_RESAMPLES}, got {resamples!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")
    by_queries: dict[str, list[int]] = {}
    for i, stat in enumerate(stats):
        if stat.kind not in KINDS:
            raise ValueError(f"unknown statistic kind {stat.kind!r}; known: {', '.join(KINDS)}")
        by_queries.setdefault(stat.queries, []).append(i)
    intervals: list[tuple[float, float]] = [(math.nan, math.nan)] * len(stats)
    for members in by_queries.values():
        n = stats[members[0]].n
        if any(stats[i].n != n for i in members):
            raise ValueError("statistics over the same queries must have the same number of values")
        diffs = {i: [] for i in members}
        means = [i for i in members if stats[i].kind == "mean"]
        # every mean at once: the resample's count of each query times the values, one product
        values = np.stack([stats[i].a for i in means] + [stats[i].b for i in means], axis=1) if means else None
        others = [i for i in members if stats[i].kind != "mean"]
        for idx in resample_rows(n, resamples, seed):
            if means:
                rows = idx.shape[0]
                counts = np.bincount((np.arange(rows)[:, None] * n + idx).ravel(), minlength=rows * n)
                resampled = counts.reshape(rows, n).astype(np.float64) @ values / n
                for j, i in enumerate(means):
                    diffs[i].append(resampled[:, len(means) + j] - resampled[:, j])
            for i in others:
                diffs[i].append(_evaluate(stats[i], stats[i].b[None, :], idx)
                                - _evaluate(stats[i], stats[i].a[None, :], idx))
        tail = (1.0 - confidence) / 2.0
        for i in members:
            d = np.concatenate(diffs[i])
            intervals[i] = (float(np.quantile(d, tail)), float(np.quantile(d, 1.0 - tail)))
    return intervals


def binomial_two_sided_p(m: int, n: int) -> float:
    """Two-sided p-value of ``m`` successes in ``n`` Binomial(n, 1/2) trials:
    ``min(1, 2 * P(X <= min(m, n - m)))`` (the distribution is symmetric, so this is the sum of
    the probabilities of every outcome no likelier than ``m``); 1 when ``m`` is a middle value
    (and for ``n == 0``).

    The lower tail is summed in log space (``log C(n, i)`` by the running ratio
    ``(n - i + 1) / i``), so large ``n`` neither overflows nor loses the small tail.
    """
    if n < 0 or not 0 <= m <= n:
        raise ValueError(f"need 0 <= m <= n, got m={m}, n={n}")
    m = min(m, n - m)
    if 2 * m + 1 >= n:  # m is the middle (or one of the two): the lower tail holds half or more
        return 1.0
    i = np.arange(1, m + 1, dtype=np.float64)
    log_terms = np.concatenate([[0.0], np.cumsum(np.log((n - i + 1) / i))])  # log C(n, i), i = 0..m
    top = log_terms.max()
    log_tail = top + math.log(np.exp(log_terms - top).sum()) - n * math.log(2.0)
    return float(min(1.0, 2.0 * math.exp(log_tail)))


def mcnemar_exact(a_hits: np.ndarray, b_hits: np.ndarray) -> dict:
    """McNemar's exact test of paired per-query hits: ``{"a_only", "b_only", "p_value"}``."""
    a_hits = np.asarray(a_hits, dtype=bool)
    b_hits = np.asarray(b_hits, dtype=bool)
    if a_hits.shape != b_hits.shape:
        raise ValueError(f"paired hits must have the same shape, got {a_hits.shape} and {b_hits.shape}")
    a_only = int(np.sum(a_hits & ~b_hits))
    b_only = int(np.sum(~a_hits & b_hits))
    return {"a_only": a_only, "b_only": b_only, "p_value": binomial_two_sided_p(min(a_only, b_only), a_only + b_only)}


# --------------------------------------------------------------------------- from detail files


def per_query_statistics(metric_names: Sequence[str], a, b) -> tuple[list[PairedStatistic], dict[str, str]]:
    """The paired statistic of each metric that per-query detail defines; returns
    ``(statistics, not_compared)`` with a reason for each metric it does not define."""
    stats: list[PairedStatistic] = []
    skipped: dict[str, str] = {}
    for name in metric_names:
        stat = (_retrieval_statistic(name, a, b) if isinstance(a, RetrievalDetail)
                else _classification_statistic(name, a, b))
        if isinstance(stat, str):
            skipped[name] = stat
        else:
            stats.append(stat)
    return stats, skipped


def _retrieval_statistic(name: str, a: RetrievalDetail, b: RetrievalDetail) -> PairedStatistic | str:
    direction, _, rest = name.partition("_retrieval_")
    if direction == "image":
        ra, rb, queries = a.t2i_rank, b.t2i_rank, "texts"
    elif direction == "text":
        keep = a.i2t_rank >= 0
        ra, rb, queries = a.i2t_rank[keep], b.i2t_rank[keep], "images"
    else:
        return "not a retrieval metric"
    if rest.startswith("recall@") and rest[7:].isdigit():
        k = int(rest[7:])
        return PairedStatistic(name, queries, "mean", (ra < k).astype(np.float64), (rb < k).astype(np.float64),
                               hits=True)
    if rest in ("mean_rank", "median_rank"):  # 1-based ranks
        return PairedStatistic(name, queries, {"mean_rank": "mean", "median_rank": "median"}[rest], ra + 1.0, rb + 1.0)
    return "not a metric of per-query ranks"


def _classification_statistic(name: str, a: ClassificationDetail, b: ClassificationDetail) -> PairedStatistic | str:
    if a.multilabel:
        return "multi-label metrics need every image's score for every class, which the detail does not keep"
    if name.startswith("acc") and name[3:].isdigit():
        k = int(name[3:])
        return PairedStatistic(name, "images", "mean", (a.rank < k).astype(np.float64),
                               (b.rank < k).astype(np.float64), hits=True)
    if name == "mean_per_class_recall":
        return PairedStatistic(name, "images", "class_mean", (a.rank == 0).astype(np.float64),
                               (b.rank == 0).astype(np.float64), groups=a.label, n_groups=len(a.classnames))
    return "not a metric of per-query ranks"


def _check_comparable(a: LoadedResult, b: LoadedResult) -> None:
    def refuse(what: str, va, vb):
        raise ResultError(f"{a.path} and {b.path} are not results of the same data: {what} {va!r} vs {vb!r}",
                          "compare two results of one dataset, split and data (e.g. two models' "
                          "custom_zeroshot_retrieval.json of the same --data-dir)")

    for what, va, vb in (("dataset", a.dataset, b.dataset), ("task", a.task, b.task),
                         ("split", a.meta.get("split"), b.meta.get("split")),
                         ("language", a.meta.get("language"), b.meta.get("language"))):
        if va != vb:
            refuse(what, va, vb)
    if a.fingerprint and b.fingerprint and a.fingerprint != b.fingerprint:
        refuse("data fingerprint", a.fingerprint, b.fingerprint)
    ka, kb = a.meta.get("recall_k"), b.meta.get("recall_k")
    if ka != kb:
        raise ResultError(f"{a.path} and {b.path} were computed with different k lists: {ka} vs {kb}",
                          "run both evaluations with the same --recall-k values (config key recall_k)")


def _check_same_queries(a: LoadedResult, da, b: LoadedResult, db) -> None:
    if isinstance(da, RetrievalDetail):
        same = (da.num_images == db.num_images and da.texts == db.texts
                and np.array_equal(da.text_to_image, db.text_to_image))
        what = "texts, positive images or gallery size"
    else:
        same = (len(da.rank) == len(db.rank) and da.multilabel == db.multilabel
                and (da.multilabel or np.array_equal(da.label, db.label)) and da.classnames == db.classnames)
        what = "images, labels or class names"
    if not same:
        raise ResultError(f"{a.path} and {b.path} ranked different queries ({what} differ)",
                          "compare results of the same dataset, split and --limit, with the same skipped images")


def _check_metric(result: LoadedResult, stat: PairedStatistic, values: np.ndarray) -> None:
    recorded = result.metrics.get(stat.name)
    ours = stat.value(values)
    if recorded is None or not math.isclose(ours, recorded, rel_tol=METRIC_TOLERANCE, abs_tol=METRIC_TOLERANCE):
        raise ResultError(f"the detail file of {result.path} gives {stat.name} = {ours!r}, the result says {recorded!r}",
                          "the detail file does not describe this result: run the evaluation again with --detail on")


def compare_results(a: LoadedResult, b: LoadedResult, *, resamples: int = DEFAULT_RESAMPLES,
                    seed: int = DEFAULT_SEED, confidence: float = DEFAULT_CONFIDENCE) -> dict:
    """Compare two results of the same data metric by metric (module docstring).

    Returns ``{"dataset", "task", "a", "b", "queries", "bootstrap", "metrics", "not_compared"}``;
    ``metrics[name]`` is ``{"a", "b", "diff" (b - a), "ci": [low, high], "queries"}`` plus
    ``"mcnemar": {"a_only", "b_only", "p_value"}`` for metrics of per-query hits.

    Raises:
        ResultError: different datasets, tasks, splits, data fingerprints, k lists or queries;
            a missing, stale or malformed detail file.
    """
    _check_comparable(a, b)
    da, db = load_detail(a.path, a.data), load_detail(b.path, b.data)
    if da.kind != db.kind:
        raise ResultError(f"{a.path} and {b.path} hold different kinds of detail ({da.kind} vs {db.kind})")
    _check_same_queries(a, da, b, db)
    names = [name for name in a.metrics if name in b.metrics]
    stats, not_compared = per_query_statistics(names, da, db)
    for name in set(a.metrics) ^ set(b.metrics):
        not_compared[name] = "only one of the results has it"
    for stat in stats:
        _check_metric(a, stat, stat.a)
        _check_metric(b, stat, stat.b)
    intervals = bootstrap_intervals(stats, resamples=resamples, seed=seed, confidence=confidence)
    metrics = {}
    for stat, (low, high) in zip(stats, intervals):
        va, vb = a.metrics[stat.name], b.metrics[stat.name]
        entry = {"a": va, "b": vb, "diff": vb - va, "ci": [low, high], "queries": stat.queries}
        if stat.hits:
            entry["mcnemar"] = mcnemar_exact(stat.a > 0, stat.b > 0)
        metrics[stat.name] = entry
    queries = ({"texts": da.num_texts, "images": int((da.i2t_rank >= 0).sum())} if isinstance(da, RetrievalDetail)
               else {"images": len(da.rank)})
    return {
        "dataset": a.dataset, "task": a.task, "a": a.describe(), "b": b.describe(), "queries": queries,
        "bootstrap": {"method": "paired percentile bootstrap", "resamples": resamples, "seed": seed,
                      "confidence": confidence},
        "metrics": metrics, "not_compared": not_compared,
    }
