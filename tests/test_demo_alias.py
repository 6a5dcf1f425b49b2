"""`demo` wherever a model is taken, one provider warning per run, --split for custom."""

from __future__ import annotations

import json
import logging

import pytest
from click.testing import CliRunner

from clipeval import run_task
from clipeval.cli.main import cli
from clipeval.engine.demo import DEMO_DATA_DIR, DEMO_MODEL_DIR, is_demo_name, model_path


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=True)


def one_error(result):
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert "Traceback" not in result.output and result.stdout == ""
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    return result.stderr


def _beir(folder):
    folder.mkdir(parents=True)
    docs = ["a small red triangle at the top left", "a large blue circle at the bottom right",
            "a small green square in the centre", "a large purple star at the top right"]
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"_id": f"d{i}", "text": t}) + "\n"
                                                 for i, t in enumerate(docs)))
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": f"q{i}", "text": t}) + "\n"
                                                  for i, t in enumerate(docs)))
    (folder / "qrels.jsonl").write_text("".join(json.dumps({"query-id": f"q{i}", "corpus-id": f"d{i}", "score": 1})
                                                + "\n" for i in range(len(docs))))
    return folder


def test_the_alias_is_resolved_in_one_place():
    assert model_path("demo") == str(DEMO_MODEL_DIR) and model_path(" demo ") == str(DEMO_MODEL_DIR)
    assert is_demo_name(None) and not is_demo_name("demo2") and not is_demo_name("./demo")
    assert model_path("some/bundle") == "some/bundle"


def test_text_eval_takes_demo_as_its_directory(tmp_path):
    folder = _beir(tmp_path / "beir")
    by_name = invoke("text-eval", "--model", "demo", "--data-dir", folder, "--output-dir", tmp_path / "a", "-q")
    by_path = invoke("text-eval", "--model", DEMO_MODEL_DIR, "--data-dir", folder, "--output-dir", tmp_path / "b", "-q")
    assert by_name.exit_code == 0, by_name.output
    assert by_path.exit_code == 0, by_path.output
    a, b = json.loads(by_name.stdout), json.loads(by_path.stdout)
    assert a["metrics"] == b["metrics"] and a["meta"]["bundle"]["identity"] == b["meta"]["bundle"]["identity"]


@pytest.mark.parametrize("how", ["eval", "run", "run_task"])
def test_eval_and_run_take_demo(tmp_path, how):
    block = {"models": [{"model_name": "demo"}], "dataset_name": ["custom"], "limit": 20, "verbose": False,
             "output_dir": str(tmp_path / "out"), "no_cache": True, "split": "test"}
    if how == "eval":
        r = invoke("eval", "--model", "demo", "--limit", 20, "--output-dir", tmp_path / "out", "-q", "--no-cache")
        assert r.exit_code == 0, r.output
        result = json.loads(r.stdout)
    elif how == "run":
        cfg = tmp_path / "cfg.json"
        cfg.write_text(json.dumps({"eval_backend": "RAGEval", "eval_config": {"tool": "clip_benchmark", "eval": block}}))
        r = invoke("run", cfg)
        assert r.exit_code == 0, r.output
        result = json.loads(r.stdout)
    else:
        (result,) = run_task(block)
    assert result["meta"]["bundle"]["path"] == str(DEMO_MODEL_DIR) and result["meta"]["num_images"] == 20


def test_bench_takes_demo(tmp_path):
    r = invoke("bench", "--model", "demo", "--data-dir", DEMO_DATA_DIR, "--limit", 8, "--no-second-run",
               "--num-workers", 0, "-q")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["bundle"] == str(DEMO_MODEL_DIR) and report["images"] == 8


def test_export_of_demo_says_it_is_a_bundle_already(tmp_path):
    err = one_error(invoke("export", "demo", "-o", tmp_path / "x"))
    assert "model bundle already" in err and str(DEMO_MODEL_DIR) in err
    assert not (tmp_path / "x").exists()


# --- --split for the custom dataset -------------------------------------------------------------

@pytest.mark.parametrize("split", ["train", "val", "dev"])
def test_a_split_for_custom_is_refused_on_the_command_line_and_in_a_config(tmp_path, split):
    err = one_error(invoke("eval", "--split", split, "--output-dir", tmp_path / "out", "-q"))
    assert f"split {split!r} does not apply to the custom dataset" in err and "--data-dir" in err
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"eval_backend: RAGEval\neval_config:\n  tool: clip_benchmark\n  eval:\n    models: "
                   f"[{{model_name: demo}}]\n    dataset_name: [custom]\n    split: {split}\n    output_dir: "
                   f"{tmp_path / 'out'}\n")
    one_error(invoke("run", cfg))


# --- a provider fallback is said once per run ---------------------------------------------------

def test_cuda_without_cuda_warns_once_per_run(tmp_path, monkeypatch, caplog):
    from clipeval.engine.sessions import onnx as session
    from clipeval.engine.sessions import model as context

    problem = "the CUDA provider cannot load: libcudart.so.13 is missing"
    monkeypatch.setattr(session, "cuda_problem", lambda: problem)
    monkeypatch.setattr(context, "cuda_problem", lambda: problem)
    block = {"models": [{"model_name": "demo"}, {"model_name": str(DEMO_MODEL_DIR)}], "dataset_name": ["custom"],
             "data_dir": str(DEMO_DATA_DIR), "limit": 10, "verbose": False, "provider": "cuda",
             "output_dir": str(tmp_path / "out"),
             "no_cache": True}
    with caplog.at_level(logging.WARNING):
        results = run_task(block)
    said = [r for r in caplog.records if "CUDA was asked for but is not available" in r.getMessage()]
    assert len(said) == 1 and problem in said[0].getMessage()
    for result in results:  # each result still records it, once
        assert result["meta"]["provider"] == "cpu"
        assert [w for w in result["meta"]["warnings"] if problem in w] == [said[0].getMessage()]
