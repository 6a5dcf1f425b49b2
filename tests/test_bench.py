"""`clipeval bench`: both rows and the ratios, on the tiny bundle and its checkpoint; the
reference's recall_at_k against the engine's metrics; a clear message without the export extra."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
from click.testing import CliRunner

from clipeval.cli.main import cli
from clipeval.engine.metrics.retrieval import evaluate_retrieval
from datagen import noise_image, write_dataset


def _dataset(root, n=4):
    rows = [{"image_path": f"img{i}.png", "query": [f"a photo of the cat {i}", f"a red car {i}"]} for i in range(n)]
    return write_dataset(root, rows, {f"img{i}.png": noise_image(i, size=(48, 40)) for i in range(n)})


def test_bench_vs_reference_prints_both_rows_and_the_ratio(tiny_bundle, tmp_path):
    data = _dataset(tmp_path / "ds")
    result = CliRunner().invoke(cli, ["bench", "--model", str(tiny_bundle), "--data-dir", str(data),
                                      "--vs-reference", "--batch-size", "2", "--provider", "cpu", "--quiet"])
    assert result.exit_code == 0, (result.output, result.exception)
    report = json.loads(result.stdout)
    assert report["images"] == 4 and report["texts"] == 8
    assert set(report["engine"]["stages"]) == {"decode", "vision", "text", "ranking"}
    assert report["engine"]["stages"]["vision"]["items"] == 4 and report["engine"]["stages"]["text"]["items"] == 8
    first, second, ref = report["engine"]["first_run"], report["engine"]["second_run"], report["reference"]
    assert second["cache"]["image_hits"] == 4 and second["cache"]["text_hits"] == 8
    assert ref["counts"] == {"images": 4, "texts": 8} and ref["num_workers"] == 1
    assert ref["checkpoint"].endswith("ckpt")  # found from the bundle's manifest source
    ratios = report["ratios"]
    assert ratios["reference_over_engine_first_run"] == ref["wall_s"] / first["wall_s"]
    assert ratios["first_over_second_run"] == first["wall_s"] / second["wall_s"]
    # Same checkpoint, same data, fp32 both: the recalls agree (up to one flipped near-tie).
    assert ratios["max_recall_difference"] <= 1 / 4
    for needle in ("engine", "reference", "vision tower", "text tower", "end-to-end, first run", "second run"):
        assert needle in result.stderr, needle


def test_reference_recall_at_k_matches_the_engine_without_ties():
    import torch

    from clipeval.export.reference import _batchify, recall_at_k

    rng = np.random.default_rng(3)
    images = rng.standard_normal((9, 8)).astype(np.float32)
    texts = rng.standard_normal((23, 8)).astype(np.float32)
    text_to_image = rng.integers(0, 9, 23)
    text_to_image[:9] = np.arange(9)  # every image has a text
    ours, _ = evaluate_retrieval(texts, images, text_to_image, [1, 3, 5], k_explicit=True)
    scores = torch.from_numpy(texts @ images.T)
    positive = torch.zeros_like(scores, dtype=torch.bool)
    positive[torch.arange(23), torch.from_numpy(text_to_image)] = True
    for k in (1, 3, 5):
        t2i = (_batchify(recall_at_k, scores, positive, 4, k) > 0).float().mean().item()
        i2t = (_batchify(recall_at_k, scores.T, positive.T, 4, k) > 0).float().mean().item()
        assert abs(t2i - ours[f"image_retrieval_recall@{k}"]) < 1e-6
        assert abs(i2t - ours[f"text_retrieval_recall@{k}"]) < 1e-6


def test_vs_reference_without_the_export_extra_says_what_to_install(tiny_bundle, tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    data = _dataset(tmp_path / "ds", 2)
    result = CliRunner().invoke(cli, ["bench", "--model", str(tiny_bundle), "--data-dir", str(data),
                                      "--vs-reference", "--quiet"])
    assert result.exit_code == 2 and result.stdout == ""
    assert "clipeval[export]" in result.stderr and "torch" in result.stderr


def test_bench_help():
    assert CliRunner().invoke(cli, ["bench", "-h"]).exit_code == 0


def test_bench_children_run_the_config_object_eval_builds(tmp_path, monkeypatch):
    """`clipeval bench` builds its child runs from the same EvalConfig `clipeval eval` builds from
    the same options (cli/commands.eval_config), written whole for `clipeval run`, not re-spelled
    as flags."""
    from clipeval.cli import commands
    from clipeval.cli.bench_cmd import child_argv
    from clipeval.engine.config import parse_task_cfg
    from clipeval.engine.demo import DEMO_DATA_DIR

    options = dict(models=("demo",), data_dir=str(DEMO_DATA_DIR), limit=8, batch_size=16, num_workers=0,
                   fast_decode=True, decode="threads", num_threads=1, precision="fp32", quiet=True)
    cfg = commands.eval_config(**options)
    seen = []
    monkeypatch.setattr(commands, "_run_config", seen.append)
    r = CliRunner().invoke(cli, ["eval", "--model", "demo", "--data-dir", str(DEMO_DATA_DIR), "--limit", "8",
                                 "--batch-size", "16", "--num-workers", "0", "--fast-decode", "--decode", "threads",
                                 "--threads", "1", "--precision", "fp32", "-q"])
    assert r.exit_code == 0, r.output
    assert seen == [cfg]  # the eval command's config is this object
    argv = child_argv(cfg, tmp_path / "eval.json")
    assert argv[-3:] == ["run", str(tmp_path / "eval.json"), "--quiet"]
    assert parse_task_cfg(tmp_path / "eval.json") == cfg  # what the child runs, read back: the same object
