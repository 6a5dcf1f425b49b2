"""``clipeval compare``: paired bootstrap intervals and McNemar's exact test against slow oracles,
and the refusals."""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
from math import comb

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

import clipeval.engine.results.compare as compare_mod
from clipeval.cli.main import cli
from clipeval.engine.results.compare import (
    PairedStatistic,
    binomial_two_sided_p,
    bootstrap_intervals,
    mcnemar_exact,
    per_query_statistics,
)
from clipeval.engine.errors import ResultError
from clipeval.engine.results.detail import ClassificationDetail, detail_path, load_detail
from datagen import noise_image, write_dataset

# --------------------------------------------------------------------------- slow oracles


def slow_statistic(kind, values, groups=None):
    if kind == "mean":
        return math.fsum(values) / len(values)
    if kind == "median":
        return statistics.median(values)
    per_class = {}
    for v, g in zip(values, groups):
        per_class.setdefault(g, []).append(v)
    return math.fsum(math.fsum(v) / len(v) for v in per_class.values()) / len(per_class)


def slow_quantile(sorted_values, q):
    """numpy's default (linear) quantile, written out: position (n - 1) q between neighbours."""
    h = (len(sorted_values) - 1) * q
    lo = math.floor(h)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (h - lo) * (sorted_values[hi] - sorted_values[lo])


def slow_interval(kind, a, b, groups, resamples, seed, confidence):
    """One resample at a time: the same query indices for A and B."""
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(resamples):
        idx = rng.integers(0, len(a), size=len(a))
        ga = [groups[i] for i in idx] if groups is not None else None
        diffs.append(slow_statistic(kind, [b[i] for i in idx], ga) - slow_statistic(kind, [a[i] for i in idx], ga))
    diffs.sort()
    tail = (1 - confidence) / 2
    return slow_quantile(diffs, tail), slow_quantile(diffs, 1 - tail)


def stat(kind, a, b, groups=None, n_groups=0, queries="q"):
    return PairedStatistic("m", queries, kind, np.asarray(a, float), np.asarray(b, float),
                           groups=None if groups is None else np.asarray(groups), n_groups=n_groups)


# --------------------------------------------------------------------------- bootstrap


@settings(max_examples=12, deadline=None)
@given(n=st.integers(1, 30), kind=st.sampled_from(["mean", "median", "class_mean"]), seed=st.integers(0, 2**32 - 1),
       confidence=st.sampled_from([0.9, 0.95, 0.99]), data=st.data())
def test_bootstrap_intervals_equal_a_slow_loop(n, kind, seed, confidence, data):
    rng = np.random.default_rng(seed)
    if kind == "median":  # ranks
        a, b = rng.integers(1, 20, n).astype(float), rng.integers(1, 20, n).astype(float)
    else:  # hits
        a, b = (rng.random(n) < 0.6).astype(float), (rng.random(n) < 0.7).astype(float)
    groups, n_groups = (rng.integers(0, 4, n), 4) if kind == "class_mean" else (None, 0)
    got = bootstrap_intervals([stat(kind, a, b, groups, n_groups)], resamples=1000, seed=seed, confidence=confidence)
    want = slow_interval(kind, a.tolist(), b.tolist(), None if groups is None else groups.tolist(), 1000, seed,
                         confidence)
    assert got[0] == pytest.approx(want, abs=1e-12)


def test_chunking_does_not_change_the_intervals(monkeypatch):
    rng = np.random.default_rng(4)
    stats = [stat("mean", rng.random(37) < 0.5, rng.random(37) < 0.5), stat("median", rng.integers(1, 9, 37),
                                                                              rng.integers(1, 9, 37))]
    whole = bootstrap_intervals(stats, resamples=1200, seed=9)
    monkeypatch.setattr(compare_mod, "CHUNK_ELEMENTS", 37 * 7)  # 7 resamples per chunk, the last one short
    chunked = bootstrap_intervals(stats, resamples=1200, seed=9)
    for got, want in zip(chunked, whole):  # the same resamples; a BLAS may round a row's sum by the chunk's shape
        assert got == pytest.approx(want, abs=1e-12)


