"""The model bundle: a directory any onnxruntime program can use.

Layout::

    manifest.json     format, family, source, revision, embed_dim, context_length, precision,
                      opset, tokenizer rule, variants and the sha256 of every other file
    vision.onnx       pixel_values float32 [B,3,H,W] -> image_embeds float32 [B,D], L2-normalised
    text.onnx         input_ids int64 [B,T] (+ attention_mask) -> text_embeds float32 [B,D]
    tokenizer.json    Hugging Face `tokenizers` format
    preprocess.json   see :mod:`clipeval.engine.preprocess`

``manifest.json`` keys (format 1)::

    {
      "format": 1,
      "family": "clip" | "chinese_clip" | "siglip" | "open_clip" | "text",
      "source": "openai/clip-vit-base-patch32" | "/abs/path/to/checkpoint" | "ViT-B-32" | "hf-hub:org/name",
      "revision": "main" | null,
      "hub": "hf" | "modelscope" | "open_clip" | null,   # null: a local folder
      "pretrained": "laion2b_s34b_b79k" | "/abs/weights.pt" | null,   # open_clip only
      "name": "ViT-B-32_laion2b_s34b_b79k",       # optional: the model's name in results
      "embed_dim": 512,
      "context_length": 77,
      "precision": "fp32",                       # the precision of vision.onnx / text.onnx
      "opset": 17,
      "variants": {"fp32": {"vision": "vision.onnx", "text": "text.onnx"},
                   "fp16": {"vision": "vision.fp16.onnx", "text": "text.fp16.onnx"}},
      "tokenizer": {"pad_id": 0, "eos_id": 2, "bos_id": 1 | null,
                    "padding": "longest" | "max_length",
                    "text_inputs": ["input_ids", "attention_mask"],
                    "clean": [...], "sentencepiece": {...}},   # optional: engine/textprep.py
      "files": {"vision.onnx": "<sha256>", ...},   # every file but manifest.json
      "validation": {...},                          # written by the exporter
      "fused_ops": {...},                           # written by the exporter
      "created_by": "clipeval 0.1.0"
    }

A bundle's identity is the sha256 of its ``manifest.json`` bytes.

Verification hashes every file once; the sizes and modification times of files that matched are
then recorded under the cache root (``verified/``), and later loads re-hash only files whose size
or modification time changed. ``trust_stamp=False`` (``--verify-cache``) always hashes everything.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import BundleError
from .paths import cache_root

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
REQUIRED_KEYS = ("format", "family", "embed_dim", "context_length", "precision", "variants", "tokenizer", "files")
PRECISIONS = ("fp32", "fp16", "int8")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class Bundle:
    """A verified model bundle on disk."""

    path: Path
    manifest: dict[str, Any]
    identity: str
    preprocess: dict[str, Any] = field(repr=False)

    @property
    def family(self) -> str:
        return self.manifest["family"]

    @property
    def embed_dim(self) -> int:
        return int(self.manifest["embed_dim"])

    @property
    def context_length(self) -> int:
        return int(self.manifest["context_length"])

    @property
    def tokenizer_rule(self) -> dict[str, Any]:
        return self.manifest["tokenizer"]

    @property
    def precisions(self) -> list[str]:
        return list(self.manifest["variants"])

    def tower_path(self, tower: str, precision: str | None = None) -> Path:
        """Path of ``tower`` ("vision" or "text") for ``precision`` (default: the bundle's own)."""
        precision = precision or self.manifest["precision"]
        variants = self.manifest["variants"]
        if precision not in variants:
            raise BundleError(
                f"bundle {self.path} has no {precision} variant (it has: {', '.join(variants)})",
                "pick one of those with --precision, or re-export with `clipeval export --precision`",
            )
        return self.path / variants[precision][tower]

    @property
    def name(self) -> str:
        """A short, human name: the manifest's ``name`` (open_clip exports: architecture and
        pretrained tag), else the source's last path component, else the directory name."""
        if isinstance(self.manifest.get("name"), str) and self.manifest["name"]:
            return self.manifest["name"]
        source = self.manifest.get("source") or ""
        base = os.path.basename(str(source).rstrip("/")) if source else ""
        return base or self.path.name


def is_bundle_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / MANIFEST).is_file()


