"""Per-query detail: ranks and top-k lists against the dense oracle, the file format, the option."""

from __future__ import annotations

import hashlib
import io
import json
import os

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

import clipeval.engine.results.detail as detail_mod
from clipeval.cli.main import cli
from clipeval.engine.results.detail import (
    TOP_K,
    ClassificationPerQuery,
    best_true_rank,
    RetrievalPerQuery,
    detail_path,
    gallery_ids,
    load_detail,
    pack_strings,
    top_k,
    unpack_strings,
    write_detail,
)
from clipeval.engine.errors import ResultError
from clipeval.engine.kernels.topk_small import top_k_small
from clipeval.engine.metrics.retrieval import retrieval_metrics, score_retrieval
from clipeval.engine.kernels.search import top_k as top_k_numba
from datagen import noise_image, write_dataset


# --------------------------------------------------------------------------- oracles


def quantised(rng, n, dim, levels):
    """Embeddings whose every dot product is exact in float32 and float64 (small multiples of 1/4),
    so the dense float64 matrix is the canonical score and ties are real ties."""
    return (rng.integers(-levels, levels + 1, (n, dim)) / 4.0).astype(np.float32)


def dense_order(q, d):
    """Oracle: every query's documents, best first, ties to the lower index (stable sort)."""
    s = q.astype(np.float64) @ d.astype(np.float64).T
    return np.argsort(-s, axis=1, kind="stable")


def oracle_detail(text, image, text_to_image):
    """Ranks and top lists of both directions from the dense matrix."""
    t_order = dense_order(text, image)  # [T, I]
    i_order = dense_order(image, text)  # [I, T]
    t2i = np.array([int(np.flatnonzero(t_order[t] == p)[0]) for t, p in enumerate(text_to_image)])
    i2t = []
    for i in range(len(image)):
        positives = np.flatnonzero(text_to_image == i)
        i2t.append(min(int(np.flatnonzero(i_order[i] == t)[0]) for t in positives) if positives.size else -1)
    return t2i, np.array(i2t), t_order, i_order


# --------------------------------------------------------------------------- top-k paths


@settings(max_examples=60, deadline=None)
@given(n_q=st.integers(1, 25), n_d=st.integers(1, 30), dim=st.integers(1, 9), levels=st.integers(0, 3),
       seed=st.integers(0, 10_000), data=st.data())
def test_top_k_paths_equal_the_dense_oracle(n_q, n_d, dim, levels, seed, data):
    rng = np.random.default_rng(seed)
    q, d = quantised(rng, n_q, dim, levels), quantised(rng, n_d, dim, levels)
    k = data.draw(st.integers(1, n_d))
    expected = dense_order(q, d)[:, :k]
    small, small_scores = top_k_small(q, d, k)
    assert np.array_equal(small, expected)
    numba, numba_scores = top_k_numba(q, d, k, block_rows=data.draw(st.integers(1, 7)),
                                      block_cols=data.draw(st.integers(1, 9)))
    assert np.array_equal(numba, expected)
    assert np.array_equal(small_scores, numba_scores)  # canonical scores, bit for bit


@pytest.mark.parametrize("case", ["gaussian", "all_ties", "duplicates", "k_is_gallery", "one_document"])
def test_top_k_special_cases(case):
    rng = np.random.default_rng(7)
    q = rng.standard_normal((40, 16)).astype(np.float32)
    d = rng.standard_normal((33, 16)).astype(np.float32)
    k = 10
    if case == "all_ties":
        q[:], d[:] = 0.5, 0.25
    elif case == "duplicates":
        d[::2] = d[1]
    elif case == "k_is_gallery":
        k = len(d)
    elif case == "one_document":
        d, k = d[:1], 1
    expected = dense_order(q, d)[:, :k]
    assert np.array_equal(top_k_small(q, d, k)[0], expected)
    assert np.array_equal(top_k_numba(q, d, k, block_rows=7, block_cols=5)[0], expected)


def test_the_top_k_dispatcher_gives_the_same_lists_on_both_paths(monkeypatch):
    rng = np.random.default_rng(3)
    q, d = quantised(rng, 50, 8, 2), quantised(rng, 70, 8, 2)
    small = top_k(q, d, 10)
    monkeypatch.setattr("clipeval.engine.kernels.topk_small.SMALL_PAIRS", 0)  # force the numba kernel
    large = top_k(q, d, 10)
    assert np.array_equal(small[0], large[0]) and np.array_equal(small[1], large[1])


