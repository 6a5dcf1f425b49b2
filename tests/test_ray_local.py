"""The embedding stage and the pairs on Ray (``ray.init(num_cpus=2)`` on this machine) give what a
local run gives: the same embeddings (to 1e-6; in fact bit for bit on the CPU provider), the same
failures, the same cache, the same metrics and result files."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from clipeval.engine.bundle import load_bundle
from clipeval.engine.cache import image_key, open_cache, text_key
from clipeval.engine.datasets.sources import fetch_dataset
from clipeval.engine.datasets.wds import read_wds_retrieval
from clipeval.engine.embed import embed_images, embed_texts
from clipeval.engine.errors import ConfigError
from clipeval.engine.executors.ray_embed import RayEmbedder
from clipeval.engine.tasks.context import load_model
from datagen import noise_image
from rangeserver import RangeServer
from rayfix import local_ray
from wdsgen import png_bytes, write_retrieval_set

TOL = 1e-6


@pytest.fixture(scope="module")
def ray_session():
    with local_ray(num_cpus=2) as ray:
        yield ray


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    return load_bundle(tiny_bundle)


@pytest.fixture(scope="module")
def local_model(bundle):
    return load_model(bundle, provider="cpu", precision="fp32", threads=1)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    (root / "img").mkdir()
    for i in range(3):
        noise_image(40 + i, (33 + 7 * i, 29)).save(root / "img" / f"{i}.png")
    write_retrieval_set(root / "flickr8k", n=14, per_shard=4)
    with RangeServer(root) as server:
        yield server


def gallery(root, served):
    """(sources for Ray, the same images as a local run takes them): files of several sizes and
    modes, one missing, one cut short after its header, one that is not an image, one by a path
    relative to the working directory, two URLs (locally: the files the server serves), bytes."""
    root.mkdir(parents=True, exist_ok=True)
    ray_sources, local_sources = [], []
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


def assert_same_images(got, want, *, same_reasons=True):
    assert got.indices.tolist() == want.indices.tolist()
    assert got.embeds.shape == want.embeds.shape and got.embeds.dtype == np.float32
    assert np.abs(got.embeds - want.embeds).max() <= TOL
    assert [f.where for f in got.failures] == [f.where for f in want.failures]
    if same_reasons:
        assert [f.reason for f in got.failures] == [f.reason for f in want.failures]


def test_images_on_ray_are_the_local_embeddings_in_input_order(ray_session, bundle, local_model, served, tmp_path,
                                                               monkeypatch):
    ray_sources, local_sources = gallery(tmp_path / "g", served)
    monkeypatch.chdir(tmp_path / "g")
    want = embed_images(local_model.vision, local_model.preprocessor, local_sources, batch_size=4, num_workers=0,
                        progress=False, on_error="skip")
    assert len(want.failures) == 3  # missing, cut short, not an image
    cache = open_cache(tmp_path / "cache")
    space = cache.space(bundle.identity, "fp32", "image", verified=bundle.verified)
    first = embed_images(local_model.vision, local_model.preprocessor, local_sources[:5], batch_size=4,
                         num_workers=0, progress=False, cache=space)  # a local run cached the first 5
    embedder = RayEmbedder(bundle, precision="fp32", provider="cpu")
    got = embedder.embed_images(ray_sources, batch_size=4, progress=False, cache=space, on_error="skip")
    assert_same_images(got, want)
    assert got.cache_hits == len(first.indices) == 5 and got.decode == "ray"
    assert embedder.providers == {"CPUExecutionProvider"}
    keys = [image_key(s) for s in ray_sources]
    stored = space.lookup(keys)
    ok = want.indices.tolist()
    cacheable = [i for i in ok if keys[i] is not None]
    assert sorted(stored) == cacheable  # every image that decoded and has an identity; no URL, no failure
    for row, i in enumerate(ok):
        if i in stored:
            assert np.abs(stored[i] - want.embeds[row]).max() <= TOL
    cache.close()


def test_texts_on_ray_are_the_local_embeddings(ray_session, bundle, local_model, tmp_path):
    from fixtures_ckpt import PARITY_TEXTS

    texts = [*PARITY_TEXTS, "", "a", "a", " ".join(["word"] * 200), "ü" * 40, *[f"text number {i}" for i in range(9)]]
    want = embed_texts(local_model.text, local_model.tokenizer, texts, batch_size=3, progress=False)
    cache = open_cache(tmp_path / "cache")
    space = cache.space(bundle.identity, "fp32", "text", verified=bundle.verified)
    embed_texts(local_model.text, local_model.tokenizer, texts[::4], batch_size=3, progress=False, cache=space)
    got = RayEmbedder(bundle, precision="fp32", provider="cpu").embed_texts(texts, batch_size=3, progress=False,
                                                                           cache=space)
    assert got.embeds.shape == want.embeds.shape and np.abs(got.embeds - want.embeds).max() <= TOL
    assert got.truncated == want.truncated >= 1
    assert got.cache_hits == sum(t in set(texts[::4]) for t in texts)
    stored = space.lookup([text_key(t) for t in texts])
    assert sorted(stored) == list(range(len(texts)))
    cache.close()


def test_webdataset_shards_by_url_are_read_by_the_workers(ray_session, bundle, local_model, served, tmp_path):
    folder, _ = fetch_dataset("flickr8k", "test", url=f"{served.url}/flickr8k", cache_dir=tmp_path / "d",
                              progress=False, need_classes=False)
    ds = read_wds_retrieval(folder, "test", name="flickr8k")
    want = embed_images(local_model.vision, local_model.preprocessor, ds.images, batch_size=4, num_workers=0,
                        progress=False)
    served.requests.clear()
    got = RayEmbedder(bundle, precision="fp32", provider="cpu").embed_images(ds.images, batch_size=4,
                                                                            progress=False)
    assert_same_images(got, want)
    ranges = [r for p, r in served.requests if p.startswith("flickr8k/test/")]
    assert len(ranges) == 4 and all(r and r.startswith("bytes=") for r in ranges)  # one request per batch


def test_an_in_memory_image_is_one_clear_error(ray_session, bundle):
    with pytest.raises(ConfigError, match="cannot be sent to a Ray cluster"):
        RayEmbedder(bundle, precision="fp32").embed_images([noise_image(1)], batch_size=2, progress=False)


def test_pairs_run_as_ray_tasks_write_what_a_local_run_writes(ray_session, tiny_bundle, tmp_path, monkeypatch):
    from fixtures_ckpt import write_custom_dataset

    from clipeval.engine.config import make_eval_config
    from clipeval.engine.executors.ray_pairs import pair_results
    from clipeval.engine.runner import iter_results, resolve_bundle

    monkeypatch.chdir(tmp_path)
    write_custom_dataset(tmp_path / "a", n_images=5, seed=1)
    write_retrieval_set(tmp_path / "w" / "flickr8k", n=6, per_shard=4)
    shutil.copytree(tiny_bundle, tmp_path / "m2")
    results = {}
    for name, executor in (("local", None), ("ray", "ray")):
        runs = []
        for dataset, data_dir in (("custom", "a"), ("flickr8k", "w/flickr8k")):
            block = {"models": [str(tiny_bundle), "m2"], "dataset_name": [dataset], "data_dir": data_dir,
                     "output_dir": f"out-{name}", "batch_size": 3, "verbose": False, "recall_k": [1, 2],
                     "provider": "cpu", "cache_dir": f"cache-{name}"}
            cfg = make_eval_config(block)
            if executor:
                runs += list(pair_results(cfg, resolve_bundle, cfg.models))
            else:
                runs += list(iter_results(cfg, resolve_bundle))
        results[name] = runs
    assert [(r["model"], r["dataset"]) for r in results["ray"]] == [(r["model"], r["dataset"]) for r in results["local"]]
    for got, want in zip(results["ray"], results["local"]):
        assert got["metrics"] == want["metrics"]
        for key in ("params_key", "slot_digest", "data_fingerprint", "num_images", "num_texts", "bundle"):
            assert got["meta"][key] == want["meta"][key], key
        assert got["meta"]["result_file"] == want["meta"]["result_file"].replace("out-local", "out-ray")
        on_disk = json.loads(open(got["meta"]["result_file"]).read())
        assert on_disk["metrics"] == want["metrics"]
