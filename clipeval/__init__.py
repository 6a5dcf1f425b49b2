"""clipeval: ONNX-accelerated benchmarking of CLIP-style image-text models."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "run_task"]


def run_task(task_cfg=None, **kwargs):
    """Run an evalscope-style ``task_cfg`` (dict, JSON/YAML path) and return the result objects.

    Accepts the RAGEval / ``clip_benchmark`` configuration shape unchanged; see
    :mod:`clipeval.engine.config`. Each result is also written to its file (README "Result file
    names"); with ``verbose`` (the default) progress, the result lines and the files written go to
    stderr even when the caller configured no logging. Raises a
    :class:`clipeval.engine.errors.ClipevalError` subclass for a mistake in the config, data or
    model (``ConfigError`` lists every config problem with its key's path).
    """
    from clipeval.engine.runner import run_task as _run_task
    from clipeval.export.resolve import resolve_model

    return _run_task(task_cfg, resolve=kwargs.pop("resolve", resolve_model), **kwargs)
