"""How a model bundle reaches the workers of a cluster: through Ray's object store, verified on
arrival.

The driver packs the bundle files a job needs (:func:`pack_bundle`: ``manifest.json`` as its raw
bytes, ``tokenizer.json``, ``preprocess.json``, the towers of the precision that runs and any
other file the manifest lists, such as external tensor data; the towers of the other
precisions stay home) and puts the pack into the object store once; Ray copies it to each node
that runs a tower actor or a pair task, once per node. On the worker :func:`unpack_bundle`
checks the pack before any of it is used: the sha256 of the manifest bytes must be the bundle
identity the driver loaded (so the manifest is the one the driver verified), and every file's
sha256 must be the one the manifest lists. Then the files are written, each through a temporary
file and a rename, to ``{cache root}/ray-bundles/{identity}/{bundle folder name}/`` on that
node (``CLIPEVAL_CACHE_DIR``, else ``~/.cache/clipeval``), where onnxruntime opens them.

Why the object store and not a shared path: bundles usually live in the driver's model cache
(``clipeval eval --model CHECKPOINT`` exports into it on first use), which the other nodes do not
see; a bundle read by path on every node would have to be on shared storage and hashed again on
each node to be trusted. The pack is hashed once per worker process from memory, and nothing the
driver did not verify can run.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ... import __version__
from ..sessions.bundle import MANIFEST, Bundle, unsafe_file_name
from ..errors import BundleError, ConfigError
from ..paths import cache_root
from ..textio import to_utf8

SUBDIR = "ray-bundles"


@dataclass
class BundlePack:
    """A bundle's files as bytes: what travels through the object store.

    ``files`` maps each file name (as ``manifest.json`` lists it) to its bytes; ``name`` is the
    bundle folder's name (results are filed under the model's name, which may come from it);
    ``version`` the clipeval version of the driver."""

    identity: str
    name: str
    manifest_raw: bytes
    files: dict[str, bytes] = field(repr=False)
    verified: bool = False
    version: str = __version__

    @property
    def nbytes(self) -> int:
        return len(self.manifest_raw) + sum(len(b) for b in self.files.values())


def needed_files(bundle: Bundle, precision: str | None = None, towers: tuple[str, ...] | None = None) -> list[str]:
    """The files of ``bundle`` a job running ``towers`` at ``precision`` needs: every file the
    manifest lists except the tower files of other variants or towers. ``precision=None``: every
    file (a whole bundle, for a pair task)."""
    files = list(bundle.manifest["files"])
    if precision is None:
        return files
    variants = bundle.manifest["variants"]
    bundle.tower_path((towers or ("vision",))[0], precision)  # BundleError for a missing variant
    keep = {variants[precision][t] for t in (towers or tuple(variants[precision])) if t in variants[precision]}
    towers_files = {f for v in variants.values() for f in v.values()}
    return [f for f in files if f not in towers_files or f in keep]


def pack_bundle(bundle: Bundle, precision: str | None = None, towers: tuple[str, ...] | None = None) -> BundlePack:
    """Read the files of ``bundle`` that :func:`needed_files` names into a :class:`BundlePack`.

    Raises :class:`BundleError` when a file cannot be read or the manifest changed since the
    bundle was loaded (its sha256 is no longer the identity)."""
    try:
        raw = (bundle.path / MANIFEST).read_bytes()
        files = {name: (bundle.path / name).read_bytes() for name in needed_files(bundle, precision, towers)}
    except OSError as exc:
        raise BundleError(f"cannot read model bundle {bundle.path}: {exc.strerror or exc}",
                          "check the bundle folder, or export it again") from None
    if hashlib.sha256(raw).hexdigest() != bundle.identity:
        raise BundleError(f"{bundle.path / MANIFEST} changed while the run was starting",
                          "run again once the bundle is no longer being written")
    return BundlePack(identity=bundle.identity, name=bundle.path.name, manifest_raw=raw, files=files,
                      verified=bundle.verified)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def unpack_bundle(pack: BundlePack, root: str | os.PathLike | None = None) -> Bundle:
    """Check ``pack`` (see the module docstring) and write it under ``root`` (default: the cache
    root's ``ray-bundles/``); returns the :class:`Bundle` there, ``verified`` as on the driver.

    Raises :class:`ConfigError` when this node runs another clipeval version than the driver,
    and :class:`BundleError` when the manifest is not the one of the identity, a file's sha256
    is not the one the manifest lists, or the files cannot be written.
    """
    if pack.version != __version__:
        raise ConfigError(f"this node runs clipeval {__version__}, the driver clipeval {pack.version}",
                          "install the same clipeval version on every node of the cluster")
    if hashlib.sha256(pack.manifest_raw).hexdigest() != pack.identity:
        raise BundleError(f"the manifest of bundle {pack.name} that reached this node is not the one the driver "
                          "loaded (its sha256 differs)", "run again; if it persists, check the nodes' memory")
    manifest = json.loads(to_utf8(pack.manifest_raw))
    listed = manifest.get("files", {})
    bad = []
    for name, data in pack.files.items():
        if name not in listed or unsafe_file_name(name):
            bad.append(f"{name}: not a file the manifest lists")
        elif hashlib.sha256(data).hexdigest() != listed[name]:
            bad.append(f"{name}: sha256 does not match the manifest")
    if bad:
        raise BundleError(f"bundle {pack.name} arrived damaged on this node:\n    " + "\n    ".join(bad),
                          "run again; if it persists, check the nodes' memory")
    dest = (Path(root) if root is not None else cache_root() / SUBDIR) / pack.identity / pack.name
    try:
        for name, data in pack.files.items():
            path = dest / name
            path.parent.mkdir(parents=True, exist_ok=True)
            _write_atomic(path, data)
        _write_atomic(dest / MANIFEST, pack.manifest_raw)
    except OSError as exc:
        raise BundleError(f"cannot write bundle {pack.name} to {dest} on this node: {exc.strerror or exc}",
                          "free space in the cache root of every node (CLIPEVAL_CACHE_DIR)") from None
    preprocess = json.loads(to_utf8(pack.files["preprocess.json"]))
    return Bundle(path=dest, manifest=manifest, identity=pack.identity, preprocess=preprocess,
                  verified=pack.verified)
