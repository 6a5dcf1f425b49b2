"""Graph-level work on an exported tower: fusion, fp16 conversion, int8 dynamic quantisation.

* :func:`fuse`: onnxruntime's transformer optimizer (``optimize_model``) on a tower exported with
  eager attention; it fuses attention, LayerNorm (+ residual: ``SkipLayerNormalization``) and
  GELU. ``opt_level=1`` lets onnxruntime's basic (provider-independent) graph rewrites run first:
  without them the optimizer's shape inference fails on SigLIP's vision head and nothing in the
  SigLIP vision tower fuses. :func:`op_counts` / :func:`fusion_summary` give the counts the manifest records.
* :func:`to_fp16`: the fused graph in float16 with float32 inputs and outputs
  (``keep_io_types=True``), so callers never change; the number of ``Cast`` nodes is recorded
  (a graph that casts around every operator would run slowly on CUDA).
* :func:`quantize_int8`: ``onnxruntime.quantization.quantize_dynamic`` (int8 weights, activations
  quantised at run time) for CPU boxes.

Every function writes a model whose IR version onnxruntime reads (see ``towers.ir_version_for_opset``).
"""

from __future__ import annotations

import collections
import logging
import warnings
from pathlib import Path
from typing import Any

from clipeval.engine.errors import ExportError

log = logging.getLogger(__name__)

ATTENTION_OPS = ("Attention", "MultiHeadAttention")
LAYERNORM_OPS = ("LayerNormalization", "SkipLayerNormalization", "SkipSimplifiedLayerNormalization")
GELU_OPS = ("Gelu", "FastGelu", "BiasGelu", "QuickGelu")
FUSED_OPS = ATTENTION_OPS + LAYERNORM_OPS + GELU_OPS


def op_counts(model) -> dict[str, int]:
    """Operator type -> number of nodes in the main graph of an ``onnx.ModelProto``."""
    return dict(sorted(collections.Counter(node.op_type for node in model.graph.node).items()))


def fusion_summary(counts: dict[str, int], layers: int, optimizer_type: str) -> dict[str, Any]:
    """The manifest's record for one fused tower: fused operator counts, layer count, and whether
    every layer's attention fused."""
    attention = sum(counts.get(op, 0) for op in ATTENTION_OPS)
    return {
        "optimizer_model_type": optimizer_type,
        "layers": layers,
        "ops": {op: counts[op] for op in FUSED_OPS if counts.get(op)},
        "attention_fused": attention == layers,
        "nodes": sum(counts.values()),
    }


def _pin_ir(model, opset: int) -> None:
    from .towers import ir_version_for_opset

    model.ir_version = ir_version_for_opset(opset)


def fuse(src: str | Path, dst: str | Path, *, model_type: str, num_heads: int, hidden_size: int,
         opset: int) -> dict[str, int]:
    """Fuse the tower at ``src`` into ``dst``; return the fused graph's operator counts."""
    import onnx
    from onnxruntime.transformers.optimizer import optimize_model

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            optimized = optimize_model(str(src), model_type=model_type, num_heads=num_heads,
                                       hidden_size=hidden_size, opt_level=1)
    except Exception as exc:  # the optimizer raises many types on graphs it does not expect
        raise ExportError(
            f"onnxruntime's transformer optimizer failed on {Path(src).name}: {type(exc).__name__}: {exc}",
            "report the checkpoint and versions",
        ) from None
    model = optimized.model
    _pin_ir(model, opset)
    onnx.save(model, str(dst))
    return op_counts(model)


def to_fp16(src: str | Path, dst: str | Path, *, opset: int) -> dict[str, int]:
    """Convert the (fused) graph at ``src`` to float16 with float32 inputs/outputs into ``dst``;
    return its operator counts (``Cast`` included)."""
    import onnx
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = OnnxModel(onnx.load(str(src)))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.convert_float_to_float16(keep_io_types=True, use_symbolic_shape_infer=True)
    except Exception as exc:  # shape inference and conversion raise many types
        raise ExportError(
            f"float16 conversion failed for {Path(src).name}: {type(exc).__name__}: {exc}",
            "export fp32 only (--precision fp32), and report the checkpoint and versions",
        ) from None
    _pin_ir(model.model, opset)
    onnx.save(model.model, str(dst))
    return op_counts(model.model)


def quantize_int8(src: str | Path, dst: str | Path, *, opset: int) -> dict[str, int]:
    """Dynamic int8 quantisation of the fp32 graph at ``src`` into ``dst``; return its op counts."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    except Exception as exc:  # quantisation raises many types
        raise ExportError(
            f"int8 quantisation failed for {Path(src).name}: {type(exc).__name__}: {exc}",
            "export fp32 only (--precision fp32), and report the checkpoint and versions",
        ) from None
    model = onnx.load(str(dst))
    _pin_ir(model, opset)
    onnx.save(model, str(dst))
    return op_counts(model)
