"""``clipeval eval --executor ray`` on one Ray node (``ray.init(num_cpus=2)`` on this machine) gives
what a local run gives: on custom, Karpathy and webdataset (by URL) retrieval sets and on
zero-shot classification the same metrics, the same per-query ranks, the same failures and
``meta``; the embedding stage on Ray gives the local embeddings (to 1e-6; in fact bit for bit on
the CPU provider) and fills the cache a local run reads; several (model, dataset) pairs run as
Ray tasks and write what a local run writes."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from clipeval.cli.main import cli
from clipeval.engine.embedding.cache import image_key, open_cache, text_key
from clipeval.engine.embedding.local import LocalExecutor
from clipeval.engine.embedding.stage import EmbeddingStage
from clipeval.engine.errors import ConfigError
from clipeval.engine.executors.ray_embed import RayExecutor
from clipeval.engine.sessions.bundle import load_bundle, write_manifest
from datagen import noise_image
from rangeserver import RangeServer
from rayfix import FakeRay, local_ray
from wdsgen import png_bytes, write_classification_set, write_retrieval_set

TOL = 1e-6
# meta keys that say how a run went, not what it computed
RUN_KEYS = ("timings", "result_file", "decode", "cache", "num_workers", "versions")


@pytest.fixture(scope="module")
def ray_session():
    with local_ray(num_cpus=2) as ray:
        yield ray


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    return load_bundle(tiny_bundle)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    (root / "img").mkdir()
    for i in range(3):
        noise_image(40 + i, (33 + 7 * i, 29)).save(root / "img" / f"{i}.png")
    write_retrieval_set(root / "flickr8k", n=14, per_shard=4)
    with RangeServer(root) as server:
        yield server


def local_stage(cache=None) -> EmbeddingStage:
    return EmbeddingStage(LocalExecutor(provider="cpu", threads=1, num_workers=0), cache, progress=False)


def ray_stage(cache=None) -> EmbeddingStage:
    return EmbeddingStage(RayExecutor(provider="cpu"), cache, progress=False)


def eval_both(tiny_bundle, tmp_path, *args):
    """``clipeval eval ARGS`` with ``--executor local`` and ``--executor ray`` (each its own
    output folder; one dataset cache, no embedding cache: each run computes everything);
    returns ``{executor: [result objects]}``."""
    out = {}
    for executor in ("local", "ray"):
        r = CliRunner().invoke(cli, ["eval", "--model", str(tiny_bundle), "--quiet", "--provider", "cpu",
                                     "--executor", executor, "--batch-size", "3",
                                     "--output-dir", str(tmp_path / f"out-{executor}"),
                                     "--cache-dir", str(tmp_path / "cache"), "--no-cache", *map(str, args)])
        assert r.exit_code == 0, (r.output, r.exception)
        out[executor] = [json.loads(line) for line in r.stdout.strip().splitlines()]
    return out


def computed(meta: dict) -> dict:
    """``meta`` without what says how the run went (timings, where it ran, its files)."""
    out = {k: v for k, v in meta.items() if k not in RUN_KEYS}
    if isinstance(out.get("detail"), dict):
        out["detail"] = {k: v for k, v in out["detail"].items() if k != "seconds"}
    return out


def assert_same_results(runs):
    """The Ray run's results are the local run's: metrics, the computed part of ``meta`` (with
    the sha256 of the per-query detail file, when there is one); the Ray run says where it
    decoded."""
    assert len(runs["ray"]) == len(runs["local"]) >= 1
    for got, want in zip(runs["ray"], runs["local"]):
        assert (got["model"], got["dataset"], got["task"]) == (want["model"], want["dataset"], want["task"])
        assert got["metrics"] == want["metrics"]
        assert computed(got["meta"]) == computed(want["meta"])
        assert got["meta"]["decode"] == "ray" and got["meta"]["provider"] == "cpu"
        on_disk = json.loads(open(got["meta"]["result_file"]).read())
        assert on_disk["metrics"] == want["metrics"]


# --- the embedding stage with the Ray executor ---------------------------------------------------


def gallery(root, served):
    """(sources for Ray, the same images as a local run takes them): files of several sizes and
    modes, one missing, one cut short after its header, one that is not an image, one by a path
    relative to the working directory, two URLs (locally: the files the server serves), bytes."""
    root.mkdir(parents=True, exist_ok=True)
    ray_sources = []
    for i, (size, mode) in enumerate([((40, 30), "RGB"), ((17, 64), "RGB"), ((64, 64), "L"), ((50, 45), "RGBA"),
                                      ((90, 20), "RGB"), ((31, 31), "P"), ((48, 40), "RGB")]):
        path = root / f"{i}.png"
        img = noise_image(i, size)
        (img.convert(mode) if mode != "RGB" else img).save(path)
        ray_sources.append(str(path))
    full = root / "cut.jpg"
    noise_image(99, (64, 48)).save(full, quality=90)
    data = full.read_bytes()
    full.write_bytes(data[: len(data) // 2])
    (root / "text.png").write_text("not an image")
    ray_sources += [str(root / "missing.png"), str(full), str(root / "text.png"), "rel.png"]
    noise_image(5, (20, 20)).save(root / "rel.png")  # relative to the driver's working directory
    local_sources = list(ray_sources)
    for i in range(2):
        ray_sources.append(f"{served.url}/img/{i}.png")
        local_sources.append(str(served.root / "img" / f"{i}.png"))
    for i in range(2):
        ray_sources.append(png_bytes(70 + i))
        local_sources.append(png_bytes(70 + i))
    return ray_sources, local_sources


def test_images_through_the_stage_on_ray_are_the_local_embeddings_in_input_order(ray_session, bundle, served,
                                                                                 tmp_path, monkeypatch):
    ray_sources, local_sources = gallery(tmp_path / "g", served)
    monkeypatch.chdir(tmp_path / "g")
    where = [f"row {i}" for i in range(len(ray_sources))]
    want = local_stage().images(bundle, "fp32", local_sources, batch_size=4, where=where, on_error="skip")
    assert len(want.failures) == 3  # missing, cut short, not an image
    cache = open_cache(tmp_path / "cache")
    first = local_stage(cache).images(bundle, "fp32", local_sources[:5], batch_size=4)  # a local run cached 5
    stage = ray_stage(cache)
    got = stage.images(bundle, "fp32", ray_sources, batch_size=4, where=where, on_error="skip")
    assert got.indices.tolist() == want.indices.tolist()
    assert got.embeds.shape == want.embeds.shape and got.embeds.dtype == np.float32
    assert np.abs(got.embeds - want.embeds).max() <= TOL
    assert [(f.where, f.reason) for f in got.failures] == [(f.where, f.reason) for f in want.failures]
    assert got.cache_hits == len(first.indices) == 5 and got.decode == "ray"
    assert stage.provider == "cpu" and stage.load_s > 0
    space = cache.space(bundle.identity, "fp32", "image", verified=bundle.verified)
    keys = [image_key(s) for s in ray_sources]
    stored = space.lookup(keys)
    cacheable = [i for i in want.indices.tolist() if keys[i] is not None]
    assert sorted(stored) == cacheable  # every image that decoded and has an identity; no URL, no failure
    for row, i in enumerate(want.indices.tolist()):
        if i in stored:
            assert np.abs(stored[i] - want.embeds[row]).max() <= TOL
    # what the Ray run cached, a local run reads: nothing of those is computed again
    again = local_stage(cache).images(bundle, "fp32", local_sources[:7], batch_size=4)
    assert again.cache_hits == 7
    stage.close()
    cache.close()


def test_the_gpu_layout_of_decode_tasks_feeding_tower_actors_gives_the_same_embeddings(ray_session, bundle, served,
                                                                                     tmp_path, monkeypatch):
    """A cluster with GPUs decodes in CPU tasks and feeds the tower actors pixels through the
    object store (``placement``); here that layout is taken on the CPU provider and must give
    what the local run and the CPU layout give, failures included."""
    from clipeval.engine.executors import ray_embed

    ray_sources, local_sources = gallery(tmp_path / "g", served)
    monkeypatch.chdir(tmp_path / "g")
    want = local_stage().images(bundle, "fp32", local_sources, batch_size=4, on_error="skip")
    monkeypatch.setattr(ray_embed, "placement", lambda ray, provider, threads: ray_embed.Placement(
        {"size": 1, "num_cpus": 1}, "cpu", 1, decode_in_actor=False))
    stage = ray_stage()
    got = stage.images(bundle, "fp32", ray_sources, batch_size=4, on_error="skip")
    assert not stage.executor.placement().decode_in_actor
    assert got.indices.tolist() == want.indices.tolist() and np.abs(got.embeds - want.embeds).max() <= TOL
    assert [f.reason for f in got.failures] == [f.reason for f in want.failures]


def test_texts_through_the_stage_on_ray_are_the_local_embeddings(ray_session, bundle, tmp_path):
    from fixtures_ckpt import PARITY_TEXTS

    texts = [*PARITY_TEXTS, "", "a", "a", " ".join(["word"] * 200), "ü" * 40, *[f"text number {i}" for i in range(9)]]
    want = local_stage().texts(bundle, "fp32", texts, batch_size=3)
    cache = open_cache(tmp_path / "cache")
    local_stage(cache).texts(bundle, "fp32", texts[::4], batch_size=3)
    got = ray_stage(cache).texts(bundle, "fp32", texts, batch_size=3)
    assert got.embeds.shape == want.embeds.shape and np.abs(got.embeds - want.embeds).max() <= TOL
    assert got.truncated == want.truncated >= 1
    assert got.cache_hits == sum(t in set(texts[::4]) for t in texts)
    space = cache.space(bundle.identity, "fp32", "text", verified=bundle.verified)
    assert sorted(space.lookup([text_key(t) for t in texts])) == list(range(len(texts)))
    cache.close()


def test_an_in_memory_image_is_one_clear_error(ray_session, bundle):
    """Through the stage (rows as a gallery) and given as plain ``(position, source)`` rows
    alike, before any work is sent."""
    from clipeval.engine.embedding.executor import TowerRef

    with pytest.raises(ConfigError, match="image #1 is a Image held in memory"):
        ray_stage().images(bundle, "fp32", [png_bytes(1), noise_image(1)], batch_size=2)
    rows = iter([(3, png_bytes(1)), (5, noise_image(1))])
    with pytest.raises(ConfigError, match="image #5 is a Image held in memory"):
        list(RayExecutor(provider="cpu").image_batches(TowerRef(bundle, "fp32", "vision"), rows, batch_size=2))


# --- clipeval eval --executor ray ------------------------------------------------------------------


def test_eval_on_a_custom_dataset_by_relative_path_with_a_broken_image(ray_session, tiny_bundle, tmp_path,
                                                                        monkeypatch):
    from fixtures_ckpt import write_custom_dataset

    monkeypatch.chdir(tmp_path)
    write_custom_dataset(tmp_path / "a", n_images=7, seed=3)
    (tmp_path / "a" / "images" / "4.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    runs = eval_both(tiny_bundle, tmp_path, "--data-dir", "a", "--on-error", "skip", "--recall-k", "1",
                     "--recall-k", "2", "--detail", "on")
    assert_same_results(runs)
    assert runs["ray"][0]["meta"]["num_images"] == 6  # the broken image was skipped alike


def test_eval_on_a_karpathy_folder(ray_session, tiny_bundle, tmp_path):
    (tmp_path / "k" / "Images").mkdir(parents=True)
    names = [f"{i}.jpg" for i in range(8)]
    for i, name in enumerate(names):
        noise_image(200 + i, (30 + 3 * i, 28)).save(tmp_path / "k" / "Images" / name, format="JPEG")
    lines = "".join(f"{n},a photo number {i}\n{n},another photo {i}\n" for i, n in enumerate(names))
    (tmp_path / "k" / "flickr8k_test_karpathy.txt").write_text("image,caption\n" + lines)
    runs = eval_both(tiny_bundle, tmp_path, "--dataset", "flickr8k", "--data-dir", tmp_path / "k", "--detail", "on")
    assert_same_results(runs)
    assert runs["ray"][0]["meta"]["num_texts"] == 16


def test_eval_on_webdataset_shards_by_url_reads_them_on_the_workers(ray_session, tiny_bundle, served, tmp_path):
    served.requests.clear()
    runs = eval_both(tiny_bundle, tmp_path, "--dataset", "flickr8k", "--data-dir", f"{served.url}/flickr8k")
    assert_same_results(runs)
    # the workers fetched the images of each batch from the shards with one ranged request per
    # shard and batch (14 images in shards of 4, batches of 3), beside the one download
    ranged = [r for p, r in served.requests if p.startswith("flickr8k/test/") and r]
    assert len(ranged) == len({(i // 3, i // 4) for i in range(14)})
    assert all(r.startswith("bytes=") for r in ranged)


def test_zero_shot_classification(ray_session, tiny_bundle, tmp_path):
    write_classification_set(tmp_path / "c", n=11, n_classes=4, per_shard=4)
    runs = eval_both(tiny_bundle, tmp_path, "--dataset", "imagenet1k", "--data-dir", tmp_path / "c")
    assert_same_results(runs)
    assert runs["ray"][0]["task"] == "zeroshot_classification"


def test_pairs_run_as_ray_tasks_write_what_a_local_run_writes(ray_session, tiny_bundle, tmp_path, monkeypatch):
    """A config of 2 models x 2 datasets with executor ray: four Ray tasks (the runner chooses
    them), each writing its result file; the results, in config order, are the local run's."""
    from fixtures_ckpt import write_custom_dataset

    from clipeval.engine.config import make_eval_config
    from clipeval.engine.executors import ray_pairs
    from clipeval.engine.runner import iter_results, resolve_bundle

    monkeypatch.chdir(tmp_path)
    write_custom_dataset(tmp_path / "a", n_images=5, seed=1)
    write_retrieval_set(tmp_path / "flickr8k", n=6, per_shard=4)
    shutil.copytree(tiny_bundle, tmp_path / "m2")  # another bundle of the same name: its result files
    manifest = json.loads((tmp_path / "m2" / "manifest.json").read_text())  # are named after the first's
    manifest["source"] = f"{manifest.get('source') or 'x'}/../elsewhere/{load_bundle(tiny_bundle).name}"
    write_manifest(tmp_path / "m2", manifest)
    assert load_bundle(tmp_path / "m2").name == load_bundle(tiny_bundle).name
    calls = []
    real = ray_pairs.pair_results
    monkeypatch.setattr(ray_pairs, "pair_results", lambda *a, **k: calls.append(1) or real(*a, **k))
    results = {}
    for executor in ("local", "ray"):
        block = {"models": [str(tiny_bundle), "m2"], "output_dir": f"out-{executor}", "batch_size": 3,
                 "verbose": False, "recall_k": [1, 2], "provider": "cpu", "cache_dir": f"cache-{executor}",
                 "executor": executor}
        runs = []  # one config per data folder, each of 2 pairs
        for dataset, data_dir in (("custom", "a"), ("flickr8k", "flickr8k")):
            runs += list(iter_results(make_eval_config({**block, "dataset_name": [dataset], "data_dir": data_dir}),
                                      resolve_bundle))
        results[executor] = runs
    assert len(calls) == 2  # both ray configs ran as pairs (2 models each), the local ones did not
    assert [(r["model"], r["dataset"]) for r in results["ray"]] == \
        [(r["model"], r["dataset"]) for r in results["local"]]
    assert len({r["meta"]["result_file"] for r in results["ray"]}) == 4  # none written over another
    for got, want in zip(results["ray"], results["local"]):
        assert got["metrics"] == want["metrics"]
        for key in ("params_key", "slot_digest", "data_fingerprint", "num_images", "num_texts", "bundle"):
            assert got["meta"][key] == want["meta"][key], key
        assert got["meta"]["result_file"] == want["meta"]["result_file"].replace("out-local", "out-ray")
        on_disk = json.loads(open(got["meta"]["result_file"]).read())
        assert on_disk["metrics"] == want["metrics"]


