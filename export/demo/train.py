"""Seeded contrastive training of the tiny demo CLIP on procedural shapes.

The model is a plain transformers ``CLIPModel`` (tiny ViT + tiny text transformer) with a
word-level ``tokenizers`` vocabulary, so the demo bundle goes through the same export path as
any real checkpoint. Images are prepared exactly as the engine will read the demo data: drawn
at 128 px, saved as JPEG, resized to 64 px with bicubic filtering, normalised with CLIP's
mean and std.

Data streams are seeded with ``numpy.random.SeedSequence(seed, spawn_key=(stream,))``; the
training pool, the held-out check set and the shipped demo set use different streams, so the
demo images are never seen in training.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from . import shapes

log = logging.getLogger(__name__)

# SeedSequence spawn keys of the data streams
STREAM_TRAIN = 0
STREAM_CHECK = 1
STREAM_DEMO = 2
STREAM_TORCH = 3

SPECIAL_TOKENS = ("<pad>", "<unk>", "<bos>", "<eos>")
CONTEXT_LENGTH = 16
IMAGE_SIZE = 64
DRAW_SIZE = 128
JPEG_QUALITY = 90
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 100
    pool_size: int = 20000
    seed: int = 0
    threads: int = 1
    eval_every: int = 250
    # model shape
    vision_hidden: int = 64
    vision_layers: int = 4
    vision_heads: int = 4
    patch_size: int = 16
    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 2
    projection_dim: int = 64


def rng_for(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(stream,)))


# ---------------------------------------------------------------- tokenizer and processor


def build_tokenizer():
    """A word-level tokenizer over the caption grammar, as a ``PreTrainedTokenizerFast``.

    Ids: ``<pad>`` 0, ``<unk>`` 1, ``<bos>`` 2, ``<eos>`` 3, then the words. Every encoding is
    ``<bos> words <eos>``.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=list(SPECIAL_TOKENS), min_frequency=1, show_progress=False)
    tok.train_from_iterator(shapes.all_captions(), trainer=trainer)
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    if [ids[t] for t in SPECIAL_TOKENS] != [0, 1, 2, 3]:
        raise RuntimeError(f"unexpected special token ids {ids}")
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", ids["<bos>"]), ("<eos>", ids["<eos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=CONTEXT_LENGTH,
        padding_side="right",
    )


def build_image_processor():
    """CLIP's preprocessing at 64 px: bicubic resize of the shortest edge, centre crop, CLIP mean/std."""
    try:
        from transformers import CLIPImageProcessorPil as Processor  # no torchvision needed
    except ImportError:  # older transformers
        from transformers import CLIPImageProcessor as Processor
    return Processor(
        do_resize=True,
        size={"shortest_edge": IMAGE_SIZE},
        resample=3,
        do_center_crop=True,
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
        do_convert_rgb=True,
    )


def build_model(cfg: TrainConfig, vocab_size: int):
    import torch
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(
        text_config=dict(
            vocab_size=vocab_size,
            hidden_size=cfg.text_hidden,
            intermediate_size=4 * cfg.text_hidden,
            num_hidden_layers=cfg.text_layers,
            num_attention_heads=cfg.text_heads,
            max_position_embeddings=CONTEXT_LENGTH,
            pad_token_id=0,
            bos_token_id=2,
            eos_token_id=3,  # != 2: the text tower pools at the first <eos>
            projection_dim=cfg.projection_dim,
        ),
        vision_config=dict(
            image_size=IMAGE_SIZE,
            patch_size=cfg.patch_size,
            hidden_size=cfg.vision_hidden,
            intermediate_size=4 * cfg.vision_hidden,
            num_hidden_layers=cfg.vision_layers,
            num_attention_heads=cfg.vision_heads,
            projection_dim=cfg.projection_dim,
        ),
        projection_dim=cfg.projection_dim,
    )
    torch.manual_seed(int(rng_for(cfg.seed, STREAM_TORCH).integers(2**31)))
    return CLIPModel(config)


# ---------------------------------------------------------------- data


def to_model_pixels(img: Image.Image) -> np.ndarray:
    """``img`` as the processor sees it before rescaling: uint8 ``[64, 64, 3]``.

    Bicubic resize of the shortest edge to 64 px, then a centre crop (a no-op for square images).
    """
    img = img.convert("RGB")
    w, h = img.size
    scale = IMAGE_SIZE / min(w, h)
    nw, nh = max(IMAGE_SIZE, round(w * scale)), max(IMAGE_SIZE, round(h * scale))
    img = img.resize((nw, nh), Image.BICUBIC)
    left, top = (nw - IMAGE_SIZE) // 2, (nh - IMAGE_SIZE) // 2
    return np.asarray(img.crop((left, top, left + IMAGE_SIZE, top + IMAGE_SIZE)), dtype=np.uint8)


