"""Which sources are open_clip models, and how open_clip is asked to load them.

open_clip publishes models four ways, and clipeval takes all of them (CLIP_benchmark's spellings):

* an architecture name and a pretrained tag: ``ViT-B-32`` + ``laion2b_s34b_b79k`` (open_clip's
  own table says where the weights are; it downloads them into its cache);
* an architecture name and a weights file: ``ViT-B-32`` + ``/path/weights.pt``;
* ``hf-hub:org/name``: a Hugging Face Hub repository holding ``open_clip_config.json`` and
  ``open_clip_model.safetensors`` / ``open_clip_pytorch_model.bin``; a plain ``org/name`` is the
  same when that repository holds ``open_clip_config.json`` and no transformers ``config.json``
  (repositories with both, such as LAION's, keep exporting through transformers; write
  ``hf-hub:`` to take the open_clip files instead);
* a local folder in that layout (``open_clip_config.json`` plus the weights file), or
  ``local-dir:PATH``; a folder that also holds a transformers ``config.json`` is exported through
  transformers unless written ``local-dir:PATH``.

This module decides which of these a source is and what identifies it; it imports open_clip
(hence torch) only to check an architecture name. :mod:`.openclip_export` loads and exports.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from clipeval.engine.errors import ExportError

log = logging.getLogger(__name__)

HF_HUB_PREFIX = "hf-hub:"
LOCAL_DIR_PREFIX = "local-dir:"
CONFIG_FILE = "open_clip_config.json"
WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
HF_CONFIG_FILE = "config.json"  # a transformers checkpoint


@dataclass(frozen=True)
class OpenClipSource:
    """One open_clip model: what to pass to ``open_clip.create_model_and_transforms`` and what to
    record in the manifest.

    ``kind`` is ``"tag"`` / ``"file"`` (an architecture name with a pretrained tag / weights file),
    ``"hub"`` (a Hub repository) or ``"local"`` (a folder)."""

    kind: str
    model_name: str  # for open_clip: "ViT-B-32", "hf-hub:org/name", "local-dir:/abs/path"
    pretrained: str | None  # the tag, or the weights file's absolute path
    source: str  # the manifest's source: the architecture name, "hf-hub:org/name" or the folder's path
    revision: str | None = None

    @property
    def hub(self) -> str | None:
        """The manifest's ``hub``: ``hf`` for a Hub repository, ``open_clip`` where open_clip's table
        or an architecture name decides, ``None`` for a local folder."""
        return {"hub": "hf", "tag": "open_clip", "file": "open_clip", "local": None}[self.kind]

    @property
    def display_name(self) -> str:
        """A short name for result files: ``ViT-B-32_laion2b_s34b_b79k``, the repository's or the
        folder's last component."""
        if self.kind in ("tag", "file"):
            tag = self.pretrained if self.kind == "tag" else Path(self.pretrained).stem
            return f"{self.model_name}_{tag}"
        return os.path.basename(self.source.rstrip("/"))

    def cache_identity(self) -> str:
        """What the model cache keys this source on (besides precision): for a weights file or a
        folder, also the sizes and modification times of the files."""
        if self.kind == "file":
            st = os.stat(self.pretrained)
            return f"open_clip:{self.model_name}|{self.pretrained}|{st.st_size}|{st.st_mtime_ns}"
        if self.kind == "local":
            files = sorted(p for p in Path(self.source).iterdir() if p.is_file())
            stamp = ";".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)
            return f"open_clip:{self.source}|{stamp}"
        return f"open_clip:{self.model_name}|{self.pretrained}|{self.revision}"


def _architectures() -> list[str]:
    try:
        import open_clip
    except ImportError:
        raise ExportError("open_clip models need open_clip_torch, which is not installed",
                          "pip install 'clipeval[export]'") from None
    return list(open_clip.list_models())


def _pretrained_tags(name: str) -> list[str]:
    import open_clip

    return list(open_clip.list_pretrained_tags_by_model(name))


def _open_clip_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("open_clip") is not None


def is_architecture(name: str) -> bool:
    """Whether ``name`` is an open_clip architecture (imports open_clip)."""
    return name.replace("/", "-") in _architectures()


def _local_dir(path: Path) -> OpenClipSource:
    path = path.expanduser().resolve()
    if not (path / CONFIG_FILE).is_file():
        raise ExportError(f"{path} holds no {CONFIG_FILE}",
                          "pass a folder in the layout open_clip publishes (open_clip_config.json + weights)")
    if not any((path / f).is_file() for f in WEIGHT_FILES):
        raise ExportError(f"{path} holds {CONFIG_FILE} but no weights ({' or '.join(WEIGHT_FILES)})",
                          "put the weights file beside open_clip_config.json")
    return OpenClipSource("local", f"{LOCAL_DIR_PREFIX}{path}", None, str(path))


