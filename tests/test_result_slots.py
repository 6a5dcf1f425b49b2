"""Results are never stale and never clobbered: slots, file names, fingerprints, wrong shapes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from clipeval.cli.main import cli
from clipeval.engine.sessions.bundle import MANIFEST
from clipeval.engine.datasets.fingerprint import data_fingerprint
from clipeval.engine.demo import DEMO_DATA_DIR, DEMO_MODEL_DIR
from clipeval.engine.results.layout import (
    Slot,
    destination,
    find_existing,
    read_result,
    result_path,
    slot_candidates,
    slot_tags,
    write_result,
)

ROWS = [json.loads(line) for line in (DEMO_DATA_DIR / "image_queries.jsonl").read_text().splitlines()]
NAME = "custom_zeroshot_retrieval"


def demo_rows(root: Path, n: int) -> Path:
    """A custom dataset of the first ``n`` demo rows, its images referenced where they are."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "image_queries.jsonl", "w") as f:
        for row in ROWS[:n]:
            f.write(json.dumps({**row, "image_path": str(DEMO_DATA_DIR / row["image_path"])}) + "\n")
    return root


def demo_bundle(root: Path, **manifest_changes) -> Path:
    """A copy of the demo bundle; ``manifest_changes`` give it another identity or more variants."""
    path = Path(shutil.copytree(DEMO_MODEL_DIR, root))
    manifest = json.loads((path / MANIFEST).read_text())
    manifest.update(manifest_changes)
    (path / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return path


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=True)


def ok(result) -> dict:
    assert result.exit_code == 0, (result.output, result.exception)
    return json.loads(result.stdout.strip().splitlines()[-1])


def eval_args(bundle, data, out, *extra):
    return ["eval", "--model", bundle, "--data-dir", data, "--output-dir", out, "-q", *extra]