def test_resampling_is_paired_and_joint():
    rng = np.random.default_rng(0)
    a = rng.random(200)
    # B = A + 0.1 on every query: a paired interval of the mean difference is exactly 0.1 wide 0
    (low, high), = bootstrap_intervals([stat("mean", a, a + 0.1)], resamples=1000)
    assert low == pytest.approx(0.1, abs=1e-12) and high == pytest.approx(0.1, abs=1e-12)
    # statistics over the same queries share their resamples: equal inputs, equal intervals
    hits_a, hits_b = rng.random(200) < 0.5, rng.random(200) < 0.5
    one, two = bootstrap_intervals([stat("mean", hits_a, hits_b), stat("mean", hits_a, hits_b)], resamples=1000)
    assert one == two
    # different query sets draw the same rows only by the seed, and a different seed moves the interval
    other = bootstrap_intervals([stat("mean", hits_a, hits_b)], resamples=1000, seed=1)[0]
    assert other != one


def test_bootstrap_rejects_too_few_resamples_and_bad_levels():
    s = stat("mean", [1, 0], [0, 1])
    with pytest.raises(ValueError):
        bootstrap_intervals([s], resamples=999)
    with pytest.raises(ValueError):
        bootstrap_intervals([s], confidence=1.0)
    with pytest.raises(ValueError):
        bootstrap_intervals([PairedStatistic("m", "q", "mode", np.ones(2), np.ones(2))])


# --------------------------------------------------------------------------- McNemar


def test_binomial_p_by_hand():
    assert binomial_two_sided_p(1, 10) == pytest.approx(2 * (comb(10, 0) + comb(10, 1)) / 2**10, rel=1e-12)
    assert binomial_two_sided_p(0, 20) == pytest.approx(2 / 2**20, rel=1e-12)
    assert binomial_two_sided_p(3, 12) == pytest.approx(2 * sum(comb(12, i) for i in range(4)) / 2**12, rel=1e-12)
    assert binomial_two_sided_p(9, 12) == binomial_two_sided_p(3, 12)  # symmetric
    assert binomial_two_sided_p(2, 4) == 1.0 and binomial_two_sided_p(2, 5) == 1.0
    assert binomial_two_sided_p(0, 0) == 1.0
    with pytest.raises(ValueError):
        binomial_two_sided_p(5, 4)


CASES = [(0, 1), (1, 1), (0, 2), (1, 3), (4, 11), (5, 11), (17, 50), (25, 50), (80, 200), (460, 1001), (2400, 5000),
         (30, 10_000), (4900, 10_000)]


@pytest.mark.parametrize("m, n", CASES)
def test_binomial_p_equals_scipy(m, n):
    from scipy.stats import binomtest

    assert binomial_two_sided_p(m, n) == pytest.approx(binomtest(m, n, 0.5).pvalue, rel=1e-9, abs=1e-300)


@settings(max_examples=80, deadline=None)
@given(n=st.integers(0, 400), data=st.data())
def test_binomial_p_equals_scipy_everywhere(n, data):
    from scipy.stats import binomtest

    m = data.draw(st.integers(0, n))
    want = 1.0 if n == 0 else binomtest(m, n, 0.5).pvalue
    assert binomial_two_sided_p(m, n) == pytest.approx(want, rel=1e-9, abs=1e-300)


def test_mcnemar_counts_the_discordant_queries():
    a = np.array([1, 1, 1, 0, 0, 1, 0, 1], bool)
    b = np.array([1, 0, 0, 1, 0, 0, 0, 1], bool)
    got = mcnemar_exact(a, b)
    assert got["a_only"] == 3 and got["b_only"] == 1
    assert got["p_value"] == pytest.approx(2 * (comb(4, 0) + comb(4, 1)) / 2**4)


def test_metrics_without_per_query_definition_are_named():
    d = ClassificationDetail(None, np.array([0, 1]), np.array([0, 0]), None, ["a", "b"], ["x", "y"])
    stats, skipped = per_query_statistics(["mean_average_precision"], d, d)
    assert stats == [] and "score" in skipped["mean_average_precision"]


