"""A whole bundle loaded at once: both towers opened, its preprocessor and tokenizer.

For tools and tests that run the towers directly (``clipeval bench`` times each stage on its
own; the tests' oracles embed through it). A run does not use it: the runner's embedding stage
(:mod:`clipeval.engine.embedding`) opens each tower on its first cache miss, once per run.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from ..images.preprocess import Preprocessor, PreprocessSpec
from ..text.tokenizer import TextTokenizer
from .bundle import Bundle
from .onnx import Tower, cuda_problem, open_tower, short_provider

log = logging.getLogger(__name__)


@dataclass
class ModelContext:
    """``bundle`` at ``precision``: ``vision`` and ``text`` towers (open sessions),
    ``preprocessor`` (images to ``pixel_values`` float32 ``[3, H, W]``), ``tokenizer``, the
    seconds it took to load (``load_s``) and the provider fallbacks met (``warnings``)."""

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
        """The provider the towers run on (``cpu``, ``cuda``)."""
        return short_provider(self.vision.provider)


def default_precision(bundle: Bundle, provider: str) -> str:
    """The variant to run when none is asked for: fp16 where CUDA will run it and the bundle has
    one (what the reference tools do on a GPU: autocast fp16), else the bundle's own precision."""
    if provider in ("auto", "cuda") and "fp16" in bundle.precisions and cuda_problem() is None:
        return "fp16"
    return bundle.manifest["precision"]


def load_model(bundle: Bundle, *, provider: str = "auto", precision: str | None = None,
               threads: int | None = None, logged: set[str] | None = None) -> ModelContext:
    """Open both towers of ``bundle`` at ``precision`` (default: :func:`default_precision`) on
    ``provider`` with ``threads`` intra-op threads, and read its preprocessing and tokenizer.
    ``logged``: provider warnings already logged (see :func:`~clipeval.engine.sessions.onnx.open_tower`).
    Raises :class:`~clipeval.engine.errors.BundleError` for a bundle without those towers or a
    graph onnxruntime cannot load, :class:`~clipeval.engine.errors.ProviderError` for an unknown
    provider."""
    t0 = time.perf_counter()
    precision = precision or default_precision(bundle, provider)
    logged = set() if logged is None else logged
    vision = open_tower(bundle.tower_path("vision", precision), provider, threads, logged=logged)
    text = open_tower(bundle.tower_path("text", precision), provider, threads, logged=logged)
    tokenizer = TextTokenizer(bundle.path / "tokenizer.json", bundle.tokenizer_rule, bundle.context_length)
    return ModelContext(bundle=bundle, precision=precision, vision=vision, text=text,
                        preprocessor=Preprocessor(PreprocessSpec.from_dict(bundle.preprocess)), tokenizer=tokenizer,
                        load_s=time.perf_counter() - t0, warnings=list(dict.fromkeys(vision.warnings + text.warnings)))