def files(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*.json"))


# --- names ------------------------------------------------------------------------------------

@pytest.mark.parametrize("precision, own, language, split, tags", [
    ("fp32", "fp32", None, "test", []),
    ("fp32", "fp32", "en", "test", []),
    ("int8", "fp32", None, "test", ["int8"]),
    ("fp32", "fp16", None, "test", ["fp32"]),
    ("fp32", "fp32", "zh", "test", ["zh"]),
    ("fp32", "fp32", None, "val", ["val"]),
    ("fp16", "fp32", "zh", "train", ["fp16", "zh", "train"]),
])
def test_tags_name_only_what_differs_from_the_defaults(precision, own, language, split, tags):
    assert slot_tags(precision, own, language, split) == tags
    path = result_path("out", "m", "flickr30k", "zeroshot_retrieval", tags)
    assert path == Path("out", "m", "flickr30k_zeroshot_retrieval" + "".join(f".{t}" for t in tags) + ".json")


def slot(**changes) -> Slot:
    return Slot(**{"bundle": "b" * 64, "precision": "fp32", "language": "en", "data": "/data/x", "split": "test",
                   **changes})


def result_of(s: Slot, key="k") -> dict:
    return {"dataset": "custom", "model": "m", "task": "zeroshot_retrieval", "metrics": {"x": 1.0},
            "meta": {"bundle": {"identity": s.bundle}, "precision": s.precision, "language": s.language,
                     "data_dir": s.data, "split": s.split, "params_key": key}}


def test_every_slot_part_changes_the_digest():
    base = slot()
    others = [slot(bundle="c" * 64), slot(precision="int8"), slot(language="zh"), slot(data="/data/y"),
              slot(data="url:https://h/x"), slot(split="val")]
    assert len({base.digest, *(o.digest for o in others)}) == 1 + len(others)
    assert Slot.of_result(result_of(base)) == base


def test_destination_keeps_the_readable_name_replaces_a_rerun_and_never_clobbers(tmp_path):
    primary = tmp_path / "m" / f"{NAME}.json"
    mine, other = slot(), slot(data="/data/other")
    assert destination(primary, mine) == primary  # free
    write_result(primary, result_of(mine))
    assert destination(primary, mine) == primary  # a re-run of the same slot
    assert destination(primary, other) == primary.with_name(f"{NAME}.{other.digest[:8]}.json")
    write_result(destination(primary, other), result_of(other))
    assert destination(primary, other) == primary.with_name(f"{NAME}.{other.digest[:8]}.json")
    assert find_existing(primary, other, "k")[0] == primary.with_name(f"{NAME}.{other.digest[:8]}.json")
    assert find_existing(primary, mine, "k")[0] == primary
    assert find_existing(primary, mine, "another key") is None
    # an 8-digit clash (or anything else there) moves on to 16 digits, then 64
    third = slot(data="/data/third")
    for path in slot_candidates(primary, third.digest)[:2]:
        path.write_text("[]")
    assert destination(primary, third) == primary.with_name(f"{NAME}.{third.digest[:16]}.json")


WRONG_SHAPES = ["[]", "{}", "null", "3", '"text"', "{not json", "", '{"meta": 1}',
                '{"dataset": "custom", "model": "m", "task": "zeroshot_retrieval", "metrics": {}}',
                '{"dataset": "custom", "model": "m", "task": "zeroshot_retrieval", "metrics": {}, "meta": []}',
                '{"dataset": "custom", "model": "m", "task": "zeroshot_retrieval", "metrics": [], "meta": {}}',
                '{"dataset": 1, "model": "m", "task": "t", "metrics": {}, "meta": {}}',
                '{"dataset": "c", "model": "m", "task": "t", "metrics": {}, "meta": {"bundle": "x"}}',
                '{"dataset": "c", "model": "m", "task": "t", "metrics": {}, "meta": {"bundle": {"identity": [1]}}}',
                '{"dataset": "c", "model": "m", "task": "t", "metrics": {}, "meta": {"bundle": {}, "precision": 5}}',
                "[" * 5000]


@pytest.mark.parametrize("content", WRONG_SHAPES)
def test_files_of_the_wrong_shape_are_never_a_result_nor_replaced(tmp_path, content):
    primary = tmp_path / f"{NAME}.json"
    primary.write_text(content)
    assert find_existing(primary, slot(), "k") is None
    assert Slot.of_result(read_result(primary)) is None
    assert destination(primary, slot()) != primary
    (tmp_path / "dir.json").mkdir()
    assert read_result(tmp_path / "dir.json") is None


# --- fingerprints -------------------------------------------------------------------------------

def test_the_fingerprint_follows_the_rows_file_limit_split_and_language(tmp_path):
    data = demo_rows(tmp_path / "d", 5)
    fp = data_fingerprint("custom", data, "test")
    assert fp == data_fingerprint("custom", str(data), "test")
    assert fp != data_fingerprint("custom", data, "test", limit=3)
    assert fp != data_fingerprint("custom", data, "val")
    assert fp != data_fingerprint("custom", data, "test", language="zh")
    demo_rows(data, 6)
    assert data_fingerprint("custom", data, "test") != fp
    assert data_fingerprint("custom", tmp_path / "missing", "test") != fp  # no file: its own value, no error


def test_the_fingerprint_of_a_webdataset_folder_follows_its_shards(tmp_path):
    root = tmp_path / "wds"
    (root / "test").mkdir(parents=True)
    (root / "test" / "nshards.txt").write_text("1\n")
    (root / "test" / "0.tar").write_bytes(b"x" * 10)
    fp = data_fingerprint("flickr8k", root, "test")
    (root / "test" / "0.tar").write_bytes(b"y" * 11)
    fp2 = data_fingerprint("flickr8k", root, "test")
    (root / "test" / "1.tar").write_bytes(b"z")
    fp3 = data_fingerprint("flickr8k", root, "test")
    assert len({fp, fp2, fp3}) == 3
    (root / "flickr8k_test_karpathy.txt").write_text("image,caption\n1.jpg,a dog\n")
    fp4 = data_fingerprint("flickr8k", root, "test")
    (root / "flickr8k_test_karpathy.txt").write_text("image,caption\n1.jpg,a cat\n")
    assert len({fp3, fp4, data_fingerprint("flickr8k", root, "test")}) == 3


# --- end to end ---------------------------------------------------------------------------------

def test_precision_variants_get_their_own_files(tmp_path):
    variants = {"fp32": {"vision": "vision.onnx", "text": "text.onnx"},
                "int8": {"vision": "vision.onnx", "text": "text.onnx"}}  # same files: only the names matter here
    bundle = demo_bundle(tmp_path / "b", variants=variants)
    data, out = demo_rows(tmp_path / "d", 5), tmp_path / "out"
    fp32 = ok(run(*eval_args(bundle, data, out, "--precision", "fp32")))
    int8 = ok(run(*eval_args(bundle, data, out, "--precision", "int8")))
    assert files(out) == [f"clipeval-demo-shapes/{NAME}.int8.json", f"clipeval-demo-shapes/{NAME}.json"]
    assert (fp32["meta"]["precision"], int8["meta"]["precision"]) == ("fp32", "int8")
    assert json.loads((out / "clipeval-demo-shapes" / f"{NAME}.json").read_text())["meta"]["precision"] == "fp32"
    for r in (fp32, int8):
        meta = r["meta"]
        assert meta["slot_digest"] == Slot(meta["bundle"]["identity"], meta["precision"], "en", str(data), "test").digest
        assert meta["data_fingerprint"] == data_fingerprint("custom", data, "test")
        assert (r["dataset"], r["model"], r["task"]) == ("custom", "clipeval-demo-shapes", "zeroshot_retrieval")


def test_two_bundles_of_one_name_and_two_data_folders_never_share_a_file(tmp_path):
    first = demo_bundle(tmp_path / "b1")
    second = demo_bundle(tmp_path / "b2", revision="another training run")  # same source name, other identity
    data, other_data, out = demo_rows(tmp_path / "d", 5), demo_rows(tmp_path / "d2", 6), tmp_path / "out"
    a = ok(run(*eval_args(first, data, out)))
    before = (out / "clipeval-demo-shapes" / f"{NAME}.json").read_bytes()
    b = ok(run(*eval_args(second, data, out)))
    c = ok(run(*eval_args(first, other_data, out)))
    paths = [Path(r["meta"]["result_file"]) for r in (a, b, c)]
    assert len(set(paths)) == 3
    assert paths[0].name == f"{NAME}.json"
    assert paths[1].name == f"{NAME}.{b['meta']['slot_digest'][:8]}.json"
    assert paths[2].name == f"{NAME}.{c['meta']['slot_digest'][:8]}.json"
    assert (out / "clipeval-demo-shapes" / f"{NAME}.json").read_bytes() == before
    assert [json.loads(p.read_text())["meta"]["num_images"] for p in paths] == [5, 5, 6]
    # Re-running a slot replaces its own file and leaves the others alone.
    again = ok(run(*eval_args(second, data, out)))
    assert Path(again["meta"]["result_file"]) == paths[1] and len(files(out)) == 3
    # --skip-existing finds each slot where it went.
    for bundle, d, path in ((first, data, paths[0]), (second, data, paths[1]), (first, other_data, paths[2])):
        stamp = path.stat().st_mtime_ns
        assert ok(run(*eval_args(bundle, d, out, "--skip-existing")))["meta"]["result_file"] == str(path)
        assert path.stat().st_mtime_ns == stamp


def test_skip_existing_recomputes_when_the_rows_file_grew(tmp_path):
    data, out = demo_rows(tmp_path / "d", 5), tmp_path / "out"
    assert ok(run(*eval_args(DEMO_MODEL_DIR, data, out)))["meta"]["num_images"] == 5
    demo_rows(data, 20)
    grown = ok(run(*eval_args(DEMO_MODEL_DIR, data, out, "--skip-existing")))
    assert grown["meta"]["num_images"] == 20
    path = Path(grown["meta"]["result_file"])
    assert path.name == f"{NAME}.json" and json.loads(path.read_text())["meta"]["num_images"] == 20
    stamp = path.stat().st_mtime_ns
    assert ok(run(*eval_args(DEMO_MODEL_DIR, data, out, "--skip-existing")))["meta"]["num_images"] == 20
    assert path.stat().st_mtime_ns == stamp  # unchanged data: skipped
    assert ok(run(*eval_args(DEMO_MODEL_DIR, data, out, "--skip-existing", "--limit", "7")))["meta"]["num_images"] == 7


@pytest.mark.parametrize("content", ["[]", "{}", '{"meta": 1}', '{"dataset": "custom", "model": "m", '
                                     '"task": "zeroshot_retrieval", "metrics": {}, "meta": {"bundle": "x"}}', "{oops"])
def test_skip_existing_over_a_result_file_of_the_wrong_shape_recomputes(tmp_path, content):
    data, out = demo_rows(tmp_path / "d", 5), tmp_path / "out"
    primary = out / "clipeval-demo-shapes" / f"{NAME}.json"
    primary.parent.mkdir(parents=True)
    primary.write_text(content)
    result = ok(run(*eval_args(DEMO_MODEL_DIR, data, out, "--skip-existing")))
    assert result["meta"]["num_images"] == 5
    assert primary.read_text() == content  # not ours to replace
    assert json.loads(Path(result["meta"]["result_file"]).read_text()) == result


RUN_TASK = textwrap.dedent("""
    from clipeval import run_task
    task_cfg = {{
        "eval_backend": "RAGEval",
        "eval_config": {{"tool": "clip_benchmark", "eval": {{
            "models": [{{"model_name": "demo"}}], "dataset_name": ["custom"], "data_dir": {data!r},
            "output_dir": {out!r}, "verbose": {verbose}, "batch_size": 8, "num_workers": 1}}}},
    }}
    run_task(task_cfg=task_cfg)
""")


@pytest.mark.parametrize("verbose", [True, False])
def test_run_task_as_documented_shows_the_result_and_the_file_on_stderr(tmp_path, verbose):
    data, out = demo_rows(tmp_path / "d", 5), tmp_path / "out"
    code = RUN_TASK.format(data=str(data), out=str(out), verbose=verbose)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "CLIPEVAL_CACHE_DIR": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    written = out / "clipeval-demo-shapes" / f"{NAME}.json"
    assert written.is_file()
    line = "clipeval-demo-shapes on custom (zeroshot_retrieval): image_retrieval_recall@1"
    if verbose:
        assert line in proc.stderr and f"wrote {written}" in proc.stderr, proc.stderr
    else:  # quiet: no progress, no result line, no file line (a provider's own warning may still appear)
        assert line not in proc.stderr and "wrote" not in proc.stderr and "images:" not in proc.stderr, proc.stderr


def test_run_task_leaves_a_callers_logging_alone(tmp_path):
    data, out = demo_rows(tmp_path / "d", 5), tmp_path / "out"
    code = "import logging; logging.basicConfig(level=logging.WARNING)\n" + RUN_TASK.format(
        data=str(data), out=str(out), verbose=True)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "CLIPEVAL_CACHE_DIR": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr
    assert "wrote" not in proc.stderr  # the caller asked for warnings only



# --- every task follows the scheme: text retrieval and captioning too ---------------------------

def _beir(folder: Path, n_docs: int, offset: int = 0) -> Path:
    from clipeval.engine.datasets.beir import write_beir

    words = "red blue green square circle star small large".split()
    corpus = [{"_id": f"d{i}", "text": f"a {words[(i + offset) % 8]} {words[(3 * i + offset) % 8]}"}
              for i in range(n_docs)]
    queries = [{"_id": f"q{i}", "text": words[(i + offset) % 8]} for i in range(4)]
    return write_beir(folder, corpus, queries, [(f"q{i}", f"d{i}", 1) for i in range(4)])


@pytest.mark.parametrize("change", ["data folder", "query prompt", "document prompt", "split"])
def test_text_retrieval_results_of_two_slots_never_share_a_file(tmp_path, change):
    """text-eval (the demo's text tower): two runs that differ in data folder, a prompt or the split
    write two files under one dataset name; a re-run of the first replaces its own file."""
    out = tmp_path / "out"
    a = _beir(tmp_path / "a" / "retrieval_data", 6)
    base = ["text-eval", "--model", "demo", "--dataset-name", "shapes", "--output-dir", out, "--no-cache", "-q"]
    first = ok(run(*base, "--data-dir", a))
    if change == "data folder":
        second_args = ["--data-dir", _beir(tmp_path / "b" / "retrieval_data", 6, offset=1)]
    elif change == "split":
        from clipeval.engine.datasets.beir import write_beir

        write_beir(a, [{"_id": f"d{i}", "text": f"doc {i}"} for i in range(6)],
                   [{"_id": "q0", "text": "doc 1"}], [("q0", "d1", 1)], split="dev")
        second_args = ["--data-dir", a, "--split", "dev"]
    else:
        second_args = ["--data-dir", a, f"--{change.replace(' ', '-')}", "prefix: "]
    second = ok(run(*base, *second_args))
    f1, f2 = first["meta"]["result_file"], second["meta"]["result_file"]
    assert f1 != f2 and Path(f1).is_file() and Path(f2).is_file()
    assert first["meta"]["slot_digest"] != second["meta"]["slot_digest"]
    if change == "split":
        assert f2.endswith("shapes_text_retrieval.dev.json")  # a readable tag
    else:
        assert f2.endswith(f"shapes_text_retrieval.{second['meta']['slot_digest'][:8]}.json")
    assert read_result(f1)["metrics"] == first["metrics"]  # the first result is intact
    again = ok(run(*base, "--data-dir", a))
    assert again["meta"]["result_file"] == f1  # a re-run of the first slot replaces its own file


def test_caption_summaries_of_two_data_folders_never_share_a_file(tmp_path):
    """Captioning two folders under one dataset name: the second summary goes to the digest name,
    and its BEIR folder and journal beside it, so the first is intact."""
    from fake_openai import FakeOpenAI

    from datagen import noise_image, write_dataset

    out = tmp_path / "out"
    rows = [{"image_path": f"{i}.png", "query": [f"q{i}"]} for i in range(3)]
    a = write_dataset(tmp_path / "a", rows, {f"{i}.png": noise_image(i) for i in range(3)})
    b = write_dataset(tmp_path / "b", rows[:2], {f"{i}.png": noise_image(10 + i) for i in range(2)})
    with FakeOpenAI(captioner="echo") as srv:
        args = ["caption", "--api-base", srv.url, "--model-name", "fake-vlm", "--output-dir", out, "-q"]
        env = {"CLIPEVAL_API_KEY": "sk-secret-0123456789"}
        first = ok(CliRunner().invoke(cli, [str(x) for x in [*args, "--data-dir", a]], env=env))
        second = ok(CliRunner().invoke(cli, [str(x) for x in [*args, "--data-dir", b]], env=env))
    digest = second["meta"]["slot_digest"][:8]
    assert Path(first["meta"]["result_file"]) == out / "fake-vlm" / "custom_image_caption.json"
    assert Path(second["meta"]["result_file"]) == out / "fake-vlm" / f"custom_image_caption.{digest}.json"
    assert Path(first["metrics"]["save_path"]) == out / "fake-vlm" / "custom" / "retrieval_data"
    assert Path(second["metrics"]["save_path"]) == out / "fake-vlm" / f"custom.{digest}" / "retrieval_data"
    from clipeval.engine.datasets.beir import read_beir

    assert len(read_beir(first["metrics"]["save_path"]).corpus) == 3
    assert len(read_beir(second["metrics"]["save_path"]).corpus) == 2
    assert second["meta"]["journal"].startswith(str(out / "fake-vlm" / f"custom.{digest}"))
    assert first["meta"]["bundle"]["model_name"] == "fake-vlm"
    assert "sk-secret" not in json.dumps(first) + json.dumps(second)


# --- names that would step out of the output folder (finding F29) --------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

ODD_NAMES = st.one_of(st.sampled_from(["..", ".", "", "../..", "/", "/etc", "a/../..", "..\\..", "~", "\0", "...",
                                       " ..", ".. "]), st.text(max_size=12))


@settings(max_examples=200, deadline=None)
@given(model=ODD_NAMES, dataset=ODD_NAMES, tags=st.lists(ODD_NAMES, max_size=2), folder=st.sampled_from(["", "stage1"]))
def test_every_result_path_stays_two_levels_under_the_output_folder(model, dataset, tags, folder):
    """Whatever the model, dataset and tag names (the model name comes from --model-name, a
    bundle's manifest "source" or an API's model name), the result, its digest names and the
    captioning folder beside it are exactly under {output_dir}[/{folder}]/{model}/."""
    from clipeval.engine.results.layout import side_name

    out = Path("/out/put")
    root = out / folder if folder else out
    primary = result_path(root, model, dataset, "zeroshot_retrieval", tags)
    for path in [primary, *slot_candidates(primary, "f" * 64)]:
        assert Path(os.path.normpath(path)) == path  # no "." or ".." component survives
        assert path.parent.parent == root and path.parent.name not in ("", ".", "..")
    side = side_name(primary, dataset, "zeroshot_retrieval")
    assert "/" not in side and side not in ("", ".", "..")


@pytest.mark.parametrize("name", ["..", ".", "../x"])
def test_text_eval_with_a_model_name_of_dots_writes_under_the_output_folder(tmp_path, name):
    out = tmp_path / "a" / "out"
    data = _beir(tmp_path / "beir1", 4)
    for flags in (["--model-name", name], ["--dataset-name", name]):
        result = ok(run("text-eval", "--model", "demo", *flags, "--data-dir", data, "--output-dir", out, "--no-cache",
                        "-q", "--k", "1"))
        assert Path(result["meta"]["result_file"]).resolve().parent.parent == out.resolve()
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["out"]  # nothing beside out/


def test_eval_with_a_bundle_whose_source_is_dots_writes_under_the_output_folder(tmp_path):
    bundle = demo_bundle(tmp_path / "bdot", source="..")
    out = tmp_path / "a" / "out"
    result = ok(run("eval", "--model", bundle, "--data-dir", demo_rows(tmp_path / "d", 4), "--output-dir", out,
                    "--no-cache", "-q"))
    assert Path(result["meta"]["result_file"]) == out / "__" / f"{NAME}.json"
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["out"]


@pytest.mark.parametrize("served_name", ["..", "."])
def test_caption_with_a_model_name_of_dots_writes_under_the_output_folder(tmp_path, served_name):
    from fake_openai import FakeOpenAI

    from datagen import noise_image, write_dataset

    rows = [{"image_path": f"{i}.png", "query": [f"q{i}"]} for i in range(2)]
    data = write_dataset(tmp_path / "d", rows, {f"{i}.png": noise_image(i) for i in range(2)})
    out = tmp_path / "a" / "out"
    with FakeOpenAI(captioner="echo", model=served_name) as srv:
        result = ok(run("caption", "--api-base", srv.url, "--model-name", served_name, "--data-dir", data,
                        "--output-dir", out, "-q"))
    under = out / ("_" * len(served_name))
    assert Path(result["meta"]["result_file"]) == under / "custom_image_caption.json"
    assert Path(result["metrics"]["save_path"]) == under / "custom" / "retrieval_data"
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["out"]


def test_text_eval_of_two_folders_of_one_name_never_share_a_file(tmp_path):
    """Finding F24's second case: y1/beirA and y2/beirA, dataset name from the folder."""
    out = tmp_path / "out"
    a = _beir(tmp_path / "y1" / "beirA", 6)
    b = _beir(tmp_path / "y2" / "beirA", 6, offset=1)
    first = ok(run("text-eval", "--model", "demo", "--data-dir", a, "--output-dir", out, "--no-cache", "-q"))
    second = ok(run("text-eval", "--model", "demo", "--data-dir", b, "--output-dir", out, "--no-cache", "-q"))
    assert first["dataset"] == second["dataset"] == "beirA"
    assert first["meta"]["result_file"] != second["meta"]["result_file"]
    assert read_result(first["meta"]["result_file"])["metrics"] == first["metrics"]


@pytest.mark.parametrize("kind", ["fifo", "zero"])
def test_skip_existing_over_a_fifo_or_device_at_the_result_name_runs_and_keeps_it(tmp_path, kind):
    """Finding F35: a FIFO (or a link to /dev/zero) where the result would go is never opened for
    reading (that would block or never end) nor replaced; the result goes to its digest name."""
    out = tmp_path / "out"
    data = demo_rows(tmp_path / "d", 4)
    first = ok(run("eval", "--data-dir", data, "--output-dir", out, "--no-cache", "-q"))
    primary = Path(first["meta"]["result_file"])
    primary.unlink()
    if kind == "fifo":
        os.mkfifo(primary)
    else:
        primary.symlink_to("/dev/zero")
    again = ok(run("eval", "--data-dir", data, "--output-dir", out, "--no-cache", "-q", "--skip-existing"))
    assert Path(again["meta"]["result_file"]) == primary.with_name(f"{NAME}.{again['meta']['slot_digest'][:8]}.json")
    assert (primary.is_fifo() if kind == "fifo" else primary.is_symlink())


# --- destinations blocked below the output folder (findings K1, K2) ----------------------------

def _block(path: Path, kind: str) -> None:
    """Put something that is not a regular file at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "folder":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        path.symlink_to("/dev/null")
    elif kind == "file":
        path.write_text("x")


def _sides(path: Path) -> list[Path]:
    stem = path.name[: -len(".json")]
    return [path.with_name(stem + ".detail.npz"), path.with_name(stem + ".trec")]


@pytest.mark.parametrize("kind", ["folder", "fifo", "device"])
@pytest.mark.parametrize("side", [0, 1])
def test_destination_passes_over_a_name_whose_side_file_is_no_regular_file(tmp_path, kind, side):
    primary = tmp_path / "m" / f"{NAME}.json"
    mine = slot()
    _block(_sides(primary)[side], kind)
    assert destination(primary, mine) == primary  # the task writes no such side file
    chosen = destination(primary, mine, side_files=_sides)
    assert chosen == primary.with_name(f"{NAME}.{mine.digest[:8]}.json")
    write_result(primary, result_of(mine))  # even a re-run of the same slot cannot go there
    assert destination(primary, mine, side_files=_sides) == chosen


@pytest.mark.parametrize("kind", ["folder", "fifo", "device"])
def test_destination_with_every_name_blocked_is_a_config_error(tmp_path, kind):
    from clipeval.engine.errors import ConfigError

    primary = tmp_path / "m" / f"{NAME}.json"
    mine = slot()
    for path in slot_candidates(primary, mine.digest):
        _block(_sides(path)[0], kind)
    with pytest.raises(ConfigError) as err:
        destination(primary, mine, side_files=_sides)
    assert "--output-dir" in err.value.remedy


BLOCKS = [  # (command, what is blocked, kind): the model's folder, or a side file's name
    *[(cmd, "model folder", kind) for cmd in ("eval", "text-eval") for kind in ("file", "fifo", "device")],
    *[("eval", "detail", kind) for kind in ("folder", "fifo", "device")],
    *[("text-eval", "trec", kind) for kind in ("folder", "fifo", "device")],
]


@pytest.mark.parametrize("cmd, where, kind", BLOCKS)
def test_a_blocked_place_below_the_output_folder_is_found_before_the_model_work(tmp_path, monkeypatch, cmd, where,
                                                                                 kind):
    """K1: a file (FIFO, device) where the model's result folder goes is one error (exit 2) before
    any model work; K2: a folder (FIFO, device) at a side file's name (detail, TREC run) sends the
    result to its digest name, never an internal error after the model work."""
    from clipeval.engine.tasks.base import Task

    out = tmp_path / "out"
    if cmd == "eval":
        args = eval_args("demo", demo_rows(tmp_path / "d", 4), out, "--no-cache")
        stem = f"{NAME}"
    else:
        args = ["text-eval", "--model", "demo", "--data-dir", _beir(tmp_path / "beirX", 6), "--output-dir", out,
                "--no-cache", "-q"]
        stem = "beirX_text_retrieval"
    model_dir = out / "clipeval-demo-shapes"
    if where == "model folder":
        _block(model_dir, kind)
        evaluated = []
        for task in Task.__subclasses__() + [t for c in Task.__subclasses__() for t in c.__subclasses__()]:
            if "evaluate" in vars(task):
                monkeypatch.setattr(task, "evaluate", lambda self, *a, _e=evaluated: _e.append(1))
        result = run(*args)
        assert result.exit_code == 2, (result.output, result.exception)
        assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr
        assert str(model_dir) in result.stderr and "--output-dir" in result.stderr
        assert evaluated == []
        return
    blocked = model_dir / (f"{stem}.detail.npz" if where == "detail" else f"{stem}.trec")
    _block(blocked, kind)
    result = ok(run(*args))
    written = Path(result["meta"]["result_file"])
    assert written.name == f"{stem}.{result['meta']['slot_digest'][:8]}.json"
    assert read_result(written)["metrics"] == result["metrics"]
    assert os.path.lexists(blocked) and not blocked.is_file()


@pytest.mark.parametrize("cmd", ["eval", "text-eval", "run"])
def test_a_tilde_output_folder_is_the_home_folder_checked_not_a_folder_named_tilde(tmp_path, monkeypatch, cmd):
    """K6: `--output-dir ~/runs` (or `output_dir: ~/runs` in a config) was checked as $HOME/runs but
    written to a folder literally named `~` in the working directory."""
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    data = demo_rows(tmp_path / "d", 3)
    if cmd == "eval":
        result = ok(run(*eval_args("demo", data, "~/runs", "--no-cache")))
    elif cmd == "text-eval":
        result = ok(run("text-eval", "--model", "demo", "--data-dir", _beir(tmp_path / "beirT", 6), "--output-dir",
                        "~/runs", "--no-cache", "-q"))
    else:
        config = tmp_path / "c.yaml"
        config.write_text(f"models: [{{model_name: demo}}]\ndata_dir: {data}\noutput_dir: ~/runs\nverbose: false\n")
        result = ok(run("run", config))
    written = Path(result["meta"]["result_file"])
    assert written.is_file() and home / "runs" in written.parents
    assert not (cwd / "~").exists()


def test_rows_relative_to_the_working_directory_are_other_data_from_another_folder(tmp_path, monkeypatch):
    """K7: `image_path` relative to the working directory is tried first (the reference's rule), so
    one rows file run from two folders reads two sets of images. The second run must neither be
    served the first's result by --skip-existing nor replace its file; a run whose rows resolve
    only in the data folder keeps its fingerprint wherever it starts."""
    data = tmp_path / "d"
    data.mkdir()
    rel = [{**row, "image_path": f"images/{i}.jpg"} for i, row in enumerate(ROWS[:6])]
    (data / "image_queries.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rel))
    (data / "images").mkdir()
    for i, row in enumerate(ROWS[:6]):
        shutil.copy(DEMO_DATA_DIR / row["image_path"], data / "images" / f"{i}.jpg")
    other = tmp_path / "other"
    (other / "images").mkdir(parents=True)
    for i in range(6):  # other pictures under the same names
        shutil.copy(DEMO_DATA_DIR / ROWS[100 + i]["image_path"], other / "images" / f"{i}.jpg")
    out = tmp_path / "out"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # nothing here: the rows resolve in the data folder
    base = ok(run(*eval_args("demo", data, out, "--no-cache")))
    assert data_fingerprint("custom", data, "test") == base["meta"]["data_fingerprint"]
    monkeypatch.chdir(other)  # here images/{i}.jpg are other pictures
    moved = ok(run(*eval_args("demo", data, out, "--no-cache", "--skip-existing")))
    assert moved["meta"]["data_fingerprint"] != base["meta"]["data_fingerprint"]
    assert moved["meta"]["result_file"] != base["meta"]["result_file"]
    assert read_result(base["meta"]["result_file"])["metrics"] == base["metrics"]  # not clobbered
    monkeypatch.chdir(elsewhere)
    again = ok(run(*eval_args("demo", data, out, "--no-cache", "--skip-existing")))
    assert again["meta"]["result_file"] == base["meta"]["result_file"] and again["metrics"] == base["metrics"]