# --------------------------------------------------------------------------- the command


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_clean_failure(result, *needles):
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output and result.stdout == ""
    assert result.stderr.count("error:") == 1
    for needle in needles:
        assert needle in result.stderr, (needle, result.stderr)


def dataset(root, n=12, words=("cat", "dog")):
    rows = [{"image_path": f"img{i}.png", "query": [f"a photo of a {words[0]} {i}", f"a {words[1]} {i % 4}"]}
            for i in range(n)]
    return write_dataset(root, rows, {f"img{i}.png": noise_image(i) for i in range(n)})


def evaluate(model, data, out, *extra):
    r = run("eval", "--model", model, "--data-dir", data, "--output-dir", out, "--quiet", *extra)
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    return out / result["model"] / "custom_zeroshot_retrieval.json", result


@pytest.fixture(scope="module")
def two_runs(tiny_bundle, tmp_path_factory):
    """The tiny random bundle (A) and the embedded demo model (B) on the same 12 images."""
    root = tmp_path_factory.mktemp("cmp")
    data = dataset(root / "ds")
    file_a, _ = evaluate(tiny_bundle, data, root / "a")
    file_b, _ = evaluate("demo", data, root / "b")
    return root, data, file_a, file_b


def test_compare_two_files(two_runs):
    root, _, file_a, file_b = two_runs
    r = run("compare", file_a, file_b, "--resamples", 1000, "--seed", 3)
    assert r.exit_code == 0, r.output
    (line,) = r.stdout.strip().splitlines()
    c = json.loads(line)
    res_a, res_b = json.loads(file_a.read_text()), json.loads(file_b.read_text())
    assert c["dataset"] == "custom" and c["queries"] == {"texts": 24, "images": 12}
    assert set(c["metrics"]) == set(res_a["metrics"])
    da, db = load_detail(file_a, res_a), load_detail(file_b, res_b)
    for name, m in c["metrics"].items():
        assert m["a"] == res_a["metrics"][name] and m["b"] == res_b["metrics"][name]
        assert m["diff"] == m["b"] - m["a"]
    m = c["metrics"]["image_retrieval_recall@5"]
    hits_a, hits_b = da.t2i_rank < 5, db.t2i_rank < 5
    assert m["mcnemar"]["a_only"] == int(np.sum(hits_a & ~hits_b)) and m["mcnemar"]["b_only"] == int(np.sum(hits_b & ~hits_a))
    assert m["ci"] == pytest.approx(slow_interval("mean", hits_a.astype(float).tolist(), hits_b.astype(float).tolist(),
                                                  None, 1000, 3, 0.95), abs=1e-12)
    m = c["metrics"]["text_retrieval_median_rank"]
    assert "mcnemar" not in m and m["queries"] == "images"
    assert m["ci"] == pytest.approx(slow_interval("median", (da.i2t_rank + 1.0).tolist(), (db.i2t_rank + 1.0).tolist(),
                                                  None, 1000, 3, 0.95), abs=1e-12)
    assert "McNemar p" in r.stderr and "image_retrieval_recall@5" in r.stderr


def test_compare_two_folders_pairs_what_they_share(two_runs, tmp_path):
    root, _, file_a, file_b = two_runs
    files = run("compare", file_a, file_b)
    folders = run("compare", root / "a", root / "b")
    assert folders.exit_code == 0, folders.output
    assert json.loads(folders.stdout)["metrics"] == json.loads(files.stdout)["metrics"]
    # a dataset only one folder has is named, not compared
    extra = root / "b" / "other" / "custom_zeroshot_retrieval.json"
    extra.parent.mkdir(exist_ok=True)
    data = json.loads(file_b.read_text())
    data["dataset"] = "flickr30k"
    extra.write_text(json.dumps(data))
    try:
        r = run("compare", root / "a", root / "b")
        assert r.exit_code == 0, r.output
        assert len(r.stdout.strip().splitlines()) == 1 and "only in B: flickr30k" in r.stderr
    finally:
        shutil.rmtree(extra.parent)


