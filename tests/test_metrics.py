"""Retrieval metrics: hand cases written as formulas, and CLIP_benchmark's dense definition."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clipeval.engine.errors import MetricError
from clipeval.engine.metrics.retrieval import evaluate_retrieval, retrieval_metrics


def clip_benchmark_recalls(text_emb, image_emb, text_to_image, ks):
    """CLIP_benchmark's ``zeroshot_retrieval`` metric, re-done naively in numpy.

    Dense score matrix, top-k per query, a query is a hit when one of its positives is in its
    top-k (``(recall > 0).mean()``). Scores in float64, so that no rounding-level near-tie can
    be ordered differently from the kernel's exact scores.
    """
    scores = text_emb.astype(np.float64) @ image_emb.astype(np.float64).T
    positive = np.zeros(scores.shape, dtype=bool)
    positive[np.arange(len(text_to_image)), text_to_image] = True
    out = {}
    for k in ks:
        for name, s, pos in (("image", scores, positive), ("text", scores.T, positive.T)):
            topk = np.argsort(-s, axis=1)[:, :k]
            nb_true_positive = np.take_along_axis(pos, topk, axis=1).sum(axis=1)
            out[f"{name}_retrieval_recall@{k}"] = float((nb_true_positive > 0).mean())
    return out


def normalised(rng, n, dim):
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_hand_case_recalls_and_ranks():
    # 4 texts over 3 images; image 2 has no text.
    t2i = np.array([0, 1, 0, 2])
    i2t = np.array([0, 3, -1])
    m, notes = retrieval_metrics(t2i, i2t, [1, 2, 3], k_explicit=True)
    assert m["image_retrieval_recall@1"] == 2 / 4
    assert m["image_retrieval_recall@2"] == 3 / 4
    assert m["image_retrieval_recall@3"] == 4 / 4
    assert m["text_retrieval_recall@1"] == 1 / 2  # over the 2 images that have texts
    assert m["text_retrieval_recall@2"] == 1 / 2
    assert m["text_retrieval_recall@3"] == 1 / 2
    assert m["image_retrieval_mean_rank"] == (1 + 2 + 1 + 3) / 4
    assert m["image_retrieval_median_rank"] == (1 + 2) / 2
    assert m["text_retrieval_mean_rank"] == (1 + 4) / 2
    assert m["text_retrieval_median_rank"] == (1 + 4) / 2
    assert notes["images_without_texts"] == 1
    assert notes["recall_k"] == [1, 2, 3]
    assert notes["recall_k_left_out"] == []
    assert all(isinstance(v, float) for v in m.values())


def test_default_k_larger_than_gallery_is_left_out_and_noted():
    # 5 images (as in the reference documentation's example) and 8 texts.
    t2i = np.array([0, 1, 2, 3, 4, 0, 0, 1])
    i2t = np.array([0, 0, 1, 0, 7])
    m, notes = retrieval_metrics(t2i, i2t, None, k_explicit=False)
    assert "image_retrieval_recall@10" not in m
    assert m["image_retrieval_recall@5"] == 8 / 8
    assert m["image_retrieval_recall@1"] == 3 / 8
    assert "text_retrieval_recall@10" not in m  # 8 texts < 10
    assert m["text_retrieval_recall@5"] == 4 / 5
    left = {(item["k"], item["direction"]) for item in notes["recall_k_left_out"]}
    assert left == {(10, "image_retrieval"), (10, "text_retrieval")}
    assert all("larger than" in item["reason"] for item in notes["recall_k_left_out"])


def test_default_k_left_out_in_one_direction_only():
    # 3 images, 12 texts: k=5 and k=10 fit the texts but not the images.
    t2i = np.zeros(12, np.int64)
    i2t = np.array([0, 4, 9])
    m, notes = retrieval_metrics(t2i, i2t, None, k_explicit=False)
    assert sorted(k for k in m if k.startswith("image_retrieval_recall")) == [
        "image_retrieval_recall@1"
    ]
    assert m["text_retrieval_recall@5"] == 2 / 3
    assert m["text_retrieval_recall@10"] == 3 / 3
    assert {(i["k"], i["direction"]) for i in notes["recall_k_left_out"]} == {
        (5, "image_retrieval"),
        (10, "image_retrieval"),
    }


def test_explicit_k_larger_than_gallery_is_an_error():
    t2i = np.array([0, 1, 2, 3, 4])
    i2t = np.array([0, 1, 2, 3, 4])
    with pytest.raises(MetricError, match=r"k=6 is larger than the 5 images") as info:
        retrieval_metrics(t2i, i2t, [1, 6], k_explicit=True)
    assert info.value.remedy
    # The same list, not asked for by the user, is trimmed instead.
    m, notes = retrieval_metrics(t2i, i2t, [1, 6], k_explicit=False)
    assert "image_retrieval_recall@6" not in m and m["image_retrieval_recall@1"] == 1 / 5
    assert len(notes["recall_k_left_out"]) == 2


def test_k_equal_to_gallery_is_one():
    t2i = np.array([3, 0, 2, 1])
    i2t = np.array([1, 3, 0, 2])
    m, _ = retrieval_metrics(t2i, i2t, [4], k_explicit=True)
    assert m["image_retrieval_recall@4"] == 1.0
    assert m["text_retrieval_recall@4"] == 1.0


@pytest.mark.parametrize("bad", [[0], [-1], [1.5], [True], ["5"], [], "5", 5])
def test_invalid_k_is_an_error(bad):
    with pytest.raises(MetricError, match="recall_k"):
        retrieval_metrics(np.array([0]), np.array([0]), bad, k_explicit=True)


def test_duplicate_k_reported_once():
    m, notes = retrieval_metrics(np.array([0, 1]), np.array([0, 1]), [1, 1, 2], k_explicit=True)
    assert notes["recall_k"] == [1, 2]
    assert m["image_retrieval_recall@1"] == 1 / 2


def test_malformed_ranks_are_an_error():
    with pytest.raises(MetricError, match="t2i_ranks"):
        retrieval_metrics(np.array([0, 2]), np.array([0, 1]), None, k_explicit=False)
    with pytest.raises(MetricError, match="i2t_ranks"):
        retrieval_metrics(np.array([0, 1]), np.array([-2, 1]), None, k_explicit=False)
    with pytest.raises(MetricError, match="no image has a text"):
        retrieval_metrics(np.array([0]), np.array([-1]), None, k_explicit=False)
    with pytest.raises(MetricError, match="integer"):
        retrieval_metrics(np.array([0.0]), np.array([0]), None, k_explicit=False)


@pytest.mark.parametrize("seed,n_images,per_image,dim", [(0, 30, 5, 16), (1, 12, 1, 8), (2, 40, 3, 4)])
def test_matches_clip_benchmark_definition(seed, n_images, per_image, dim):
    rng = np.random.default_rng(seed)
    image = normalised(rng, n_images, dim)
    text_to_image = np.repeat(np.arange(n_images), per_image)
    text = image[text_to_image] + 0.8 * normalised(rng, len(text_to_image), dim)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    ks = [1, 5, 10]
    m, notes = evaluate_retrieval(text, image, text_to_image, ks, k_explicit=True)
    expected = clip_benchmark_recalls(text, image, text_to_image, ks)
    for key, value in expected.items():
        assert m[key] == pytest.approx(value, abs=1e-12), key
    assert notes["images_without_texts"] == 0
    # The data is neither trivial nor hopeless.
    assert 0 < m["image_retrieval_recall@1"] < 1


def test_evaluate_retrieval_reports_kernel_errors_as_metric_error():
    with pytest.raises(MetricError, match="dimension"):
        evaluate_retrieval(np.ones((2, 3), np.float32), np.ones((2, 4), np.float32), [0, 1])
    with pytest.raises(MetricError, match="recall_k"):
        evaluate_retrieval(np.ones((2, 3), np.float32), np.ones((2, 3), np.float32), [0, 1], [0])


@settings(max_examples=30, deadline=None)
@given(
    n_images=st.integers(1, 8),
    per_image=st.integers(1, 3),
    dim=st.integers(2, 6),
    ks=st.lists(st.integers(1, 12), min_size=1, max_size=4),
    explicit=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_hypothesis_against_dense_definition(n_images, per_image, dim, ks, explicit, seed):
    rng = np.random.default_rng(seed)
    image = normalised(rng, n_images, dim)
    text_to_image = np.repeat(np.arange(n_images), per_image)
    text = normalised(rng, len(text_to_image), dim)
    n_texts = len(text_to_image)
    too_large = max(ks) > min(n_images, n_texts)
    if explicit and too_large:
        with pytest.raises(MetricError):
            evaluate_retrieval(text, image, text_to_image, ks, k_explicit=True)
        return
    m, notes = evaluate_retrieval(text, image, text_to_image, ks, k_explicit=explicit)
    expected = clip_benchmark_recalls(text, image, text_to_image, sorted(set(ks)))
    for k in set(ks):
        for name, gallery in (("image", n_images), ("text", n_texts)):
            key = f"{name}_retrieval_recall@{k}"
            if k > gallery:
                assert key not in m
                assert {"k": k, "direction": f"{name}_retrieval"}.items() <= next(
                    item for item in notes["recall_k_left_out"]
                    if item["k"] == k and item["direction"] == f"{name}_retrieval"
                ).items()
            else:
                assert m[key] == pytest.approx(expected[key], abs=1e-12)