def rounded_order_oracle(q, d, tie):
    """Oracle of the text-retrieval ranking: every pair's canonical score (arrays.dot64_pairs, the
    definition), rounded to float32, sorted by score descending then tie key ascending."""
    from clipeval.engine.kernels.arrays import dot64_pairs

    out_idx, out_scores = [], []
    for row in q:
        s = dot64_pairs(np.repeat(row[None, :], len(d), axis=0), d).astype(np.float32).astype(np.float64)
        order = sorted(range(len(d)), key=lambda j: (-s[j], tie[j]))
        out_idx.append(order)
        out_scores.append(s[order])
    return np.array(out_idx), np.array(out_scores)


def near_ties(rng, n_q, n_d, dim):
    """Gaussian embeddings whose documents come in groups differing in the last bits of one
    component: canonical scores that differ only below float32 resolution (ties once rounded)."""
    q = rng.standard_normal((n_q, dim)).astype(np.float32)
    base = rng.standard_normal((max(1, n_d // 3), dim)).astype(np.float32)
    d = base[rng.integers(0, len(base), n_d)].copy()
    bump = rng.integers(-3, 4, n_d).astype(np.int32)
    d[:, 0] = (d[:, 0].view(np.int32) + bump).view(np.float32)
    return q, d


@settings(max_examples=60, deadline=None)
@given(n_q=st.integers(1, 12), n_d=st.integers(1, 40), dim=st.integers(1, 24), kind=st.sampled_from(
    ["gaussian", "near_ties", "quantised"]), seed=st.integers(0, 10_000), data=st.data())
def test_top_k_paths_with_tie_keys_equal_the_rounded_oracle(n_q, n_d, dim, kind, seed, data):
    """Both paths rank as the text-retrieval task needs (float32-rounded canonical scores, a
    caller's tie keys) and agree bit for bit, on inputs with ties only after rounding too."""
    rng = np.random.default_rng(seed)
    if kind == "gaussian":
        q, d = rng.standard_normal((n_q, dim)).astype(np.float32), rng.standard_normal((n_d, dim)).astype(np.float32)
    elif kind == "near_ties":
        q, d = near_ties(rng, n_q, n_d, dim)
    else:
        q, d = quantised(rng, n_q, dim, 2), quantised(rng, n_d, dim, 2)
    tie = rng.permutation(n_d).astype(np.int64)
    k = data.draw(st.integers(1, n_d))
    want_idx, want_scores = rounded_order_oracle(q, d, tie)
    small_idx, small_scores = top_k_small(q, d, k, tie_keys=tie)
    numba_idx, numba_scores = top_k_numba(q, d, k, tie_keys=tie, block_rows=data.draw(st.integers(1, 5)),
                                          block_cols=data.draw(st.integers(1, 9)))
    assert np.array_equal(small_idx, want_idx[:, :k]) and np.array_equal(small_scores, want_scores[:, :k])
    assert np.array_equal(numba_idx, want_idx[:, :k]) and np.array_equal(numba_scores, want_scores[:, :k])


def test_text_retrieval_ranks_small_and_large_inputs_alike(monkeypatch):
    """The text-retrieval task's ranking gives identical lists on the numpy path and the numba
    kernel (forced by lowering SMALL_PAIRS), ties in trec_eval's order (document id descending)."""
    from clipeval.engine.tasks import text_retrieval

    rng = np.random.default_rng(5)
    q, d = near_ties(rng, 30, 90, 16)
    ids = [f"doc{j}" for j in rng.permutation(90)]
    assert 30 * 25 <= text_retrieval.SMALL_RESCORED
    small = text_retrieval._rank(q, d, 25, ids, None)
    monkeypatch.setattr("clipeval.engine.kernels.topk_small.SMALL_PAIRS", 0)
    large = text_retrieval._rank(q, d, 25, ids, None)
    assert np.array_equal(small[0], large[0]) and np.array_equal(small[1], large[1])
    want, _ = rounded_order_oracle(q, d, text_retrieval.trec_tie_keys(ids))
    assert np.array_equal(small[0], want[:, :25])


def test_top_k_small_rejects_bad_input():
    with pytest.raises(ValueError):
        top_k_small(np.ones((2, 3), np.float32), np.ones((4, 2), np.float32), 1)
    with pytest.raises(ValueError):
        top_k_small(np.ones((2, 3), np.float32), np.ones((4, 3), np.float32), 5)
    with pytest.raises(TypeError):
        top_k_small(np.ones((2, 3), np.float32), np.ones((4, 3), np.float32), 1.5)
    with pytest.raises(ValueError, match="tie_keys"):
        top_k_small(np.ones((2, 3), np.float32), np.ones((4, 3), np.float32), 1, tie_keys=np.arange(3))


# --------------------------------------------------------------------------- retrieval detail


def written_detail(tmp_path, text, image, text_to_image, mode="on"):
    metrics, notes, (t2i, i2t) = score_retrieval(text, image, text_to_image)
    per_query = RetrievalPerQuery(text, image, text_to_image, t2i, i2t, [f"text {t}" for t in range(len(text))],
                                  [f"#{i}" for i in range(len(image))])
    result_file = tmp_path / "r.json"
    info = write_detail(result_file, per_query, mode)
    result = {"metrics": metrics, "meta": {"detail": info, "num_texts": len(text), "num_images": len(image)}}
    return load_detail(result_file, result), metrics


@settings(max_examples=50, deadline=None)
@given(n_t=st.integers(1, 30), n_i=st.integers(1, 14), dim=st.integers(1, 6), levels=st.integers(0, 2),
       seed=st.integers(0, 10_000))
def test_detail_ranks_and_lists_equal_the_dense_oracle(tmp_path_factory, n_t, n_i, dim, levels, seed):
    rng = np.random.default_rng(seed)
    text, image = quantised(rng, n_t, dim, levels), quantised(rng, n_i, dim, levels)
    text_to_image = rng.integers(0, n_i, n_t)  # some images may have no text
    got, metrics = written_detail(tmp_path_factory.mktemp("d"), text, image, text_to_image)
    t2i, i2t, t_order, i_order = oracle_detail(text, image, text_to_image)
    assert np.array_equal(got.t2i_rank, t2i) and np.array_equal(got.i2t_rank, i2t)
    assert np.array_equal(got.t2i_topk, t_order[:, :min(TOP_K, n_i)])
    assert np.array_equal(got.i2t_topk, i_order[:, :min(TOP_K, n_t)])
    assert np.array_equal(got.text_to_image, text_to_image)
    # the metrics are those of the stored ranks
    assert retrieval_metrics(got.t2i_rank, got.i2t_rank, None, k_explicit=False)[0] == metrics
    # a positive inside the list sits at its rank
    inside = got.t2i_rank < got.t2i_topk.shape[1]
    assert np.array_equal(got.t2i_topk[inside, got.t2i_rank[inside]], text_to_image[inside])


@pytest.mark.parametrize("case", ["all_ties", "duplicate_images", "duplicate_texts", "one_image", "image_without_text",
                                  "many_texts"])
def test_detail_special_galleries(tmp_path, case):
    rng = np.random.default_rng(11)
    text, image = quantised(rng, 24, 4, 2), quantised(rng, 12, 4, 2)
    text_to_image = np.arange(24) % 12
    if case == "all_ties":
        text[:], image[:] = 0.25, 0.5
    elif case == "duplicate_images":
        image[1::2] = image[0]
    elif case == "duplicate_texts":
        text[::3] = text[1]
    elif case == "one_image":
        image, text_to_image = image[:1], np.zeros(24, dtype=np.int64)
    elif case == "image_without_text":
        text_to_image = np.where(text_to_image == 5, 4, text_to_image)
    elif case == "many_texts":
        text = quantised(rng, 400, 4, 2)
        text_to_image = np.arange(400) % 12
    got, _ = written_detail(tmp_path, text, image, text_to_image)
    t2i, i2t, t_order, i_order = oracle_detail(text, image, text_to_image)
    assert np.array_equal(got.t2i_rank, t2i) and np.array_equal(got.i2t_rank, i2t)
    assert np.array_equal(got.t2i_topk, t_order[:, :min(TOP_K, len(image))])
    assert np.array_equal(got.i2t_topk, i_order[:, :min(TOP_K, len(text))])


def test_the_numba_ranking_path_and_its_detail_agree(tmp_path, monkeypatch):
    """Inputs above SMALL_PAIRS rank with the numba kernels and list with the blocked top-k."""
    monkeypatch.setattr("clipeval.engine.kernels.SMALL_PAIRS", 0)
    monkeypatch.setattr("clipeval.engine.kernels.topk_small.SMALL_PAIRS", 0)
    rng = np.random.default_rng(5)
    text, image = quantised(rng, 90, 5, 2), quantised(rng, 40, 5, 2)
    text_to_image = rng.integers(0, 40, 90)
    got, _ = written_detail(tmp_path, text, image, text_to_image)
    t2i, i2t, t_order, i_order = oracle_detail(text, image, text_to_image)
    assert np.array_equal(got.t2i_rank, t2i) and np.array_equal(got.i2t_rank, i2t)
    assert np.array_equal(got.t2i_topk, t_order[:, :TOP_K]) and np.array_equal(got.i2t_topk, i_order[:, :TOP_K])


# --------------------------------------------------------------------------- classification detail


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 20), c=st.integers(1, 8), levels=st.integers(1, 4), seed=st.integers(0, 10_000))
def test_best_true_rank_equals_a_stable_sort(n, c, levels, seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, levels, (n, c)).astype(np.float32)
    targets = rng.random((n, c)) < 0.3
    order = np.argsort(-scores, axis=1, kind="stable")
    expected = [min((int(np.flatnonzero(order[r] == t)[0]) for t in np.flatnonzero(targets[r])), default=-1)
                for r in range(n)]
    assert best_true_rank(scores, targets).tolist() == expected


def test_classification_detail_round_trip(tmp_path):
    per_query = ClassificationPerQuery(np.array([0, 3, 1]), np.array([2, 0, 1]), np.array([2, 1, 0]),
                                       ["a.jpg", "b.jpg", "c.jpg"], ["cat", "dog", "bird", "fish"])
    info = write_detail(tmp_path / "c.json", per_query, "on")
    got = load_detail(tmp_path / "c.json", {"meta": {"detail": info, "num_images": 3}})
    assert got.kind == "classification" and got.rank.tolist() == [0, 3, 1] and got.label.tolist() == [2, 1, 0]
    assert got.predicted.tolist() == [2, 0, 1] and got.classnames == ["cat", "dog", "bird", "fish"]
    multi = ClassificationPerQuery(np.array([-1, 2]), np.array([1, 1]), None, ["x", "y"], ["a", "b", "c"])
    info = write_detail(tmp_path / "m.json", multi, "on")
    got = load_detail(tmp_path / "m.json", {"meta": {"detail": info}})
    assert got.multilabel and got.rank.tolist() == [-1, 2]


# --------------------------------------------------------------------------- the file


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(max_size=30), max_size=20))
def test_strings_round_trip(strings):
    assert unpack_strings(pack_strings("s", strings), "s") == strings


