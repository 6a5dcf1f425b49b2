"""What the report shows, gathered from result and detail files as plain data for the template.

Rows of the leaderboard are models (a bundle at a precision); columns are datasets (results of
the same data, :func:`clipeval.engine.results.read.same_data`) times their headline metrics. In
each dataset the *leader* is the row with the best first headline metric; every other row is
compared with it (:func:`clipeval.engine.results.compare.compare_results`: B - A with a paired bootstrap
interval, A the leader).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np

from .... import __version__
from ..compare import DEFAULT_CONFIDENCE, DEFAULT_RESAMPLES, DEFAULT_SEED, compare_results
from ..detail import ClassificationDetail, RetrievalDetail, load_detail
from ...errors import ResultError
from ..read import LoadedResult, same_data
from .plots import recall_curve
from .thumbs import ThumbnailBudget

log = logging.getLogger(__name__)

WORST = 8  # worst queries shown per direction, model and dataset
SHOWN_TOP_K = 5  # retrieved items shown per worst query
MAX_CAPTIONS = 3  # positive captions shown per image
MAX_SKIPPED_SHOWN = 20


@dataclass
class Row:
    """A model of the leaderboard: one bundle at one precision."""

    key: tuple
    label: str


@dataclass
class DatasetGroup:
    """Results of the same data, one per row."""

    label: str
    task: str
    results: dict[tuple, LoadedResult] = field(default_factory=dict)
    details: dict[tuple, Any] = field(default_factory=dict)  # row key -> detail, or the reason there is none
    headline: list[str] = field(default_factory=list)
    leader: tuple | None = None
    comparisons: dict[tuple, dict | str] = field(default_factory=dict)  # row key -> comparison or reason


def _row_key(r: LoadedResult) -> tuple:
    bundle = r.meta.get("bundle") if isinstance(r.meta.get("bundle"), dict) else {}
    return (r.model, r.precision or "", str(bundle.get("identity") or ""))


def _rows(results: list[LoadedResult]) -> list[Row]:
    """One row per (model, precision, bundle identity). Rows of the same model name are told apart
    by the first of: the bundle's revision, the precision, both, the identity's first 8 hex."""
    info: dict[tuple, dict] = {}
    for r in results:
        bundle = r.meta.get("bundle") if isinstance(r.meta.get("bundle"), dict) else {}
        info.setdefault(_row_key(r), {"revision": str(bundle.get("revision") or ""), "precision": r.precision or ""})
    suffixes = (lambda k: info[k]["revision"], lambda k: info[k]["precision"],
                lambda k: f"{info[k]['revision']} · {info[k]['precision']}", lambda k: k[2][:8])
    labels = {}
    for key in info:
        same = [k for k in info if k[0] == key[0]]
        labels[key] = key[0]
        if len(same) > 1:
            suffix = next((f for f in suffixes if len({f(k) for k in same}) == len(same)), suffixes[-1])
            labels[key] = f"{key[0]} · {suffix(key)}"
    return [Row(k, labels[k]) for k in info]


def _group_label(r: LoadedResult) -> str:
    dataset, task, split, language = r.match_key
    extra = [x for x, default in ((split, "test"), (language, "en")) if x != default]
    return f"{dataset}" + (f" ({', '.join(extra)})" if extra else "") + f" · {task.replace('zeroshot_', '')}"


def headline_metrics(results: list[LoadedResult]) -> list[str]:
    """Recall@k in both directions (retrieval), or acc1/acc5/mean_per_class_recall/mAP
    (classification), as far as the results hold them, in a fixed order."""
    names = {n for r in results for n in r.metrics}
    if results[0].task == "zeroshot_retrieval":
        order = []
        for direction in ("image_retrieval", "text_retrieval"):
            ks = sorted(int(n.rsplit("@", 1)[1]) for n in names
                        if n.startswith(f"{direction}_recall@") and n.rsplit("@", 1)[1].isdigit())
            order += [f"{direction}_recall@{k}" for k in ks]
        return order
    return [n for n in ("acc1", "acc5", "mean_per_class_recall", "mean_average_precision") if n in names]


SHORT_NAMES = {"image_retrieval_recall@": "text→image R@", "text_retrieval_recall@": "image→text R@", "acc": "acc@",
               "mean_per_class_recall": "mean per-class recall", "mean_average_precision": "mAP"}


def short_metric(name: str) -> str:
    """A column header for a metric (the full name goes in its tooltip)."""
    for prefix, short in SHORT_NAMES.items():
        if name.startswith(prefix) and (name[len(prefix):].isdigit() or name == prefix):
            return short + name[len(prefix):]
    return name


def _groups(results: list[LoadedResult], rows: list[Row]) -> list[DatasetGroup]:
    groups: list[tuple[LoadedResult, DatasetGroup]] = []
    for r in results:
        for first, group in groups:
            if same_data(first, r):
                break
        else:
            group = DatasetGroup(_group_label(r), r.task)
            groups.append((r, group))
        key = _row_key(r)
        if key in group.results:
            log.warning("%s and %s hold the same model's result of %s; the report shows the first",
                        group.results[key].path, r.path, group.label)
            continue
        group.results[key] = r
    out = [g for _, g in groups]
    labels = [g.label for g in out]
    for g in out:  # the same dataset on different data: tell them apart by a data fingerprint or folder
        if labels.count(g.label) > 1:
            first = next(iter(g.results.values()))
            g.label += f" [{first.fingerprint[:8] if first.fingerprint else first.meta.get('data_dir', '?')}]"
    order = {row.key: i for i, row in enumerate(rows)}
    for g in out:
        g.results = dict(sorted(g.results.items(), key=lambda kv: order[kv[0]]))
        g.headline = headline_metrics(list(g.results.values()))
    return out


def _load_details(group: DatasetGroup) -> None:
    for key, r in group.results.items():
        try:
            group.details[key] = load_detail(r.path, r.data)
        except ResultError as exc:
            group.details[key] = f"{exc.message}; {exc.remedy}" if exc.remedy else exc.message


def _compare(group: DatasetGroup, resamples: int, seed: int) -> None:
    if not group.headline:
        return
    first = group.headline[0]
    scored = [k for k, r in group.results.items() if isinstance(r.metrics.get(first), (int, float))]
    if not scored:
        return
    group.leader = max(scored, key=lambda k: group.results[k].metrics[first])  # first of equals wins
    if len(group.results) < 2:
        return
    leader = group.results[group.leader]
    for key, r in group.results.items():
        if key == group.leader:
            continue
        if isinstance(group.details[key], str) or isinstance(group.details[group.leader], str):
            reason = group.details[key] if isinstance(group.details[key], str) else group.details[group.leader]
            group.comparisons[key] = f"no interval: {reason}"
            continue
        try:
            group.comparisons[key] = compare_results(leader, r, resamples=resamples, seed=seed)
        except ResultError as exc:
            group.comparisons[key] = f"no interval: {exc.message}"


def _curves(group: DatasetGroup, rows: dict[tuple, Row]) -> list[tuple[str, str, dict]]:
    panels: dict[str, tuple[str, dict]] = {}
    for key, detail in group.details.items():
        label = rows[key].label
        if isinstance(detail, RetrievalDetail):
            with_text = detail.i2t_rank[detail.i2t_rank >= 0]
            panels.setdefault("text → image", ("recall@k", {}))[1][label] = recall_curve(detail.t2i_rank,
                                                                                         detail.num_images)
            panels.setdefault("image → text", ("recall@k", {}))[1][label] = recall_curve(with_text, detail.num_texts)
        elif isinstance(detail, ClassificationDetail):
            ranks = detail.rank[detail.rank >= 0]
            panels.setdefault("image → class", ("top-k accuracy", {}))[1][label] = recall_curve(
                ranks, len(detail.classnames))
    return [(title, ylabel, lines) for title, (ylabel, lines) in panels.items()]


def _thumb(thumbs: ThumbnailBudget, image_id: str) -> dict:
    return {"id": image_id, "name": os.path.basename(image_id) or image_id, "uri": thumbs.uri(image_id)}


def _worst_order(ranks: np.ndarray, keep: np.ndarray, n: int) -> np.ndarray:
    """Indices of the ``n`` highest ranks among ``keep`` and above 0 (misses only; ties: lower
    index first)."""
    idx = np.flatnonzero(keep & (ranks > 0))
    order = np.lexsort((idx, -ranks[idx]))
    return idx[order[:n]]


def worst_retrieval(detail: RetrievalDetail, thumbs: ThumbnailBudget, n: int = WORST) -> dict:
    """The ``n`` worst text -> image queries (with thumbnails) and image -> text queries (with
    the retrieved captions), positive ranked lowest first."""
    t2i = []
    for t in _worst_order(detail.t2i_rank, np.ones(detail.num_texts, bool), n):
        positive = int(detail.text_to_image[t])
        t2i.append({
            "text": detail.texts[t], "rank": int(detail.t2i_rank[t]) + 1,
            "positive": _thumb(thumbs, detail.image_ids[positive]),
            "retrieved": [{**_thumb(thumbs, detail.image_ids[j]), "hit": int(j) == positive}
                          for j in detail.t2i_topk[t, :SHOWN_TOP_K]],
        })
    i2t = []
    for i in _worst_order(detail.i2t_rank, detail.i2t_rank >= 0, n):
        captions = [detail.texts[t] for t in np.flatnonzero(detail.text_to_image == i)]
        i2t.append({
            "image": _thumb(thumbs, detail.image_ids[i]), "rank": int(detail.i2t_rank[i]) + 1,
            "captions": captions[:MAX_CAPTIONS], "more_captions": max(0, len(captions) - MAX_CAPTIONS),
            "retrieved": [{"text": detail.texts[t], "hit": int(detail.text_to_image[t]) == int(i)}
                          for t in detail.i2t_topk[i, :SHOWN_TOP_K]],
        })
    return {"t2i": t2i, "i2t": i2t}


def worst_classification(detail: ClassificationDetail, thumbs: ThumbnailBudget, n: int = WORST) -> dict:
    """The ``n`` images whose true class ranked lowest."""
    out = []
    for i in _worst_order(detail.rank, detail.rank >= 0, n):
        out.append({"image": _thumb(thumbs, detail.image_ids[i]), "rank": int(detail.rank[i]) + 1,
                    "label": detail.classnames[detail.label[i]] if detail.label is not None else None,
                    "predicted": detail.classnames[detail.predicted[i]]})
    return {"classification": out}


def _facts(r: LoadedResult, row: Row, group: DatasetGroup) -> dict:
    meta = r.meta
    bundle = meta.get("bundle") if isinstance(meta.get("bundle"), dict) else {}
    skipped = meta.get("skipped") if isinstance(meta.get("skipped"), list) else []
    detail = meta.get("detail") if isinstance(meta.get("detail"), dict) else {}
    pairs = [
        ("result file", str(r.path)),
        ("bundle identity", bundle.get("identity")), ("bundle path", bundle.get("path")),
        ("family", bundle.get("family")), ("source", bundle.get("source")), ("revision", bundle.get("revision")),
        ("precision", meta.get("precision")), ("provider", meta.get("provider")),
        ("images", meta.get("num_images")), ("texts", meta.get("num_texts")),
        ("split", meta.get("split")), ("limit", meta.get("limit")), ("data", meta.get("data_dir")),
        ("data fingerprint", meta.get("data_fingerprint")),
        ("batch size", meta.get("batch_size")), ("decode", meta.get("decode")),
        ("detail", detail.get("file") or detail.get("reason")),
    ]
    timings = meta.get("timings") if isinstance(meta.get("timings"), dict) else {}
    versions = meta.get("versions") if isinstance(meta.get("versions"), dict) else {}
    return {
        "row": row.label, "dataset": group.label,
        "facts": [(k, v) for k, v in pairs if v not in (None, "")],
        "timings": [(k, f"{v:.3f} s" if isinstance(v, (int, float)) else str(v)) for k, v in timings.items()],
        "versions": list(versions.items()),
        "skipped": [s if isinstance(s, dict) else {"where": str(s), "reason": ""} for s in skipped[:MAX_SKIPPED_SHOWN]],
        "skipped_total": len(skipped),
        "warnings": [str(w) for w in meta.get("warnings", [])] if isinstance(meta.get("warnings"), list) else [],
    }


def collect(results: list[LoadedResult], *, worst: int = WORST, resamples: int = DEFAULT_RESAMPLES,
            seed: int = DEFAULT_SEED, thumbs: ThumbnailBudget | None = None) -> dict:
    """The template's context: leaderboard, comparisons, curve panels, worst queries and facts.
    Curves are returned as panel data (``curves``); the caller draws them."""
    thumbs = thumbs or ThumbnailBudget()
    rows = _rows(results)
    by_key = {row.key: row for row in rows}
    groups = _groups(results, rows)
    for g in groups:
        _load_details(g)
        _compare(g, resamples, seed)

    leaderboard = []
    for row in rows:
        cells = []
        for g in groups:
            r = g.results.get(row.key)
            comparison = g.comparisons.get(row.key)
            for name in g.headline:
                value = r.metrics.get(name) if r is not None else None
                cell = {"value": value, "leader": row.key == g.leader and value is not None}
                if isinstance(comparison, dict) and name in comparison["metrics"]:
                    m = comparison["metrics"][name]
                    cell.update(diff=m["diff"], ci=m["ci"], p=m.get("mcnemar", {}).get("p_value"))
                cells.append(cell)
        leaderboard.append({"label": row.label, "cells": cells})

    sections = []
    for gi, g in enumerate(groups):
        runs = []
        for key, r in (g.results.items() if worst > 0 else ()):
            detail = g.details[key]
            worst_part = {"t2i": [], "i2t": [], "classification": [], "missing": None}
            if isinstance(detail, RetrievalDetail):
                worst_part.update(worst_retrieval(detail, thumbs, worst))
            elif isinstance(detail, ClassificationDetail):
                worst_part.update(worst_classification(detail, thumbs, worst))
            else:
                worst_part["missing"] = detail
            runs.append({"label": by_key[key].label, "worst": worst_part})
        comparisons = []
        for key, c in g.comparisons.items():
            comparisons.append({"label": by_key[key].label, "leader": by_key[g.leader].label,
                                **({"reason": c} if isinstance(c, str) else {"comparison": c})})
        sections.append({"id": f"ds{gi}", "label": g.label, "task": g.task, "runs": runs,
                         "comparisons": comparisons, "curves": _curves(g, by_key)})

    facts = [_facts(r, by_key[key], g) for g in groups for key, r in g.results.items()]
    return {
        "title": "clipeval report",
        "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "version": __version__,
        "columns": [{"group": g.label, "metrics": [{"name": m, "short": short_metric(m)} for m in g.headline]}
                    for g in groups],
        "leaderboard": leaderboard,
        "sections": sections,
        "facts": facts,
        "bootstrap": {"resamples": resamples, "seed": seed, "confidence": DEFAULT_CONFIDENCE},
        "shown_top_k": SHOWN_TOP_K,
        "thumbnails": {"count": thumbs.count, "bytes": thumbs.bytes, "left_out": thumbs.left_out,
                       "max_count": thumbs.max_count, "max_bytes": thumbs.max_bytes, "side": thumbs.side},
    }
