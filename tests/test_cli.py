"""The CLI end to end on a tiny exported bundle: results, bad input, awkward but valid input."""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import zlib

import numpy as np
from click.testing import CliRunner
from PIL import Image

from clipeval.cli.main import cli
from datagen import noise_image, write_dataset


def run(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=True)
    return result


def assert_clean_failure(result, *needles):
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    assert result.stdout == ""
    for n in needles:
        assert n in result.stderr, (n, result.stderr)


def eval_args(bundle, data_dir, out, *extra):
    return ["eval", "--model", bundle, "--data-dir", data_dir, "--output-dir", out, "--quiet", *extra]


def good_rows(n):
    return [{"image_path": f"img{i}.png", "query": [f"a photo of a cat {i}", f"a dog {i}"]} for i in range(n)]


def good_images(n):
    return {f"img{i}.png": noise_image(i) for i in range(n)}


def test_every_command_has_help():
    for args in (["-h"], ["--help"], ["eval", "-h"], ["run", "-h"], ["export", "-h"]):
        result = run(*args)
        assert result.exit_code == 0 and "Usage:" in result.output, args


def test_eval_prints_one_json_line_equal_to_the_result_file(tiny_bundle, tmp_path):
    data = write_dataset(tmp_path / "ds", good_rows(6), good_images(6))
    result = run(*eval_args(tiny_bundle, data, tmp_path / "out", "--recall-k", "1", "--recall-k", "5"))
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1
    printed = json.loads(lines[0])
    path = printed["meta"]["result_file"]
    assert path.startswith(str(tmp_path / "out")) and path.endswith("custom_zeroshot_retrieval.json")
    assert json.loads(open(path).read()) == printed
    assert set(printed["metrics"]) >= {"image_retrieval_recall@1", "image_retrieval_recall@5",
                                       "text_retrieval_recall@1", "text_retrieval_recall@5"}
    assert printed["meta"]["num_images"] == 6 and printed["meta"]["num_texts"] == 12
    assert printed["meta"]["provider"] == "cpu"


def test_decode_processes_gives_the_same_result_as_threads(tiny_bundle, tmp_path):
    data = write_dataset(tmp_path / "ds", good_rows(9), good_images(9))
    results = {}
    for decode in ("threads", "processes"):
        result = run(*eval_args(tiny_bundle, data, tmp_path / decode, "--decode", decode, "--no-cache",
                                "--batch-size", "4", "--num-workers", "2"))
        assert result.exit_code == 0, result.output
        results[decode] = json.loads(result.stdout.strip().splitlines()[-1])
        assert results[decode]["meta"]["decode"] == decode
    assert results["processes"]["metrics"] == results["threads"]["metrics"]


def test_skip_existing_does_not_recompute(tiny_bundle, tmp_path):
    data = write_dataset(tmp_path / "ds", good_rows(3), good_images(3))
    first = run(*eval_args(tiny_bundle, data, tmp_path / "out"))
    assert first.exit_code == 0, first.output
    path = json.loads(first.stdout)["meta"]["result_file"]
    before = (open(path).read(), os.stat(path).st_mtime_ns)
    second = run(*eval_args(tiny_bundle, data, tmp_path / "out", "--skip-existing"))
    assert second.exit_code == 0
    assert (open(path).read(), os.stat(path).st_mtime_ns) == before
    # A different parameter is a different result: it runs.
    third = run(*eval_args(tiny_bundle, data, tmp_path / "out", "--skip-existing", "--limit", "2"))
    assert json.loads(third.stdout)["meta"]["num_images"] == 2


def test_missing_jsonl(tiny_bundle, tmp_path):
    (tmp_path / "empty").mkdir()
    assert_clean_failure(run(*eval_args(tiny_bundle, tmp_path / "empty", tmp_path / "out")),
                         "has no image_queries.jsonl", "--data-dir")


