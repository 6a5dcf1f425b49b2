"""Model resolution with export on first use.

A bundle directory (or ``demo``) is used as it is. A checkpoint directory or a hub id, or an
open_clip model (an architecture with ``pretrained``, ``hf-hub:org/name``, an open_clip folder;
:mod:`.openclip_source`), is exported once into the model cache (``cache_dir`` / ``$CLIPEVAL_CACHE_DIR`` / ``~/.cache/clipeval``,
then ``models/``) and reused after, keyed by source, hub, revision, precision and, for a local
directory, the checkpoint files' sizes and modification times. The export is built in a hidden
directory and renamed into place, so an interrupted export never becomes a cache entry; an entry
damaged later (:func:`cached_export`) is removed and exported again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from clipeval.engine.sessions.bundle import Bundle, is_bundle_dir, load_bundle
from clipeval.engine.errors import BundleError, ConfigError
from clipeval.engine.paths import cache_root, safe_name
from clipeval.engine.runner import is_demo, resolve_bundle

from .hub import is_hub_id

log = logging.getLogger(__name__)


def _fingerprint(checkpoint: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(checkpoint.rglob("*")):
        if f.is_file():
            st = f.stat()
            h.update(f"{f.relative_to(checkpoint).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def cached_bundle_dir(source: str, revision: str | None, precision: str, root: Path, hub: str = "hf") -> Path:
    """The cache directory of ``source`` exported at ``precision`` (``root/models/NAME-PRECISION-KEY``)."""
    local = Path(os.path.expanduser(source))
    ident = f"{local.resolve()}|{_fingerprint(local)}" if local.is_dir() else f"{hub}:{source}"
    digest = hashlib.sha256(f"{ident}|{revision}|{precision}".encode()).hexdigest()[:16]
    name = safe_name(os.path.basename(source.rstrip("/")))
    return root / "models" / f"{name}-{precision}-{digest}"


def _is_checkpoint(name: str, path: Path) -> bool:
    if path.is_dir():
        return (path / "config.json").is_file()
    return not path.exists() and is_hub_id(name)


def resolve_model(model: Any, cfg, kind: str = "image_text") -> Bundle:
    """The bundle for one model entry of a config: the demo or a bundle directory as they are; a
    checkpoint directory or hub id exported into the cache on first use, reused after.

    ``kind`` is what the task takes (its metadata, :mod:`clipeval.engine.tasks.base`):
    ``image_text`` (a CLIP-style model: transformers checkpoints, open_clip models), ``text`` (a
    sentence-transformers / BERT-style text model; the entry's ``pooling_mode`` and
    ``max_seq_length`` go to its export) or ``reranker`` (a cross-encoder). An evalscope mteb
    entry (``model_name_or_path``) says which of the last two it is itself."""
    if hasattr(model, "model_name_or_path"):  # an evalscope MTEB model entry (engine/config/mteb.py)
        return _resolve_mteb_model(model, cfg)
    if kind == "text":
        from .text_model import resolve_text_bundle

        return resolve_text_bundle(model["model_name"], getattr(cfg, "cache_dir", None),
                                   pooling_mode=model.get("pooling_mode"), max_seq_length=model.get("max_seq_length"))
    if kind == "reranker":
        from .reranker import resolve_reranker_bundle

        return resolve_reranker_bundle(model["model_name"], getattr(cfg, "cache_dir", None),
                                       max_seq_length=model.get("max_seq_length"))
    return _resolve_image_text_model(model, cfg)


def _resolve_image_text_model(model: dict[str, Any], cfg) -> Bundle:
    name = str(model.get("model_name") or "")
    pretrained = model.get("pretrained")
    path = Path(os.path.expanduser(name))
    if is_demo(model) or is_bundle_dir(path):
        if pretrained:
            raise ConfigError(f"pretrained {pretrained!r} was given for {name or 'the demo'}, which is a model bundle",
                              "pretrained goes with an open_clip architecture name (e.g. ViT-B-32)")
        return resolve_bundle(model, cfg)  # the demo or a bundle
    precision = model.get("precision") or getattr(cfg, "precision", None) or "fp32"
    revision, hub = model.get("revision"), model.get("hub") or "hf"
    root = cache_root(getattr(cfg, "cache_dir", None))
    open_clip_source = _open_clip_source(name, path, pretrained, hub, revision)
    if open_clip_source is not None:
        target = open_clip_cache_dir(open_clip_source, precision, root)
    elif _is_checkpoint(name, path):
        target = cached_bundle_dir(name, revision, precision, root, hub)
    else:
        from .hub import misplaced_pair

        pair = None if pretrained else misplaced_pair(name)
        if pair is not None:
            raise pair
        return resolve_bundle(model, cfg)  # an error that says what was expected
    cached = cached_export(target, trust_stamp=not getattr(cfg, "verify_cache", False))
    if cached is not None:
        return cached
    from . import export_checkpoint

    log.info("exporting %s into the model cache at %s (once)", name, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    export_checkpoint(name, target, precision=precision, force=False, hub=hub, revision=revision,
                      pretrained=pretrained)
    return load_bundle(target)


def cached_export(target: Path, **load_options) -> Bundle | None:
    """The bundle the model cache holds at ``target`` (``load_options`` go to
    :func:`~clipeval.engine.sessions.bundle.load_bundle`), or ``None`` when the caller has to
    export it: there is none, or the entry was damaged (a file changed on disk, a partial copy of
    the cache: anything :func:`load_bundle` refuses, or a folder that is not a whole bundle) and
    has been removed, with a warning. The cache is clipeval's own, so it heals itself: the user
    never exported that folder and should not have to repair it.

    Raises :class:`BundleError` only when a damaged entry cannot be removed (its remedy: delete it).
    """
    if not os.path.lexists(target):
        return None
    if is_bundle_dir(target):
        try:
            bundle = load_bundle(target, **load_options)
        except BundleError as exc:
            why = exc.message
        else:
            log.info("using cached export %s", target)
            return bundle
    else:
        why = "it is not a whole bundle"
    log.warning("the model cache entry %s is damaged (%s); exporting it again", target, why)
    aside = target.with_name(f".damaged-{target.name}-{os.getpid()}-{time.time_ns()}")
    try:
        os.replace(target, aside)  # at once out of the way of other runs, then removed
        if aside.is_dir() and not aside.is_symlink():
            shutil.rmtree(aside)
        else:
            aside.unlink()
    except OSError as exc:
        raise BundleError(f"the model cache entry {target} is damaged ({why}) and cannot be removed: "
                          f"{exc.strerror or exc}",
                          f"delete it (rm -r {target}); the next run exports it again") from None
    return None


def _resolve_mteb_model(entry, cfg) -> Bundle:
    """A text or reranker bundle for an evalscope ``tool: mteb`` model entry. An unset
    ``max_seq_length`` of a checkpoint is evalscope's default, 512, bounded by the model's
    positions (``max_position_embeddings``)."""
    import json

    from .reranker import resolve_reranker_bundle
    from .text_model import resolve_text_bundle

    from clipeval.engine.demo import model_path

    path = Path(os.path.expanduser(model_path(entry.model_name_or_path)))  # `demo`: the embedded bundle
    length = entry.max_seq_length
    if length is None and not is_bundle_dir(path) and (path / "config.json").is_file():
        from clipeval.engine.config.mteb import DEFAULT_MAX_SEQ_LENGTH

        try:
            positions = json.loads((path / "config.json").read_text(encoding="utf-8")).get("max_position_embeddings")
        except (OSError, ValueError, AttributeError):
            positions = None
        length = min(DEFAULT_MAX_SEQ_LENGTH, positions) if isinstance(positions, int) else DEFAULT_MAX_SEQ_LENGTH
    if entry.is_cross_encoder:
        return resolve_reranker_bundle(path, getattr(cfg, "cache_dir", None), max_seq_length=length)
    return resolve_text_bundle(path, getattr(cfg, "cache_dir", None), pooling_mode=entry.pooling_mode,
                               max_seq_length=length)


def _open_clip_source(name: str, path: Path, pretrained, hub: str, revision: str | None):
    """The open_clip model a ``models`` entry names (see :mod:`.openclip_source`), or ``None``."""
    from .openclip_source import classify

    if hub != "hf":
        if pretrained:
            raise ConfigError(f"pretrained {pretrained!r} was given with hub {hub!r}",
                              "open_clip models come from open_clip's table or the Hugging Face Hub: drop hub")
        return None
    if not pretrained and path.is_dir() and (path / "config.json").is_file():
        return None  # a transformers checkpoint folder: no need to import open_clip
    return classify(name, pretrained, hub=hub, revision=revision)


def open_clip_cache_dir(source, precision: str, root: Path) -> Path:
    """The cache directory of an open_clip model exported at ``precision``
    (``root/models/NAME-PRECISION-KEY``; the key covers the weights file's or folder's files'
    sizes and modification times, so edited weights are exported again)."""
    digest = hashlib.sha256(f"{source.cache_identity()}|{precision}".encode()).hexdigest()[:16]
    name = safe_name(source.display_name)
    return root / "models" / f"{name}-{precision}-{digest}"
