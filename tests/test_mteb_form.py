"""evalscope's ``tool: mteb`` config form: messages in clipeval's words with the file's line (F44),
split names and repeats checked (F44), and the models ``clipeval text-eval`` takes (F43)."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from clipeval.cli.main import cli
from clipeval.engine.config import parse_task_cfg
from clipeval.engine.config.mteb import CustomTaskEntry, EvalBlock, MtebModel
from clipeval.engine.errors import ConfigError

PYDANTIC_WORDS = ("Input should", "should have", "function-", "after validation", "[type=", "pydantic",
                  "CustomTaskEntry", "lambda", "validation error")


def mteb_cfg(models=None, tasks=None, **eval_keys):
    return {"work_dir": "outputs", "eval_backend": "RAGEval",
            "eval_config": {"tool": "MTEB", "models": models or [{"model_name_or_path": "enc"}],
                            "eval": {"custom_tasks": tasks or [{"name": "CustomRetrieval", "data_path": "d"}],
                                     **eval_keys}}}


def problems_of(cfg) -> str:
    with pytest.raises(ConfigError) as info:
        parse_task_cfg(cfg)
    text = str(info.value)
    for word in PYDANTIC_WORDS:
        assert word not in text, (word, text)
    return text


def test_an_empty_split_list_is_one_problem_in_clipevals_words():
    text = problems_of(mteb_cfg(tasks=[{"name": "CustomRetrieval", "data_path": "beir1", "eval_splits": []}]))
    assert text.splitlines()[0] == "eval_config.eval.custom_tasks[0].eval_splits: must not be empty, got a list ([])"
    assert len(text.splitlines()) == 2


# every key of the form with values of other types: each problem names its key, in clipeval's words
FIELDS = [("models", 0, name) for name in MtebModel.model_fields] + \
         [("eval", "custom_tasks", 0, name) for name in CustomTaskEntry.model_fields] + \
         [("eval", name) for name in EvalBlock.model_fields if name != "custom_tasks"]
BAD = [[], {}, 3.5, True, -1, 10**20, "", "x", [None], {"a": [1]}]


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.sampled_from(FIELDS), st.sampled_from(BAD))
def test_any_wrong_value_names_its_key_without_pydantic_internals(where, value):
    if where[-1] == "is_cross_encoder" and value is True:
        return  # a valid value: the config then has no encoder, a problem of models (tested elsewhere)
    cfg = mteb_cfg()
    block = cfg["eval_config"]
    for part in where[:-1]:
        block = block[part]
    block[where[-1]] = value
    try:
        parse_task_cfg(cfg)
    except ConfigError as exc:
        text = str(exc)
        for word in PYDANTIC_WORDS:
            assert word not in text, (word, text)
        path = "eval_config." + ".".join(str(p) for p in where).replace(".0.", "[0].").replace("models.0", "models[0]")
        assert path.replace("custom_tasks.0", "custom_tasks[0]") in text, (path, text)


@pytest.mark.parametrize("split", ["../t", "a/b", "..", ".", "", " ", "a\\b", "t\x00", "x\n"])
def test_split_names_that_are_not_file_names_are_refused(split):
    text = problems_of(mteb_cfg(tasks=[{"data_path": "d", "eval_splits": ["test", split]}]))
    assert "custom_tasks[0].eval_splits[1]: must name a split (e.g. test, dev)" in text


def test_repeated_tasks_and_splits_run_once(caplog):
    with caplog.at_level(logging.WARNING):
        cfg = parse_task_cfg(mteb_cfg(tasks=["d", "d", {"data_path": "d", "eval_splits": ["test", "dev", "test"]}]))
    assert [(t.data_path, t.splits) for t in cfg.tasks] == [("d", ["test"]), ("d", ["test", "dev"])]
    assert caplog.text.count("evaluated once") == 2


def test_mteb_problems_carry_the_files_line(tmp_path):
    cfg = mteb_cfg(limits=0)
    cfg["eval_config"]["models"][0]["pooling"] = "cls"
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    lines = path.read_text().splitlines()
    r = CliRunner().invoke(cli, ["run", str(path)])
    assert r.exit_code == 2 and r.stdout == ""
    limits_line = next(i for i, line in enumerate(lines, 1) if "limits:" in line)
    pooling_line = next(i for i, line in enumerate(lines, 1) if "pooling:" in line)
    assert f"{path}:{limits_line}: eval_config.eval.limits: must be at least 1, got 0" in r.stderr, r.stderr
    assert f"{path}:{pooling_line}: eval_config.models[0].pooling: unknown key" in r.stderr, r.stderr
    one = mteb_cfg(limits=0)
    path.write_text(json.dumps(one, indent=1))
    r = CliRunner().invoke(cli, ["run", str(path.with_suffix(".yaml"))])
    assert r.exit_code == 2 and len(r.stderr.splitlines()) == 2 and ": eval_config.eval.limits: must be at least 1" \
        in r.stderr.splitlines()[0], r.stderr


# --- F43: the models text-eval takes ------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_beir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mteb") / "beir1"
    (folder / "qrels").mkdir(parents=True)
    docs = ["a red car", "a small dog", "snow on a tree", "a blue house", "green grass"]
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"_id": f"d{i}", "text": t}) + "\n"
                                                 for i, t in enumerate(docs)))
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": f"q{i}", "text": t.split()[-1]}) + "\n"
                                                  for i, t in enumerate(docs)))
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" +
                                               "".join(f"q{i}\td{i}\t1\n" for i in range(len(docs))))
    return folder


@pytest.mark.parametrize("model", ["demo", "tiny_bundle"])
def test_the_mteb_form_takes_demo_and_clip_bundles_as_text_eval_does(model, tiny_beir, tmp_path, request):
    name = str(request.getfixturevalue("tiny_bundle")) if model == "tiny_bundle" else model
    cfg = mteb_cfg(models=[{"model_name_or_path": name}], tasks=[{"data_path": str(tiny_beir)}])
    cfg["work_dir"] = str(tmp_path / "m")
    path = tmp_path / "m.json"
    path.write_text(json.dumps(cfg))
    r = CliRunner().invoke(cli, ["run", str(path), "-q"])
    assert r.exit_code == 0, r.output
    via_config = json.loads(r.stdout)
    r = CliRunner().invoke(cli, ["text-eval", "--model", name, "--data-dir", str(tiny_beir), "--k", "mteb",
                                 "--batch-size", "32", "--output-dir", str(tmp_path / "t"), "-q"])
    assert r.exit_code == 0, r.output
    via_flags = json.loads(r.stdout)
    assert via_config["metrics"] == via_flags["metrics"] and via_config["model"] == via_flags["model"]


def test_a_bundle_without_a_text_tower_is_refused_by_what_it_lacks():
    from clipeval.engine.tasks.text_retrieval import _require_text_tower

    reranker = SimpleNamespace(manifest={"precision": "fp32", "variants": {"fp32": {"reranker": "r.onnx"}}},
                               family="reranker")
    with pytest.raises(ConfigError, match="is a reranker bundle without one"):
        _require_text_tower(reranker, "'rr'")
    clip = SimpleNamespace(manifest={"precision": "fp32", "variants": {"fp32": {"vision": "v", "text": "t"}}},
                           family="clip")
    _require_text_tower(clip, "'clip'")


BAD_SPLITS = ["../t", "a/b", "..", ".", "", " ", "a\\b", "t\x01", "x\n"]


@pytest.mark.parametrize("split", BAD_SPLITS)
def test_every_split_entry_point_takes_names_only(split, tmp_path):
    """The kind of eval_splits ['../t'] (F44): config ``split`` and both commands' --split."""
    from clipeval.engine.config import make_eval_config

    with pytest.raises(ConfigError, match="split must (name a split|be a string, got an empty string)"):
        make_eval_config({"split": split})
    (tmp_path / "d").mkdir()
    for args in (["eval", "--split", split], ["text-eval", "--model", "demo", "--data-dir", str(tmp_path / "d"),
                                              "--split", split]):
        r = CliRunner().invoke(cli, args)
        assert r.exit_code == 2 and r.stdout == "" and "--split must" in r.stderr, r.output