def fake_cluster(node_cpus, gpus=0):
    """The alive nodes' CPUs (and GPUs), and a dead node of 1000 CPUs that counts for nothing."""
    return FakeRay([*node_cpus, 1000], gpus=gpus, dead=(len(node_cpus),))


@pytest.mark.parametrize("node_cpus", [[1], [2], [2, 4], [16, 2]])
@pytest.mark.parametrize("asked", [None, 1, 2, 3, 5, 64])
def test_a_pair_task_runs_as_many_threads_as_the_cpus_it_reserves(node_cpus, asked, caplog):
    """--threads above the largest node's CPUs: the task reserves that node's CPUs and runs that
    many threads (it ran all that were asked for, in fewer CPUs, saying nothing), with the
    warning the single-pair layout gives."""
    from clipeval.engine.config import make_eval_config
    from clipeval.engine.executors.ray_pairs import _resources, task_threads

    cfg = make_eval_config({"num_threads": asked, "provider": "cpu"})
    with caplog.at_level("WARNING", logger="clipeval.engine.executors.ray_pairs"):
        resources = _resources(fake_cluster(node_cpus), cfg)
    largest = max(node_cpus)
    assert resources == {"num_cpus": min(asked or 1, largest)}
    assert task_threads(cfg, resources) == resources["num_cpus"]
    warned = [r.getMessage() for r in caplog.records if "threads were asked for" in r.getMessage()]
    assert warned == ([f"{asked} threads were asked for; the largest node has {largest} CPUs, so each pair task "
                       f"runs {largest}"] if asked and asked > largest else [])