@pytest.mark.parametrize("change", ["data_fingerprint", "limit and fingerprint"])
def test_folders_with_one_dataset_of_other_data_say_so(two_runs, tmp_path, change):
    """K8: two folders holding the same dataset measured on other data (another --limit, rows file)
    were reported as "only in B" (A's result not named at all) and "share no dataset"."""
    root, _, file_a, file_b = two_runs

    def edit(d):
        d["meta"]["data_fingerprint"] = "f" * 64
        if change.startswith("limit"):
            d["meta"]["limit"] = 3

    b = copy_result(file_b, tmp_path / "b" / file_b.parent.name, edit)
    r = run("compare", root / "a", tmp_path / "b")
    assert r.exit_code == 2 and "Traceback" not in r.stderr
    assert "measured other data" in r.stderr and str(b) in r.stderr and str(file_a) in r.stderr
    assert "only in" not in r.stderr and "same data" in r.stderr.splitlines()[-2]


def copy_result(file, folder, edit=None, *, detail=True):
    """A copy of a result (and its detail) in ``folder``, with ``edit(data)`` applied."""
    folder.mkdir(parents=True, exist_ok=True)
    data = json.loads(file.read_text())
    if edit:
        edit(data)
    target = folder / file.name
    target.write_text(json.dumps(data))
    if detail:
        shutil.copy(detail_path(file), detail_path(target))
    return target


def _meta(key, value):
    return lambda d: d["meta"].__setitem__(key, value)


REFUSALS = {
    "dataset": (lambda d: d.__setitem__("dataset", "flickr30k"), "dataset"),
    "task": (lambda d: d.__setitem__("task", "zeroshot_classification"), "task"),
    "split": (_meta("split", "val"), "split"),
    "language": (_meta("language", "zh"), "language"),
    "fingerprint": (lambda d: d["meta"].update(data_fingerprint="f" * 16), None),
    "k list": (_meta("recall_k", [1, 5]), "--recall-k"),
    "recorded metric differs": (lambda d: d["metrics"].__setitem__("image_retrieval_recall@1", 0.123456), "--detail on"),
}


@pytest.mark.parametrize("name", sorted(REFUSALS))
def test_compare_refuses_results_of_different_things(two_runs, tmp_path, name):
    root, _, file_a, file_b = two_runs
    edit, needle = REFUSALS[name]
    if name == "fingerprint":  # both record one, and they differ
        file_a = copy_result(file_a, tmp_path / "fa", lambda d: d["meta"].update(data_fingerprint="a" * 16))
        needle = "data fingerprint"
    other = copy_result(file_b, tmp_path / "x", edit)
    assert_clean_failure(run("compare", file_a, other), needle)


def test_compare_refuses_other_queries_missing_and_stale_detail(two_runs, tiny_bundle, tmp_path):
    root, data, file_a, file_b = two_runs
    other_data = dataset(tmp_path / "ds2", words=("bird", "fish"))
    other, _ = evaluate("demo", other_data, tmp_path / "o")
    assert_clean_failure(run("compare", file_a, other), "data fingerprint")
    for path in (file_a, other):  # results of a clipeval that recorded no fingerprint: the queries tell
        result = json.loads(path.read_text())
        del result["meta"]["data_fingerprint"]
        path.write_text(json.dumps(result))
    assert_clean_failure(run("compare", file_a, other), "different queries")
    no_detail, _ = evaluate("demo", data, tmp_path / "nd", "--detail", "off")
    assert_clean_failure(run("compare", file_a, no_detail), "no per-query detail", "--detail on")
    stale = copy_result(file_b, tmp_path / "stale", detail=False)
    shutil.copy(detail_path(file_a), detail_path(stale))
    assert_clean_failure(run("compare", file_a, stale), "another run", "--detail on")
    gone = copy_result(file_b, tmp_path / "gone", detail=False)
    assert_clean_failure(run("compare", file_a, gone), "cannot read the detail file")


