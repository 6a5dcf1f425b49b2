"""The task contract (engine/tasks/base.py), the registry, the runner that names no task, and
the embedding stage's executor interface (engine/embedding/executor.py) with a second executor."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np
import pytest

from clipeval import run_task
from clipeval.engine import runner
from clipeval.engine.config import make_eval_config
from clipeval.engine.embedding.executor import Executor, ImageBatch, TowerRef
from clipeval.engine.embedding.local import LocalExecutor
from clipeval.engine.embedding.stage import EmbeddingStage
from clipeval.engine.errors import ConfigError
from clipeval.engine.sessions.bundle import load_bundle
from clipeval.engine.tasks import TASKS, Evaluation, ModelRef, ResultSpec, Task, TaskMetadata, TaskOutput, register
from clipeval.engine.tasks.base import data_key
from datagen import noise_image, write_dataset


def test_the_registry_holds_every_task_with_its_metadata():
    assert list(TASKS) == ["zeroshot_retrieval", "zeroshot_classification", "image_caption", "text_retrieval"]
    for name, task in TASKS.items():
        meta = task.metadata
        assert meta.name == name and meta.description and meta.reference and meta.dataset_kinds
        assert meta.models in ("image_text", "text", "api")
    assert TASKS["zeroshot_classification"].metadata.embeds == ("images", "class_prompts")
    assert TASKS["text_retrieval"].metadata.embeds == ("corpus", "queries", "pairs")
    assert TASKS["image_caption"].metadata.embeds == ()


def test_the_runner_names_no_task():
    source = inspect.getsource(runner)
    for name in TASKS:
        assert name not in source, f"engine/runner.py names the task {name}"


def test_metadata_is_checked():
    with pytest.raises(ValueError):
        TaskMetadata(name="x", description="d", reference="r", dataset_kinds=("custom",), embeds=("pixels",),
                     models="image_text")
    with pytest.raises(ValueError):
        TaskMetadata(name="x", description="d", reference="r", dataset_kinds=("custom",), embeds=(), models="gpu")


def test_an_unknown_task_lists_the_registry():
    with pytest.raises(ConfigError) as info:
        make_eval_config({"task": "zeroshot_retreival"}, "eval_config.eval")
    text = str(info.value)
    assert "eval_config.eval.task" in text and all(name in text for name in TASKS)


# --- a fifth task: one module's worth of code and one registry entry ------------------------------

class CaptionLength(Task):
    """A toy task: the mean L2 norm of the caption embeddings of a custom dataset, per image."""

    metadata = TaskMetadata(name="toy_caption_norm", description="mean norm of caption embeddings",
                            reference="this test", dataset_kinds=("custom",), embeds=("texts",),
                            models="image_text", main_score="mean_norm", default_model="demo")

    def evaluations(self, cfg, entry, dataset, models):
        bundle = models.bundle(entry, "image_text")
        precision = bundle.manifest["precision"]
        model = ModelRef(name=bundle.name, identity=bundle.identity, describe={"identity": bundle.identity},
                         bundle=bundle, precision=precision, own_precision=precision)
        return [Evaluation(task=self, model=model, dataset=dataset, data_dir=cfg.data_dir,
                           data_key=data_key(cfg.data_dir), split=cfg.split, params={"batch": cfg.batch_size},
                           settings=cfg, results=[ResultSpec(bundle.name)], skip_existing=cfg.skip_existing,
                           options={"batch_size": cfg.batch_size})]

    def evaluate(self, ev, stage):
        from clipeval.engine.datasets import read_dataset

        ds = read_dataset(ev.dataset, ev.data_dir, ev.split, "fail")
        texts = stage.texts(ev.model.bundle, ev.model.precision, ds.texts, batch_size=ev.settings.batch_size)
        norms = np.linalg.norm(texts.embeds, axis=1)
        return [TaskOutput({"mean_norm": float(norms.mean())}, {"num_texts": len(ds.texts),
                                                                "cache": {"text_hits": texts.cache_hits}})]


@pytest.fixture
def toy_task():
    task = register(CaptionLength())
    yield task
    del TASKS["toy_caption_norm"]


def test_a_fifth_task_is_one_class_and_one_registry_entry(toy_task, tiny_bundle, tmp_path):
    rows = [{"image_path": f"{i}.png", "query": [f"caption {i}", f"another {i}"]} for i in range(3)]
    data = write_dataset(tmp_path / "ds", rows, {f"{i}.png": noise_image(i) for i in range(3)})
    block = {"models": [{"model_name": str(tiny_bundle)}], "task": "toy_caption_norm", "data_dir": str(data),
             "output_dir": str(tmp_path / "out"), "cache_dir": str(tmp_path / "cache"), "verbose": False}
    (first,) = run_task(block)
    bundle = load_bundle(tiny_bundle)
    assert first["task"] == "toy_caption_norm" and first["metrics"]["mean_norm"] == pytest.approx(1.0, abs=1e-5)
    path = tmp_path / "out" / bundle.name / "custom_toy_caption_norm.json"
    assert json.loads(path.read_text()) == first  # the layout of every task: name, meta block, atomic write
    meta = first["meta"]
    assert meta["num_texts"] == 6 and meta["cache"]["text_hits"] == 0 and meta["provider"] == "cpu"
    assert {"slot_digest", "params_key", "data_fingerprint", "versions", "result_file", "timings"} <= set(meta)
    (second,) = run_task(block)  # the embedding stage's cache serves it, as for every task
    assert second["meta"]["cache"]["text_hits"] == 6 and second["meta"]["provider"] == "none"
    assert second["metrics"] == first["metrics"]
    (skipped,) = run_task({**block, "skip_existing": True})
    assert skipped == second  # the skip key is built in one place too


# --- the executor interface: a second implementation -------------------------------------------

class ReversingExecutor(Executor):
    """Another executor: computes with the local one, but hands batches back in reverse order and
    one row at a time, and counts what it was asked for. The stage must put every row in place."""

    name = "reversing"

    def __init__(self):
        self.local = LocalExecutor(provider="cpu", threads=1, num_workers=0, decode="threads")
        self.asked: list[tuple[str, int]] = []

    def image_batches(self, tower, rows, *, batch_size, fast_decode=False):
        out = list(self.local.image_batches(tower, rows, batch_size=batch_size, fast_decode=fast_decode))
        self.asked.append((tower.tower, sum(len(b) for b in out)))
        pieces = []
        for batch in out:
            pieces += [ImageBatch(batch.positions[i:i + 1], batch.embeds[i:i + 1]) for i in range(len(batch.positions))]
            pieces += [ImageBatch(np.zeros(0, np.int64), np.zeros((0, 0), np.float32), [f]) for f in batch.failures]
        return iter(pieces[::-1])

    def run_batches(self, tower, batches):
        out = list(self.local.run_batches(tower, batches))
        self.asked.append((tower.tower, sum(len(p) for p, _ in out)))
        return iter(out[::-1])

    @property
    def provider(self):
        return self.local.provider


def test_a_second_executor_gives_the_same_embeddings_in_input_order(tiny_bundle, tmp_path):
    bundle = load_bundle(tiny_bundle)
    images = {f"{i}.png": noise_image(i) for i in range(7)}
    write_dataset(tmp_path / "ds", [], images)
    sources = [str(tmp_path / "ds" / n) for n in images]
    sources.insert(3, str(tmp_path / "ds" / "missing.png"))  # a failure, reported per row
    texts = [f"a photo number {i}" + " long" * (i % 4) for i in range(9)]
    local = EmbeddingStage(LocalExecutor(provider="cpu", threads=1, num_workers=0), progress=False)
    other_exec = ReversingExecutor()
    other = EmbeddingStage(other_exec, progress=False)
    a = local.images(bundle, "fp32", sources, batch_size=3)
    b = other.images(bundle, "fp32", sources, batch_size=3)
    assert a.indices.tolist() == b.indices.tolist() == [0, 1, 2, 4, 5, 6, 7]
    np.testing.assert_array_equal(a.embeds, b.embeds)
    assert [f.where for f in a.failures] == [f.where for f in b.failures] == [sources[3]]
    ta, tb = local.texts(bundle, "fp32", texts, batch_size=4), other.texts(bundle, "fp32", texts, batch_size=4)
    np.testing.assert_array_equal(ta.embeds, tb.embeds)
    assert other_exec.asked == [("vision", 8), ("text", 9)]


def test_the_stage_owns_the_cache_and_asks_the_executor_only_for_misses(tiny_bundle, tmp_path):
    from clipeval.engine.embedding.cache import EmbeddingCache

    bundle = load_bundle(tiny_bundle)
    texts = [f"caption {i}" for i in range(10)]
    with EmbeddingCache(tmp_path / "cache") as cache:
        executor = ReversingExecutor()
        stage = EmbeddingStage(executor, cache, progress=False)
        first = stage.texts(bundle, "fp32", texts[:6], batch_size=4)
        second = stage.texts(bundle, "fp32", texts, batch_size=4)
    assert (first.cache_hits, second.cache_hits) == (0, 6)
    assert executor.asked == [("text", 6), ("text", 4)]  # the executor never saw a cached row
    np.testing.assert_array_equal(second.embeds[:6], first.embeds)


def test_tower_refs_name_one_graph(tiny_bundle):
    bundle = load_bundle(tiny_bundle)
    ref = TowerRef(bundle, "fp32", "vision")
    assert ref.key == (bundle.identity, "fp32", "vision") and ref.path == bundle.tower_path("vision")
    with pytest.raises(ValueError):
        TowerRef(bundle, "fp32", "audio")
    from clipeval.engine.errors import BundleError

    with pytest.raises(BundleError, match="no reranker tower"):
        TowerRef(bundle, "fp32", "reranker").path


def test_the_executor_interface_module_says_what_a_second_one_provides():
    from clipeval.engine.embedding import executor

    doc = executor.__doc__
    for needle in ("Who owns the cache", "Row order", "Failures", "image_batches", "run_batches", "close()"):
        assert needle in doc, needle
