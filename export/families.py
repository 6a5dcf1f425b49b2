"""The checkpoint families the exporter knows, keyed on ``config.json``'s ``model_type``.

Each :class:`Family` says which transformers class loads it, which text inputs its text tower
takes, how texts are padded (``"longest"`` where the pooled output ignores padding, ``"max_length"``
where the family was trained with fixed padding, SigLIP), which token the text tower pools, how
its tokenizer is turned into ``tokenizer.json``, and which model type onnxruntime's transformer
optimizer fuses each tower as.

Pooling rules (the manifest's ``tokenizer.pooling``):

* ``"first_eos"`` / ``"max_id"``: CLIP's causal text tower, see :mod:`.tokenizer_export`;
* ``"first"``: the first token (Chinese-CLIP's ``[CLS]``; BERT attends with the mask, so padding
  to the longest text is exact);
* ``"last"``: the last position of a sequence padded to the context length (SigLIP; no mask).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from clipeval.engine.errors import ExportError

from .tokenizer_export import pooling_rule


@dataclass(frozen=True)
class ModelFacts:
    """What the exporter needs to know about a loaded model."""

    embed_dim: int
    context_length: int
    image_size: int
    pooling: str  # "first_eos" | "max_id" | "first" | "last"
    pool_eos_id: int | None  # the id the text tower looks for under "first_eos"
    vision_layers: int
    text_layers: int
    vision_heads: int
    text_heads: int
    vision_hidden: int
    text_hidden: int


@dataclass(frozen=True)
class Family:
    """How to export one kind of checkpoint."""

    name: str  # the manifest's ``family``
    model_class: str  # transformers class to load
    facts: Callable[[Any], ModelFacts]  # transformers config -> facts
    padding: str = "longest"
    text_inputs: tuple[str, ...] = ("input_ids", "attention_mask")
    tokenizer: str = "fast"  # "fast" (the checkpoint's fast tokenizer) | "siglip_spm" (spiece.model)
    optimizer_types: tuple[str, str] = ("clip", "clip")  # (vision, text) model_type for optimize_model


def _towers(config: Any) -> dict[str, int]:
    v, t = config.vision_config, config.text_config
    return dict(
        vision_layers=int(v.num_hidden_layers),
        text_layers=int(t.num_hidden_layers),
        vision_heads=int(v.num_attention_heads),
        text_heads=int(t.num_attention_heads),
        vision_hidden=int(v.hidden_size),
        text_hidden=int(t.hidden_size),
    )


def _clip_facts(config: Any) -> ModelFacts:
    eos = config.text_config.eos_token_id
    return ModelFacts(
        embed_dim=int(config.projection_dim),
        context_length=int(config.text_config.max_position_embeddings),
        image_size=int(config.vision_config.image_size),
        pooling=pooling_rule(eos),
        pool_eos_id=None if eos is None else int(eos),
        **_towers(config),
    )


def _chinese_clip_facts(config: Any) -> ModelFacts:
    return ModelFacts(
        embed_dim=int(config.projection_dim),
        context_length=int(config.text_config.max_position_embeddings),
        image_size=int(config.vision_config.image_size),
        pooling="first",
        pool_eos_id=None,
        **_towers(config),
    )


def _siglip_facts(config: Any) -> ModelFacts:
    t = config.text_config
    return ModelFacts(
        embed_dim=int(getattr(t, "projection_size", None) or t.hidden_size),
        context_length=int(t.max_position_embeddings),
        image_size=int(config.vision_config.image_size),
        pooling="last",
        pool_eos_id=None,
        **_towers(config),
    )


FAMILIES: dict[str, Family] = {
    "clip": Family(name="clip", model_class="CLIPModel", facts=_clip_facts),
    "chinese_clip": Family(
        name="chinese_clip",
        model_class="ChineseCLIPModel",
        facts=_chinese_clip_facts,
        optimizer_types=("clip", "bert"),
    ),
    "siglip": Family(
        name="siglip",
        model_class="SiglipModel",
        facts=_siglip_facts,
        padding="max_length",
        text_inputs=("input_ids",),
        tokenizer="siglip_spm",
    ),
}


def family_for(model_type: str | None, where: str = "") -> Family:
    """The family of a checkpoint's ``model_type``; an unknown one lists the supported ones."""
    if model_type not in FAMILIES:
        raise ExportError(
            f"model_type {model_type!r}{where} is not supported",
            "supported model types: " + ", ".join(
                f"{name} ({fam.model_class})" for name, fam in sorted(FAMILIES.items())
            ),
        )
    return FAMILIES[model_type]
