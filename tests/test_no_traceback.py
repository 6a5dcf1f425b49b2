"""Whatever a user passes, `clipeval run` / `clipeval eval` end in a result or one error line.

Generated configs (every key, values of wrong types, odd digits, huge numbers, odd strings),
generated ``image_queries.jsonl`` files (bad JSON, BOMs, long file names, NUL bytes, values of
other types) and generated bundle manifests (``files`` as a list, wrong types, paths leaving the
bundle) all end in exit status 0 or 2, never in a traceback. The model is a copy of the embedded
demo bundle and the data four demo images, so no export is needed and a run takes well under a
second; every source of slowness a generated value could reach (downloads, a captioning API) is
kept out of the value lists.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clipeval.cli.main import cli
from clipeval.engine.sessions.bundle import MANIFEST
from clipeval.engine.config import EVAL_KEYS
from clipeval.engine.demo import DEMO_DATA_DIR, DEMO_MODEL_DIR

IMAGES = [f"images/{i:04d}.jpg" for i in range(4)]
SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
                    derandomize=True)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A folder to run in: ``data/`` (four demo images), ``bundle/`` (the demo model) and a
    regular file ``some_file``; every relative path a generated value names lands in here."""
    root = tmp_path_factory.mktemp("no-traceback")
    (root / "data" / "images").mkdir(parents=True)
    rows = [json.loads(line) for line in (DEMO_DATA_DIR / "image_queries.jsonl").read_text().splitlines()[:4]]
    for row in rows:
        shutil.copy(DEMO_DATA_DIR / row["image_path"], root / "data" / row["image_path"])
    (root / "data" / "image_queries.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    shutil.copytree(DEMO_MODEL_DIR, root / "bundle")
    (root / "some_file").write_text("not a folder")
    return root


@contextlib.contextmanager
def inside(folder: Path):
    old = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(old)


def invoke(folder: Path, args: list[str]):
    with inside(folder):
        return CliRunner().invoke(cli, args, catch_exceptions=True)


def assert_result_or_one_error(result):
    output = result.output
    assert "Traceback" not in output, output
    assert result.exit_code in (0, 2), (result.exit_code, output, result.exception)
    if result.exit_code == 2:
        assert result.stdout == "" and result.stderr.startswith("error:"), result.stderr  # flag mistakes too
    else:
        for line in result.stdout.splitlines():
            assert isinstance(json.loads(line), dict)


# --- configs --------------------------------------------------------------------------------------

ODD = st.sampled_from(["²", "١٢", "½", "", " ", "\0", "a\0b", "nan", "inf", "-1", "1e3", "0x10", "true", "no", "on",
                       "\ud800", "n" * 300, "ü" * 200, "some_file/x", "/dev/null/x", "http://", "ftp://h/x"])
WRONG = st.one_of(
    st.booleans(), st.integers(min_value=-2**70, max_value=2**70), st.sampled_from([10**30, 2**63, -1, 0]),
    st.floats(allow_nan=True, allow_infinity=True), ODD, st.lists(st.integers(0, 3), max_size=2),
    st.dictionaries(st.sampled_from(["a", "model_name"]), st.integers(0, 3), max_size=2), st.none(),
)


def either(*good):
    """One of ``good`` three times in four, else a value of a wrong kind."""
    return st.one_of(st.sampled_from(good), st.sampled_from(good), st.sampled_from(good), WRONG)


PATHS = either("out2", "deep/out", "some_file/x", "n" * 300, "data", "~clipeval_no_such_user/out")
# Values a run can take without reaching the network or a captioning API.
EVAL_VALUES = {
    "models": st.one_of(
        st.sampled_from([["bundle"], "bundle", ["demo"], [{"model_name": "bundle", "precision": "fp32"}],
                         [{"model_name": "bundle", "precision": "fp16"}], [{"model_name": "missing"}],
                         [{"model_name": "some_file"}], [{"model_name": "bundle", "revison": "x"}],
                         [{"model_name": "bundle", "prompt": ["describe"]}],
                         [{"model_name": "bundle", "prompt": {"text": "x"}}], [{"model_name": "n" * 300}],
                         [{"model_name": "bundle", "api_base": "localhost:8008"}], [{"revision": "v1"}], [], [5]]),
        WRONG),
    "dataset_name": either("custom", ["custom"], "wds/custom", "flickr8k", "vtab/cifar10", "unknown_set", [""], []),
    "data_dir": either("data", "missing", "some_file", "bundle", "ftp://x", "http://"),
    "split": either("test", "val", "train"),
    "task": either("zeroshot_retrieval", "zeroshot_classification", "image_caption", "text_retrieval", "bogus"),
    "batch_size": either(1, 2, 3, 128, "2"),
    "num_workers": either(0, 1, 2),
    "verbose": either(True, False, "yes", "0"),
    "skip_existing": either(True, False),
    "limit": either(1, 2, 3, 10, None),
    "output_dir": PATHS,
    "cache_dir": PATHS,
    "recall_k": either([1], [1, 2], 1, [1, 5], [0], [10**30]),
    "on_error": either("fail", "skip"),
    "provider": either("cpu", "auto", "cuda"),
    "precision": either("fp32", "fp16", "int8", None),
    "fast_decode": either(True, False),
    "decode": either("threads", "processes", "auto"),
    "detail": either("auto", "on", "off"),
    "num_threads": either(1, 2, None),
    "no_cache": either(True, False),
    "verify_cache": either(True, False),
    "cache_max_bytes": either(0, 1, 10**6, None),
    "dataset_url": either(None, "ftp://x/{name}", "http://", "not a url"),
    "language": either("en", "zh", "cn", "fr", None),
    "classnames_file": either("missing.txt", "some_file", None),
    "templates_file": either("missing.txt", "some_file", None),
    "concurrency": either(1, 8), "max_tokens": either(1, 512, None), "temperature": either(0.0, 2.0, None),
    "timeout": either(1.0, 120), "max_failures": either(0, 3), "max_image_side": either(16, 512, None),
    "id_style": either("int", "prefixed"), "system_prompt": either("be brief", None),
    # executor "ray" starts a Ray instance (seconds, and processes): tests/test_ray_*.py try it
    "executor": either("local"), "ray_address": either(None, "auto", "10.0.0.5:6379", "ray://h:10001", "h", "h:0"),
}
assert set(EVAL_VALUES) == set(EVAL_KEYS)
TOP_VALUES = {
    "eval_backend": either("RAGEval", "OpenCompass"),
    "work_dir": PATHS,
    "no_timestamp": either(True, False),
    "wrk_dir": st.just("typo"),
}


@st.composite
def configs(draw):
    block = {"models": ["bundle"], "dataset_name": ["custom"], "data_dir": "data", "output_dir": "out",
             "verbose": False, "num_workers": 1}
    for key in draw(st.lists(st.sampled_from(sorted(EVAL_VALUES) + ["recal_k"]), max_size=4, unique=True)):
        block[key] = draw(EVAL_VALUES.get(key, WRONG))
    if block.get("data_dir") is None or not isinstance(block.get("data_dir"), str):
        block["data_dir"] = "data"  # never a download: no network in tests
    if draw(st.booleans()):
        return block
    task_cfg = {"eval_backend": "RAGEval",
                "eval_config": {"tool": draw(either("clip_benchmark", "CLIP_Benchmark", "mteb")), "eval": block}}
    for key in draw(st.lists(st.sampled_from(sorted(TOP_VALUES)), max_size=2, unique=True)):
        task_cfg[key] = draw(TOP_VALUES[key])
    return task_cfg


def _has_nonfinite(value) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_has_nonfinite(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_nonfinite(v) for v in value)
    return False


def write_config(folder: Path, cfg, as_yaml: bool) -> Path:
    if as_yaml:
        try:
            path = folder / "cfg.yaml"
            path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
            return path
        except (yaml.YAMLError, UnicodeError):
            pass
    path = folder / "cfg.json"
    path.write_text(json.dumps(cfg, indent=1), encoding="utf-8", errors="surrogatepass")
    return path


@settings(SETTINGS, max_examples=100)
@given(cfg=configs(), as_yaml=st.booleans())
def test_run_with_generated_configs_ends_in_a_result_or_one_error(workspace, cfg, as_yaml):
    path = write_config(workspace, cfg, as_yaml)
    result = invoke(workspace, ["run", str(path)])
    assert_result_or_one_error(result)


# --- rows -----------------------------------------------------------------------------------------

GOOD_ROW = st.builds(lambda i, q: json.dumps({"image_path": IMAGES[i], "query": q}),
                     st.integers(0, 3), st.sampled_from([["a red circle"], "a blue star", ["one", "two"]]))
BAD_VALUE = st.one_of(
    st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False), st.sampled_from([
        "", " ", "x" * 296 + ".jpg", "images/" + "x" * 300 + ".jpg", "a\0b.jpg", "../../../../etc/hostname",
        "/dev/null", "/etc", "images", "some_file", "\ud800.jpg", "ü" * 200 + ".jpg", "images/0000.jpg/x"]),
    st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
ODD_ROW = st.one_of(
    st.builds(lambda p, q: json.dumps({"image_path": p, "query": q}), BAD_VALUE, st.sampled_from([["q"], "q"])),
    st.builds(lambda i, q: json.dumps({"image_path": IMAGES[i], "query": q}), st.integers(0, 3),
              st.one_of(BAD_VALUE, st.lists(BAD_VALUE, max_size=3), st.just(["x" * 20000]))),
    st.builds(lambda extra: json.dumps({"image_path": IMAGES[0], "query": ["q"], **extra}),
              st.dictionaries(st.text(max_size=4), st.integers(), max_size=2)),
    st.sampled_from(['{"image_path": "images/0000.jpg", "query": [', "[1, 2]", "null", '"text"', "{}",
                     '{"image_path": "images/0000.jpg", "query": ["q"]} trailing', "\ufeff" + json.dumps(
                         {"image_path": IMAGES[1], "query": ["with a BOM"]}), '{"image_path": 1e999, "query": ["q"]}',
                     '{"image_path": "images/0000.jpg", "query": ["\\ud800"]}', "[" * 3000]),
    st.text(max_size=30),
)


@st.composite
def rows_files(draw) -> bytes:
    lines = draw(st.lists(st.one_of(GOOD_ROW, ODD_ROW), min_size=0, max_size=6))
    data = "\n".join(lines).encode("utf-8", "surrogatepass")
    if draw(st.booleans()):
        data = b"\xef\xbb\xbf" + data
    extra = draw(st.sampled_from([b"", b"\0\0\0", b"\xff\xfe\xfd", b"\n\r\n", b"\x80abc"]))
    return data + b"\n" + extra


@settings(SETTINGS, max_examples=60)
@given(rows=rows_files(), skip=st.booleans(), limit=st.sampled_from([[], ["--limit", "2"]]))
def test_eval_with_generated_rows_ends_in_a_result_or_one_error(workspace, rows, skip, limit):
    data = workspace / "rows"
    data.mkdir(exist_ok=True)
    (data / "images").mkdir(exist_ok=True)
    for image in IMAGES:
        if not (data / image).exists():
            shutil.copy(workspace / "data" / image, data / image)
    (data / "image_queries.jsonl").write_bytes(rows)
    args = ["eval", "--model", "bundle", "--data-dir", str(data), "--output-dir", "out", "-q", "--num-workers", "1",
            *limit, *(["--on-error", "skip"] if skip else [])]
    assert_result_or_one_error(invoke(workspace, args))


# --- manifests ------------------------------------------------------------------------------------

GOOD_MANIFEST = json.loads((DEMO_MODEL_DIR / MANIFEST).read_text())
MANIFEST_VALUES = st.one_of(
    WRONG,
    st.sampled_from([
        sorted(GOOD_MANIFEST["files"]), {"../../../../etc/hostname": "0" * 64}, {"/etc/hostname": "0" * 64},
        {**GOOD_MANIFEST["files"], "../x": GOOD_MANIFEST["files"]["vision.onnx"]},
        {"fp32": {"vision": "../vision.onnx", "text": "text.onnx"}}, {"fp32": {"vision": "missing.onnx"}},
        {"fp16": {"vision": "vision.onnx", "text": "text.onnx"}}, {"pad_id": "0"}, {"padding": "left"},
        {**GOOD_MANIFEST["tokenizer"], "text_inputs": ["input_ids"]}, {**GOOD_MANIFEST["tokenizer"], "pad_id": 10**9},
        "fp16", "int8", 1, 16, 64, 3, 10**6, "chinese_clip", "siglip", "text",
    ]),
)


@settings(SETTINGS, max_examples=60)
@given(changes=st.dictionaries(st.sampled_from(sorted(GOOD_MANIFEST) + ["extra"]), MANIFEST_VALUES, min_size=1,
                               max_size=3))
def test_eval_with_generated_manifests_ends_in_a_result_or_one_error(workspace, changes):
    bundle = workspace / "mutated"
    if not bundle.exists():
        shutil.copytree(DEMO_MODEL_DIR, bundle)
    manifest = {**GOOD_MANIFEST, **changes}
    text = json.dumps(manifest) if not _has_nonfinite(manifest) else json.dumps(manifest, allow_nan=True)
    (bundle / MANIFEST).write_text(text, encoding="utf-8", errors="surrogatepass")
    args = ["eval", "--model", "mutated", "--data-dir", "data", "--output-dir", "out", "-q", "--num-workers", "1"]
    assert_result_or_one_error(invoke(workspace, args))


# --- and through a real process --------------------------------------------------------------------

@pytest.mark.parametrize("rows", [b"\xef\xbb\xbf" + b'{"image_path": "' + b"x" * 300 + b'.jpg", "query": ["q"]}\n',
                                  b'{"image_path": "a\\u0000b", "query": [1]}\n\xff\n'])
def test_a_real_process_with_bad_rows(workspace, tmp_path, rows):
    (tmp_path / "image_queries.jsonl").write_bytes(rows)
    proc = subprocess.run([sys.executable, "-m", "clipeval.cli", "eval", "--model", str(workspace / "bundle"),
                           "--data-dir", str(tmp_path), "--output-dir", str(tmp_path / "out"), "-q"],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "CLIPEVAL_CACHE_DIR": str(tmp_path / "cache")})
    assert proc.returncode == 2 and proc.stdout == "" and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("error: ") and "image_queries.jsonl:1" in proc.stderr


@pytest.mark.parametrize("path, says", [
    ("images/0000.jpg\0x", '"image_path" holds a NUL character'),  # finding F1
    ("\0", '"image_path" holds a NUL character'),
    ("a" * 5000, "(5000 chars)"),  # finding F2: shortened, not echoed whole
])
def test_rows_with_paths_no_file_can_have_end_in_one_error(workspace, path, says):
    data = workspace / "nul_rows"
    data.mkdir(exist_ok=True)
    (data / "image_queries.jsonl").write_text(
        json.dumps({"image_path": path, "query": "a"}) + "\n"
        + json.dumps({"image_path": str(workspace / "data" / IMAGES[1]), "query": "b"}) + "\n")
    result = invoke(workspace, ["eval", "--model", "bundle", "--data-dir", str(data), "--output-dir", "out", "-q"])
    assert_result_or_one_error(result)
    assert result.exit_code == 2 and "image_queries.jsonl:1: " in result.stderr and says in result.stderr
    assert len(result.stderr) < 1500
