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


# --- issue 10: no traceback, ever, for anything a user can pass -----------------------------------

def _no_model_work(monkeypatch):
    """Make any model loading fail loudly: a destination error must come before it."""
    from clipeval.engine import runner
    from clipeval.export import resolve

    def boom(*args, **kwargs):
        raise AssertionError("model work started before the destination was checked")

    monkeypatch.setattr(runner, "open_stage", boom)
    monkeypatch.setattr(resolve, "resolve_model", boom)


def test_output_dir_under_a_regular_file_fails_before_any_model_work(tmp_path, monkeypatch):
    data = write_dataset(tmp_path / "ds", good_rows(2), good_images(2))
    (tmp_path / "some_file").write_text("x")
    _no_model_work(monkeypatch)
    r = run("eval", "--model", "demo", "--data-dir", data, "--output-dir", tmp_path / "some_file" / "x", "-q")
    assert_clean_failure(r, "error: cannot write to the output folder", "some_file, which is a file", "--output-dir")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"models: [demo]\ndata_dir: {data}\noutput_dir: {tmp_path / 'some_file' / 'x'}\n")
    assert_clean_failure(run("run", cfg), "cannot write to the output folder", "output_dir")


def test_a_read_only_output_dir_fails_before_any_model_work(tmp_path, monkeypatch):
    data = write_dataset(tmp_path / "ds", good_rows(2), good_images(2))
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    _no_model_work(monkeypatch)
    try:
        r = run("eval", "--model", "demo", "--data-dir", data, "--output-dir", ro / "out", "-q")
        if os.geteuid() != 0:  # root writes through mode bits
            assert_clean_failure(r, "permission denied")
    finally:
        ro.chmod(0o755)
    # a name too long for the file system: refused where the option enters
    assert_clean_failure(run("eval", "--output-dir", tmp_path / ("n" * 300), "-q"), "--output-dir",
                         "file names are limited to 255")


def test_export_and_text_eval_check_their_destinations_first(tmp_path):
    (tmp_path / "some_file").write_text("x")
    assert_clean_failure(run("export", tmp_path / "no-checkpoint", "-o", tmp_path / "some_file" / "bundle", "-q"),
                         "bundle folder (-o)", "some_file, which is a file")
    (tmp_path / "beir").mkdir()
    assert_clean_failure(run("text-eval", "--model", tmp_path / "no-model", "--data-dir", tmp_path / "beir",
                             "--output-dir", tmp_path / "some_file" / "out", "-q"), "output folder (--output-dir)")


def test_caption_checks_its_output_folder_first(tmp_path):
    data = write_dataset(tmp_path / "ds", good_rows(2), good_images(2))
    (tmp_path / "some_file").write_text("x")
    assert_clean_failure(run("caption", "--api-base", "http://127.0.0.1:9/v1", "--model-name", "m", "--data-dir", data,
                             "--output-dir", tmp_path / "some_file" / "out", "-q"), "some_file, which is a file")
    assert_clean_failure(run("caption", "--api-base", "localhost:8008", "--model-name", "m", "--data-dir", data,
                             "--output-dir", tmp_path / "out", "-q"), "--api-base", "http:// or https://")


LONG_NAME = "x" * 296 + ".jpg"  # 300 characters: more than any file system takes


def test_an_image_path_with_a_300_character_file_name(tmp_path):
    rows = good_rows(3) + [{"image_path": LONG_NAME, "query": ["a long one"]},
                           {"image_path": f"sub/{LONG_NAME}", "query": ["another"]}]
    data = write_dataset(tmp_path / "ds", rows, good_images(3))
    r = run("eval", "--model", "demo", "--data-dir", data, "--output-dir", tmp_path / "out", "-q")
    assert_clean_failure(r, "2 bad row(s)", "image_queries.jsonl:4:", "image_queries.jsonl:5:", "image not found",
                         "--on-error skip")
    r = run("eval", "--model", "demo", "--data-dir", data, "--output-dir", tmp_path / "out", "-q", "--on-error", "skip")
    assert r.exit_code == 0, r.output
    meta = json.loads(r.stdout)["meta"]
    assert meta["num_images"] == 3 and meta["num_skipped_images"] == 2
    assert all(LONG_NAME in item["reason"] for item in meta["skipped"])


def test_batch_size_with_an_odd_unicode_digit(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text('eval_backend: RAGEval\neval_config:\n  tool: clip_benchmark\n  eval:\n    batch_size: "²"\n')
    assert_clean_failure(run("run", cfg), f"{cfg}:5: eval_config.eval.batch_size must be an integer, got '²'")


def test_a_manifest_whose_files_is_a_list(tmp_path):
    from clipeval.engine.demo import DEMO_MODEL_DIR

    bundle = shutil.copytree(DEMO_MODEL_DIR, tmp_path / "b")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"] = sorted(manifest["files"])
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    assert_clean_failure(run("eval", "--model", bundle, "--output-dir", tmp_path / "out", "-q"),
                         "files must be an object of file name -> sha256, got list", "re-export")


def test_an_internal_error_is_one_line_with_a_way_to_the_traceback(tmp_path, monkeypatch):
    from clipeval.engine import runner

    def bug(*args, **kwargs):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(runner, "open_stage", bug)
    monkeypatch.delenv("CLIPEVAL_DEBUG", raising=False)
    args = ["eval", "-q", "--no-cache", "--limit", "2", "--output-dir", tmp_path / "out"]
    r = run(*args)
    assert r.exit_code == 1 and "Traceback" not in r.output and r.stdout == ""
    assert r.stderr.startswith("internal error: ZeroDivisionError: division by zero\n"), r.stderr
    assert "--debug" in r.stderr and "CLIPEVAL_DEBUG=1" in r.stderr
    for debug_args, env in ((["--debug"], None), ([], {"CLIPEVAL_DEBUG": "1"})):
        r = CliRunner().invoke(cli, [*debug_args, *map(str, args)], env=env, catch_exceptions=True)
        assert isinstance(r.exception, ZeroDivisionError)  # let through: click prints the traceback


def test_a_full_disk_while_writing_is_a_user_facing_error(tmp_path, monkeypatch):
    import errno

    from clipeval.engine import runner

    def full(path, result):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(runner, "write_result", full)
    r = run("eval", "-q", "--limit", "2", "--output-dir", tmp_path / "out")
    assert_clean_failure(r, "error: cannot use", "no space left on the device", "custom_zeroshot_retrieval.json")


def test_a_real_process_has_no_traceback_for_user_mistakes(tmp_path):
    import subprocess
    import sys

    (tmp_path / "some_file").write_text("x")
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"batch_size": "²", "models": [{"model_name": "demo", "prompt": ["p"]}]}))
    for args in (["eval", "--output-dir", str(tmp_path / "some_file" / "x")], ["run", str(cfg)]):
        proc = subprocess.run([sys.executable, "-m", "clipeval.cli", *args], capture_output=True, text=True,
                              timeout=120, env={**os.environ, "CLIPEVAL_CACHE_DIR": str(tmp_path / "cache")})
        assert proc.returncode == 2 and proc.stdout == "", proc.stderr
        assert "Traceback" not in proc.stderr and proc.stderr.startswith("error: ")
