"""A loaded model: bundle, both towers, preprocessor and tokenizer; loaded once per run."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from .bundle import Bundle
from ..embedding.cache import CacheSpace, EmbeddingCache
from ..images.preprocess import Preprocessor, PreprocessSpec
from .onnx import Tower, cuda_problem, open_tower, short_provider
from ..text.tokenizer import TextTokenizer

log = logging.getLogger(__name__)


class LazyTower:
    """A :class:`Tower` opened on first use, so a run served wholly from the embedding cache never
    loads a model. Attribute access (``run``, ``provider``, ``session``...) opens it."""

    def __init__(self, path, provider: str, threads: int | None, warnings: list[str], logged: set[str]):
        self._args = (path, provider, threads)
        self._tower: Tower | None = None
        self._warnings = warnings
        self._logged = logged
        self.load_s = 0.0

    @property
    def loaded(self) -> bool:
        return self._tower is not None

    def get(self) -> Tower:
        if self._tower is None:
            t0 = time.perf_counter()
            self._tower = open_tower(*self._args, logged=self._logged)
            self.load_s = time.perf_counter() - t0
            self._warnings.extend(w for w in self._tower.warnings if w not in self._warnings)
        return self._tower

    def run(self, feeds):
        return self.get().run(feeds)

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.get(), name)


@dataclass
class ModelContext:
    bundle: Bundle
    precision: str
    vision: Tower | LazyTower
    text: Tower | LazyTower
    preprocessor: Preprocessor
    tokenizer: TextTokenizer
    load_s: float = 0.0
    warnings: list[str] = field(default_factory=list)
    cache: EmbeddingCache | None = None
    cache_spaces: dict[str, CacheSpace] = field(default_factory=dict)

    def _loaded(self) -> list[Tower]:
        return [t.get() if isinstance(t, LazyTower) else t for t in (self.vision, self.text)
                if not isinstance(t, LazyTower) or t.loaded]

    @property
    def provider(self) -> str:
        """The provider the towers ran on; ``"none"`` when every embedding came from the cache."""
        loaded = self._loaded()
        return short_provider(loaded[0].provider) if loaded else "none"

    @property
    def model_load_s(self) -> float:
        """Seconds spent loading: tokenizer and preprocessor, plus the towers opened so far."""
        return self.load_s + sum(t.load_s for t in (self.vision, self.text) if isinstance(t, LazyTower))

    def cache_space(self, kind: str) -> CacheSpace | None:
        """The embedding-cache space of this bundle and precision for ``kind`` (``image``,
        ``image-fast`` or ``text``), or None when the run has no cache. One per kind, so its
        hit counts add up over the tasks of a run."""
        if self.cache is None:
            return None
        if kind not in self.cache_spaces:
            self.cache_spaces[kind] = self.cache.space(self.bundle.identity, self.precision, kind,
                                                       verified=self.bundle.verified)
        return self.cache_spaces[kind]

    def image_cache(self, fast_decode: bool = False) -> CacheSpace | None:
        return self.cache_space("image-fast" if fast_decode else "image")

    def text_cache(self) -> CacheSpace | None:
        return self.cache_space("text")

    def describe(self) -> dict:
        return {
            "identity": self.bundle.identity,
            "path": str(self.bundle.path),
            "family": self.bundle.family,
            "source": self.bundle.manifest.get("source"),
            "revision": self.bundle.manifest.get("revision"),
        }


def default_precision(bundle: Bundle, provider: str) -> str:
    """The variant to run when none is asked for: fp16 where CUDA will run it and the bundle has
    one (what the reference tools do on a GPU: autocast fp16), else the bundle's own precision."""
    if provider in ("auto", "cuda") and "fp16" in bundle.precisions and cuda_problem() is None:
        return "fp16"
    return bundle.manifest["precision"]


def load_model(bundle: Bundle, *, provider: str = "auto", precision: str | None = None,
               threads: int | None = None, cache: EmbeddingCache | None = None,
               lazy: bool = False, logged: set[str] | None = None) -> ModelContext:
    """Load a bundle's towers, preprocessor and tokenizer. ``lazy`` opens each tower on its first
    use (what a run with an embedding ``cache`` wants: a fully cached run opens none).
    ``logged``: the provider warnings the run has logged already (see
    :func:`~clipeval.engine.sessions.onnx.open_tower`); ``ModelContext.warnings`` lists this model's
    warnings, each once, logged or not."""
    t0 = time.perf_counter()
    precision = precision or default_precision(bundle, provider)
    warnings: list[str] = []
    logged = set() if logged is None else logged
    if lazy:
        vision = LazyTower(bundle.tower_path("vision", precision), provider, threads, warnings, logged)
        text = LazyTower(bundle.tower_path("text", precision), provider, threads, warnings, logged)
    else:
        vision = open_tower(bundle.tower_path("vision", precision), provider, threads, logged=logged)
        text = open_tower(bundle.tower_path("text", precision), provider, threads, logged=logged)
        warnings = list(dict.fromkeys(vision.warnings + text.warnings))
    spec = PreprocessSpec.from_dict(bundle.preprocess)
    tokenizer = TextTokenizer(bundle.path / "tokenizer.json", bundle.tokenizer_rule, bundle.context_length)
    return ModelContext(
        bundle=bundle, precision=precision, vision=vision, text=text,
        preprocessor=Preprocessor(spec), tokenizer=tokenizer,
        load_s=time.perf_counter() - t0, warnings=warnings, cache=cache,
    )