def test_strings_with_lone_surrogates_and_nul_round_trip():
    strings = ["\ud800 lone", "nul\x00inside", "", "日本語 ✓", "e\u0301"]
    assert unpack_strings(pack_strings("s", strings), "s") == strings


def test_gallery_ids_never_read_images(tmp_path):
    from clipeval.engine.datasets.wds import ShardImages

    shards = ShardImages([tmp_path / "missing.tar"], [0, 0], [0, 10], [5, 5], ["test/0.tar#a", "test/0.tar#b"])
    assert gallery_ids(shards) == ["test/0.tar#a", "test/0.tar#b"]
    assert gallery_ids(["rel.jpg", tmp_path / "abs.jpg", b"bytes"]) == [
        os.path.join(os.getcwd(), "rel.jpg"), str(tmp_path / "abs.jpg"), "#2"]


def valid_retrieval_arrays():
    rng = np.random.default_rng(0)
    text, image = quantised(rng, 6, 3, 2), quantised(rng, 3, 3, 2)
    text_to_image = np.arange(6) % 3
    _, _, (t2i, i2t) = score_retrieval(text, image, text_to_image)
    per_query = RetrievalPerQuery(text, image, text_to_image, t2i, i2t, list("abcdef"), ["x", "y", "z"])
    return {"format": np.array(1), "kind": np.array("retrieval"), **per_query.arrays()}


