"""Reading the text files users bring: JSON and JSON-lines files, with or without a UTF-8 BOM.

Editors on Windows (Notepad, Excel's "CSV UTF-8", PowerShell's ``Out-File``) start UTF-8 files
with the byte-order mark ``EF BB BF``; every reader of the project goes through these helpers so
that such a file reads like any other.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

import orjson

BOM = b"\xef\xbb\xbf"


def strip_bom(data: bytes) -> bytes:
    """``data`` without a leading UTF-8 byte-order mark."""
    return data[len(BOM):] if data.startswith(BOM) else data


def json_lines(path: str | os.PathLike) -> Iterator[tuple[int, bytes]]:
    """``(line number, bytes)`` of the non-blank lines of a JSON-lines file (1-based numbers).

    Lines are split on ``\\n`` only (a ``\\r`` before it is stripped with the other whitespace), so
    a JSON string holding U+2028 or other characters that :meth:`str.splitlines` breaks on stays
    whole. Raises ``OSError`` when the file cannot be read.
    """
    data = strip_bom(Path(path).read_bytes())
    for number, line in enumerate(data.split(b"\n"), start=1):
        if line.strip():
            yield number, line


def read_json(path: str | os.PathLike) -> Any:
    """The JSON value in ``path`` (a leading BOM is allowed). Raises ``OSError`` when the file
    cannot be read and ``orjson.JSONDecodeError`` (a ``ValueError``) when it is not JSON."""
    return orjson.loads(strip_bom(Path(path).read_bytes()))
