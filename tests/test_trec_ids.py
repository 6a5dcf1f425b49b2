"""TREC run files and ids holding whitespace: the run format is whitespace-separated, so a run is
refused only when an id it would write holds whitespace (or is empty); corpus or query ids that
never reach the file do not matter. Checked against a naive writer + ``str.split`` reader (the
way trec_eval and pytrec_eval users read the file), and end to end with `clipeval text-eval`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from clipeval.cli.main import cli
from clipeval.engine.datasets.beir import write_beir
from clipeval.engine.errors import DatasetError
from clipeval.engine.results.trec import read_run, unwritable_run_ids, write_run

# ids: plain, with every kind of whitespace str.split() splits on, and empty
ID_PARTS = ["a", "7", "é", "中", " ", "\t", "\u3000", "\xa0", "\x1c", "\x85", "\u2028", "\r", "\n", "\x0b"]


def naive_lines(qids, dids, indices, depth):
    """(qid, docid, line) of each line a plain writer puts in the file."""
    out = []
    for qid, row in zip(qids, np.asarray(indices)[:, :depth].tolist()):
        rank = 0
        for j in row:
            if j < 0:
                break
            rank += 1
            out.append((qid, dids[j], f"{qid} Q0 {dids[j]} {rank} {1.0 / rank!r} t"))
    return out


def unreadable_oracle(qids, dids, indices, depth):
    """The written ids that do not read back as one field: a line of the file split on
    whitespace (trec_eval's reading) must give exactly that id."""
    return {i for q, d, _ in naive_lines(qids, dids, indices, depth) for i in (q, d) if i.split() != [i]}


ids_st = st.lists(st.sampled_from(ID_PARTS), min_size=0, max_size=3).map("".join)


@settings(max_examples=200, deadline=None)
@given(data=st.data(), n_q=st.integers(1, 5), n_d=st.integers(1, 12))
def test_only_written_ids_decide_whether_the_run_can_be_written(tmp_path_factory, data, n_q, n_d):
    qids = data.draw(st.lists(ids_st, min_size=n_q, max_size=n_q, unique=True))
    dids = data.draw(st.lists(ids_st, min_size=n_d, max_size=n_d, unique=True))
    width = data.draw(st.integers(1, n_d))
    rows = []
    for _ in range(n_q):  # a ranking of distinct documents, possibly cut short by -1
        row = data.draw(st.permutations(range(n_d)))[:width]
        short = data.draw(st.integers(0, width))
        rows.append(list(row[:short]) + [-1] * (width - short))
    indices = np.array(rows, dtype=np.int64).reshape(n_q, width)
    scores = np.where(indices >= 0, 1.0 / (1 + np.arange(width)), 0.0)
    depth = data.draw(st.integers(1, width))
    want = unreadable_oracle(qids, dids, indices, depth)
    assert set(unwritable_run_ids(qids, dids, indices, depth)) == want
    path = tmp_path_factory.mktemp("run") / "r.trec"
    if want:
        with pytest.raises(DatasetError):
            write_run(path, qids, dids, indices, scores, "t", depth=depth)
        assert not path.exists()
    else:
        write_run(path, qids, dids, indices, scores, "t", depth=depth)
        expected = {}
        for q, d, line in naive_lines(qids, dids, indices, depth):
            expected.setdefault(q, {})[d] = float(line.split()[4])
        assert read_run(path) == expected
        # and the plain reader of the other tests reads the same
        assert {f[0] for f in (ln.split() for ln in path.read_text().splitlines())} == set(expected)


@pytest.mark.parametrize("bad_doc, bad_query, depth, refused", [
    ("never retrieved", "q", 2, set()),           # the brk2 finding: an id outside the file
    ("d 2", "q", 3, {"d 2"}),                     # the same id within the depth
    ("d\t2", "q", 2, set()),
    ("", "q", 2, set()),                          # an empty id never written
    ("", "q", 3, {""}),
    ("d2", "query one", 2, {"query one"}),        # a query id with a row
])
def test_table(tmp_path, bad_doc, bad_query, depth, refused):
    dids = ["d0", "d1", bad_doc]
    qids = [bad_query, "q2"]
    indices = np.array([[0, 1, 2], [1, 0, 2]])
    scores = np.array([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0]])
    assert set(unwritable_run_ids(qids, dids, indices, depth)) == refused
    if not refused:
        write_run(tmp_path / "r.trec", qids, dids, indices, scores, "t", depth=depth)
        assert len((tmp_path / "r.trec").read_text().splitlines()) == 2 * depth


