"""The demo model's training script, and the demo dataset shipped in the package."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipeval.engine import demo as demo_pkg
from clipeval.export.demo import shapes


def test_same_seed_draws_same_scene_and_pixels():
    a, b = np.random.default_rng(7), np.random.default_rng(7)
    sa, sb = shapes.random_scene(a), shapes.random_scene(b)
    assert sa == sb
    assert np.array_equal(np.asarray(shapes.draw(sa, a)), np.asarray(shapes.draw(sb, b)))


def test_shape_colour_is_where_the_scene_says():
    rng = np.random.default_rng(3)
    scene = shapes.Scene("square", "blue", "large", "top left")
    img = np.asarray(shapes.draw(scene, rng, 128)).astype(float)
    fx, fy = shapes.POSITIONS["top left"]
    centre = img[int(fy * 128), int(fx * 128)]
    assert np.linalg.norm(centre - np.array(shapes.COLOURS["blue"])) <= 15 * np.sqrt(3) + 1
    # the background everywhere keeps its distance from the shape colour (corner opposite the shape)
    corner = img[-3:, -3:].reshape(-1, 3)
    assert np.linalg.norm(corner - centre, axis=1).min() >= shapes.MIN_BACKGROUND_DISTANCE - 2 * 15 * np.sqrt(3)


def test_captions_use_every_attribute_and_distinct_scenes_are_distinct():
    scene = shapes.Scene("triangle", "orange", "small", "bottom right")
    for p in range(len(shapes.PHRASINGS)):
        text = shapes.caption(scene, p)
        for word in ("triangle", "orange", "small", "bottom right"):
            assert word in text
    assert shapes.caption(scene, 0) == "a small orange triangle at the bottom right"
    assert shapes.caption(scene, 1) == "bottom right: a small orange triangle"
    picked = shapes.distinct_scenes(np.random.default_rng(0), 50)
    assert len({s.key for s in picked}) == 50
    assert len(shapes.all_scenes()) == (
        len(shapes.SHAPES) * len(shapes.COLOURS) * len(shapes.SIZES) * len(shapes.POSITIONS)
    )


def test_tokenizer_wraps_in_bos_eos_and_knows_every_word():
    pytest.importorskip("transformers")
    from clipeval.export.demo import train as T

    tok = T.build_tokenizer()
    ids = tok("top left: a small red star")["input_ids"]
    assert ids[0] == tok.bos_token_id == 2 and ids[-1] == tok.eos_token_id == 3 and tok.pad_token_id == 0
    assert len(ids) == 2 + 7  # "top", "left", ":", "a", "small", "red", "star"
    unk = tok.unk_token_id
    longest = 0
    for text in shapes.all_captions():
        enc = tok(text)["input_ids"]
        assert unk not in enc, text
        longest = max(longest, len(enc))
    assert longest <= T.CONTEXT_LENGTH


def test_retrieval_recall_matches_definition_with_ties():
    from clipeval.export.demo.train import retrieval_recall

    # 3 images, 4 texts; text 3 ties images 0 and 2 -> lower index wins
    img = np.eye(3, dtype=np.float32)
    txt = np.array([[1, 0, 0], [0, 0, 1], [0, 1, 0], [1, 0, 1]], dtype=np.float32)
    owner = [0, 1, 2, 2]
    r = retrieval_recall(img, txt, owner, ks=(1, 2))
    # text -> image ranks (S = txt, since img is the identity):
    #   t0 -> 0; t1 -> 2 (image 2 scores higher, image 0 ties at a lower index);
    #   t2 -> 2 (image 1 higher, image 0 ties lower); t3 -> 1 (image 0 ties lower)
    ranks = [0, 2, 2, 1]
    for k in (1, 2):
        assert r[f"image_retrieval_recall@{k}"] == sum(x < k for x in ranks) / 4
    # image -> text: the oracle written straight from the metric definition (README, engine/metrics.py)
    s = txt @ img.T
    expected = []
    for i, texts in {0: [0], 1: [1], 2: [2, 3]}.items():
        ranks = [int((s[:, i] > s[t, i]).sum() + (s[:t, i] == s[t, i]).sum()) for t in texts]
        expected.append(min(ranks))
    for k in (1, 2):
        assert r[f"text_retrieval_recall@{k}"] == float(np.mean([e < k for e in expected]))


def test_training_runs_loss_finite_and_checkpoint_reloads(tmp_path):
    torch = pytest.importorskip("torch")
    from transformers import AutoTokenizer, CLIPModel

    from clipeval.export.demo import train as T

    cfg = T.TrainConfig(
        steps=8, batch_size=16, lr=3e-3, warmup_steps=2, seed=1, threads=1,
        vision_hidden=32, vision_layers=1, vision_heads=2, text_hidden=32, text_layers=1, text_heads=2,
        projection_dim=16,
    )
    pool = T.draw_pool(T.rng_for(cfg.seed, T.STREAM_TRAIN), 16)
    check = T.draw_demo_set(cfg.seed, 6, stream=T.STREAM_CHECK)
    cfg.eval_every = cfg.steps
    result = T.train(cfg, pool=pool, check=check)
    losses = [h["loss"] for h in result.history]
    assert len(losses) == cfg.steps and all(np.isfinite(losses))
    # the same 16 images every step: the loss must fall
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    assert "image_retrieval_recall@5" in result.history[-1]

    ckpt = T.save_checkpoint(result, tmp_path / "ckpt")
    model = CLIPModel.from_pretrained(ckpt).eval()
    tok = AutoTokenizer.from_pretrained(ckpt)
    assert model.config.text_config.eos_token_id == tok.eos_token_id == 3
    assert json.loads((ckpt / "preprocessor_config.json").read_text())["crop_size"] == {"height": 64, "width": 64}
    img_a, txt_a, owner = T.embed_demo_set(result.model, result.tokenizer, check)
    img_b, txt_b, _ = T.embed_demo_set(model, tok, check)
    assert owner == [i for i, caps in enumerate(check.captions) for _ in caps]
    np.testing.assert_allclose(img_a, img_b, atol=1e-5)
    np.testing.assert_allclose(txt_a, txt_b, atol=1e-5)
    # pooling at the first <eos>: padding after it changes nothing
    enc = tok(["a small red star in the center"], return_tensors="pt")
    padded = tok(["a small red star in the center"], padding="max_length", max_length=16, return_tensors="pt")
    with torch.no_grad():
        a = T._text_embeds(model, enc["input_ids"], enc["attention_mask"])
        b = T._text_embeds(model, padded["input_ids"], padded["attention_mask"])
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)


def test_same_seed_trains_same_weights():
    pytest.importorskip("torch")
    from clipeval.export.demo import train as T

    def run(seed):
        cfg = T.TrainConfig(
            steps=3, batch_size=8, warmup_steps=1, seed=seed, threads=1, vision_hidden=16, vision_layers=1,
            vision_heads=2, text_hidden=16, text_layers=1, text_heads=2, projection_dim=8, pool_size=8,
        )
        model = T.train(cfg).model
        return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}

    a, b, c = run(4), run(4), run(5)
    assert a.keys() == b.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not all(np.array_equal(a[k], c[k]) for k in a)


def test_demo_data_is_seeded(tmp_path):
    from clipeval.export.demo import train as T
    from clipeval.export.demo.build import read_demo_data, write_demo_data

    a = T.draw_demo_set(5, 4)
    b = T.draw_demo_set(5, 4)
    assert a.jpeg_bytes == b.jpeg_bytes and a.captions == b.captions
    other = T.draw_demo_set(5, 4, stream=T.STREAM_CHECK)
    assert other.jpeg_bytes != a.jpeg_bytes
    write_demo_data(a, tmp_path)
    paths, captions = read_demo_data(tmp_path)
    assert captions == a.captions
    assert [p.read_bytes() for p in paths] == a.jpeg_bytes


SHIPPED = Path(demo_pkg.DEMO_DATA_DIR)


@pytest.mark.skipif(not (SHIPPED / "image_queries.jsonl").is_file(), reason="demo data not built")
def test_shipped_demo_dataset_is_well_formed():
    rows = [json.loads(line) for line in (SHIPPED / "image_queries.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) >= 100
    seen = set()
    vocab = {w for c in shapes.all_captions() for w in c.split()}
    for row in rows:
        assert set(row) == {"image_path", "query"}
        path = row["image_path"]
        assert not Path(path).is_absolute() and path.startswith("images/")
        assert path not in seen
        seen.add(path)
        assert isinstance(row["query"], list) and 1 <= len(row["query"]) <= 3
        assert all(isinstance(q, str) and q and set(q.split()) <= vocab for q in row["query"])
        with Image.open(SHIPPED / path) as img:
            assert img.size == (128, 128) and img.mode == "RGB"
    files = {p.relative_to(SHIPPED).as_posix() for p in (SHIPPED / "images").iterdir()}
    assert files == seen


SHIPPED_MODEL = Path(demo_pkg.DEMO_MODEL_DIR)


@pytest.mark.skipif(not (SHIPPED_MODEL / "manifest.json").is_file() or not (SHIPPED / "image_queries.jsonl").is_file(),
                    reason="demo model not built")
def test_shipped_bundle_retrieves_shipped_demo_with_onnxruntime():
    from clipeval.engine.sessions.bundle import load_bundle
    from clipeval.export.demo.build import onnx_recall

    bundle = load_bundle(SHIPPED_MODEL)  # every file matches its sha256
    assert bundle.family == "clip" and bundle.manifest["source"] == "clipeval-demo-shapes"
    r = onnx_recall(SHIPPED_MODEL, SHIPPED, ks=(5,))
    assert r["image_retrieval_recall@5"] >= 0.9
    assert r["text_retrieval_recall@5"] >= 0.9
