"""Result files: ``{output_dir}/{model}/{dataset}_{task}.json``, written atomically."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

import orjson

from .textio import read_json


def _safe(name: str) -> str:
    return "".join(c if (c.isalnum() or c in "-_.") else "_" for c in name) or "_"


def result_path(output_dir: str | os.PathLike, model: str, dataset: str, task: str) -> Path:
    return Path(output_dir) / _safe(model) / f"{_safe(dataset)}_{task}.json"


def dumps(obj: Any, indent: bool = False) -> bytes:
    opts = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
    if indent:
        opts |= orjson.OPT_INDENT_2
    return orjson.dumps(obj, option=opts)


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_result(path: str | os.PathLike, result: dict[str, Any]) -> None:
    write_atomic(path, dumps(result, indent=True) + b"\n")


def params_key(params: dict[str, Any]) -> str:
    """A stable digest of the parameters that change a result."""
    return hashlib.sha256(orjson.dumps(params, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def existing_result(path: str | os.PathLike, identity: str, key: str) -> dict[str, Any] | None:
    """The result at ``path`` if it was made with the same bundle identity and parameters."""
    try:
        data = read_json(path)
    except (OSError, orjson.JSONDecodeError):
        return None
    meta = data.get("meta") or {}
    if meta.get("bundle", {}).get("identity") == identity and meta.get("params_key") == key:
        return data
    return None