def test_bad_rows_are_all_reported_with_line_numbers(tiny_bundle, tmp_path):
    rows = good_rows(2) + ['{"image_path": "img0.png", "query": [', {"query": ["x"]},
                           {"image_path": "img1.png", "query": []}, {"image_path": "nope.png", "query": ["q"]}]
    data = write_dataset(tmp_path / "ds", rows, good_images(2))
    r = run(*eval_args(tiny_bundle, data, tmp_path / "out"))
    assert_clean_failure(r, "4 bad row(s)", "image_queries.jsonl:3:", "image_queries.jsonl:4:",
                         "image_queries.jsonl:5:", "image_queries.jsonl:6:", "not valid JSON", "empty list",
                         "image not found")


def _truncated_jpeg() -> bytes:
    buf = io.BytesIO()
    noise_image(7, (64, 64)).save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    return data[: len(data) // 2]


def _bomb_png() -> bytes:
    """A small PNG whose header claims 100000 x 100000 pixels."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4: ihdr + 12] = struct.pack(">II", 100_000, 100_000)
    crc = zlib.crc32(bytes(data[ihdr: ihdr + 17])) & 0xFFFFFFFF
    data[ihdr + 17: ihdr + 21] = struct.pack(">I", crc)
    return bytes(data)


BAD_IMAGES = {"zero.jpg": b"", "truncated.jpg": _truncated_jpeg(), "text.jpg": b"this is not an image\n",
              "bomb.png": _bomb_png()}


def _bad_image_dataset(tmp_path):
    images = {**good_images(3), **BAD_IMAGES}
    rows = good_rows(3) + [{"image_path": name, "query": [f"query for {name}"]} for name in BAD_IMAGES]
    return write_dataset(tmp_path / "ds", rows, images)


def test_bad_images_are_reported_together(tiny_bundle, tmp_path):
    data = _bad_image_dataset(tmp_path)
    with open(data / "image_queries.jsonl", "a") as f:
        f.write(json.dumps({"image_path": "gone.png", "query": ["lost"]}) + "\n")
    # Missing images and those whose header is bad: one error, before any model work.
    r = run(*eval_args(tiny_bundle, data, tmp_path / "out"))
    assert_clean_failure(r, "4 bad row(s)", "zero.jpg", "text.jpg", "bomb.png", "gone.png", "--on-error skip")
    assert "truncated.jpg" not in r.stderr and "skipping" not in r.stderr
    # Damage past the header is found while decoding, and reported at the end of the image pass.
    for name in ("zero.jpg", "text.jpg", "bomb.png", "gone.png"):
        (data / name).unlink(missing_ok=True)
    rows = [line for line in (data / "image_queries.jsonl").read_text().splitlines()
            if not any(n in line for n in ("zero.jpg", "text.jpg", "bomb.png", "gone.png"))]
    (data / "image_queries.jsonl").write_text("\n".join(rows) + "\n")
    r = run(*eval_args(tiny_bundle, data, tmp_path / "out"))
    assert_clean_failure(r, "1 image(s) could not be used", "truncated.jpg", "--on-error skip")
    assert "skipping" not in r.stderr


def test_bad_images_skipped_are_counted_and_listed(tiny_bundle, tmp_path):
    data = _bad_image_dataset(tmp_path)
    with open(data / "image_queries.jsonl", "a") as f:
        f.write(json.dumps({"image_path": "gone.png", "query": ["lost"]}) + "\n")
    r = run(*eval_args(tiny_bundle, data, tmp_path / "out", "--on-error", "skip"))
    assert r.exit_code == 0, r.output
    meta = json.loads(r.stdout)["meta"]
    assert meta["num_images"] == 3 and meta["num_texts"] == 6
    assert meta["num_skipped_images"] == 5
    listed = " ".join(item["where"] + " " + item["reason"] for item in meta["skipped"])
    for name in [*BAD_IMAGES, "gone.png"]:
        assert name in listed
    assert meta["dropped_texts"] == len(BAD_IMAGES) + 1  # one query each, all left out


def test_awkward_but_valid_images(tiny_bundle, tmp_path):
    pal = noise_image(1).convert("P")
    pal.info["transparency"] = 0
    i16 = Image.fromarray(np.asarray(noise_image(2).convert("L")).astype(np.uint16) * 257)
    assert i16.mode == "I;16"
    images = {
        "unicode dir/猫 咪.png": noise_image(0),
        "cmyk.jpg": noise_image(3, mode="CMYK"),
        "palette.png": pal,
        "la.png": noise_image(4, mode="LA"),
        "sixteen.png": i16,
        "grey.jpg": noise_image(5, mode="L"),
    }
    rows = [{"image_path": name, "query": [f"a photo {i}"]} for i, name in enumerate(images)]
    data = write_dataset(tmp_path / "ds", rows, images)
    r = run(*eval_args(tiny_bundle, data, tmp_path / "out", "--recall-k", "1"))
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["meta"]["num_images"] == 6


def test_explicit_k_larger_than_the_gallery_is_an_error(tiny_bundle, tmp_path):
    data = write_dataset(tmp_path / "ds", good_rows(3), good_images(3))
    assert_clean_failure(run(*eval_args(tiny_bundle, data, tmp_path / "out", "--recall-k", "5")), "5")


def test_damaged_bundles(tiny_bundle, tmp_path):
    data = write_dataset(tmp_path / "ds", good_rows(2), good_images(2))
    missing = shutil.copytree(tiny_bundle, tmp_path / "missing")
    (missing / "text.onnx").unlink()
    assert_clean_failure(run(*eval_args(missing, data, tmp_path / "out")), "text.onnx: missing", "re-export")
    changed = shutil.copytree(tiny_bundle, tmp_path / "changed")
    with open(changed / "vision.onnx", "ab") as f:
        f.write(b"\0")
    assert_clean_failure(run(*eval_args(changed, data, tmp_path / "out")), "vision.onnx: sha256 does not match")
    assert_clean_failure(run(*eval_args(tmp_path / "nowhere", data, tmp_path / "out")), "nowhere")


def test_unknown_config_key_via_run(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("eval_backend: RAGEval\neval_config:\n  tool: clip_benchmark\n  eval:\n    recall_k_list: [5]\n")
    assert_clean_failure(run("run", cfg), "'recall_k_list'", "accepted keys:")


def test_run_task_with_the_evalscope_task_cfg(tiny_bundle, tmp_path):
    from clipeval import run_task

    data = write_dataset(tmp_path / "ds", good_rows(5), good_images(5))
    task_cfg = {
        "eval_backend": "RAGEval",
        "eval_config": {
            "tool": "clip_benchmark",
            "eval": {
                "models": [{"model_name": str(tiny_bundle)}],
                "dataset_name": ["custom"],
                "data_dir": str(data),
                "split": "test",
                "batch_size": 2,
                "num_workers": 1,
                "verbose": False,
                "skip_existing": False,
                "limit": 4,
                "output_dir": str(tmp_path / "out"),
            },
        },
    }
    (result,) = run_task(task_cfg=task_cfg)
    assert result["meta"]["num_images"] == 4 and result["meta"]["limited_from_images"] == 5
    assert result["task"] == "zeroshot_retrieval" and result["dataset"] == "custom"
    # @10 is larger than the 4-image gallery: left out of the default list, and said so.
    assert "image_retrieval_recall@10" not in result["metrics"]
    assert "image_retrieval_recall@1" in result["metrics"]


def test_eval_with_no_arguments_runs_the_embedded_demo(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = run("eval", "--quiet")
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    assert result["model"] == "clipeval-demo-shapes" and result["dataset"] == "custom"
    assert result["metrics"]["image_retrieval_recall@5"] >= 0.9
    assert result["metrics"]["text_retrieval_recall@5"] >= 0.9
    assert result["meta"]["num_images"] == 300
    assert (tmp_path / "outputs" / "clipeval-demo-shapes" / "custom_zeroshot_retrieval.json").is_file()