def test_a_query_without_documents_is_not_written():
    # a row of -1 writes no line: its id cannot matter
    assert unwritable_run_ids(["no docs here", "q"], ["d"], np.array([[-1], [0]]), 1) == []


# --------------------------------------------------------------------------- `clipeval text-eval`

WORDS = ["red", "blue", "green", "cat", "dog", "car", "tree", "house", "boat", "bird", "sun", "moon", "fish"]


def beir_folder(folder: Path, rename: dict[str, str] | None = None) -> Path:
    """250 documents (more than twice the run depth of 100, some with equal texts: exact ties)
    and 3 queries; ``rename`` maps ids."""
    rename = rename or {}
    corpus = [{"_id": rename.get(f"d{i}", f"d{i}"),
               "text": f"a {WORDS[i % 13]} {WORDS[(i // 13) % 13]} and a {WORDS[(i * 3 + 1) % 13]}"} for i in range(250)]
    queries = [{"_id": rename.get(f"q{i}", f"q{i}"), "text": f"a {WORDS[i]} {WORDS[i + 2]}"} for i in range(3)]
    qrels = [(rename.get(f"q{i}", f"q{i}"), f"d{i}", 1) for i in range(3)]  # d0..d2 are never renamed
    return write_beir(folder, corpus, queries, qrels)


def text_eval(data, out, cache, *extra):
    result = CliRunner().invoke(cli, ["text-eval", "--model", "demo", "--data-dir", str(data), "--output-dir",
                                      str(out), "--cache-dir", str(cache), "--dataset-name", "ids", *extra],
                                catch_exceptions=True)
    assert result.exit_code == 0, (result.output, result.exception)
    return json.loads(result.stdout.splitlines()[-1]), result.stderr


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ids")
    printed, _ = text_eval(beir_folder(root / "plain"), root / "out", root / "cache")
    run_file = Path(printed["meta"]["run_file"])
    return root, printed, run_file.read_text()


def test_an_unretrieved_corpus_id_with_whitespace_keeps_the_run_file(plain_run, tmp_path):
    root, printed, text = plain_run
    written = {line.split()[2] for line in text.splitlines()}
    never = sorted({f"d{i}" for i in range(3, 250)} - written)
    assert never, "the corpus must hold documents outside every query's first 100"
    # "d 7\u3000x" sorts below every "dN": trec_eval's tie rule (document id descending) keeps the
    # renamed documents below the others they tie with, so the run is the same run
    renamed = {d: f"d {d[1:]}\u3000x" for d in never}
    data = beir_folder(tmp_path / "spaced", renamed)
    again, err = text_eval(data, tmp_path / "out", root / "cache")
    assert again["metrics"] == printed["metrics"]
    assert again["meta"]["run_file"], (again["meta"].get("run_not_written"), err)
    assert Path(again["meta"]["run_file"]).read_text().replace("clipeval-", "") == text.replace("clipeval-", "")
    assert "run_not_written" not in again["meta"] and "TREC run not written" not in err


@pytest.mark.parametrize("rename", [{"q1": "query one"}, {"d5": "d 5"}, {"q0": "q\u30000"}, {"d6": "d\xa06"}])
def test_a_written_id_with_whitespace_is_refused_with_a_reason(plain_run, tmp_path, rename):
    root, printed, _ = plain_run
    data = beir_folder(tmp_path / "spaced", rename)
    out = tmp_path / "out"
    stale = out / printed["model"] / "ids_text_retrieval.trec"
    stale.parent.mkdir(parents=True)
    stale.write_text("an earlier run\n")
    again, err = text_eval(data, out, root / "cache")
    assert again["metrics"] == printed["metrics"]  # the metrics do not depend on the run file
    meta = again["meta"]
    assert meta["run_file"] is None and not stale.exists()
    assert meta["run_not_written"]["ids"] == list(rename.values())
    assert any("TREC run not written" in w and repr(list(rename.values())[0]) in w for w in meta["warnings"])
    assert "TREC run not written" in err and "without spaces" in err
    # --skip-existing: the result is whole (the same data cannot give a run file) and is reused
    third, err = text_eval(data, out, root / "cache", "--skip-existing")
    assert third == again and "skip_existing" in err
