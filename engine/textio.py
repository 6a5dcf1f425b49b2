"""Reading the text files users bring: JSON and JSON-lines files, with or without a byte-order mark.

Editors on Windows (Notepad, Excel's "CSV UTF-8", PowerShell's ``Out-File``) start UTF-8 files
with the byte-order mark ``EF BB BF``; Windows PowerShell 5's ``>`` and ``Out-File`` and
Notepad's "Unicode" write UTF-16 with a BOM. Every reader of the project goes through these
helpers so that such a file reads like any other (RFC 8259 section 8.1: a parser may ignore the
BOM; Python's own ``json.loads`` of bytes accepts UTF-16 and UTF-32 too).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

import orjson

BOM = b"\xef\xbb\xbf"
# Byte-order marks of the other Unicode encodings; UTF-32-LE first, as it starts with UTF-16-LE's.
OTHER_BOMS = (
    (b"\xff\xfe\x00\x00", "utf-32-le"),
    (b"\x00\x00\xfe\xff", "utf-32-be"),
    (b"\xff\xfe", "utf-16-le"),
    (b"\xfe\xff", "utf-16-be"),
)


def strip_bom(data: bytes) -> bytes:
    """``data`` without a leading UTF-8 byte-order mark."""
    return data[len(BOM):] if data.startswith(BOM) else data


def to_utf8(data: bytes) -> bytes:
    """``data`` as UTF-8 without a byte-order mark.

    A UTF-8 BOM is dropped; data that starts with a UTF-16 or UTF-32 BOM is decoded from that
    encoding (code units that do not decode become U+FFFD) and encoded as UTF-8. Anything else
    is returned as it is (an invalid UTF-8 byte is left for the JSON parser to report).
    """
    if data.startswith(BOM):
        return data[len(BOM):]
    for bom, encoding in OTHER_BOMS:
        if data.startswith(bom):
            return data[len(bom):].decode(encoding, errors="replace").encode("utf-8")
    return data


def json_lines(path: str | os.PathLike) -> Iterator[tuple[int, bytes]]:
    """``(line number, bytes)`` of the non-blank lines of a JSON-lines file (1-based numbers).

    The file may start with a UTF-8, UTF-16 or UTF-32 byte-order mark (:func:`to_utf8`); the
    lines are UTF-8. Lines are split on ``\\n`` only (a ``\\r`` before it is stripped with the other
    whitespace), so a JSON string holding U+2028 or other characters that :meth:`str.splitlines`
    breaks on stays whole. Raises ``OSError`` when the file cannot be read.
    """
    data = to_utf8(Path(path).read_bytes())
    for number, line in enumerate(data.split(b"\n"), start=1):
        if line.strip():
            yield number, line


def read_json(path: str | os.PathLike) -> Any:
    """The JSON value in ``path`` (a leading byte-order mark is allowed, see :func:`to_utf8`).
    Raises ``OSError`` when the file cannot be read and ``orjson.JSONDecodeError`` (a
    ``ValueError``) when it is not JSON."""
    return orjson.loads(to_utf8(Path(path).read_bytes()))
