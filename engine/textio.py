"""Reading the text files users bring: JSON and JSON-lines files, with or without a byte-order mark.

Editors on Windows (Notepad, Excel's "CSV UTF-8", PowerShell's ``Out-File``) start UTF-8 files
with the byte-order mark ``EF BB BF``; Windows PowerShell 5's ``>`` and ``Out-File`` and
Notepad's "Unicode" write UTF-16 with a BOM. Every reader of the project goes through these
helpers so that such a file reads like any other (RFC 8259 section 8.1: a parser may ignore the
BOM; Python's own ``json.loads`` of bytes accepts UTF-16 and UTF-32 too).
"""

from __future__ import annotations

import errno
import os
import re
import stat
from typing import Any, BinaryIO, Iterator

import orjson

BOM = b"\xef\xbb\xbf"
# Byte-order marks of the other Unicode encodings; UTF-32-LE first, as it starts with UTF-16-LE's.
OTHER_BOMS = (
    (b"\xff\xfe\x00\x00", "utf-32-le"),
    (b"\x00\x00\xfe\xff", "utf-32-be"),
    (b"\xff\xfe", "utf-16-le"),
    (b"\xfe\xff", "utf-16-be"),
)

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def lone_surrogate(text: str) -> int:
    """Index of the first lone UTF-16 surrogate (U+D800..U+DFFF) in ``text``, -1 when there is
    none. A Python ``str`` holds one where a JSON or YAML ``"\\ud83d"`` escape lacks its pair (or
    bytes of another encoding came through ``surrogateescape``): it is not Unicode text, no UTF-8
    encodes it, and no reference tokenizer takes it."""
    found = _LONE_SURROGATE.search(text)
    return found.start() if found else -1


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


class NotRegularFile(OSError):
    """The path names something that is not a regular file (a FIFO, a device such as
    ``/dev/zero``, a folder, a socket): reading it could block for ever or never end.
    ``strerror`` says what it is (``"a FIFO (named pipe), not a regular file"``)."""


class FileTooLarge(OSError):
    """A file is larger than what the reader accepts for it; ``strerror`` says both sizes."""


def kind_of(mode: int) -> str:
    """What a ``stat`` mode names, for messages: ``a directory``, ``a FIFO (named pipe)`` ..."""
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISREG, "a regular file")):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: str | os.PathLike) -> BinaryIO:
    """``path`` opened for reading in binary mode, if it is a regular file (links followed).

    It is opened without blocking (``O_NONBLOCK``), so a FIFO with no writer does not hang the
    open, then checked on the open descriptor (no race with a file swapped in between). Raises
    :class:`NotRegularFile` for a FIFO, a device, a folder or a socket, and ``OSError`` when it
    cannot be opened (``FileNotFoundError``, ``PermissionError`` ...).
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(errno.EINVAL, f"{kind_of(mode)}, not a regular file", os.fspath(path))
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: str | os.PathLike, max_bytes: int | None = None) -> bytes:
    """The bytes of the regular file ``path`` (see :func:`open_regular`); with ``max_bytes``, a
    larger file raises :class:`FileTooLarge` after reading at most ``max_bytes + 1`` bytes."""
    with open_regular(path) as f:
        data = f.read() if max_bytes is None else f.read(max_bytes + 1)
    if max_bytes is not None and len(data) > max_bytes:
        raise FileTooLarge(errno.EFBIG, f"larger than {max_bytes:,} bytes, the most such a file may hold",
                           os.fspath(path))
    return data


def json_lines(path: str | os.PathLike) -> Iterator[tuple[int, bytes]]:
    """``(line number, bytes)`` of the non-blank lines of a JSON-lines file (1-based numbers).

    The file may start with a UTF-8, UTF-16 or UTF-32 byte-order mark (:func:`to_utf8`); the
    lines are UTF-8. Lines are split on ``\\n`` only (a ``\\r`` before it is stripped with the other
    whitespace), so a JSON string holding U+2028 or other characters that :meth:`str.splitlines`
    breaks on stays whole. Raises ``OSError`` when the file cannot be read
    (:class:`NotRegularFile` when it is a FIFO, a device or a folder: see :func:`open_regular`).
    """
    data = to_utf8(read_regular(path))
    for number, line in enumerate(data.split(b"\n"), start=1):
        if line.strip():
            yield number, line


def read_json(path: str | os.PathLike) -> Any:
    """The JSON value in ``path`` (a leading byte-order mark is allowed, see :func:`to_utf8`).
    Raises ``OSError`` when the file cannot be read (:class:`NotRegularFile` when it is not a
    regular file) and ``orjson.JSONDecodeError`` (a ``ValueError``) when it is not JSON."""
    return orjson.loads(to_utf8(read_regular(path)))
