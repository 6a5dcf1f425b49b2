"""Zero-shot classification: the top-k kernel, metrics against numpy oracles, the task end to end."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from clipeval.cli.main import cli
from clipeval.engine.metrics.classification import average_precision, multilabel_metrics, single_label_metrics
from clipeval.engine.kernels.topk import label_ranks
from clipeval.engine.tasks.zeroshot_classification import average_class_embeddings, class_prompts
from wdsgen import write_classification_set


def oracle_ranks(scores, labels):
    order = np.argsort(-scores, axis=1, kind="stable")
    return np.array([int(np.flatnonzero(order[n] == labels[n])[0]) for n in range(len(labels))])


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 30), c=st.integers(1, 12), levels=st.integers(1, 5), seed=st.integers(0, 10_000))
def test_label_ranks_match_a_stable_sort(n, c, levels, seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, levels, (n, c)).astype(np.float32)  # few levels: many ties
    labels = rng.integers(0, c, n)
    assert np.array_equal(label_ranks(scores, labels), oracle_ranks(scores, labels))


def test_label_ranks_parallel_path_and_all_ties():
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((600, 500)).astype(np.float32)
    labels = rng.integers(0, 500, 600)
    assert np.array_equal(label_ranks(scores, labels, num_threads=2), oracle_ranks(scores, labels))
    ties = np.zeros((4, 7), dtype=np.float32)
    assert label_ranks(ties, np.array([0, 3, 6, 2])).tolist() == [0, 3, 6, 2]


def test_label_ranks_rejects_bad_input():
    with pytest.raises(ValueError):
        label_ranks(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(ValueError):
        label_ranks(np.array([[0.0, np.nan]]), np.array([0]))


def test_single_label_metrics_equal_direct_numpy():
    rng = np.random.default_rng(1)
    n, c = 200, 10
    scores = rng.standard_normal((n, c)).astype(np.float32)
    labels = rng.integers(0, c - 1, n)  # class c-1 never occurs
    metrics, notes = single_label_metrics(scores, labels)
    top = np.argsort(-scores, axis=1, kind="stable")
    acc1 = np.mean(top[:, 0] == labels)
    acc5 = np.mean([labels[i] in top[i, :5] for i in range(n)])
    pred = top[:, 0]
    recalls = [np.mean(pred[labels == k] == k) for k in range(c) if (labels == k).any()]
    assert metrics["acc1"] == pytest.approx(acc1, abs=0)
    assert metrics["acc5"] == pytest.approx(acc5, abs=0)
    assert metrics["mean_per_class_recall"] == pytest.approx(np.mean(recalls), rel=1e-12)
    assert notes["classes_without_images"] == 1


def test_acc5_left_out_below_five_classes():
    scores = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.5, 0.1, 0.4], [0.1, 0.2, 0.3]], dtype=np.float32)
    labels = np.array([0, 1, 2, 2])
    metrics, notes = single_label_metrics(scores, labels)
    assert "acc5" not in metrics and notes["left_out"][0]["metric"] == "acc5"
    assert metrics["acc1"] == 3 / 4
    assert metrics["mean_per_class_recall"] == (1 + 1 + 1 / 2) / 3


def test_mean_average_precision_equals_direct_computation():
    rng = np.random.default_rng(2)
    n, c = 50, 6
    scores = rng.standard_normal((n, c))
    targets = rng.random((n, c)) < 0.3
    targets[:, 5] = False  # a class without positives is left out
    metrics, notes = multilabel_metrics(scores, targets)
    aps = []
    for k in range(5):
        order = sorted(range(n), key=lambda i: (-scores[i, k], i))
        hits, precisions = 0, []
        for pos, i in enumerate(order, start=1):
            if targets[i, k]:
                hits += 1
                precisions.append(hits / pos)
        aps.append(sum(precisions) / len(precisions))
    assert metrics["mean_average_precision"] == pytest.approx(np.mean(aps), rel=1e-12)
    assert notes["classes_without_positives"] == 1
    assert average_precision(np.array([3.0, 2.0, 1.0]), np.array([False, True, True])) == (1 / 2 + 2 / 3) / 2


def test_class_embeddings_are_renormalised_means_of_normalised_prompts():
    prompts, offsets = class_prompts(["cat", "dog"], ["a {c}", "the {c}!", "{c}{c}"])
    assert prompts == ["a cat", "the cat!", "catcat", "a dog", "the dog!", "dogdog"]
    rng = np.random.default_rng(3)
    e = rng.standard_normal((6, 8)).astype(np.float32) * rng.uniform(0.5, 3, (6, 1)).astype(np.float32)
    got = average_class_embeddings(e, offsets)
    for k, sl in enumerate((slice(0, 3), slice(3, 6))):
        v = e[sl] / np.linalg.norm(e[sl], axis=1, keepdims=True)
        m = v.mean(0)
        np.testing.assert_allclose(got[k], m / np.linalg.norm(m), rtol=1e-5, atol=1e-6)
    cupl, off = class_prompts(["a", "b"], {"a": ["x", "y"], "b": ["z"]})
    assert cupl == ["x", "y", "z"] and off.tolist() == [0, 2, 3]


def eval_cli(bundle, *args):
    r = CliRunner().invoke(cli, ["eval", "--model", str(bundle), "--quiet", *map(str, args)])
    return r


def test_task_metrics_equal_numpy_from_the_same_embeddings(tiny_bundle, tmp_path):
    from clipeval.engine.sessions.bundle import load_bundle
    from clipeval.engine.datasets import read_classification_dataset
    from clipeval.engine.embedding.stage import embed_images, embed_texts
    from clipeval.engine.sessions.model import load_model

    root = tmp_path / "ds"
    write_classification_set(root, n=14, n_classes=6, per_shard=4)
    r = eval_cli(tiny_bundle, "--dataset", "imagenet1k", "--data-dir", root, "--output-dir", tmp_path / "out")
    assert r.exit_code == 0, (r.output, r.exception)
    got = json.loads(r.stdout)
    assert got["task"] == "zeroshot_classification" and got["meta"]["num_images"] == 14
    assert got["meta"]["num_prompts"] == 12
    # the oracle: embed directly, average templates, argsort
    model = load_model(load_bundle(tiny_bundle), provider="cpu")
    ds = read_classification_dataset("imagenet1k", root, "test", "fail")
    prompts = [t.replace("{c}", c) for c in ds.classnames for t in ds.templates]
    te = embed_texts(model.text, model.tokenizer, prompts, batch_size=5, progress=False).embeds
    te = te / np.linalg.norm(te, axis=1, keepdims=True)
    w = te.reshape(6, 2, -1).mean(1)
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    im = embed_images(model.vision, model.preprocessor, list(ds.images), batch_size=3, num_workers=0,
                      progress=False).embeds
    scores = im @ w.T
    top = np.argsort(-scores, axis=1, kind="stable")
    labels = ds.labels
    assert got["metrics"]["acc1"] == pytest.approx(np.mean(top[:, 0] == labels), abs=1e-12)
    assert got["metrics"]["acc5"] == pytest.approx(np.mean([labels[i] in top[i, :5] for i in range(14)]), abs=1e-12)
    rec = [np.mean(top[labels == k, 0] == k) for k in range(6)]
    assert got["metrics"]["mean_per_class_recall"] == pytest.approx(np.mean(rec), abs=1e-12)


def test_multilabel_language_custom_files_limit_and_corrupt_images(tiny_bundle, tmp_path):
    root = tmp_path / "voc"
    write_classification_set(root, n=10, n_classes=4, per_shard=4, multilabel=True)
    r = eval_cli(tiny_bundle, "--dataset", "voc2007_multilabel", "--data-dir", root, "--output-dir", tmp_path / "o")
    assert r.exit_code == 0, (r.output, r.exception)
    assert set(json.loads(r.stdout)["metrics"]) == {"mean_average_precision"}

    # language zh (cn accepted) reads zh_ files; without them the error says what to pass
    cls = tmp_path / "cls"
    write_classification_set(cls, n=9, n_classes=3, per_shard=4)
    r = eval_cli(tiny_bundle, "--dataset", "mnist", "--data-dir", cls, "--language", "cn", "--output-dir", tmp_path / "o")
    assert r.exit_code == 2 and "zh_classnames.txt" in r.stderr and "--classnames-file" in r.stderr
    (cls / "zh_classnames.txt").write_text("猫\n狗\n鸟\n", encoding="utf-8")
    (cls / "zh_zeroshot_classification_templates.txt").write_text("一张{c}的照片。\n", encoding="utf-8")
    r = eval_cli(tiny_bundle, "--dataset", "mnist", "--data-dir", cls, "--language", "cn", "--limit", "7",
                 "--output-dir", tmp_path / "o")
    assert r.exit_code == 0, (r.output, r.exception)
    out = json.loads(r.stdout)
    assert out["meta"]["language"] == "zh" and out["meta"]["num_prompts"] == 3 and out["meta"]["num_images"] == 7
    assert "acc5" not in out["metrics"]

    # custom files: JSON keyed by dataset name, and a text file
    (tmp_path / "names.json").write_text(json.dumps({"mnist": ["zero", "one", "two"]}))
    (tmp_path / "t.txt").write_text("{c}\na {c}\n")
    r = eval_cli(tiny_bundle, "--dataset", "mnist", "--data-dir", cls, "--classnames-file", tmp_path / "names.json",
                 "--templates-file", tmp_path / "t.txt", "--output-dir", tmp_path / "o")
    assert r.exit_code == 0, (r.output, r.exception)
    assert json.loads(r.stdout)["meta"]["num_prompts"] == 6

    # a corrupt image inside a shard: fails naming (shard, key), or is skipped and listed
    from wdsgen import classification_samples, write_split

    samples = classification_samples(6, 3)
    samples[4] = {"__key__": samples[4]["__key__"], "png": b"not an image", "cls": b"1"}
    shutil.rmtree(cls / "test")  # the earlier split had more shards: a stale 2.tar would be an error
    write_split(cls, "test", samples, 3)
    r = eval_cli(tiny_bundle, "--dataset", "mnist", "--data-dir", cls, "--output-dir", tmp_path / "o")
    assert r.exit_code == 2 and "test/1.tar#s0000004" in r.stderr
    r = eval_cli(tiny_bundle, "--dataset", "mnist", "--data-dir", cls, "--on-error", "skip", "--output-dir", tmp_path / "o")
    assert r.exit_code == 0, (r.output, r.exception)
    meta = json.loads(r.stdout)["meta"]
    assert meta["num_images"] == 5 and meta["num_skipped_images"] == 1
    assert meta["skipped"][0]["where"] == "test/1.tar#s0000004"
    assert meta["data_left_out"] == {"images": {"undecodable": 1}}


def test_left_out_samples_are_counted_in_the_result(tiny_bundle, tmp_path):
    """A label out of range and a sample without image are left out (--on-error skip), counted in
    meta.data_left_out and said on stderr; the used images plus those equal the samples."""
    from wdsgen import classification_samples, write_split

    cls = tmp_path / "cls"
    samples = classification_samples(8, 3)
    samples[2]["cls"] = b"9"
    del samples[5]["png" if "png" in samples[5] else "webp"]
    write_split(cls, "test", samples, 4)
    (cls / "classnames.txt").write_text("zero\none\ntwo\n")
    (cls / "zeroshot_classification_templates.txt").write_text("a {c}\n")
    r = eval_cli(tiny_bundle, "--dataset", "mnist", "--data-dir", cls, "--on-error", "skip",
                 "--output-dir", tmp_path / "o")
    assert r.exit_code == 0, r.output
    meta = json.loads(r.stdout)["meta"]
    assert meta["data_left_out"] == {"images": {"label_out_of_range": 1, "no_image": 1}}
    assert meta["num_images"] + 2 == len(samples)
    assert "left out 2 images (1 label_out_of_range, 1 no_image)" in r.stderr


def test_a_second_classification_run_is_served_from_the_cache(tiny_bundle, tmp_path, monkeypatch):
    """Class-prompt and image embeddings come from the embedding cache on a second run: no tower
    opens, the hit counts are every prompt and every image, the metrics are the same. Other
    templates are other prompts (another key): only they are embedded again."""
    from clipeval import run_task
    from clipeval.engine.embedding import local

    root = tmp_path / "ds"
    write_classification_set(root, n=10, n_classes=4, per_shard=4)  # 2 templates: 8 prompts
    block = {"models": [{"model_name": str(tiny_bundle)}], "dataset_name": ["imagenet1k"], "data_dir": str(root),
             "output_dir": str(tmp_path / "out"), "cache_dir": str(tmp_path / "cache"), "batch_size": 4,
             "num_workers": 0, "verbose": False}
    (first,) = run_task(block)
    assert first["meta"]["cache"]["image_hits"] == 0 and first["meta"]["cache"]["text_hits"] == 0
    assert first["meta"]["provider"] == "cpu"

    def no_model(*args, **kwargs):
        raise AssertionError("a tower was opened on the second run")

    with monkeypatch.context() as m:
        m.setattr(local, "open_tower", no_model)
        (second,) = run_task(block)
    assert second["metrics"] == first["metrics"] and second["meta"]["provider"] == "none"
    assert second["meta"]["cache"] == {"path": str(tmp_path / "cache" / "embeddings" / "embeddings.sqlite3"),
                                       "image_hits": 10, "text_hits": 4 * 2}
    (tmp_path / "t.txt").write_text("a photo of a {c}.\na sketch of a {c}.\n")  # one template shared, one new
    (third,) = run_task({**block, "templates_file": str(tmp_path / "t.txt")})
    assert third["meta"]["cache"]["image_hits"] == 10 and third["meta"]["cache"]["text_hits"] == 4
    assert third["meta"]["provider"] == "cpu"
