"""The documentation shows only what the program does: every key of every result-file example in
README.md and docs/*.md, and every `meta.KEY` the text names, exists in a real result of that task
(README ⊆ real result: a result may hold more than the documentation shows)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from clipeval.cli.main import cli
from clipeval.engine.demo import DEMO_DATA_DIR
from datagen import noise_image, write_dataset

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PLACEHOLDER = "..."  # an example shows `"...": 0` where it leaves keys out
# Objects keyed by data, not by name (HTTP outcomes seen: "200", "429", "timeout" ...).
KEYED_BY_DATA = {"meta.requests.outcomes"}

# Which tasks' results a file talks about when it names `meta.KEY` in its text.
DOC_TASKS = {
    "README.md": ["zeroshot_retrieval"],
    "speed.md": ["zeroshot_retrieval"],
    "datasets.md": ["zeroshot_retrieval", "zeroshot_classification"],
    "text-retrieval.md": ["text_retrieval"],
    "caption.md": ["image_caption"],
    "export.md": [],
    "report.md": ["zeroshot_retrieval", "zeroshot_classification"],
    "scale.md": ["zeroshot_retrieval", "zeroshot_classification"],
    "architecture.md": ["zeroshot_retrieval", "zeroshot_classification", "text_retrieval", "image_caption"],
}


def invoke(*args, env=None):
    r = CliRunner().invoke(cli, [str(a) for a in args], env=env, catch_exceptions=True)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def real_results(tmp_path_factory):
    """One real result per task, from the CLI, on inputs that bring out the optional keys
    (a cache, a skipped image, a k larger than the corpus, a run file that cannot be written)."""
    tmp = tmp_path_factory.mktemp("docs")
    out = {}
    # retrieval: the demo (with the embedding cache), and a custom set with a skipped image and a limit
    out["zeroshot_retrieval"] = [invoke("eval", "--output-dir", tmp / "r", "--cache-dir", tmp / "cache", "-q")]
    data = write_dataset(tmp / "custom", [{"image_path": f"{i}.png", "query": [f"q{i}"]} for i in range(4)]
                         + [{"image_path": "gone.png", "query": ["lost"]}],
                         {f"{i}.png": noise_image(i) for i in range(4)})
    out["zeroshot_retrieval"].append(invoke("eval", "--data-dir", data, "--on-error", "skip", "--limit", 3,
                                            "--output-dir", tmp / "r2", "--no-cache", "-q"))
    # classification: 3 classes, so acc5 is left out
    from wdsgen import write_classification_set

    write_classification_set(tmp / "wds", n=6, n_classes=3)
    out["zeroshot_classification"] = [invoke("eval", "--dataset", "cars", "--data-dir", tmp / "wds",
                                             "--output-dir", tmp / "c", "--no-cache", "-q")]
    # text retrieval: the demo's text tower on a 4-document BEIR folder, one id with a space
    beir = tmp / "beir"
    beir.mkdir()
    docs = {"d0": "a small red triangle", "d1": "a large blue circle", "d 2": "a green square", "3": "a star"}
    (beir / "corpus.jsonl").write_text("".join(json.dumps({"_id": k, "text": v}) + "\n" for k, v in docs.items()))
    (beir / "queries.jsonl").write_text("".join(json.dumps({"_id": str(i), "text": v}) + "\n"
                                                for i, v in enumerate(docs.values())))
    (beir / "qrels.jsonl").write_text("".join(json.dumps({"query-id": str(i), "corpus-id": k, "score": 1}) + "\n"
                                              for i, k in enumerate(docs)))
    out["text_retrieval"] = [invoke("text-eval", "--model", "demo", "--data-dir", beir, "--output-dir", tmp / "t", "-q")]
    # evalscope's mteb form asking two splits of that folder, whose one flat qrels.jsonl both read
    mteb = tmp / "mteb.json"
    mteb.write_text(json.dumps({"work_dir": str(tmp / "m"), "eval_backend": "RAGEval", "eval_config": {
        "tool": "mteb", "models": [{"model_name_or_path": "demo"}],
        "eval": {"custom_tasks": [{"data_path": str(beir), "eval_splits": ["test", "dev"]}]}}}))
    out["text_retrieval"].append(invoke("run", mteb, "-q"))
    # and reranked by a tiny cross-encoder (the stage-2 result names its reranker)
    from fixtures_text import make_cross_encoder

    reranker = make_cross_encoder(tmp / "cross")
    out["text_retrieval"].append(invoke("text-eval", "--model", "demo", "--data-dir", beir, "--reranker", reranker,
                                        "--top-k", 3, "--output-dir", tmp / "t2", "--cache-dir", tmp / "cache", "-q"))
    # captioning: a fake OpenAI-compatible server on 127.0.0.1
    from fake_openai import FakeOpenAI

    images = write_dataset(tmp / "cap", [{"image_path": f"{i}.png", "query": [f"q{i}"]} for i in range(3)],
                           {f"{i}.png": noise_image(i) for i in range(3)})
    with FakeOpenAI(captioner="echo") as srv:
        out["image_caption"] = [invoke("caption", "--api-base", srv.url, "--model-name", "fake-vlm", "--data-dir",
                                       images, "--output-dir", tmp / "k", "-q", env={"CLIPEVAL_API_KEY": "sk-x"})]
    return out


def json_blocks(path: Path):
    """``(line, text)`` of every ```json block."""
    lines = path.read_text(encoding="utf-8").splitlines()
    start = None
    for number, line in enumerate(lines, start=1):
        if start is None and line.strip() == "```json":
            start = number
        elif start is not None and line.strip() == "```":
            yield start, "\n".join(lines[start:number - 1])
            start = None


