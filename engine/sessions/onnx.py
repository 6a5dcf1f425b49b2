"""onnxruntime sessions: provider choice, thread settings and (on CUDA) IO binding.

``provider="auto"`` uses CUDA only when it really loads (onnxruntime-gpu lists CUDA as available
even on machines without the CUDA libraries, then silently falls back to CPU), else CPU. When
CUDA was asked for explicitly and cannot load, a warning names the missing library and the
session runs on CPU; the provider actually used is what the result reports.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import io
import logging
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import BundleError, ProviderError

log = logging.getLogger(__name__)

PROVIDERS = {"auto": None, "cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}


def _ort():
    import onnxruntime

    return onnxruntime


@lru_cache(maxsize=1)
def cuda_problem() -> str | None:
    """Why CUDA cannot be used here, or None when nothing stops it (as far as can be told)."""
    ort = _ort()
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return (
            f"this onnxruntime build ({ort.__version__}) has no CUDA provider; "
            "install onnxruntime-gpu on a machine with an NVIDIA GPU"
        )
    if importlib.util.find_spec("nvidia") is not None:
        # CUDA/cuDNN from pip wheels (nvidia-*): onnxruntime can preload them. It reports what it
        # cannot find with print(); keep that off stdout, which carries results only.
        captured = io.StringIO()
        try:
            with contextlib.redirect_stdout(captured):
                ort.preload_dlls(directory="")
        except Exception:  # noqa: BLE001 - optional helper, absent in older versions
            pass
        log.debug("preload_dlls: %s", captured.getvalue().strip())
    capi = Path(ort.__file__).parent / "capi"
    try:
        ctypes.CDLL(str(capi / "libonnxruntime_providers_shared.so"), mode=ctypes.RTLD_GLOBAL)
        ctypes.CDLL(str(capi / "libonnxruntime_providers_cuda.so"))
    except OSError as exc:
        text = str(exc)
        if "cannot open shared object file" in text:
            missing = text.split(":")[0].strip()
            return f"the CUDA provider cannot load: {missing} is missing (install CUDA 13 / cuDNN 9 libraries, or use --provider cpu)"
        log.debug("CUDA provider probe inconclusive: %s", text)
    return None


def default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@dataclass
class Tower:
    """One onnxruntime session for a bundle tower (vision or text)."""

    path: Path
    session: object
    provider: str
    warnings: list[str] = field(default_factory=list)

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.session.get_inputs()]

    @property
    def output_name(self) -> str:
        return self.session.get_outputs()[0].name

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """Run the tower on a batch and return its first output as a float32 numpy array."""
        feeds = {k: v for k, v in feeds.items() if k in self.input_names}
        if self.provider == "CUDAExecutionProvider":
            binding = self.session.io_binding()
            for name, value in feeds.items():
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
            binding.bind_output(self.output_name, "cuda")
            self.session.run_with_iobinding(binding)
            return binding.copy_outputs_to_cpu()[0]
        return self.session.run([self.output_name], feeds)[0]


def session_options(threads: int | None = None):
    ort = _ort()
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = threads or default_threads()
    so.inter_op_num_threads = 1
    so.log_severity_level = 3  # errors only; we report provider fallbacks ourselves
    return so


def open_tower(path: str | os.PathLike, provider: str = "auto", threads: int | None = None, *,
               logged: set[str] | None = None) -> Tower:
    """Open the ONNX graph at ``path`` (a bundle's ``vision`` / ``text`` / ``reranker`` tower) as
    an onnxruntime session on ``provider``: ``"auto"`` (CUDA when it really loads, else CPU),
    ``"cuda"`` or ``"cpu"``; ``threads``: intra-op threads (default: every core this process may
    use). Returns a :class:`Tower` whose ``run(feeds)`` takes the graph's inputs (float32
    ``pixel_values`` ``[B, 3, H, W]``, or int64 ``input_ids`` / ``attention_mask`` /
    ``token_type_ids`` ``[B, T]``) and returns its first output as float32 (``image_embeds`` /
    ``text_embeds`` ``[B, D]``, ``scores`` ``[B]``); on CUDA through IO binding. The provider it
    really runs on is ``Tower.provider``.

    Provider fallbacks (CUDA asked for but not usable) are in ``Tower.warnings`` and logged.
    ``logged``: the warnings the run has logged already (for the other tower of a model, or for
    another model); one in it is not logged again, and new ones are added, so a run says each
    fallback once. Raises :class:`ProviderError` for an unknown provider and
    :class:`BundleError` when onnxruntime cannot load the file.
    """
    if provider not in PROVIDERS:
        raise ProviderError(
            f"unknown provider {provider!r}", f"use one of: {', '.join(PROVIDERS)}"
        )
    ort = _ort()
    path = Path(path)
    warnings: list[str] = []
    want_cuda = provider in ("auto", "cuda")
    problem = cuda_problem() if want_cuda else None
    if provider == "cuda" and problem:
        warnings.append(f"CUDA was asked for but is not available: {problem}; running on CPU")
    providers = ["CPUExecutionProvider"]
    if want_cuda and not problem:
        providers = [("CUDAExecutionProvider", {"cudnn_conv_algo_search": "HEURISTIC"}), "CPUExecutionProvider"]
    so = session_options(threads)
    try:
        session = ort.InferenceSession(str(path), sess_options=so, providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types
        raise BundleError(f"onnxruntime cannot load {path}: {exc}", "re-export the bundle") from None
    used = session.get_providers()[0]
    if want_cuda and not problem and used != "CUDAExecutionProvider":
        msg = "CUDA provider did not initialise (see onnxruntime's log); running on CPU"
        if provider == "cuda":
            warnings.append(msg)
        else:
            log.info(msg)
    for w in warnings:
        if logged is None or w not in logged:
            log.warning(w)
            if logged is not None:
                logged.add(w)
    return Tower(path=path, session=session, provider=used, warnings=warnings)


def short_provider(name: str) -> str:
    return {"CUDAExecutionProvider": "cuda", "CPUExecutionProvider": "cpu"}.get(name, name)
