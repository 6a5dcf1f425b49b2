"""A loaded model: bundle, both towers, preprocessor and tokenizer; loaded once per run."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from ..bundle import Bundle
from ..preprocess import Preprocessor, PreprocessSpec
from ..session import Tower, open_tower, short_provider
from ..tokenizer import TextTokenizer

log = logging.getLogger(__name__)


@dataclass
class ModelContext:
    bundle: Bundle
    precision: str
    vision: Tower
    text: Tower
    preprocessor: Preprocessor
    tokenizer: TextTokenizer
    load_s: float = 0.0
    warnings: list[str] = field(default_factory=list)

    @property
    def provider(self) -> str:
        return short_provider(self.vision.provider)

    def describe(self) -> dict:
        return {
            "identity": self.bundle.identity,
            "path": str(self.bundle.path),
            "family": self.bundle.family,
            "source": self.bundle.manifest.get("source"),
            "revision": self.bundle.manifest.get("revision"),
        }


def load_model(bundle: Bundle, *, provider: str = "auto", precision: str | None = None,
               threads: int | None = None) -> ModelContext:
    t0 = time.perf_counter()
    precision = precision or bundle.manifest["precision"]
    vision = open_tower(bundle.tower_path("vision", precision), provider, threads)
    text = open_tower(bundle.tower_path("text", precision), provider, threads)
    spec = PreprocessSpec.from_dict(bundle.preprocess)
    tokenizer = TextTokenizer(bundle.path / "tokenizer.json", bundle.tokenizer_rule, bundle.context_length)
    return ModelContext(
        bundle=bundle, precision=precision, vision=vision, text=text,
        preprocessor=Preprocessor(spec), tokenizer=tokenizer,
        load_s=time.perf_counter() - t0, warnings=vision.warnings + text.warnings,
    )
