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
    if not is_hub_id(text) or path.exists():
        raise ExportError(
            f"checkpoint {source} is neither a local directory nor a hub id",
            "pass a directory written by `model.save_pretrained(dir)`, a hub id such as "
            "openai/clip-vit-base-patch32 (--hub hf|modelscope), or an open_clip model: an architecture "
            "with --pretrained TAG|FILE (ViT-B-32 --pretrained laion2b_s34b_b79k), hf-hub:org/name, or a "
            "folder holding open_clip_config.json",
        )
    return _download_modelscope(text, revision) if hub == "modelscope" else _download_hf(text, revision)


def _download_hf(repo_id: str, revision: str | None) -> Path:
    try:
        from huggingface_hub import snapshot_download
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
            + f" from the Hugging Face Hub: {type(exc).__name__}: {exc}",
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
            f"cannot download {model_id!r} from ModelScope: {type(exc).__name__}: {exc}",
            "check the id, the revision and the network (or pass a local directory)",
        ) from None
