"""A flat qrels.jsonl asked for several splits (engine/datasets/beir.py, engine/tasks/text_retrieval.py):
every split without a qrels/SPLIT.tsv of its own reads it, as evalscope does, so the numbers stay;
the run says so once on stderr, naming the file and the splits, and each of those results records
it in meta.qrels_shared."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from clipeval.cli.main import cli
from clipeval.engine.datasets.beir import QRELS_JSONL, qrels_path, read_beir, splits_sharing_flat_qrels

DOCS = ["a red car", "a small dog", "snow on a tree", "a blue house", "green grass", "a yellow star"]
SPLITS = ["test", "dev", "train", "val"]


def write_beir(folder: Path, flat: bool = True, tsv_splits=()) -> Path:
    """A BEIR folder of DOCS: query i's relevant document is d{i}; ``flat``: a qrels.jsonl; each
    of ``tsv_splits`` a qrels/SPLIT.tsv judging another document (d{i+1}), so they differ."""
    folder.mkdir(parents=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"_id": f"d{i}", "text": t}) + "\n"
                                                 for i, t in enumerate(DOCS)))
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": f"q{i}", "text": t.split()[-1]}) + "\n"
                                                  for i, t in enumerate(DOCS)))
    if flat:
        (folder / QRELS_JSONL).write_text("".join(json.dumps({"query-id": f"q{i}", "corpus-id": f"d{i}", "score": 1})
                                                  + "\n" for i in range(len(DOCS))))
    for split in tsv_splits:
        (folder / "qrels").mkdir(exist_ok=True)
        (folder / "qrels" / f"{split}.tsv").write_text(
            "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{(i + 1) % len(DOCS)}\t1\n" for i in range(len(DOCS))))
    return folder


@pytest.mark.parametrize("flat, tsv_splits, asked, shared", [
    (True, [], ["test", "dev"], ["test", "dev"]),             # the case
    (True, [], ["test", "dev", "train"], ["test", "dev", "train"]),
    (True, [], ["test"], []),                                 # one split: nothing shared
    (True, ["test"], ["test", "dev"], []),                    # only dev reads the flat file
    (True, ["test"], ["test", "dev", "train"], ["dev", "train"]),
    (True, ["test", "dev"], ["test", "dev"], []),
    (False, ["test", "dev"], ["test", "dev"], []),
    (False, [], ["test", "dev"], []),                         # no qrels at all: the reader's error, later
])
def test_the_splits_that_share_the_flat_file_are_named(tmp_path, flat, tsv_splits, asked, shared):
    folder = write_beir(tmp_path / "b", flat, tsv_splits)
    assert splits_sharing_flat_qrels(folder, asked) == shared
    for split in asked:
        want = (folder / "qrels" / f"{split}.tsv" if split in tsv_splits else folder / QRELS_JSONL if flat else None)
        assert qrels_path(folder, split) == want
        if want is not None:
            assert read_beir(folder, split).qrels_file == want  # the reader takes the file named


@settings(max_examples=60, deadline=None)
@given(flat=st.booleans(), tsv=st.sets(st.sampled_from(SPLITS)), asked=st.lists(st.sampled_from(SPLITS),
                                                                                  min_size=1, max_size=4, unique=True))
def test_any_layout_shares_exactly_the_splits_without_a_tsv(tmp_path_factory, flat, tsv, asked):
    folder = write_beir(tmp_path_factory.mktemp("h") / "b", flat, sorted(tsv))
    readers = [s for s in asked if s not in tsv] if flat else []
    assert splits_sharing_flat_qrels(folder, asked) == (readers if len(readers) >= 2 else [])


def _mteb(tmp_path, folder, splits, models=("demo",)):
    path = tmp_path / "mteb.json"
    path.write_text(json.dumps({"work_dir": str(tmp_path / "out"), "eval_backend": "RAGEval", "eval_config": {
        "tool": "mteb", "models": [{"model_name_or_path": m} for m in models],
        "eval": {"custom_tasks": [{"name": "CustomRetrieval", "data_path": str(folder), "eval_splits": splits}]}}}))
    r = CliRunner().invoke(cli, ["run", str(path)])
    assert r.exit_code == 0, r.output
    return [json.loads(line) for line in r.stdout.splitlines()], r.stderr


def test_a_flat_qrels_asked_for_two_splits_keeps_the_numbers_and_says_so_once(tmp_path, tiny_bundle):
    """The issue's example, with two encoders: one warning for the task, not one per model or split."""
    folder = write_beir(tmp_path / "beir", flat=True)
    results, stderr = _mteb(tmp_path, folder, ["test", "dev"], models=("demo", str(tiny_bundle)))
    assert len(results) == 4
    warnings = [line for line in stderr.splitlines() if "only qrels file of splits" in line]
    assert len(warnings) == 1, stderr
    assert str(folder / QRELS_JSONL) in warnings[0] and "test, dev" in warnings[0]
    assert len({r["model"] for r in results}) == 2
    for model in {r["model"] for r in results}:
        test, dev = [r for r in results if r["model"] == model]
        assert test["dataset"].endswith("-test") and dev["dataset"] == test["dataset"][:-len("test")] + "dev"
        assert test["metrics"] == dev["metrics"]  # the same judgements, as evalscope evaluates them
        for r in (test, dev):
            shared = r["meta"]["qrels_shared"]
            assert shared["file"] == str(folder / QRELS_JSONL) and shared["splits"] == ["test", "dev"]
            assert shared["note"] in warnings[0] and r["meta"]["qrels_file"] == shared["file"]
    # the numbers are those of the one split run alone
    r = CliRunner().invoke(cli, ["text-eval", "--model", "demo", "--data-dir", str(folder), "--k", "mteb",
                                 "--batch-size", "32", "--output-dir", str(tmp_path / "one"), "-q"])
    assert r.exit_code == 0, r.output
    alone = json.loads(r.stdout)
    assert alone["metrics"] == results[0]["metrics"] and alone["model"] == results[0]["model"]  # demo came first


@pytest.mark.parametrize("tsv_splits", [["test", "dev"], ["test"]])
def test_splits_with_their_own_qrels_say_nothing(tmp_path, tsv_splits):
    folder = write_beir(tmp_path / "beir", flat=True, tsv_splits=tsv_splits)
    results, stderr = _mteb(tmp_path, folder, ["test", "dev"])
    assert "only qrels file" not in stderr
    assert all("qrels_shared" not in r["meta"] for r in results)
    by_split = {r["meta"]["mteb"]["split"]: r for r in results}
    for split in ("test", "dev"):
        own = folder / "qrels" / f"{split}.tsv"
        assert by_split[split]["meta"]["qrels_file"] == str(own if split in tsv_splits else folder / QRELS_JSONL)
