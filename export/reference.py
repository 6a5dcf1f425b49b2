"""The pipeline users run today, for ``clipeval bench --vs-reference``.

It follows evalscope's ``clip_benchmark`` backend on a ``custom`` dataset, with
CLIP_benchmark's metric code re-implemented from its definition:

* the checkpoint loaded with transformers (``<Family>Model.from_pretrained``, eval mode) and its
  image processor (the PIL implementation; either config layout, see :mod:`.preprocess_config`)
  and tokenizer;
* a ``torch.utils.data.DataLoader`` over the gallery with ``num_workers`` worker processes
  (the reference tool's default: 1); each item is decoded with PIL and run through the image
  processor in the worker, the batch's captions travel with it;
* per batch: the image embeddings, then the batch's captions tokenized with ``padding=True``
  (to the longest caption of the batch), ``truncation=True`` and ``max_length`` the tokenizer's
  ``model_max_length``, and their embeddings; both L2-normalised; fp16 autocast on CUDA, fp32
  on CPU;
* the full ``[texts, images]`` score matrix, ``positive_pairs``, and CLIP_benchmark's
  ``recall_at_k``: ``topk`` over each row, a one-hot ``[rows, k, columns]`` tensor times the
  positive pairs, per chunk of ``batch_size`` rows, then ``(recall > 0).mean()``, both ways.

For an open_clip model (``--open-clip MODEL [--pretrained TAG|FILE]``) the pipeline is
CLIP_benchmark's instead: ``open_clip.create_model_and_transforms`` (eval mode) and
``open_clip.get_tokenizer``; each image opened with PIL, ``convert("RGB")`` and run through
open_clip's eval transform in the worker; captions tokenised by open_clip (padded to its context
length); ``encode_image`` / ``encode_text``, L2-normalised; the same metric code.

The dataset is read with clipeval's own ``custom`` reader, so both pipelines see the same
images and captions in the same order (reading a JSONL file is not what either spends time on).

Run as a module it prints one JSON object on stdout::

    python -m clipeval.export.reference --checkpoint DIR --data-dir DIR [--limit N]
    python -m clipeval.export.reference --open-clip ViT-B-32 --pretrained laion2b_s34b_b79k --data-dir DIR
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_K = (1, 5, 10)


def _model_class(checkpoint: Path) -> str:
    from .convert import _read_config
    from .families import family_for

    return family_for(_read_config(checkpoint).get("model_type"), f" in {checkpoint / 'config.json'}").model_class


class _Gallery:
    """``torch.utils.data.Dataset`` of ``(pixel_values [3,H,W], captions)``, decoded in the worker.
    Defined lazily so importing this module does not import torch."""

    def __new__(cls, *args, **kwargs):
        import torch.utils.data

        class Gallery(torch.utils.data.Dataset):
            def __init__(self, paths, captions, pixels):
                self.paths, self.captions, self.pixels = paths, captions, pixels

            def __len__(self):
                return len(self.paths)

            def __getitem__(self, i):
                from PIL import Image

                image = Image.open(self.paths[i]).convert("RGB")
                return self.pixels(image), self.captions[i]

        return Gallery(*args, **kwargs)


def _collate(batch):
    import torch

    return torch.stack([b[0] for b in batch]), [b[1] for b in batch]


def recall_at_k(scores, positive_pairs, k: int):
    """CLIP_benchmark's definition: for each row, the share of its positives among its top k."""
    import torch

    nb_texts, nb_images = scores.shape
    topk_indices = torch.topk(scores, k, dim=1)[1]
    nb_positive = positive_pairs.sum(dim=1)
    topk_indicator = torch.nn.functional.one_hot(topk_indices, num_classes=nb_images)
    positive_pairs_reshaped = positive_pairs.view(nb_texts, 1, nb_images)
    nb_true_positive = (topk_indicator * positive_pairs_reshaped).sum(dim=(1, 2))
    return nb_true_positive / nb_positive