def hub_repository_kind(repo_id: str, revision: str | None = None) -> str | None:
    """``"transformers"`` or ``"open_clip"`` for a Hugging Face Hub repository, by the config file it
    holds (``config.json`` first, then ``open_clip_config.json``), ``None`` when neither can be had.
    Goes through ``huggingface_hub.hf_hub_download``, so its cache and ``HF_HUB_OFFLINE`` apply."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        return None
    for filename, kind in ((HF_CONFIG_FILE, "transformers"), (CONFIG_FILE, "open_clip")):
        try:
            hf_hub_download(repo_id=repo_id, filename=filename, revision=revision)
            return kind
        except Exception:  # noqa: BLE001 - not found, offline without a cached copy, network: try the next
            continue
    return None


def classify(source: str | os.PathLike, pretrained: str | None = None, *, hub: str = "hf",
             revision: str | None = None, probe_hub: bool = True) -> OpenClipSource | None:
    """The open_clip model ``source`` (with ``pretrained``) names, or ``None`` when it is not one
    (a transformers checkpoint folder or hub id, which :mod:`.convert` exports).

    Raises :class:`ExportError` for an open_clip source that cannot be used as given: a pretrained
    value that is neither a tag of the architecture nor a file, an architecture name without
    pretrained weights, a folder without weights."""
    text = os.fspath(source)
    if pretrained is not None and not str(pretrained).strip():
        pretrained = None
    found = _classify(text, pretrained, hub, revision, probe_hub)
    if found is not None and revision is not None and found.kind != "hub":
        raise ExportError(f"--revision {revision!r} was given for {text}, which is not a Hub repository",
                          "a revision selects a Hub commit; drop it (or use hf-hub:org/name)")
    return found


def _classify(text: str, pretrained: str | None, hub: str, revision: str | None,
              probe_hub: bool) -> OpenClipSource | None:
    if text.startswith(HF_HUB_PREFIX):
        repo = text[len(HF_HUB_PREFIX):]
        if not repo:
            raise ExportError(f"{text!r} names no repository", "write hf-hub:org/name")
        _ignored(pretrained, text)
        return OpenClipSource("hub", text, None, text, revision)
    if text.startswith(LOCAL_DIR_PREFIX):
        _ignored(pretrained, text)
        return _local_dir(Path(text[len(LOCAL_DIR_PREFIX):]))
    path = Path(os.path.expanduser(text))
    if path.is_dir():
        if (path / CONFIG_FILE).is_file() and not (path / HF_CONFIG_FILE).is_file():
            _ignored(pretrained, text)
            return _local_dir(path)
        if pretrained is not None:
            raise ExportError(f"pretrained {pretrained!r} was given for the folder {path}",
                              "pretrained weights go with an open_clip architecture name (e.g. ViT-B-32)")
        return None
    if pretrained is not None:
        return _with_pretrained(text, str(pretrained))
    if hub == "hf" and "/" in text and probe_hub and hub_repository_kind(text, revision) == "open_clip":
        return OpenClipSource("hub", HF_HUB_PREFIX + text, None, HF_HUB_PREFIX + text, revision)
    if "/" not in text and not path.exists() and _open_clip_installed() and is_architecture(text):
        tags = _pretrained_tags(text)
        raise ExportError(
            f"{text!r} is an open_clip architecture; it needs pretrained weights",
            "pass --pretrained TAG or --pretrained FILE (config key pretrained)"
            + (f"; tags for {text}: {', '.join(tags)}" if tags else ""),
        )
    return None


def _ignored(pretrained: str | None, text: str) -> None:
    if pretrained is not None:  # open_clip itself warns and ignores it for schema names
        log.warning("pretrained %r is ignored for %s: the weights come with it", pretrained, text)


def _with_pretrained(name: str, pretrained: str) -> OpenClipSource:
    architectures = _architectures()
    arch = name.replace("/", "-")
    if arch not in architectures:
        close = [a for a in architectures if a.lower().startswith(arch.lower()[:5])][:12]
        raise ExportError(
            f"{name!r} is not an open_clip architecture (pretrained {pretrained!r} was given)",
            "use a name from open_clip.list_models()" + (f", e.g. {', '.join(close)}" if close else "")
            + "; or hf-hub:org/name / a local folder without --pretrained",
        )
    file = Path(os.path.expanduser(pretrained))
    if file.is_file():
        return OpenClipSource("file", arch, str(file.resolve()), arch)
    tags = _pretrained_tags(arch)
    if pretrained.lower() not in [t.lower() for t in tags]:
        if os.sep in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors", ".npz")):
            raise ExportError(f"pretrained weights file {pretrained} does not exist", "check the path")
        raise ExportError(
            f"{pretrained!r} is neither a pretrained tag of {arch} nor a file",
            f"tags for {arch}: {', '.join(tags)}" if tags else f"open_clip knows no tags for {arch}; pass a weights file",
        )
    return OpenClipSource("tag", arch, pretrained, arch)
