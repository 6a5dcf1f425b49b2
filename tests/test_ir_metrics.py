"""IR metrics against pytrec_eval (trec_eval itself) and a slow oracle written from trec_eval's C code."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clipeval.engine.metrics.ir import score_run_dict, trec_order

KS = (1, 3, 5, 10, 100)


def oracle(run, qrels, ks):
    """Per-query values, one plain loop per measure, after trec_eval's form_res_rels sort
    (sim descending, then docno descending)."""
    out = {}
    for qid, docs in run.items():
        if qid not in qrels:
            continue
        judged = qrels[qid]
        # trec_eval reads each score into a C float
        ranked = sorted(docs, key=lambda d: (-float(np.float32(docs[d])), [-ord(c) for c in d] + [1]))
        rels = [judged.get(d, 0) for d in ranked]
        num_rel = sum(1 for v in judged.values() if v >= 1)
        ideal = sorted((v for v in judged.values() if v > 0), reverse=True)
        vals = {}
        for k in ks:
            dcg = sum(r / math.log2(i + 2) for i, r in enumerate(rels[:k]) if r > 0)
            idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal[:k]))
            vals[f"ndcg_at_{k}"] = dcg / idcg if idcg > 0 else 0.0
            hits, ap = 0, 0.0
            for i, r in enumerate(rels[:k]):
                if r >= 1:
                    hits += 1
                    ap += hits / (i + 1)
            vals[f"recall_at_{k}"] = hits / num_rel if num_rel else 0.0
            vals[f"map_at_{k}"] = ap / num_rel if num_rel else 0.0
            first = next((i for i, r in enumerate(rels[:k]) if r >= 1), None)
            vals[f"mrr_at_{k}"] = 0.0 if first is None else 1.0 / (first + 1)
            vals[f"precision_at_{k}"] = hits / k
            vals[f"hit_rate_at_{k}"] = 0.0 if first is None else 1.0
        out[qid] = vals
    return out


def random_case(seed, n_queries=25, n_docs=60, depth=30, tie_levels=None, near_ties=False):
    """Random run and graded qrels. Scores drawn from few levels make many ties; some qrels name
    documents never retrieved; some queries have only non-relevant judgements; some are unjudged."""
    rng = np.random.default_rng(seed)
    docs = [f"d{i}" for i in range(n_docs)] + [str(i) for i in range(10)] + ["é", "Z", "a b"]
    run, qrels = {}, {}
    for q in range(n_queries):
        qid = f"q{q}" if q % 3 else str(q)  # some query ids equal document ids
        n = int(rng.integers(1, depth + 1))
        chosen = rng.choice(len(docs), size=n, replace=False)
        if tie_levels:
            scores = rng.integers(0, tie_levels, size=n) / tie_levels
            if near_ties:  # distinct float64 values that round to the same float32: ties for trec_eval
                scores = scores - 0.3 + rng.integers(0, 4, size=n) * 2.0**-40
        else:
            scores = rng.standard_normal(n)
        run[qid] = {docs[j]: float(s) for j, s in zip(chosen, scores)}
        if q % 7 == 6:
            continue  # no qrels: not evaluated
        judged = rng.choice(len(docs), size=int(rng.integers(1, 12)), replace=False)
        grades = rng.integers(0, 4, size=len(judged)) if q % 5 else np.zeros(len(judged), dtype=int)
        qrels[qid] = {docs[j]: int(g) for j, g in zip(judged, grades)}
        if q % 3 == 0:
            qrels[qid][qid] = 2  # the relevant document has the query's id
            run[qid][qid] = max(run[qid].values())  # ... and is retrieved, tied with the best
    qrels["only_in_qrels"] = {"d1": 1}
    return run, qrels


def pytrec_values(run, qrels, ks):
    pytrec_eval = pytest.importorskip("pytrec_eval")
    cut = ",".join(map(str, ks))
    ev = pytrec_eval.RelevanceEvaluator(qrels, {f"ndcg_cut.{cut}", f"map_cut.{cut}", f"recall.{cut}", f"P.{cut}",
                                                f"success.{cut}"})
    main = ev.evaluate(run)
    out = {q: {} for q in main}
    for q, vals in main.items():
        for k in ks:
            out[q][f"ndcg_at_{k}"] = vals[f"ndcg_cut_{k}"]
            out[q][f"map_at_{k}"] = vals[f"map_cut_{k}"]
            out[q][f"recall_at_{k}"] = vals[f"recall_{k}"]
            out[q][f"precision_at_{k}"] = vals[f"P_{k}"]
            out[q][f"hit_rate_at_{k}"] = vals[f"success_{k}"]
    rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"})
    for k in ks:  # MRR@k: recip_rank on the run cut to its first k documents in trec order
        cut_run = {}
        for q, docs in run.items():
            names = list(docs)
            keep = [names[i] for i in trec_order(names, [docs[d] for d in names])[:k]]
            cut_run[q] = {d: docs[d] for d in keep}
        for q, vals in rr.evaluate(cut_run).items():
            out[q][f"mrr_at_{k}"] = vals["recip_rank"]
    return out


def assert_close(ours_means, ours_per_query, qids, expected):
    assert sorted(qids) == sorted(expected)
    for name, values in ours_per_query.items():
        for q, v in zip(qids, values):
            assert abs(v - expected[q][name]) <= 1e-9, (q, name, v, expected[q][name])
        mean = sum(expected[q][name] for q in qids) / len(qids)
        assert abs(ours_means[name] - mean) <= 1e-9


@pytest.mark.parametrize("seed,tie_levels,near", [(0, None, False), (1, 3, False), (2, 2, False), (3, 1, False),
                                                  (4, 3, True), (5, 1, True)])
def test_identical_to_pytrec_eval(seed, tie_levels, near):
    run, qrels = random_case(seed, tie_levels=tie_levels, near_ties=near)
    means, per_query, qids = score_run_dict(run, qrels, KS)
    assert_close(means, per_query, qids, pytrec_values(run, qrels, KS))


@pytest.mark.parametrize("seed,tie_levels", [(10, None), (11, 2), (12, 1)])
def test_identical_to_slow_oracle(seed, tie_levels):
    run, qrels = random_case(seed, tie_levels=tie_levels)
    means, per_query, qids = score_run_dict(run, qrels, KS)
    assert_close(means, per_query, qids, oracle(run, qrels, KS))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31), levels=st.sampled_from([None, 1, 2, 5]), near=st.booleans(),
       ks=st.lists(st.integers(1, 40), min_size=1, max_size=4, unique=True))
def test_any_k_matches_both(seed, levels, near, ks):
    run, qrels = random_case(seed, n_queries=8, n_docs=20, depth=15, tie_levels=levels, near_ties=near and bool(levels))
    means, per_query, qids = score_run_dict(run, qrels, ks)
    assert_close(means, per_query, qids, oracle(run, qrels, ks))
    assert_close(means, per_query, qids, pytrec_values(run, qrels, ks))


def test_ties_break_on_document_id_descending():
    # Equal scores: trec_eval puts "b" before "a", so the relevant "a" is at rank 2.
    run = {"q": {"a": 0.5, "b": 0.5}}
    means, _, _ = score_run_dict(run, {"q": {"a": 1}}, [1, 2])
    assert means["mrr_at_1"] == 0.0
    assert means["mrr_at_2"] == 1 / 2
    assert means["ndcg_at_2"] == (1 / math.log2(3)) / 1.0
    means, _, _ = score_run_dict(run, {"q": {"b": 1}}, [1])
    assert means["ndcg_at_1"] == 1.0


def test_hand_computed_values():
    # Ranking: d1 (rel 2), d2 (0), d3 (1); qrels also hold d4 (rel 3), never retrieved.
    run = {"q": {"d1": 0.9, "d2": 0.8, "d3": 0.7}}
    qrels = {"q": {"d1": 2, "d2": 0, "d3": 1, "d4": 3}}
    m, _, _ = score_run_dict(run, qrels, [1, 3, 5])
    idcg3 = 3 + 2 / math.log2(3) + 1 / math.log2(4)
    assert m["ndcg_at_3"] == pytest.approx((2 + 1 / math.log2(4)) / idcg3, abs=1e-15)
    assert m["ndcg_at_1"] == pytest.approx(2 / 3, abs=1e-15)
    assert m["recall_at_1"] == 1 / 3 and m["recall_at_3"] == 2 / 3 and m["recall_at_5"] == 2 / 3
    assert m["map_at_3"] == pytest.approx((1 / 1 + 2 / 3) / 3, abs=1e-15)
    assert m["mrr_at_1"] == 1.0


def test_scores_that_differ_below_float32_are_ties():
    """Issue 11 item 3: trec_eval holds scores as float32; a and b below are one float32 value,
    so b (the larger id) ranks first, whatever their float64 order."""
    run = {"q": {"a": -0.7758557347814263, "b": -0.7758557422221544}}
    means, _, _ = score_run_dict(run, {"q": {"a": 1}}, [1, 2])
    assert means["ndcg_at_1"] == means["recall_at_1"] == means["map_at_1"] == means["mrr_at_1"] == 0.0
    assert means["precision_at_1"] == means["hit_rate_at_1"] == 0.0
    assert means["mrr_at_2"] == 1 / 2 and means["hit_rate_at_2"] == 1.0 and means["precision_at_2"] == 1 / 2
    expected = pytrec_values(run, {"q": {"a": 1}}, [1, 2])["q"]
    for name, value in means.items():
        assert value == expected[name], name


def test_precision_divides_by_k_even_for_short_runs():
    run = {"q": {"d1": 0.9, "d2": 0.5}}
    m, _, _ = score_run_dict(run, {"q": {"d1": 1, "d2": 1, "d3": 1}}, [1, 5])
    assert m["precision_at_1"] == 1.0 and m["precision_at_5"] == 2 / 5
    assert m["hit_rate_at_1"] == 1.0 and m["recall_at_5"] == 2 / 3