def normalise(pixels_uint8: np.ndarray):
    """uint8 ``[B, H, W, 3]`` -> float32 torch ``[B, 3, H, W]`` with CLIP mean/std."""
    import torch

    x = torch.from_numpy(pixels_uint8).float().div_(255.0)
    x = (x - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    return x.permute(0, 3, 1, 2).contiguous()


def draw_pool(rng: np.random.Generator, n: int, progress: Callable[[str], None] | None = None):
    """``n`` random scenes, drawn at 128 px, JPEG round-tripped at a random quality, resized to 64.

    Returns (uint8 pixels ``[n, 64, 64, 3]``, scene keys ``[n, 4]``).
    """
    pixels = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    keys = np.empty((n, 4), dtype=np.int64)
    t0 = time.perf_counter()
    for i in range(n):
        scene = shapes.random_scene(rng)
        img = shapes.draw(scene, rng, DRAW_SIZE)
        img = shapes.jpeg_roundtrip(img, int(rng.integers(75, 96)))
        pixels[i] = to_model_pixels(img)
        keys[i] = scene.key
        if progress and (i + 1) % 5000 == 0:
            progress(f"drew {i + 1}/{n} training images ({time.perf_counter() - t0:.0f} s)")
    return pixels, keys


@dataclass
class DemoSet:
    """Distinct scenes drawn at 128 px as JPEG, each with 1-3 captions."""

    scenes: list[shapes.Scene]
    images: list[Image.Image]  # as decoded from the JPEG bytes
    jpeg_bytes: list[bytes]
    captions: list[list[str]]


def draw_demo_set(seed: int, n: int, stream: int = STREAM_DEMO) -> DemoSet:
    import io

    rng = rng_for(seed, stream)
    scenes = shapes.distinct_scenes(rng, n)
    images, blobs, captions = [], [], []
    for scene in scenes:
        img = shapes.draw(scene, rng, DRAW_SIZE)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=JPEG_QUALITY)
        blobs.append(buf.getvalue())
        with Image.open(io.BytesIO(buf.getvalue())) as decoded:
            images.append(decoded.convert("RGB"))
        captions.append(shapes.random_captions(scene, rng, int(rng.integers(1, 4))))
    return DemoSet(scenes, images, blobs, captions)