@pytest.mark.parametrize("split", ["test", "dev", "train", "validation", "test-2", "ünï"])
def test_split_names_are_accepted(split):
    from clipeval.engine.config import make_eval_config

    assert make_eval_config({"split": split}).split == split
    assert parse_task_cfg(mteb_cfg(tasks=[{"data_path": "d", "eval_splits": [split]}])).tasks[0].splits == [split]


@pytest.mark.parametrize("where", ["output_folder", "work_dir", "model folder"])
def test_an_unwritable_mteb_output_names_the_mteb_key(where, tiny_beir, tmp_path):
    """K9: the mteb form's output folder (eval.output_folder, else work_dir) blocked by a file was
    reported as `--output-dir / output_dir`, keys that form does not have."""
    (tmp_path / "file").write_text("x")
    cfg = mteb_cfg(models=[{"model_name_or_path": "demo"}], tasks=[{"data_path": str(tiny_beir)}])
    if where == "output_folder":
        cfg["eval_config"]["eval"]["output_folder"] = str(tmp_path / "file" / "out")
    elif where == "work_dir":
        cfg["work_dir"] = str(tmp_path / "file" / "out")
    else:
        cfg["work_dir"] = str(tmp_path / "w")
        (tmp_path / "w").mkdir()
        (tmp_path / "w" / "clipeval-demo-shapes").write_text("x")
    path = tmp_path / "m.json"
    path.write_text(json.dumps(cfg))
    r = CliRunner().invoke(cli, ["run", str(path), "-q"])
    assert r.exit_code == 2 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr
    assert "eval_config.eval.output_folder" in r.stderr and "--output-dir" not in r.stderr
