"""Export validation: PyTorch vs onnxruntime on fixed inputs; every output is measured, then one
:class:`ExportError` lists all that are out of tolerance (the way optimum's
``validate_model_outputs`` reports)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clipeval.engine.errors import ExportError

PROVIDER = "CPUExecutionProvider"


@dataclass(frozen=True)
class Tolerance:
    max_abs: float | None  # None: not checked (reduced precisions are judged by cosine)
    min_cosine: float

    def as_dict(self) -> dict[str, float | None]:
        return {"max_abs_diff": self.max_abs, "min_cosine": self.min_cosine}


TOLERANCES = {
    "fp32": Tolerance(max_abs=1e-4, min_cosine=0.99999),
    "fp16": Tolerance(max_abs=None, min_cosine=0.999),
    "int8": Tolerance(max_abs=None, min_cosine=0.99),
}


def tolerance_for(precision: str) -> Tolerance:
    if precision not in TOLERANCES:
        raise ExportError(
            f"no validation tolerance for precision {precision!r}",
            f"known: {', '.join(TOLERANCES)}",
        )
    return TOLERANCES[precision]


def run_onnx(path: str | Path, feeds: Mapping[str, np.ndarray], threads: int | None = None) -> dict[str, np.ndarray]:
    """Outputs of the ONNX graph at ``path`` on onnxruntime's CPU provider, by name."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), sess_options=options, providers=[PROVIDER])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, dict(feeds))))


def compare(reference: np.ndarray, candidate: np.ndarray) -> dict[str, Any]:
    """Max absolute difference and smallest row-wise cosine of two ``[B, D]`` arrays."""
    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    if ref.shape != cand.shape:
        return {"shape": list(cand.shape), "expected_shape": list(ref.shape),
                "max_abs_diff": float("inf"), "min_cosine": float("-inf")}
    ref2 = ref.reshape(ref.shape[0], -1) if ref.ndim > 1 else ref.reshape(1, -1)
    cand2 = cand.reshape(ref2.shape)
    norms = np.linalg.norm(ref2, axis=1) * np.linalg.norm(cand2, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cosines = np.sum(ref2 * cand2, axis=1) / norms
    return {
        "shape": list(ref.shape),
        "max_abs_diff": float(np.max(np.abs(ref - cand))) if ref.size else 0.0,
        "min_cosine": float(np.min(cosines)) if cosines.size else 1.0,
    }


def within(figures: Mapping[str, Any], tol: Tolerance) -> bool:
    # Written so that NaN fails.
    abs_ok = tol.max_abs is None or figures["max_abs_diff"] <= tol.max_abs
    return bool(abs_ok and figures["min_cosine"] >= tol.min_cosine)


def measure(reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray],
            precision: str) -> dict[str, Any]:
    """Compare every reference output with the candidate's; the manifest's ``validation`` block
    for one variant, with ``passed`` and, per output, ``passed``. Never raises for a difference."""
    tol = tolerance_for(precision)
    outputs: dict[str, Any] = {}
    for name, ref in reference.items():
        if name not in candidate:
            fig = {"missing": True, "max_abs_diff": float("inf"), "min_cosine": float("-inf")}
        else:
            fig = compare(ref, candidate[name])
        fig["passed"] = within(fig, tol)
        outputs[name] = fig
    return {"provider": PROVIDER, "precision": precision, "tolerance": tol.as_dict(), "outputs": outputs,
            "passed": all(fig["passed"] for fig in outputs.values())}


def _line(name: str, fig: Mapping[str, Any], tol: Tolerance) -> str:
    abs_tol = "not checked" if tol.max_abs is None else f"tolerance {tol.max_abs:g}"
    return (
        f"{name}: max abs diff {fig['max_abs_diff']:.3g} ({abs_tol}), "
        f"min cosine {fig['min_cosine']:.8f} (tolerance {tol.min_cosine:g})"
        + ("" if fig["passed"] else "  <- FAILED")
        + (f", shape {fig['shape']} != {fig['expected_shape']}" if "expected_shape" in fig else "")
        + (", missing from the ONNX outputs" if fig.get("missing") else "")
    )