def _stamp_file(root: Path, identity: str) -> Path:
    key = hashlib.sha256(f"{os.path.realpath(root)}\0{identity}".encode()).hexdigest()[:32]
    return cache_root() / "verified" / f"{key}.json"


def _stat_key(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def _read_stamp(path: Path) -> dict:
    try:
        data = json.loads(path.read_bytes())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_stamp(path: Path, stamp: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(stamp))
        os.replace(tmp, path)
    except OSError:  # a read-only cache only costs re-hashing next time
        pass


def load_bundle(path: str | os.PathLike, verify: bool = True, trust_stamp: bool = True) -> Bundle:
    """Load and (by default) verify a bundle: every file present and matching its sha256.

    With ``trust_stamp``, files whose size and modification time equal those recorded when they
    last matched are not hashed again.
    """
    root = Path(path)
    manifest_path = root / MANIFEST
    if not root.is_dir():
        raise BundleError(f"model bundle {root} does not exist", "pass a bundle directory made by `clipeval export`")
    if not manifest_path.is_file():
        raise BundleError(
            f"{root} is not a model bundle: {MANIFEST} is missing",
            "pass a directory made by `clipeval export`, or export a checkpoint first",
        )
    raw = manifest_path.read_bytes()
    try:
        manifest = json.loads(raw)
    except ValueError as exc:
        raise BundleError(f"{manifest_path} is not valid JSON ({exc})", "re-export the bundle") from None
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise BundleError(f"{manifest_path} lacks keys: {', '.join(missing)}", "re-export the bundle")
    if manifest["format"] != FORMAT_VERSION:
        raise BundleError(
            f"{manifest_path} has format {manifest['format']}; this clipeval reads format {FORMAT_VERSION}",
            "re-export the bundle with this version of clipeval",
        )
    identity = hashlib.sha256(raw).hexdigest()
    stamp_path = _stamp_file(root, identity)
    stamp = _read_stamp(stamp_path) if (verify and trust_stamp) else {}
    fresh: dict[str, list[int]] = {}
    problems = []
    for name, digest in sorted(manifest["files"].items()):
        fpath = root / name
        if not fpath.is_file():
            problems.append(f"{name}: missing")
            continue
        if not verify:
            continue
        key = _stat_key(fpath)
        if stamp.get(name) == key:
            fresh[name] = key
        elif sha256_file(fpath) != digest:
            problems.append(f"{name}: sha256 does not match the manifest")
        else:
            fresh[name] = key
    for required in ("tokenizer.json", "preprocess.json"):
        if required not in manifest["files"]:
            problems.append(f"{required}: not listed in the manifest")
    if problems:
        raise BundleError(
            f"model bundle {root} is damaged:\n    " + "\n    ".join(problems),
            "re-export it with `clipeval export`, or copy it again",
        )
    if verify and fresh != stamp:
        _write_stamp(stamp_path, fresh)
    with open(root / "preprocess.json", "rb") as f:
        preprocess = json.load(f)
    return Bundle(path=root, manifest=manifest, identity=identity, preprocess=preprocess)


def write_manifest(root: str | os.PathLike, manifest: dict[str, Any]) -> str:
    """Fill in ``files`` with the sha256 of every other file in ``root`` and write the manifest.

    Returns the bundle identity.
    """
    root = Path(root)
    files = {}
    for fpath in sorted(root.rglob("*")):
        if fpath.is_file() and fpath.name != MANIFEST:
            files[fpath.relative_to(root).as_posix()] = sha256_file(fpath)
    manifest = dict(manifest)
    manifest.setdefault("format", FORMAT_VERSION)
    manifest["files"] = files
    raw = (json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()
    tmp = root / (MANIFEST + ".tmp")
    tmp.write_bytes(raw)
    os.replace(tmp, root / MANIFEST)
    return hashlib.sha256(raw).hexdigest()
