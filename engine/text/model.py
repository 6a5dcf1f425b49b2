"""Text embedding with a bundle's text tower.

A *text bundle* (manifest ``family: "text"``, made by ``clipeval.export.text_model`` from a
sentence-transformers / BERT-style checkpoint) holds one ``text.onnx``: ``input_ids`` and
``attention_mask`` int64 ``[B, T]`` -> ``text_embeds`` float32 ``[B, D]``, with the checkpoint's
pooling (mean or CLS) and normalisation inside the graph, plus ``tokenizer.json``. The text
tower of a CLIP-style bundle works the same way and may be used too.

Texts are tokenised with the bundle's rule (truncated to its ``context_length``) and embedded
in batches of similar length, each padded only to its own longest text.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from ..sessions.bundle import Bundle
from ..embedding.embed import embed_texts
from ..errors import BundleError
from ..sessions.onnx import Tower, open_tower, short_provider
from .tokenizer import TextTokenizer

log = logging.getLogger(__name__)

TEXT_FAMILY = "text"


@dataclass
class TextModel:
    bundle: Bundle
    precision: str
    tower: Tower
    tokenizer: TextTokenizer
    load_s: float = 0.0
    warnings: list[str] = field(default_factory=list)

    @property
    def provider(self) -> str:
        return short_provider(self.tower.provider)

    @property
    def normalized(self) -> bool:
        """Whether the tower's output is L2-normalised (scores are then cosines)."""
        return bool(self.bundle.manifest.get("text_model", {}).get("normalize", True))

    def describe(self) -> dict:
        m = self.bundle.manifest
        return {
            "identity": self.bundle.identity,
            "path": str(self.bundle.path),
            "family": self.bundle.family,
            "source": m.get("source"),
            "revision": m.get("revision"),
            "embed_dim": self.bundle.embed_dim,
            "context_length": self.bundle.context_length,
            "text_model": m.get("text_model"),
        }

    def embed(self, texts: list[str], *, batch_size: int, progress: bool = True, label: str = "texts"
              ) -> tuple[np.ndarray, int]:
        """``(embeddings [N, D] float32 in input order, number of texts truncated)``."""
        if not texts:
            return np.zeros((0, self.bundle.embed_dim), dtype=np.float32), 0
        out = embed_texts(self.tower, self.tokenizer, texts, batch_size=batch_size, progress=progress)
        log.debug("embedded %d %s", len(texts), label)
        return out.embeds, out.truncated


def load_text_model(bundle: Bundle, *, provider: str = "auto", precision: str | None = None,
                    threads: int | None = None) -> TextModel:
    """Open the text tower and tokenizer of ``bundle``."""
    t0 = time.perf_counter()
    precision = precision or bundle.manifest["precision"]
    variants = bundle.manifest["variants"].get(precision, {})
    if "text" not in variants:
        raise BundleError(f"bundle {bundle.path} has no text tower for precision {precision}",
                          "pass a text bundle made from a sentence-transformers checkpoint")
    tower = open_tower(bundle.tower_path("text", precision), provider, threads)
    if tower.output_name != "text_embeds":
        raise BundleError(f"{tower.path} outputs {tower.output_name!r}, not 'text_embeds'", "re-export the bundle")
    tokenizer = TextTokenizer(bundle.path / "tokenizer.json", bundle.tokenizer_rule, bundle.context_length)
    return TextModel(bundle=bundle, precision=precision, tower=tower, tokenizer=tokenizer,
                     load_s=time.perf_counter() - t0, warnings=list(tower.warnings))