def raise_if_failed(blocks: Mapping[str, Mapping[str, Any]]) -> None:
    """One ExportError listing every output of every variant when any output is out of tolerance."""
    failed = [(v, name) for v, b in blocks.items() if "outputs" in b
              for name, fig in b["outputs"].items() if not fig["passed"]]
    if not failed:
        return
    total = sum(len(b["outputs"]) for b in blocks.values() if "outputs" in b)
    lines = []
    for variant, block in blocks.items():
        if "outputs" not in block:
            continue
        tol = tolerance_for(block["precision"])
        lines += [f"[{variant}] " + _line(name, fig, tol) for name, fig in block["outputs"].items()]
    variants = sorted({v for v, _ in failed})
    raise ExportError(
        f"ONNX outputs differ from PyTorch beyond the {', '.join(variants)} tolerance "
        f"({len(failed)} of {total} failed):\n    " + "\n    ".join(lines),
        "report the checkpoint and versions; `--no-validate` skips this check at your own risk",
    )


def check_outputs(
    reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray], precision: str
) -> dict[str, Any]:
    """:func:`measure`, then :func:`raise_if_failed` for that one variant."""
    block = measure(reference, candidate, precision)
    raise_if_failed({precision: block})
    return block


def run_torch(module, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Outputs of a tower wrapper (``input_names`` / ``output_names`` attributes) on numpy feeds."""
    import torch

    args = [torch.from_numpy(np.ascontiguousarray(feeds[name])) for name in module.input_names]
    with torch.no_grad():
        out = module(*args)
    outs = out if isinstance(out, (tuple, list)) else (out,)
    return {name: t.detach().cpu().numpy() for name, t in zip(module.output_names, outs)}


# Texts every export tokenises both ways (the bundle's tokenizer as the engine runs it, and the
# reference tokenizer of the checkpoint): punctuation, accents, scripts, emoji, whitespace of
# several kinds, HTML entities, mojibake, an empty text and one longer than any context.
TOKENIZER_CHECK_TEXTS = (
    "",
    " ",
    "a",
    "A photo of a CAT.",
    " a dog in the snow",
    "- a dog in the snow",
    "  leading, trailing and   inner   runs  ",
    "tabs\tnewlines\nand\r\nreturns",
    "\u00a0no-break\u3000ideographic\u2028line separator",
    "naïve café résumé Straße",
    "Ελληνικά ΟΔΟΣ Русский текст",
    "两只猫在雪里玩 日本語のテキスト",
    "emoji 🐱🐶 👍🏽 family 👨‍👩‍👧",
    "&amp; &lt;b&gt;bold&lt;/b&gt; &#39;quoted&#39; &eacute;",
    "mojibake: cafÃ© â€œquotedâ€\x9d",
    "punctuation!!! ... ??? (parens) [brackets] {braces} #hash @at",
    "it's a dog's life, isn't it? we'll see",
    "e\u0301 combining \u200b zero\u200dwidth",
    "under_score snake_case_words",
    "Numbers 123 4.56 7,890 ½ ①",
    " ".join(["a long caption that keeps going and going"] * 12),
)


def tokenizer_parity(tokenizer_path: str | Path, info: Any, context_length: int, reference, reference_name: str,
                     texts=TOKENIZER_CHECK_TEXTS, pad_to: int | None = None) -> dict[str, Any]:
    """Token ids of :data:`TOKENIZER_CHECK_TEXTS` from the bundle's tokenizer (as the engine runs it:
    ``tokenizer.json`` plus the manifest's ``info.extra`` steps) against ``reference(texts,
    context_length) -> list of id lists`` (rows padded with ``info.pad_id`` to ``pad_to`` when the
    reference pads); the manifest's ``validation.tokenizer`` block.

    Raises :class:`ExportError` listing every text whose ids differ."""
    from clipeval.engine.text.tokenizer import TextTokenizer

    rule = {"pad_id": info.pad_id, "padding": "longest", **info.extra}
    ours = [list(map(int, x)) for x in TextTokenizer(tokenizer_path, rule, context_length).encode(list(texts)).ids]
    if pad_to is not None:
        ours = [x + [info.pad_id] * (pad_to - len(x)) for x in ours]
    theirs = [list(map(int, x)) for x in reference(list(texts), context_length)]
    differ = [(t, a, b) for t, a, b in zip(texts, ours, theirs) if a != b]
    if differ:
        raise ExportError(
            f"the bundle's tokenizer differs from {reference_name} on {len(differ)} of {len(texts)} texts:\n    "
            + "\n    ".join(f"{t[:60]!r}: {a} != {b}" for t, a, b in differ[:10]),
            "report the checkpoint and versions",
        )
    return {"reference": reference_name, "texts": len(texts), "identical": len(texts) - len(differ)}