@pytest.mark.parametrize("asked", [None, 1, 8])
def test_a_pair_task_on_a_gpu_takes_one_cpu_and_the_threads_asked_for(asked):
    from clipeval.engine.config import make_eval_config
    from clipeval.engine.executors.ray_pairs import _resources, task_threads

    cfg = make_eval_config({"num_threads": asked, "provider": "auto"})
    resources = _resources(fake_cluster([4], gpus=1), cfg)
    assert resources == {"num_cpus": 1, "num_gpus": 1} and task_threads(cfg, resources) == (asked or 1)


@pytest.mark.parametrize("num_workers,decode,named", [
    (None, "auto", []),
    (3, "auto", ["--num-workers 3"]),
    (0, "auto", ["--num-workers 0"]),
    (None, "threads", ["--decode threads"]),
    (None, "processes", ["--decode processes"]),
    (5, "processes", ["--num-workers 5", "--decode processes"]),
])
def test_decode_settings_a_ray_run_does_not_use_are_named(num_workers, decode, named):
    from clipeval.engine.executors.ray_embed import unused_options

    text = unused_options(num_workers, decode)
    if not named:
        assert text is None
    else:
        assert all(n in text for n in named) and "not used with --executor ray" in text and "--threads" in text


@pytest.mark.parametrize("extra", [["--num-workers", "3", "--decode", "processes"], ["--threads", "1"]])
def test_a_ray_result_records_the_decode_threads_that_ran(ray_session, tiny_bundle, tmp_path, extra):
    """On the 2-CPU session each tower actor decodes with --threads threads (default: the node's 2
    CPUs); ``meta.num_workers`` says so, not the --num-workers that was not used (a warning
    names it), and the results are a local run's."""
    from fixtures_ckpt import write_custom_dataset

    write_custom_dataset(tmp_path / "d", n_images=4, seed=3)
    args = ["eval", "--model", str(tiny_bundle), "--provider", "cpu", "--executor", "ray", "--batch-size", "3",
            "--data-dir", str(tmp_path / "d"), "--output-dir", str(tmp_path / "out"), "--no-cache", *extra]
    import logging

    seen: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: seen.append(record.getMessage())
    logging.getLogger("ray.data").addHandler(handler)
    try:
        r = CliRunner().invoke(cli, args)
    finally:
        logging.getLogger("ray.data").removeHandler(handler)
    assert r.exit_code == 0, (r.output, r.exception)
    # the actor pool may grow again after it shrank (ray_embed.job_settings): Ray Data does not
    # warn that its configuration keeps it from scaling up
    assert not [m for m in seen if "will not allow it to scale up" in m], seen
    meta = json.loads(r.stdout)["meta"]
    threads = int(extra[extra.index("--threads") + 1]) if "--threads" in extra else 2
    assert meta["decode"] == "ray" and meta["num_workers"] == threads
    assert ("not used with --executor ray" in r.stderr) == ("--num-workers" in extra), r.stderr