def caption_table(tokenizer):
    """Token ids ``[n_scenes * n_phrasings, CONTEXT_LENGTH]`` and attention masks for every caption.

    Row ``scene_index * n_phrasings + phrasing``; scene index in :func:`shapes.all_scenes` order.
    """
    texts = [shapes.caption(s, p) for s in shapes.all_scenes() for p in range(len(shapes.PHRASINGS))]
    enc = tokenizer(texts, padding="max_length", max_length=CONTEXT_LENGTH, truncation=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def scene_index(keys: np.ndarray) -> np.ndarray:
    """Row of each key ``[n, 4]`` in :func:`shapes.all_scenes` order."""
    dims = (len(shapes.SHAPES), len(shapes.COLOURS), len(shapes.SIZES), len(shapes.POSITIONS))
    return np.ravel_multi_index(tuple(keys.T), dims)


# ---------------------------------------------------------------- metrics


def retrieval_recall(
    image_embeds: np.ndarray, text_embeds: np.ndarray, text_owner: Sequence[int], ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Recall@k both ways with the engine's tie rule (ties go to the lower index); full matrix."""
    owner = np.asarray(text_owner)
    s = text_embeds.astype(np.float64) @ image_embeds.astype(np.float64).T  # [T, I]
    n_t, n_i = s.shape
    # text -> image: rank of the positive image
    pos = s[np.arange(n_t), owner][:, None]
    idx_i = np.arange(n_i)[None, :]
    rank_t = ((s > pos) | ((s == pos) & (idx_i < owner[:, None]))).sum(1)
    # image -> text: best rank over the image's captions
    st = s.T  # [I, T]
    idx_t = np.arange(n_t)
    rank_i = np.full(n_i, n_t, dtype=np.int64)
    for t in range(n_t):
        i = owner[t]
        v = st[i, t]
        r = int(((st[i] > v) | ((st[i] == v) & (idx_t < t))).sum())
        rank_i[i] = min(rank_i[i], r)
    out = {}
    for k in ks:
        out[f"image_retrieval_recall@{k}"] = float((rank_t < k).mean())
        out[f"text_retrieval_recall@{k}"] = float((rank_i < k).mean())
    return out


def embed_demo_set(model, tokenizer, demo: DemoSet, batch: int = 256):
    """(image_embeds, text_embeds, text_owner) of ``demo`` under ``model`` (torch, eval mode)."""
    import torch

    pixels = np.stack([to_model_pixels(img) for img in demo.images])
    texts = [c for caps in demo.captions for c in caps]
    owner = [i for i, caps in enumerate(demo.captions) for _ in caps]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        img = torch.cat([_image_embeds(model, normalise(pixels[j : j + batch])) for j in range(0, len(pixels), batch)])
        enc = tokenizer(texts, padding=True, return_tensors="pt")
        txt = _text_embeds(model, enc["input_ids"], enc["attention_mask"])
    model.train(was_training)
    return img.numpy(), txt.numpy(), owner


def _image_embeds(model, pixel_values):
    import torch.nn.functional as F

    out = model.get_image_features(pixel_values=pixel_values)
    out = getattr(out, "pooler_output", out)
    return F.normalize(out, dim=-1)


def _text_embeds(model, input_ids, attention_mask):
    import torch.nn.functional as F

    out = model.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
    out = getattr(out, "pooler_output", out)
    return F.normalize(out, dim=-1)


# ---------------------------------------------------------------- training


@dataclass
class TrainResult:
    model: object
    tokenizer: object
    image_processor: object
    history: list[dict]
    seconds: float


def train(
    cfg: TrainConfig,
    progress: Callable[[str], None] | None = None,
    pool: tuple[np.ndarray, np.ndarray] | None = None,
    check: DemoSet | None = None,
) -> TrainResult:
    """Train the demo CLIP. ``pool`` (pixels, keys) replaces the drawn training pool (tests);
    ``check`` is a held-out set evaluated every ``eval_every`` steps and at the end."""
    import torch
    import torch.nn.functional as F

    say = progress or (lambda msg: log.info("%s", msg))
    torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    tokenizer = build_tokenizer()
    processor = build_image_processor()
    model = build_model(cfg, vocab_size=len(tokenizer))
    n_params = sum(p.numel() for p in model.parameters())
    say(f"model: {n_params:,} parameters")

    rng = rng_for(cfg.seed, STREAM_TRAIN)
    if pool is None:
        pool = draw_pool(rng, cfg.pool_size, say)
        say(f"training pool of {cfg.pool_size} images ready ({time.perf_counter() - t0:.0f} s)")
    pixels, keys = pool
    rows = scene_index(keys)
    ids_table, mask_table = caption_table(tokenizer)
    n_phrasings = len(shapes.PHRASINGS)

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.98),
        eps=1e-6,
    )

    def lr_at(step: int) -> float:
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    history: list[dict] = []
    order = rng.permutation(len(pixels))
    cursor = 0
    batch = min(cfg.batch_size, len(pixels))
    model.train()
    for step in range(cfg.steps):
        if cursor + batch > len(order):
            order, cursor = rng.permutation(len(pixels)), 0
        idx = order[cursor : cursor + batch]
        cursor += batch
        phr = rng.integers(n_phrasings, size=batch)
        cap_rows = torch.from_numpy(rows[idx] * n_phrasings + phr)
        input_ids, attention_mask = ids_table[cap_rows], mask_table[cap_rows]
        width = int(attention_mask.sum(1).max())
        input_ids, attention_mask = input_ids[:, :width], attention_mask[:, :width]

        img = _image_embeds(model, normalise(pixels[idx]))
        txt = _text_embeds(model, input_ids, attention_mask)
        scale = model.logit_scale.clamp(max=math.log(100.0)).exp()
        logits = scale * txt @ img.T  # [B texts, B images]
        same = torch.from_numpy(rows[idx][:, None] == rows[idx][None, :]).float()
        target = same / same.sum(1, keepdim=True)  # captions of equal scenes match every such image
        loss = 0.5 * (
            -(target * F.log_softmax(logits, 1)).sum(1).mean() - (target * F.log_softmax(logits.T, 1)).sum(1).mean()
        )
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

        record = {"step": step + 1, "loss": float(loss.detach()), "logit_scale": float(scale.detach())}
        last = step + 1 == cfg.steps
        if check is not None and ((step + 1) % cfg.eval_every == 0 or last):
            record.update(retrieval_recall(*embed_demo_set(model, tokenizer, check)))
        history.append(record)
        if (step + 1) % 50 == 0 or last or step == 0 or len(record) > 3:
            extra = "".join(
                f" {k.replace('_retrieval_recall', '')}={v:.3f}" for k, v in record.items() if "recall" in k
            )
            say(
                f"step {step + 1}/{cfg.steps} loss {record['loss']:.4f} scale {record['logit_scale']:.1f}"
                f" lr {lr_at(step):.2e}{extra} ({time.perf_counter() - t0:.0f} s)"
            )
    model.eval()
    return TrainResult(model, tokenizer, processor, history, time.perf_counter() - t0)


def save_checkpoint(result: TrainResult, out_dir: str | Path) -> Path:
    """Save model, tokenizer and image processor into one Hugging Face checkpoint directory."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result.model.save_pretrained(out)
    result.tokenizer.save_pretrained(out)
    result.image_processor.save_pretrained(out)
    return out