def _set(name, value):
    return lambda a: a.__setitem__(name, value)


CORRUPTIONS = {
    "missing t2i_rank": lambda a: a.pop("t2i_rank"),
    "float ranks": lambda a: a.__setitem__("t2i_rank", a["t2i_rank"].astype(np.float64)),
    "rank past the gallery": lambda a: a.__setitem__("t2i_rank", a["t2i_rank"] + 3),
    "negative text rank": lambda a: a.__setitem__("i2t_rank", a["i2t_rank"] - 2),
    "top-k outside the gallery": lambda a: a.__setitem__("t2i_topk", a["t2i_topk"] + 100),
    "top-k 1-D": lambda a: a.__setitem__("t2i_topk", a["t2i_topk"].ravel()),
    "short texts": lambda a: a.update(pack_strings("texts", list("abc"))),
    "offsets past the bytes": lambda a: a.__setitem__("texts_offsets", a["texts_offsets"] + 1),
    "offsets decreasing": lambda a: a.__setitem__("texts_offsets", a["texts_offsets"][::-1].copy()),
    "bytes not uint8": lambda a: a.__setitem__("image_ids_utf8", a["image_ids_utf8"].astype(np.int32)),
    "invalid utf-8": lambda a: a.update({"texts_utf8": np.full(6, 0xFF, np.uint8),
                                         "texts_offsets": np.arange(7, dtype=np.int64)}),
    "unknown kind": _set("kind", np.array("segmentation")),
    "kind not a scalar": _set("kind", np.array(["retrieval"])),
    "newer format": _set("format", np.array(2)),
    "an object array": _set("texts_utf8", np.array([object()], dtype=object)),
}


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_malformed_detail_files_are_refused(tmp_path, name):
    arrays = valid_retrieval_arrays()
    CORRUPTIONS[name](arrays)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    data = buf.getvalue()
    (tmp_path / "r.detail.npz").write_bytes(data)
    result = {"meta": {"detail": {"file": "r.detail.npz", "sha256": hashlib.sha256(data).hexdigest()}}}
    with pytest.raises(ResultError) as err:
        load_detail(tmp_path / "r.json", result)
    assert "--detail on" in str(err.value)