def test_compare_refuses_bad_arguments(two_runs, tmp_path):
    root, _, file_a, file_b = two_runs
    assert_clean_failure(run("compare", file_a, root / "b"), "folder")
    assert_clean_failure(run("compare", file_a, tmp_path / "nope.json"), "does not exist")
    (tmp_path / "list.json").write_text("[]")
    assert_clean_failure(run("compare", file_a, tmp_path / "list.json"), "not a clipeval result")
    (tmp_path / "bad.json").write_text("{")
    assert_clean_failure(run("compare", file_a, tmp_path / "bad.json"), "not JSON")
    (tmp_path / "empty").mkdir()
    assert_clean_failure(run("compare", root / "a", tmp_path / "empty"), "no zeroshot_retrieval")
    r = run("compare", file_a, file_b, "--resamples", 10)
    assert r.exit_code == 2 and "Traceback" not in r.output


def test_compare_classification_results(tiny_bundle, tmp_path):
    from wdsgen import write_classification_set

    root = tmp_path / "cls"
    write_classification_set(root, n=16, n_classes=6, per_shard=5)
    files = []
    for model, out in ((tiny_bundle, "a"), ("demo", "b")):
        r = run("eval", "--model", model, "--dataset", "imagenet1k", "--data-dir", root, "--output-dir", tmp_path / out,
                "--quiet")
        assert r.exit_code == 0, r.output
        files.append(tmp_path / out / json.loads(r.stdout)["model"] / "imagenet1k_zeroshot_classification.json")
    r = run("compare", *files, "--resamples", 1000)
    assert r.exit_code == 0, r.output
    c = json.loads(r.stdout)
    assert set(c["metrics"]) == {"acc1", "acc5", "mean_per_class_recall"} and c["queries"] == {"images": 16}
    da, db = (load_detail(f, json.loads(f.read_text())) for f in files)
    want = slow_interval("class_mean", (da.rank == 0).astype(float).tolist(), (db.rank == 0).astype(float).tolist(),
                         da.label.tolist(), 1000, 0, 0.95)
    assert c["metrics"]["mean_per_class_recall"]["ci"] == pytest.approx(want, abs=1e-12)
    assert "mcnemar" in c["metrics"]["acc1"] and "mcnemar" not in c["metrics"]["mean_per_class_recall"]


def test_compare_and_report_have_help():
    for args in (["compare", "-h"], ["report", "--help"]):
        r = run(*args)
        assert r.exit_code == 0 and "Usage:" in r.output


def _loaded(path, dataset="custom", precision="fp32", fingerprint=None, split="test"):
    from clipeval.engine.results.read import LoadedResult

    meta = {"precision": precision, "split": split, **({"data_fingerprint": fingerprint} if fingerprint else {})}
    return LoadedResult(path, {"dataset": dataset, "task": "zeroshot_retrieval", "model": "m", "metrics": {},
                               "meta": meta})


def test_pairing_folders_by_what_was_measured(tmp_path):
    from clipeval.engine.errors import ResultError
    from clipeval.engine.results.read import pair_results

    a_fp32, a_int8 = _loaded(tmp_path / "a1"), _loaded(tmp_path / "a2", precision="int8")
    b_fp32, b_int8 = _loaded(tmp_path / "b1"), _loaded(tmp_path / "b2", precision="int8")
    pairs, notes = pair_results([a_fp32, a_int8], [b_int8, b_fp32])  # tagged variants in one folder
    assert pairs == [(a_fp32, b_fp32), (a_int8, b_int8)] and notes == []
    pairs, notes = pair_results([a_fp32, a_int8], [b_fp32])
    assert pairs == [(a_fp32, b_fp32)] and notes == [f"no int8 counterpart in B: custom zeroshot_retrieval ({a_int8.path})"]
    # one result each side: paired whatever the precision (fp32 against int8 is a comparison people make)
    assert pair_results([a_fp32], [b_int8])[0] == [(a_fp32, b_int8)]
    # other data, split or dataset: not paired, and named
    for other in (_loaded(tmp_path / "x", fingerprint="f1"), _loaded(tmp_path / "y", split="val"),
                  _loaded(tmp_path / "z", dataset="flickr30k")):
        a = _loaded(tmp_path / "a", fingerprint="f0")
        pairs, notes = pair_results([a], [other])
        if other.match_key == a.match_key:  # one dataset measured on other data: one note naming both (K8)
            assert pairs == [] and len(notes) == 1 and "other data" in notes[0]
            assert str(a.path) in notes[0] and str(other.path) in notes[0]
        else:
            assert pairs == [] and len(notes) == 2
    # a fingerprint on one side only does not prevent pairing (results from before fingerprints)
    assert pair_results([_loaded(tmp_path / "a", fingerprint="f0")], [b_fp32])[0]
    with pytest.raises(ResultError) as err:
        pair_results([a_fp32], [b_fp32, _loaded(tmp_path / "b3")])
    assert "cannot be told apart" in str(err.value) and "FILE_A FILE_B" in str(err.value)


