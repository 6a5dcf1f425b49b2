"""The model bundle: a directory any onnxruntime program can use.

Layout::

    manifest.json     format, family, source, revision, embed_dim, context_length, precision,
                      opset, tokenizer rule, variants and the sha256 of every other file
    vision.onnx       pixel_values float32 [B,3,H,W] -> image_embeds float32 [B,D], L2-normalised
    text.onnx         input_ids int64 [B,T] (+ attention_mask) -> text_embeds float32 [B,D]
    tokenizer.json    Hugging Face `tokenizers` format
    preprocess.json   see :mod:`clipeval.engine.images.preprocess`

``manifest.json`` keys (format 1)::

    {
      "format": 1,
      "family": "clip" | "chinese_clip" | "siglip" | "open_clip" | "text" | "reranker",
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
                    "pooling": "first_eos" | "max_id" | "mean" | ...,   # recorded: pooling is in the graph
                    "text_inputs": ["input_ids", "attention_mask"],
                    "truncation": "longest_first",           # a reranker's pairs
                    "clean": [...], "sentencepiece": {...}},   # optional: engine/text/prep.py
                    # no other key; ids are integers >= 0 (bos_id may be null)
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
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ..errors import BundleError, ConfigError
from ..fsutil import not_a_file, write_atomic
from ..paths import cache_root
from ..textio import read_json, read_regular, to_utf8

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
    # True when every file's sha256 was computed and matched during this load (none was taken on
    # the trust of an earlier size-and-mtime stamp); the embedding cache keys its trust on it.
    verified: bool = False

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
        """Path of ``tower`` (``vision``, ``text`` or ``reranker``) for ``precision`` (default: the
        bundle's own). Raises :class:`BundleError` when the bundle has no such variant or tower."""
        precision = precision or self.manifest["precision"]
        variants = self.manifest["variants"]
        if precision not in variants:
            raise BundleError(
                f"bundle {self.path} has no {precision} variant (it has: {', '.join(variants)})",
                "pick one of those with --precision, or re-export with `clipeval export --precision`",
            )
        if tower not in variants[precision]:
            raise BundleError(
                f"bundle {self.path} has no {tower} tower ({precision} variant: {', '.join(variants[precision])})",
                "pass a bundle with that tower (a CLIP-style bundle has vision and text, a text bundle text, "
                "a reranker bundle reranker)",
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
    """Whether ``path`` holds a ``manifest.json`` (False for any path the system cannot look at)."""
    return os.path.isfile(os.path.join(path, MANIFEST))


def _stamp_file(root: Path, identity: str) -> Path:
    key = hashlib.sha256(f"{os.path.realpath(root)}\0{identity}".encode()).hexdigest()[:32]
    return cache_root() / "verified" / f"{key}.json"


def _stat_key(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def _read_stamp(path: Path) -> dict:
    try:
        data = json.loads(read_regular(path))  # a FIFO or a device there is never read
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_stamp(path: Path, stamp: dict) -> None:
    try:
        write_atomic(path, json.dumps(stamp).encode())
    except (OSError, ConfigError):  # a read-only cache (or a FIFO there) only costs re-hashing next time
        pass


SHA256_HEX = re.compile(r"[0-9a-f]{64}")
# The families clipeval's exporters write (export/families.py, openclip_export, text_model, reranker).
FAMILIES = ("clip", "chinese_clip", "siglip", "open_clip", "text", "reranker")
# The tokenizer block's keys (export/tokenizer_export.tokenizer_rule, engine/text/prep.py, pairs.py).
TOKENIZER_KEYS = ("pad_id", "eos_id", "bos_id", "padding", "pooling", "text_inputs", "clean", "sentencepiece",
                  "truncation")
# Pooling rules, as recorded (the pooling itself is inside the text graph): CLIP-style towers'
# pooled position (export/tokenizer_export.pooled_positions), sentence-transformers' modes of a
# text bundle (export/text_model.POOLING_MODES, several joined by "+"), "cls" for a reranker.
POOLING_RULES = ("first_eos", "max_id", "first", "last",
                 "cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
TRUNCATION_RULES = ("longest_first", "only_first", "only_second")  # tokenizers' pair truncation strategies
TOWERS = ("vision", "text", "reranker")  # the graphs a variant can name (a reranker bundle: the pair scorer)
PADDING_RULES = ("longest", "max_length")
MAX_DIM = 1 << 20


def unsafe_file_name(name: Any) -> str | None:
    """Why ``name`` (a key of the manifest's ``files``) could name something outside the bundle
    or nothing at all; ``None`` for a plain relative POSIX path (``vision.onnx``, ``sub/x.bin``)."""
    if not isinstance(name, str) or not name:
        return "is not a file name"
    if "\0" in name:
        return "holds a NUL character"
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "is an absolute path"
    if "\\" in name:
        return "holds a backslash (write paths with /)"
    if any(part in ("", ".", "..") for part in name.split("/")):
        return "is not a plain relative path inside the bundle (empty, '.' or '..' parts)"
    try:
        raw = os.fsencode(name)
    except UnicodeError:
        return "holds characters no file name can hold"
    if len(raw) > 4096 or any(len(part) > 255 for part in raw.split(b"/")):
        return "is longer than the file system allows"
    return None


def _is_int(value: Any, lo: int, hi: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


def manifest_problems(manifest: Any) -> list[str]:
    """Every problem of a parsed ``manifest.json`` (types, ranges, file names, variants naming
    files that ``files`` lists), each naming its field; empty for a good manifest. Files on disk
    are not looked at (see :func:`load_bundle`)."""
    if not isinstance(manifest, dict):
        return [f"must hold a JSON object, got {type(manifest).__name__}"]
    problems = []
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        problems.append(f"lacks keys: {', '.join(missing)}")
    if "format" in manifest and not (_is_int(manifest["format"], FORMAT_VERSION, FORMAT_VERSION)):
        problems.append(f"has format {manifest['format']!r}; this clipeval reads format {FORMAT_VERSION}")
    if "family" in manifest and not (isinstance(manifest["family"], str) and manifest["family"]):
        problems.append(f"family must be a name, got {manifest['family']!r}")
    elif "family" in manifest and manifest["family"] not in FAMILIES:
        problems.append(f"family must be one of {', '.join(FAMILIES)}, got {manifest['family']!r}")
    for key in ("embed_dim", "context_length"):
        if key in manifest and not _is_int(manifest[key], 1, MAX_DIM):
            problems.append(f"{key} must be an integer from 1 to {MAX_DIM}, got {manifest[key]!r}")
    for key in ("source", "revision", "hub"):
        if manifest.get(key) is not None and not isinstance(manifest[key], str):
            problems.append(f"{key} must be a string or null, got {manifest[key]!r}")
    files = manifest.get("files")
    if "files" in manifest:
        if not isinstance(files, dict):
            problems.append(f"files must be an object of file name -> sha256, got {type(files).__name__}")
            files = None
        else:
            for name, digest in files.items():
                reason = unsafe_file_name(name)
                if reason:
                    problems.append(f"files[{name!r}] {reason}")
                elif not (isinstance(digest, str) and SHA256_HEX.fullmatch(digest)):
                    problems.append(f"files[{name!r}] must be a sha256 (64 lower-case hex digits), got {digest!r}")
            for required in ("tokenizer.json", "preprocess.json"):
                if required not in files:
                    problems.append(f"files does not list {required}")
    problems += _variant_problems(manifest, files)
    problems += _tokenizer_problems(manifest.get("tokenizer")) if "tokenizer" in manifest else []
    return problems


def _variant_problems(manifest: dict, files: dict | None) -> list[str]:
    variants = manifest.get("variants")
    precision = manifest.get("precision")
    problems = []
    if "precision" in manifest and precision not in PRECISIONS:
        problems.append(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if "variants" not in manifest:
        return problems
    if not isinstance(variants, dict) or not variants:
        return problems + [f"variants must be an object of precision -> towers, got {variants!r}"]
    for name, towers in variants.items():
        if name not in PRECISIONS:
            problems.append(f"variants has unknown precision {name!r} (known: {', '.join(PRECISIONS)})")
            continue
        if not isinstance(towers, dict) or not towers or not set(towers) <= set(TOWERS):
            problems.append(f"variants.{name} must map {' and/or '.join(TOWERS)} to file names, got {towers!r}")
            continue
        for tower, file in towers.items():
            if not isinstance(file, str) or (files is not None and file not in files):
                problems.append(f"variants.{name}.{tower} names {file!r}, which files does not list "
                                "(so it could not be verified)")
    if precision in PRECISIONS and precision not in variants:
        problems.append(f"precision {precision} has no entry in variants")
    return problems


def _tokenizer_problems(rule: Any) -> list[str]:
    if not isinstance(rule, dict):
        return [f"tokenizer must be an object, got {type(rule).__name__}"]
    problems = []
    unknown = [k for k in rule if k not in TOKENIZER_KEYS]
    if unknown:
        problems.append(f"tokenizer has unknown keys {', '.join(map(repr, unknown))} "
                        f"(known: {', '.join(TOKENIZER_KEYS)})")
    for key in ("pad_id", "eos_id", "bos_id"):
        value = rule.get(key)
        if (value is not None or key != "bos_id" and key in rule) and not _is_int(value, 0, 2**31 - 1):
            nullable = " or null" if key == "bos_id" else ""
            problems.append(f"tokenizer.{key} must be a token id (an integer >= 0){nullable}, got {value!r}")
    if rule.get("padding", "longest") not in PADDING_RULES:
        problems.append(f"tokenizer.padding must be one of {', '.join(PADDING_RULES)}, got {rule.get('padding')!r}")
    if "pooling" in rule and not (isinstance(rule["pooling"], str)
                                  and all(p in POOLING_RULES for p in rule["pooling"].split("+"))):
        problems.append(f"tokenizer.pooling must be one of {', '.join(POOLING_RULES)} (text bundles: several "
                        f"joined by +), got {rule['pooling']!r}")
    if "truncation" in rule and rule["truncation"] not in TRUNCATION_RULES:
        problems.append(f"tokenizer.truncation must be one of {', '.join(TRUNCATION_RULES)}, got {rule['truncation']!r}")
    inputs = rule.get("text_inputs", ["input_ids"])
    if not (isinstance(inputs, list) and inputs and all(isinstance(i, str) and i for i in inputs)
            and "input_ids" in inputs):
        problems.append(f"tokenizer.text_inputs must be a list of input names holding input_ids, got {inputs!r}")
    return problems


def _inside(root_real: str, path: Path) -> bool:
    real = os.path.realpath(path)
    return real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep)


def _read_json_object(path: Path, what: str) -> dict:
    """The JSON object in bundle file ``path``; BundleError if it is unreadable or not an object."""
    try:
        data = read_json(path)
    except (OSError, ValueError) as exc:
        raise BundleError(f"{what} {path} cannot be read as JSON ({exc})", "re-export the bundle") from None
    if not isinstance(data, dict):
        raise BundleError(f"{what} {path} must hold a JSON object, got {type(data).__name__}",
                          "re-export the bundle")
    return data


def load_bundle(path: str | os.PathLike, verify: bool = True, trust_stamp: bool = True) -> Bundle:
    """Load and (by default) verify a bundle: every field of ``manifest.json`` well formed, every
    file it lists inside the bundle folder (after following symbolic links), present and matching
    its sha256; every variant naming a listed file; ``tokenizer.json`` and ``preprocess.json``
    JSON objects.

    Returns a :class:`Bundle`: ``path``, the parsed ``manifest`` (the keys of the module
    docstring), ``identity`` (the sha256, 64 hex digits, of the ``manifest.json`` bytes: what the
    embedding cache and result slots key on), ``preprocess`` (``preprocess.json``) and
    ``verified`` (every file was hashed during this load). With ``trust_stamp``, files whose size
    and modification time equal those recorded when they last matched are not hashed again
    (``verify=False`` hashes none). The manifest format is the one README "Model bundles and
    export" describes; a C/C++ caller can check each file's sha256 the same way. Raises :class:`BundleError` listing every problem, each naming its manifest entry.
    """
    root = Path(path)
    manifest_path = root / MANIFEST
    try:
        if not root.is_dir():
            raise BundleError(f"model bundle {root} does not exist",
                              "pass a bundle directory made by `clipeval export`")
        if not manifest_path.is_file():
            raise BundleError(
                f"{root} is not a model bundle: {MANIFEST} is missing",
                "pass a directory made by `clipeval export`, or export a checkpoint first",
            )
        raw = manifest_path.read_bytes()
    except OSError as exc:
        raise BundleError(f"cannot read model bundle {root}: {exc.strerror or exc}",
                          "check the path and its permissions") from None
    try:
        manifest = json.loads(to_utf8(raw))
    except (ValueError, RecursionError) as exc:
        raise BundleError(f"{manifest_path} is not valid JSON ({exc})", "re-export the bundle") from None
    problems = manifest_problems(manifest)
    if problems:
        raise BundleError(f"{manifest_path} is not a valid manifest:\n    " + "\n    ".join(problems),
                          "re-export the bundle with `clipeval export`, or copy it again")
    identity = hashlib.sha256(raw).hexdigest()
    stamp_path = _stamp_file(root, identity)
    stamp = _read_stamp(stamp_path) if (verify and trust_stamp) else {}
    fresh: dict[str, list[int]] = {}
    root_real = os.path.realpath(root)
    hashed_all = verify  # every file hashed in this load (none trusted from the stamp)
    for name, digest in sorted(manifest["files"].items()):
        fpath = root / name
        try:
            if not _inside(root_real, fpath):
                problems.append(f"{name}: resolves to {os.path.realpath(fpath)}, outside the bundle "
                                "(through a symbolic link)")
                continue
            if not fpath.is_file():
                problems.append(f"{name}: {'missing' if not os.path.lexists(fpath) else not_a_file(fpath)}")
                continue
            if not verify:
                continue
            key = _stat_key(fpath)
            if stamp.get(name) == key:
                fresh[name] = key
                hashed_all = False
            elif sha256_file(fpath) != digest:
                problems.append(f"{name}: sha256 does not match the manifest")
            else:
                fresh[name] = key
        except OSError as exc:
            problems.append(f"{name}: cannot be read ({exc.strerror or exc})")
    if problems:
        raise BundleError(
            f"model bundle {root} is damaged:\n    " + "\n    ".join(problems),
            "re-export it with `clipeval export`, or copy it again",
        )
    if verify and fresh != stamp:
        _write_stamp(stamp_path, fresh)
    preprocess = _read_json_object(root / "preprocess.json", "preprocess config")
    _read_json_object(root / "tokenizer.json", "tokenizer")
    return Bundle(path=root, manifest=manifest, identity=identity, preprocess=preprocess, verified=hashed_all)


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
    write_atomic(root / MANIFEST, raw)
    return hashlib.sha256(raw).hexdigest()