def _batchify(func, x, y, batch_size: int, *args):
    import torch

    results = []
    for start in range(0, len(x), batch_size):
        results.append(func(x[start:start + batch_size], y[start:start + batch_size], *args))
    return torch.cat(results)


def _load(checkpoint: Path, device: str):
    import transformers

    model = getattr(transformers, _model_class(checkpoint)).from_pretrained(str(checkpoint)).eval().to(device)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(checkpoint))
    return model, tokenizer, _pil_image_processor(checkpoint)


def _pil_image_processor(checkpoint: Path):
    """The checkpoint's image processor, PIL implementation (transformers 5 would otherwise pick its
    torchvision backend, which differs by up to one grey level); either config layout."""
    import transformers

    try:
        return transformers.AutoImageProcessor.from_pretrained(str(checkpoint), backend="pil")
    except Exception:  # noqa: BLE001 - older transformers: the processor class named in the config
        from .preprocess_config import read_image_processor_config

        cfg, _ = read_image_processor_config(checkpoint)
        name = str(cfg.get("image_processor_type") or "CLIPImageProcessor")
        name = name.removesuffix("Fast").removesuffix("Pil")
        cls = getattr(transformers, name + "Pil", None) or getattr(transformers, name)
        return cls(**{k: v for k, v in cfg.items() if k != "image_processor_type"})


def _features(output):
    import torch

    return output if isinstance(output, torch.Tensor) else output.pooler_output


class _HFPixels:
    """transformers' image processor as a picklable image -> ``[3, H, W]`` function."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, image):
        return self.processor(image, return_tensors="pt")["pixel_values"][0]


class TransformersPipeline:
    """evalscope's: ``<Family>Model`` + AutoTokenizer (padding to the batch's longest) + PIL image processor."""

    def __init__(self, checkpoint: Path, device: str):
        self.model, self.tokenizer, processor = _load(checkpoint, device)
        self.pixels = _HFPixels(processor)
        self.device = device
        limit = self.tokenizer.model_max_length
        self.max_length = limit if limit < 10**6 else 512

    def encode_image(self, pixels):
        return _features(self.model.get_image_features(pixel_values=pixels.to(self.device)))

    def encode_text(self, texts):
        tokens = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        tokens = {k: v.to(self.device) for k, v in tokens.items() if k in ("input_ids", "attention_mask")}
        return _features(self.model.get_text_features(**tokens))


class OpenClipPipeline:
    """CLIP_benchmark's: ``open_clip.create_model_and_transforms`` + ``get_tokenizer``."""

    def __init__(self, model_name: str, pretrained: str | None, device: str):
        import open_clip

        model, _, self.pixels = open_clip.create_model_and_transforms(model_name, pretrained=pretrained, device=device)
        self.model = model.eval()
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.device = device

    def encode_image(self, pixels):
        return self.model.encode_image(pixels.to(self.device))

    def encode_text(self, texts):
        return self.model.encode_text(self.tokenizer(texts).to(self.device))


