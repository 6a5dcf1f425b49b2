"""PyTorch tower wrappers, their ONNX export, and tiny CLIP models built from a config.

This module imports torch at the top: import it lazily (inside the function that exports).

* :class:`VisionTower` ``pixel_values [B,3,H,W] -> image_embeds [B,D]`` and :class:`TextTower`
  ``input_ids[, attention_mask] [B,T] -> text_embeds [B,D]``: the model's projected embedding
  (``get_image_features`` / ``get_text_features``), L2-normalised inside the graph.
* :func:`export_onnx`: ``torch.onnx.export(dynamo=False)`` with dynamic axes, then the ONNX IR
  version pinned to the lowest one the opset needs (onnx >= 1.23 writes IR 14, which
  onnxruntime 1.31 cannot read).
* :func:`build_clip_config` / :func:`build_clip_model`: a small random ``CLIPModel`` (tests and
  the demo model).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from clipeval.engine.errors import ExportError

log = logging.getLogger(__name__)


def projected(output: Any) -> torch.Tensor:
    """The projected embedding from ``get_*_features``: a tensor (transformers 4.x) or an output
    object whose ``pooler_output`` holds it (transformers 5.x)."""
    if isinstance(output, torch.Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    if pooled is None:
        raise ExportError(
            f"get_*_features returned {type(output).__name__} without pooler_output",
            "use a transformers version this exporter knows (4.45 or later)",
        )
    return pooled


class VisionTower(nn.Module):
    input_names = ("pixel_values",)
    output_names = ("image_embeds",)

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return F.normalize(projected(self.model.get_image_features(pixel_values=pixel_values)), p=2.0, dim=-1)


class TextTower(nn.Module):
    """``input_names`` (the family's text inputs, in order) -> ``text_embeds``."""

    output_names = ("text_embeds",)

    def __init__(self, model: nn.Module, input_names: tuple[str, ...] = ("input_ids", "attention_mask")):
        super().__init__()
        self.model = model
        self.input_names = tuple(input_names)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        out = self.model.get_text_features(**dict(zip(self.input_names, inputs)))
        return F.normalize(projected(out), p=2.0, dim=-1)


def load_model(checkpoint: str | Path, class_name: str) -> nn.Module:
    """``transformers.<class_name>.from_pretrained`` with eager attention, in eval mode.

    Eager attention exports to plain MatMul/Softmax, which onnxruntime's transformer optimizer
    can fuse later (it does not recognise the SDPA export).
    """
    import transformers

    cls = getattr(transformers, class_name)
    try:
        model = cls.from_pretrained(str(checkpoint), attn_implementation="eager")
    except Exception as exc:  # transformers raises many types for a broken checkpoint
        raise ExportError(
            f"cannot load {class_name} from {checkpoint}: {type(exc).__name__}: {exc}",
            "check that the directory was written by save_pretrained and is complete",
        ) from None
    return model.eval()


def ir_version_for_opset(opset: int) -> int:
    """The lowest ONNX IR version that carries ``opset`` of the default domain."""
    import onnx.helper

    candidates = [row[1] for row in onnx.helper.VERSION_TABLE if row[2] >= opset]
    if not candidates:
        raise ExportError(f"onnx {onnx.__version__} does not know opset {opset}", "pick a lower --opset")
    return min(candidates)


def export_onnx(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    path: str | Path,
    *,
    dynamic_axes: dict[str, dict[int, str]],
    opset: int,
) -> None:
    """Trace ``module`` on ``args`` and write ``path`` with the IR version pinned."""
    import onnx

    try:
        with warnings.catch_warnings():
            # The legacy exporter's deprecation notice and tracer notes about shape checks that are
            # constant for a given model (sequence length <= max positions, image size).
            warnings.simplefilter("ignore", category=DeprecationWarning)
            warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message=".*aten::index.*")
            warnings.filterwarnings("ignore", message=".*feature will be removed.*")
            with torch.no_grad():
                torch.onnx.export(
                    module,
                    args,
                    str(path),
                    input_names=list(module.input_names),
                    output_names=list(module.output_names),
                    dynamic_axes=dynamic_axes,
                    opset_version=opset,
                    do_constant_folding=True,
                    dynamo=False,
                )
    except ExportError:
        raise
    except Exception as exc:  # torch raises many types from the exporter
        raise ExportError(
            f"torch.onnx.export failed for {Path(path).name}: {type(exc).__name__}: {exc}",
            "try another --opset, or report the checkpoint and versions",
        ) from None
    model = onnx.load(str(path), load_external_data=False)
    model.ir_version = ir_version_for_opset(opset)
    onnx.save(model, str(path))
    onnx.checker.check_model(str(path))
    log.debug("wrote %s (IR %d, opset %d)", path, model.ir_version, opset)


def build_clip_config(
    vocab_size: int,
    *,
    pad_id: int,
    bos_id: int,
    eos_id: int,
    config_eos_id: int | None = None,
    hidden_size: int = 32,
    intermediate_size: int | None = None,
    num_layers: int = 2,
    num_heads: int = 2,
    image_size: int = 32,
    patch_size: int = 8,
    projection_dim: int = 16,
    context_length: int = 16,
    vision_hidden_size: int | None = None,
):
    """A ``CLIPConfig`` for a small CLIP whose text config agrees with the tokenizer's ids.

    ``config_eos_id`` is what goes into ``text_config.eos_token_id`` (default ``eos_id``); pass 2
    to get transformers' legacy ``"max_id"`` pooling (then the end token must have the largest id).
    """
    from transformers import CLIPConfig

    vision_hidden = vision_hidden_size or hidden_size
    text = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        max_position_embeddings=context_length,
        pad_token_id=pad_id,
        bos_token_id=bos_id,
        eos_token_id=eos_id if config_eos_id is None else config_eos_id,
        projection_dim=projection_dim,
    )
    vision = dict(
        hidden_size=vision_hidden,
        intermediate_size=intermediate_size or 2 * vision_hidden,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=projection_dim,
    )
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)


def build_clip_model(config, seed: int = 0) -> nn.Module:
    """A randomly initialised ``CLIPModel`` (deterministic for a given ``seed``), in eval mode."""
    from transformers import CLIPModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config)
    return model.eval()