@pytest.mark.parametrize("case", ["no meta", "detail off", "file missing", "changed since", "not a zip",
                                  "counts differ from the result"])
def test_missing_or_foreign_detail_files_are_refused(tmp_path, case):
    arrays = valid_retrieval_arrays()
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    data = buf.getvalue()
    path = tmp_path / "r.detail.npz"
    path.write_bytes(data)
    info = {"file": path.name, "sha256": hashlib.sha256(data).hexdigest()}
    result = {"meta": {"detail": info}}
    needle = "r.detail.npz"
    if case == "no meta":
        result, needle = {"meta": {}}, "no per-query detail"
    elif case == "detail off":
        result, needle = {"meta": {"detail": {"file": None, "reason": "detail: off"}}}, "detail: off"
    elif case == "file missing":
        path.unlink()
    elif case == "changed since":
        path.write_bytes(data + b"x")
        needle = "another run"
    elif case == "not a zip":
        path.write_bytes(b"garbage")
        info["sha256"] = hashlib.sha256(b"garbage").hexdigest()
        needle = "not a readable detail file"
    elif case == "counts differ from the result":
        result["meta"]["num_texts"] = 7
    with pytest.raises(ResultError) as err:
        load_detail(tmp_path / "r.json", result)
    assert needle in str(err.value) and "--detail on" in str(err.value)


@pytest.mark.parametrize("name", ["", ".", "..", "/", "//", "/etc/hostname", "../r.detail.npz", "a/r.detail.npz",
                                  "r.detail.npz/", "r.detail.npz\0", "fifo.npz", "zero.npz", "folder.npz"])
def test_detail_file_names_that_are_no_plain_file_beside_the_result_are_refused(tmp_path, name):
    """K3/K4: meta.detail.file is read back from a result file (--skip-existing --detail on, compare,
    report): a name that is no plain file name beside the result, or that names a FIFO, a device or a
    folder, is a ResultError at once (never a ValueError, never a read that blocks or never ends)."""
    arrays = valid_retrieval_arrays()
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    (tmp_path / "r.detail.npz").write_bytes(buf.getvalue())
    os.mkfifo(tmp_path / "fifo.npz")
    os.symlink("/dev/zero", tmp_path / "zero.npz")
    (tmp_path / "folder.npz").mkdir()
    result = {"meta": {"detail": {"file": name, "sha256": hashlib.sha256(buf.getvalue()).hexdigest()}}}
    with pytest.raises(ResultError) as err:
        load_detail(tmp_path / "r.json", result)
    assert "--detail on" in str(err.value)