@pytest.mark.parametrize("pairs,labels", [
    ([("m", "/b/m", "custom")], ["m on custom"]),
    ([("m", "/b/m", "a"), ("m", "/b/m", "b")], ["m on a", "m on b"]),
    ([("m", "/b/m", "custom"), ("m", "/c/m", "custom")], ["m (/b/m) on custom", "m (/c/m) on custom"]),
    ([("m", "/b/m", "x"), ("n", "/b/n", "x"), ("m", "/c/m", "x")], ["m (/b/m) on x", "n on x", "m (/c/m) on x"]),
])
def test_each_failed_pair_is_named_apart_from_the_others(pairs, labels):
    """Two bundles of one name (a copy, a re-export) on one dataset: the pairs' labels in the
    error of failed pairs name their paths, so the lines tell the pairs apart."""
    from clipeval.engine.executors.ray_pairs import pair_labels

    got = pair_labels(pairs)
    assert got == labels and len(set(got)) == len(set(pairs))


@pytest.mark.parametrize("on_error", ["skip", "fail"])
def test_images_that_fail_only_in_decoding_are_reported_as_a_local_run_reports_them(ray_session, tiny_bundle,
                                                                                    tmp_path, monkeypatch, on_error):
    """JPEGs cut after their header pass the header check and fail in the tower actor's decoding;
    given by relative path, a Ray run names them as a local run does (it named the absolute path
    the workers read): the same skipped list, or the same error."""
    import io

    from fixtures_ckpt import write_custom_dataset

    monkeypatch.chdir(tmp_path)
    write_custom_dataset(tmp_path / "a", n_images=6, seed=5)
    for i in (1, 4):
        buf = io.BytesIO()
        noise_image(60 + i, (120, 90)).save(buf, format="JPEG")
        (tmp_path / "a" / "images" / f"{i}.png").write_bytes(buf.getvalue()[:700])
    out = {}
    for executor in ("local", "ray"):
        out[executor] = CliRunner().invoke(cli, [
            "eval", "--model", str(tiny_bundle), "--quiet", "--provider", "cpu", "--executor", executor,
            "--batch-size", "2", "--data-dir", "a", "--on-error", on_error, "--no-cache",
            "--output-dir", f"out-{executor}"])
    if on_error == "fail":
        errors = {k: [line for line in r.stderr.splitlines() if not line.startswith(("INFO", "WARNING", "["))]
                  for k, r in out.items()}
        assert out["ray"].exit_code == out["local"].exit_code == 2
        assert errors["ray"] == errors["local"] and "could not be decoded" in "\n".join(errors["local"])
        assert str(tmp_path) not in "\n".join(errors["ray"])
    else:
        runs = {k: [json.loads(line) for line in r.stdout.strip().splitlines()] for k, r in out.items()}
        assert_same_results(runs)
        assert runs["ray"][0]["meta"]["num_skipped_images"] == 2