def run_reference(checkpoint: str | Path | None, data_dir: str | Path, *, limit: int | None = None,
                  batch_size: int = 128, num_workers: int = 1, device: str | None = None, recall_k=DEFAULT_K,
                  open_clip: tuple[str, str | None] | None = None) -> dict:
    """Run the reference pipeline of a transformers ``checkpoint`` (evalscope's) or of the open_clip
    model ``open_clip = (model_name, pretrained)`` (CLIP_benchmark's); returns ``{"metrics",
    "timings", "counts", "device"}``."""
    t_start = time.perf_counter()
    import torch
    import torch.nn.functional as F

    from clipeval.engine.datasets import read_dataset

    t_imports = time.perf_counter() - t_start
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    t0 = time.perf_counter()
    if open_clip is not None:
        pipeline = OpenClipPipeline(open_clip[0], open_clip[1], device)
    else:
        pipeline = TransformersPipeline(Path(checkpoint), device)
    t_load = time.perf_counter() - t0

    dataset = read_dataset("custom", str(data_dir), "test", "fail", progress=False, limit=limit).limit(limit)
    captions: list[list[str]] = [[] for _ in range(dataset.num_images)]
    for text, image in zip(dataset.texts, dataset.text_to_image.tolist()):
        captions[image].append(text)
    loader = torch.utils.data.DataLoader(_Gallery([str(p) for p in dataset.images], captions, pipeline.pixels),
                                         batch_size=batch_size, num_workers=num_workers, collate_fn=_collate,
                                         shuffle=False)
    images_emb, texts_emb, texts_image_index = [], [], []
    t_wait = t_vision = t_text = 0.0
    t0 = time.perf_counter()
    mark = t0
    autocast = torch.autocast(device, dtype=torch.float16, enabled=device == "cuda")
    for start_index, (pixels, batch_captions) in zip(range(0, 10**12, batch_size), loader):
        now = time.perf_counter()
        t_wait += now - mark
        batch_texts = [t for caps in batch_captions for t in caps]
        texts_image_index.extend(start_index + i for i, caps in enumerate(batch_captions) for _ in caps)
        with torch.no_grad(), autocast:
            tv = time.perf_counter()
            img = F.normalize(pipeline.encode_image(pixels), dim=-1)
            images_emb.append(img.float().cpu())
            tt = time.perf_counter()
            txt = F.normalize(pipeline.encode_text(batch_texts), dim=-1)
            texts_emb.append(txt.float().cpu())
            mark = time.perf_counter()
        t_vision += tt - tv
        t_text += mark - tt
    t_embed = time.perf_counter() - t0

    t0 = time.perf_counter()
    images_emb_t = torch.cat(images_emb)
    texts_emb_t = torch.cat(texts_emb)
    scores = texts_emb_t @ images_emb_t.t()
    positive_pairs = torch.zeros_like(scores, dtype=torch.bool)
    positive_pairs[torch.arange(len(scores)), torch.tensor(texts_image_index)] = True
    metrics = {}
    chunk = batch_size
    for k in recall_k:
        if k > min(scores.shape):
            continue
        metrics[f"image_retrieval_recall@{k}"] = (
            _batchify(recall_at_k, scores, positive_pairs, chunk, k) > 0).float().mean().item()
        metrics[f"text_retrieval_recall@{k}"] = (
            _batchify(recall_at_k, scores.T, positive_pairs.T, chunk, k) > 0).float().mean().item()
    t_metric = time.perf_counter() - t0
    return {
        "metrics": metrics,
        "timings": {"imports_s": t_imports, "model_load_s": t_load, "embed_s": t_embed,
                    "decode_wait_s": t_wait, "vision_s": t_vision, "text_s": t_text, "ranking_s": t_metric,
                    "total_s": time.perf_counter() - t_start},
        "counts": {"images": dataset.num_images, "texts": dataset.num_texts},
        "device": device,
        "num_workers": num_workers,
        "torch_threads": torch.get_num_threads(),
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m clipeval.export.reference", description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default=None, help="a transformers checkpoint directory")
    ap.add_argument("--open-clip", default=None, metavar="MODEL",
                    help="an open_clip model (architecture, hf-hub:org/name or local-dir:PATH) instead")
    ap.add_argument("--pretrained", default=None, help="open_clip pretrained tag or file")
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--num-workers", type=int, default=1)
    ap.add_argument("--device", default=None)
    ap.add_argument("--recall-k", type=int, nargs="*", default=list(DEFAULT_K))
    args = ap.parse_args(argv)
    if (args.checkpoint is None) == (args.open_clip is None):
        ap.error("give either --checkpoint or --open-clip")
    result = run_reference(args.checkpoint, args.data_dir, limit=args.limit, batch_size=args.batch_size,
                           num_workers=args.num_workers, device=args.device, recall_k=args.recall_k,
                           open_clip=(args.open_clip, args.pretrained) if args.open_clip else None)
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
