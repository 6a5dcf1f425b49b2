"""recall@k curves as inline SVG, drawn with matplotlib (imported here, by the report only).

Text is drawn as paths (``svg.fonttype = "path"``), so the figure needs no font and no network.
"""

from __future__ import annotations

import io
import re
from typing import Sequence

import numpy as np

CURVE_MAX_K = 50


def recall_curve(ranks: np.ndarray, gallery: int, max_k: int = CURVE_MAX_K) -> tuple[np.ndarray, np.ndarray]:
    """``(k, recall@k)`` for k = 1 .. min(max_k, gallery): the fraction of ``ranks`` (0-based,
    one per query) below k. float64 ``[K]`` both."""
    ranks = np.asarray(ranks, dtype=np.int64)
    top = max(1, min(max_k, gallery))
    ks = np.arange(1, top + 1)
    counts = np.bincount(np.minimum(ranks, top), minlength=top + 1)[:top]
    return ks.astype(np.float64), np.cumsum(counts) / max(len(ranks), 1)


def curves_svg(panels: Sequence[tuple[str, str, dict[str, tuple[np.ndarray, np.ndarray]]]], salt: str) -> str:
    """One SVG with a panel per ``(title, y label, {line label: (k, values)})``. ``salt`` makes
    the figure's element ids its own (several figures share one page)."""
    import matplotlib
    from matplotlib.figure import Figure

    with matplotlib.rc_context({"svg.fonttype": "path", "svg.hashsalt": f"clipeval-{salt}", "font.size": 9}):
        fig = Figure(figsize=(4.6 * len(panels), 3.1), layout="constrained")
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
        for ax, (title, ylabel, lines) in zip(axes, panels):
            for label, (ks, values) in lines.items():
                ax.plot(ks, values, label=label, linewidth=1.6, marker="o" if len(ks) <= 10 else None, markersize=3)
            ax.set_title(title)
            ax.set_xlabel("k")
            ax.set_ylabel(ylabel)
            ax.set_ylim(-0.02, 1.02)
            ax.set_xlim(left=1)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8, loc="lower right")
        buf = io.StringIO()
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    svg = buf.getvalue()
    return re.sub(r"^.*?(?=<svg)", "", svg, count=1, flags=re.S)  # drop the XML declaration and DOCTYPE