def test_folders_are_searched_by_content_one_level_deep(two_runs, tmp_path):
    from clipeval.engine.results.read import find_results

    root, _, file_a, _ = two_runs
    folder = tmp_path / "runs"
    kept = copy_result(file_a, folder / "model")
    renamed = kept.rename(folder / "model" / "any name.json")  # results are recognised by content
    (folder / "top.json").write_text(file_a.read_text())  # in the folder itself
    (folder / "config.json").write_text('{"eval_backend": "RAGEval"}')
    (folder / "model" / "text.json").write_text(json.dumps({"dataset": "d", "model": "m", "task": "text_retrieval",
                                                            "metrics": {}, "meta": {}}))
    (folder / "model" / "broken.json").write_text("{")
    copy_result(file_a, folder / "a" / "b")  # two levels down: not searched
    assert sorted(r.path for r in find_results([folder])) == sorted([renamed, folder / "top.json"])
    assert [r.path for r in find_results([folder / "model"])] == [renamed]


def test_compare_takes_every_seed_up_to_int64_and_prints_it(two_runs):
    """F10: a seed beyond 64 bits crashed after the table; the bound is checked up front and the
    largest seed works end to end (its JSON line holds it)."""
    root, _, file_a, file_b = two_runs
    r = run("compare", file_a, file_b, "--seed", 2**63 - 1, "--resamples", 1000)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["bootstrap"]["seed"] == 2**63 - 1
    assert_clean_failure(run("compare", file_a, file_b, "--seed", 2**63), "--seed must be at most")


def test_compare_names_paths_that_are_not_regular_files(two_runs, tmp_path):
    """F12: a FIFO or a device was reported as "does not exist" (and is never opened: a FIFO blocks)."""
    import socket

    _, _, file_a, _ = two_runs
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    broken = tmp_path / "broken.json"
    broken.symlink_to(tmp_path / "nowhere.json")
    sock_path = tmp_path / "s.json"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(sock_path))
    try:
        for path, needle in ((fifo, "is a FIFO, not a regular file"), ("/dev/null", "is a character device"),
                             (broken, "is a broken symbolic link"), (sock_path, "is a socket"),
                             (tmp_path / "none.json", "does not exist")):
            assert_clean_failure(run("compare", path, file_a), f"{path} {needle}")
            assert_clean_failure(run("compare", file_a, path), f"{path} {needle}")
    finally:
        sock.close()


@pytest.mark.parametrize("key", ["num_images", "num_texts"])
@pytest.mark.parametrize("value", ["6", 6.0, True, -1, None, [6], {"n": 6}])
def test_a_result_whose_meta_count_is_not_an_integer_is_refused_as_the_result(two_runs, tmp_path, key, value):
    """F13: meta.num_images "6" read "the detail holds 6 images, the result says 6"."""
    _, _, file_a, file_b = two_runs
    bad = copy_result(file_b, tmp_path / "bad", _meta(key, value))
    assert_clean_failure(run("compare", file_a, bad), f"meta.{key} is not a non-negative integer")
    data = json.loads(bad.read_text())  # the detail reader itself names the field too, for a dict not read by read_result
    with pytest.raises(ResultError, match=f"meta.{key} is not an integer|it holds"):
        load_detail(bad, data)
