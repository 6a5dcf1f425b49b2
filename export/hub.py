"""Where a checkpoint comes from: a local directory, a Hugging Face Hub id or a ModelScope id.

Hub checkpoints are downloaded (``huggingface_hub.snapshot_download`` / ModelScope's
``snapshot_download``, which keep their own caches) and then exported by the same code as a
local directory. ModelScope is imported only when asked for.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from clipeval.engine.errors import ExportError

HUBS = ("hf", "modelscope")
# "org/name" or "name": what both hubs accept as a repository id.
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")
# Files an export reads; weights in either format, tokenizer and image processor files.
ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.bin", "*.model", "*.txt"]


MAX_LIBRARY_TEXT = 300


def library_text(exc: BaseException) -> str:
    """A library's exception as one line for an ``error:`` message: its text with every run of
    whitespace (newlines included) made one space, cut at :data:`MAX_LIBRARY_TEXT` characters."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= MAX_LIBRARY_TEXT else text[:MAX_LIBRARY_TEXT - 3] + "..."


def adopt_hub_logging() -> None:
    """huggingface_hub adds its own stderr handler to its logger on import, so each of its records
    (a retry, an offline warning) would print twice: bare, and through clipeval's handler. Its
    records go through clipeval's handler (the root's) only."""
    import logging

    import huggingface_hub  # noqa: F401  (its import adds the handler)

    hub_logger = logging.getLogger("huggingface_hub")
    for handler in list(hub_logger.handlers):
        if type(handler) is logging.StreamHandler:
            hub_logger.removeHandler(handler)
    hub_logger.propagate = True


def is_hub_id(source: str) -> bool:
    return bool(_HUB_ID.fullmatch(source)) and ".." not in source


def check_hub(hub: str) -> None:
    if hub not in HUBS:
        raise ExportError(f"unknown hub {hub!r}", f"use one of: {', '.join(HUBS)}")


def local_checkpoint(source: str | os.PathLike, *, hub: str = "hf", revision: str | None = None) -> Path:
    """The local directory holding ``source``: the directory itself, or a hub download of it."""
    check_hub(hub)
    path = Path(os.path.expanduser(str(source)))
    if path.is_dir():
        if revision is not None:
            raise ExportError(
                f"--revision {revision!r} was given for the local directory {path}",
                "a revision selects a hub commit; drop it for local checkpoints",
            )
        return path
    text = str(source)
    if path.exists():
        raise ExportError(f"checkpoint {source} is a file, not a folder",
                          "pass the checkpoint's folder: the one written by `model.save_pretrained(dir)`, holding "
                          "config.json (an open_clip weights file goes with --pretrained FILE and its architecture, "
                          "e.g. ViT-B-32 --pretrained FILE)")
    pair = misplaced_pair(text)
    if pair is not None:
        raise pair
    if not is_hub_id(text):
        raise ExportError(
            f"checkpoint {source} is neither a local directory nor a hub id",
            "pass a directory written by `model.save_pretrained(dir)`, a hub id such as "
            "openai/clip-vit-base-patch32 (--hub hf|modelscope), or an open_clip model: an architecture "
            "with --pretrained TAG|FILE (ViT-B-32 --pretrained laion2b_s34b_b79k), hf-hub:org/name, or a "
            "folder holding open_clip_config.json",
        )
    return _download_modelscope(text, revision) if hub == "modelscope" else _download_hf(text, revision)


def misplaced_pair(text: str) -> ExportError | None:
    """The error for CLIP_benchmark's ``MODEL,PRETRAINED`` pair given where a model goes
    (``--model ViT-B-32,openai``), saying how to name the two apart; ``None`` for anything else."""
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) != 2 or not all(parts) or is_hub_id(str(text)) or any("/" in p for p in parts[:1]):
        return None
    model, pretrained = parts
    return ExportError(
        f"model {text!r} is neither a local directory nor a hub id: it reads as CLIP_benchmark's "
        "MODEL,PRETRAINED pair",
        f"name the two apart: --model {model} --pretrained {pretrained}, or pass the pair as CLIP_benchmark "
        f"does: --pretrained-model {model},{pretrained} (in a config: pretrained_model: \"{model},{pretrained}\", "
        f"or model: {model} with pretrained: {pretrained})",
    )


def _download_hf(repo_id: str, revision: str | None) -> Path:
    try:
        from huggingface_hub import snapshot_download

        adopt_hub_logging()
    except ImportError:
        raise ExportError(
            "downloading from the Hugging Face Hub needs huggingface_hub, which is not installed",
            "pip install 'clipeval[export]'",
        ) from None
    try:
        return Path(snapshot_download(repo_id=repo_id, revision=revision, allow_patterns=ALLOW_PATTERNS))
    except Exception as exc:  # network, authentication and not-found errors have many types
        raise ExportError(
            f"cannot download {repo_id!r}"
            + (f" at revision {revision!r}" if revision else "")
            + f" from the Hugging Face Hub: {library_text(exc)}",
            "check the id, the revision and the network (or pass a local directory)",
        ) from None


def _download_modelscope(model_id: str, revision: str | None) -> Path:
    try:
        from modelscope import snapshot_download
    except ImportError:
        raise ExportError(
            "--hub modelscope needs the modelscope package, which is not installed",
            "pip install modelscope (or download the checkpoint and pass its directory)",
        ) from None
    try:
        kwargs = {"revision": revision} if revision else {}
        return Path(snapshot_download(model_id, **kwargs))
    except Exception as exc:  # network and not-found errors have many types
        raise ExportError(
            f"cannot download {model_id!r} from ModelScope: {library_text(exc)}",
            "check the id, the revision and the network (or pass a local directory)",
        ) from None