def missing_keys(example, real, where=""):
    """Paths of keys in ``example`` that ``real`` lacks (dicts compared key by key, recursively)."""
    if not isinstance(example, dict) or where in KEYED_BY_DATA:
        return []
    if not isinstance(real, dict):
        return [where or "<top>"]
    out = []
    for key, value in example.items():
        if key == PLACEHOLDER:
            continue
        path = f"{where}.{key}" if where else key
        if key not in real:
            out.append(path)
        else:
            out += missing_keys(value, real[key], path)
    return out


def has_path(result: dict, dotted: str) -> bool:
    node = result
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_json_example_parses(doc):
    for line, text in json_blocks(doc):
        try:
            json.loads(text)
        except ValueError as exc:
            pytest.fail(f"{doc.name}:{line}: the example is not JSON ({exc}); show left-out keys as \"...\": 0")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_result_examples_show_only_keys_a_real_result_has(doc, real_results):
    for line, text in json_blocks(doc):
        example = json.loads(text)
        if not (isinstance(example, dict) and {"task", "metrics", "meta"} <= set(example)):
            continue  # not a result file (a row, a request body)
        assert example["task"] in real_results, f"{doc.name}:{line}: no real result of task {example['task']}"
        real = real_results[example["task"]][0]  # the plain run of that task
        gaps = missing_keys(example, real)
        assert not gaps, f"{doc.name}:{line}: the example shows {gaps}, which a real result lacks"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_meta_keys_named_in_the_text_exist(doc, real_results):
    tasks = DOC_TASKS[doc.name]
    text = doc.read_text(encoding="utf-8")
    named = sorted(set(re.findall(r"`meta\.([A-Za-z0-9_@.]+)`", text)))
    for key in named:
        assert any(has_path(r["meta"], key) for t in tasks for r in real_results[t]), \
            f"{doc.name} names meta.{key}, which no real {'/'.join(tasks) or 'result'} result has"


def test_the_readme_example_is_the_demo_result(real_results):
    (line, text), = [(n, t) for n, t in json_blocks(ROOT / "README.md") if '"metrics"' in t]
    example, real = json.loads(text), real_results["zeroshot_retrieval"][0]
    assert (example["dataset"], example["model"], example["task"]) == (real["dataset"], real["model"], real["task"])
    for key in ("num_images", "num_texts", "recall_k"):
        assert example["meta"][key] == real["meta"][key], key
    for key, value in example["metrics"].items():
        if key != PLACEHOLDER:
            assert round(real["metrics"][key], 2) == value, key


def test_the_generic_folder_names_of_text_eval_are_the_documented_ones():
    """Finding F25: docs/text-retrieval.md lists every folder name that takes its parent's name."""
    import re

    from clipeval.engine.tasks.text_retrieval import GENERIC_NAMES, dataset_name_for

    text = (ROOT / "docs" / "text-retrieval.md").read_text()
    sentence = re.search(r"The generic names: (.*?)\.\s", text, re.S).group(1)
    assert sorted(re.findall(r"`([^`]+)`", sentence)) == sorted(GENERIC_NAMES)
    for path, name in [("/x/custom/retrieval_data", "custom"), ("/x1/data", "x1"), ("/a/b/beir/Data", "b"),
                       ("/y/beirA", "beirA"), ("/m/gte/model/retrieval_data", "gte")]:
        assert dataset_name_for(path) == name


VARIANT_CLAIM = re.compile(r"(fp16|int8|fp32) variant[^`]{0,40}`clipeval export[^`]*--precision (\w+)`")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_export_recipes_make_the_variant_they_promise(doc):
    """F21: "a bundle with an int8 variant (`clipeval export ... --precision X`)" holds for X."""
    from clipeval.export.convert import EXPORT_PRECISIONS

    text = " ".join(doc.read_text(encoding="utf-8").split())
    for m in VARIANT_CLAIM.finditer(text):
        variant, precision = m.groups()
        assert precision in EXPORT_PRECISIONS, (doc.name, m.group(0))
        assert variant in EXPORT_PRECISIONS[precision][0], \
            f"{doc.name}: `--precision {precision}` writes {EXPORT_PRECISIONS[precision][0]}, not {variant}: {m.group(0)}"