@settings(max_examples=200, deadline=None)
@given(name=st.text(max_size=12))
def test_any_text_as_the_detail_file_name_is_read_or_refused(tmp_path_factory, name):
    tmp_path = tmp_path_factory.mktemp("d")
    result = {"meta": {"detail": {"file": name, "sha256": "0" * 64}}}
    with pytest.raises(ResultError):  # nothing there holds that sha256: refused, whatever the name
        load_detail(tmp_path / "r.json", result)


def test_write_detail_modes_and_the_auto_bound(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    text, image = quantised(rng, 8, 3, 2), quantised(rng, 4, 3, 2)
    _, _, (t2i, i2t) = score_retrieval(text, image, np.arange(8) % 4)
    per_query = RetrievalPerQuery(text, image, np.arange(8) % 4, t2i, i2t, ["t"] * 8, ["i"] * 4)
    result_file = tmp_path / "x_zeroshot_retrieval.json"
    assert detail_path(result_file).name == "x_zeroshot_retrieval.detail.npz"
    info = write_detail(result_file, per_query, "auto")
    assert info["file"] == "x_zeroshot_retrieval.detail.npz" and detail_path(result_file).is_file()
    assert info["sha256"] == hashlib.sha256(detail_path(result_file).read_bytes()).hexdigest()
    monkeypatch.setattr(detail_mod, "AUTO_MAX_BYTES", per_query.estimated_bytes() - 1)
    info = write_detail(result_file, per_query, "auto")
    assert info["file"] is None and "MiB" in info["reason"] and not detail_path(result_file).exists()
    assert write_detail(result_file, per_query, "on")["file"] is not None
    assert write_detail(result_file, per_query, "off") == {"file": None, "reason": "detail: off"}
    assert not detail_path(result_file).exists()
    with pytest.raises(ValueError):
        write_detail(result_file, per_query, "sometimes")


def test_estimated_size_bounds_the_real_file():
    rng = np.random.default_rng(2)
    text, image = rng.standard_normal((300, 8)).astype(np.float32), rng.standard_normal((120, 8)).astype(np.float32)
    _, _, (t2i, i2t) = score_retrieval(text, image, np.arange(300) % 120)
    per_query = RetrievalPerQuery(text, image, np.arange(300) % 120, t2i, i2t, [f"caption number {t}" for t in range(300)],
                                  [f"/data/images/{i:05d}.jpg" for i in range(120)])
    raw = sum(a.nbytes for a in per_query.arrays().values())
    assert per_query.estimated_bytes() == raw


# --------------------------------------------------------------------------- end to end


def eval_args(model, data, out, *extra):
    return ["eval", "--model", str(model), "--data-dir", str(data), "--output-dir", str(out), "--quiet", *map(str, extra)]


def small_dataset(root, n=7):
    rows = [{"image_path": f"img{i}.png", "query": [f"a photo of a cat {i}", f"a dog {i % 3}"]} for i in range(n)]
    return write_dataset(root, rows, {f"img{i}.png": noise_image(i) for i in range(n)})


def test_eval_writes_the_detail_of_the_ranks_it_scored(tiny_bundle, tmp_path):
    from clipeval.engine.sessions.bundle import load_bundle
    from clipeval.engine.datasets import read_dataset
    from clipeval.engine.embedding.stage import embed_images, embed_texts
    from clipeval.engine.sessions.model import load_model

    data = small_dataset(tmp_path / "ds")
    r = CliRunner().invoke(cli, eval_args(tiny_bundle, data, tmp_path / "out", "--recall-k", "1", "--recall-k", "3"))
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    result_file = tmp_path / "out" / result["model"] / "custom_zeroshot_retrieval.json"
    got = load_detail(result_file, result)
    assert got.num_texts == 14 and got.num_images == 7
    assert got.image_ids == [str(data / f"img{i}.png") for i in range(7)]
    # the metrics in the result are those of the stored ranks
    metrics, _ = retrieval_metrics(got.t2i_rank, got.i2t_rank, [1, 3], k_explicit=True)
    assert metrics == result["metrics"]
    # and the ranks are those of the dense oracle on the same embeddings
    model = load_model(load_bundle(tiny_bundle), provider="cpu")
    ds = read_dataset("custom", data, "test", "fail")
    image = embed_images(model.vision, model.preprocessor, ds.images, batch_size=4, num_workers=0,
                         progress=False).embeds
    text = embed_texts(model.text, model.tokenizer, ds.texts, batch_size=4, progress=False).embeds
    t2i, i2t, t_order, i_order = oracle_detail(text, image, ds.text_to_image)
    assert np.array_equal(got.t2i_rank, t2i) and np.array_equal(got.i2t_rank, i2t)
    assert np.array_equal(got.t2i_topk, t_order[:, :7]) and np.array_equal(got.i2t_topk, i_order[:, :10])
    assert got.texts == ds.texts


def test_detail_option_off_auto_bound_and_skip_existing(tiny_bundle, tmp_path, monkeypatch):
    data = small_dataset(tmp_path / "ds", 5)
    out = tmp_path / "out"
    run = CliRunner().invoke
    r = run(cli, eval_args(tiny_bundle, data, out, "--detail", "off"))
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    assert result["meta"]["detail"] == {"file": None, "reason": "detail: off"}
    result_file = out / result["model"] / "custom_zeroshot_retrieval.json"
    assert not detail_path(result_file).exists()
    # --skip-existing with --detail on recomputes a result that has no detail, then skips it
    r = run(cli, eval_args(tiny_bundle, data, out, "--skip-existing", "--detail", "on"))
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["meta"]["detail"]["file"] == "custom_zeroshot_retrieval.detail.npz"
    stamp = detail_path(result_file).stat().st_mtime_ns
    r = run(cli, eval_args(tiny_bundle, data, out, "--skip-existing", "--detail", "on"))
    assert r.exit_code == 0 and detail_path(result_file).stat().st_mtime_ns == stamp
    # auto: over the bound nothing is written and the result says why
    monkeypatch.setattr(detail_mod, "AUTO_MAX_BYTES", 100)
    r = run(cli, eval_args(tiny_bundle, data, out))
    assert r.exit_code == 0, r.output
    assert "--detail on" in json.loads(r.stdout)["meta"]["detail"]["reason"]
    assert not detail_path(result_file).exists()


def test_detail_config_key(tiny_bundle, tmp_path):
    from clipeval import run_task
    from clipeval.engine.errors import ConfigError

    data = small_dataset(tmp_path / "ds", 4)
    block = {"models": [{"model_name": str(tiny_bundle)}], "data_dir": str(data), "output_dir": str(tmp_path / "o"),
             "verbose": False}
    (result,) = run_task({**block, "detail": "off"})
    assert result["meta"]["detail"]["file"] is None
    with pytest.raises(ConfigError) as err:
        run_task({**block, "detail": "sometimes"})
    assert "detail" in str(err.value) and "auto" in str(err.value)


def test_classification_detail_end_to_end(tiny_bundle, tmp_path):
    from wdsgen import write_classification_set

    root = tmp_path / "cls"
    write_classification_set(root, n=14, n_classes=6, per_shard=4)
    r = CliRunner().invoke(cli, ["eval", "--model", str(tiny_bundle), "--dataset", "imagenet1k", "--data-dir", str(root),
                                 "--output-dir", str(tmp_path / "out"), "--quiet"])
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    got = load_detail(tmp_path / "out" / result["model"] / "imagenet1k_zeroshot_classification.json", result)
    assert result["metrics"]["acc1"] == np.mean(got.rank < 1) and result["metrics"]["acc5"] == np.mean(got.rank < 5)
    assert np.array_equal(got.predicted == got.label, got.rank == 0)
    assert got.classnames == [f"class{c}" for c in range(6)] and got.image_ids[0].startswith("test/0.tar#")

    multi = tmp_path / "voc"
    write_classification_set(multi, n=10, n_classes=4, per_shard=4, multilabel=True)
    r = CliRunner().invoke(cli, ["eval", "--model", str(tiny_bundle), "--dataset", "voc2007_multilabel", "--data-dir",
                                 str(multi), "--output-dir", str(tmp_path / "out"), "--quiet"])
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    got = load_detail(tmp_path / "out" / result["model"] / "voc2007_multilabel_zeroshot_classification.json", result)
    assert got.multilabel and len(got.rank) == 10 and got.rank.max() < 4
