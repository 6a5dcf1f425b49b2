"""Reading images: any source (path, bytes, PIL image) to an 8-bit RGB ``PIL.Image``.

Mode conversion (:func:`to_rgb`) follows transformers' ``convert_rgb`` (what the reference
tool's preprocessing does) where that is well defined, and scales high-bit-depth grey properly
where it is not:

* an image with transparency (a band ``A``/``a``, or a ``transparency`` entry, as palette and
  ``tRNS`` PNGs have) is converted to RGBA and composited onto opaque **white**, exactly as
  transformers does (the alpha is not simply dropped);
* ``I;16`` (16-bit grey; how Pillow opens 16-bit PNG and TIFF) maps 0..65535 linearly onto
  0..255 (``round(v * 255 / 65535)``); Pillow's own ``convert("RGB")`` would clip everything
  above 255 to white;
* ``I`` (32-bit integer; how Pillow opens 16-bit PGM/PPM) is read as 16-bit data the same way,
  values outside 0..65535 clipped;
* ``F`` (32-bit float) follows Pillow's conversion (0..255 scale, clipped), which is what the
  reference tool gets;
* ``1``, ``L``, ``P``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV`` use Pillow's ``convert("RGB")``;
  a mode Pillow cannot convert raises :class:`ImageError`.

EXIF orientation is not applied, as in the reference tool, so pixels match it.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
from dataclasses import dataclass
from typing import Iterator, Union

import numpy as np
from PIL import Image

from ..errors import ImageError

# Images with more pixels than this are refused before their pixels are decoded
# (decompression-bomb guard; the same figure as Pillow's warning threshold).
DEFAULT_MAX_PIXELS = 89_478_485

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, Image.Image]

_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


def describe(source: object) -> str:
    """A short human name for ``source`` to put in messages."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes of image data>"
    if isinstance(source, Image.Image):
        return f"<PIL image {source.mode} {source.size[0]}x{source.size[1]}>"
    return os.fspath(source) if isinstance(source, (str, os.PathLike)) else repr(source)


def _has_alpha(img: Image.Image) -> bool:
    bands = img.getbands()
    return "A" in bands or "a" in bands or img.info.get("transparency") is not None


def _grey16_to_rgb(values: np.ndarray) -> Image.Image:
    v = np.clip(values.astype(np.int64), 0, 65535)
    grey = ((v * 255 + 32767) // 65535).astype(np.uint8)
    return Image.fromarray(grey, mode="L").convert("RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert ``img`` to 8-bit RGB by the rules in the module docstring."""
    if img.mode == "RGB":
        return img
    if img.mode in _SIXTEEN_BIT or img.mode == "I":
        return _grey16_to_rgb(np.asarray(img))
    if _has_alpha(img):
        if img.mode == "La":  # premultiplied grey: Pillow converts it to LA only
            img = img.convert("LA")
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    try:
        return img.convert("RGB")
    except ValueError as exc:
        raise ImageError(f"image mode {img.mode} cannot be converted to RGB ({exc})",
                         "convert the image to RGB, PNG or JPEG first") from None


# How much reading a header may take. Pillow's JPEG reader skips junk before a marker one byte
# (one read call) at a time, so a file that starts like a JPEG and goes on with 2 GB of anything
# would be read whole, slowly, before it is refused. Real headers take a few reads per segment or
# chunk (EXIF, ICC profiles, XMP, PNG text chunks, GIF sub-blocks) and stay far below both limits.
HEADER_READS = 50_000
HEADER_BYTES = 64 * 1024 * 1024


class _HeaderTooLong(Exception):
    pass


class _Budgeted:
    """A file object for ``Image.open`` that allows ``HEADER_READS`` read calls and
    ``HEADER_BYTES`` bytes until :meth:`lift` (once the header is parsed, decoding reads what it
    needs)."""

    def __init__(self, fp):
        self._fp = fp
        self._limited = True
        self._reads = HEADER_READS
        self._bytes = HEADER_BYTES

    def lift(self) -> None:
        self._limited = False

    def _read(self, method, size):
        if not self._limited:
            return method(size)
        self._reads -= 1
        if size is None or size < 0 or size > self._bytes + 1:
            size = self._bytes + 1
        data = method(size)
        self._bytes -= len(data)
        if self._reads < 0 or self._bytes < 0:
            raise _HeaderTooLong()
        return data

    def read(self, size: int = -1) -> bytes:
        return self._read(self._fp.read, size)

    def readline(self, size: int = -1) -> bytes:
        return self._read(self._fp.readline, size)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._fp.seek(offset, whence)

    def tell(self) -> int:
        return self._fp.tell()

    def __getattr__(self, name):
        return getattr(self._fp, name)


def _file_problem(path: str) -> ImageError | None:
    """Why ``path`` cannot be an image file (missing, a directory, empty, unreadable), from its
    ``stat`` alone; None when it is a non-empty regular file."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return ImageError(
            f"image file {path} does not exist",
            f"check the path (relative paths are resolved from {os.getcwd()})",
        )
    except OSError as exc:  # a name too long, a loop of links, no permission on a folder ...
        return ImageError(f"image file {path} cannot be read ({exc.strerror or exc})",
                          "check the path and its permissions")
    if stat.S_ISDIR(st.st_mode):
        return ImageError(f"image path {path} is a directory", "point at an image file")
    if not stat.S_ISREG(st.st_mode):
        return ImageError(f"image path {path} is not a regular file", "point at an image file")
    if st.st_size == 0:
        return ImageError(f"image file {path} is empty (0 bytes)", "replace or remove the file, or skip bad images")
    return None


@contextlib.contextmanager
def _opened(source: ImageSource, what: str) -> Iterator[Image.Image]:
    """The image of ``source`` with only its header parsed (``Image.open`` reads a few bytes to
    identify the format, then the header: a 2 GB file that is not an image is refused after its
    first bytes). A file stays open, and its pixels can be loaded, until the block ends. Every
    failure raises :class:`ImageError`."""
    if isinstance(source, Image.Image):
        yield source
        return
    if not isinstance(source, (str, os.PathLike, bytes, bytearray, memoryview)):
        raise ImageError(
            f"cannot read an image from a {type(source).__name__}",
            "pass a path, the bytes of an image file, or a PIL image",
        )
    with contextlib.ExitStack() as stack:
        if isinstance(source, (bytes, bytearray, memoryview)):
            if len(source) == 0:
                raise ImageError(f"{what}: the image data is empty", "pass the bytes of an image file")
            fp = io.BytesIO(source)
        else:
            path = os.fspath(source)
            problem = _file_problem(path)
            if problem is not None:
                raise problem
            try:
                fp = stack.enter_context(open(path, "rb"))
            except OSError as exc:
                raise ImageError(f"image file {path} cannot be read ({exc.strerror or exc})",
                                 "check its permissions") from None
        fp = _Budgeted(fp)
        try:
            img = Image.open(fp)
        except _HeaderTooLong:
            raise ImageError(f"{what} has no image header Pillow can read (it is not an image, or it is "
                             "damaged)",
                             "convert it to JPEG or PNG, or remove it (or skip bad images)") from None
        except Image.DecompressionBombError as exc:
            raise ImageError(f"{what}: {exc}", "resize the image, or skip bad images") from None
        except Image.UnidentifiedImageError:
            raise ImageError(
                f"{what} is not an image Pillow can read",
                "convert it to JPEG or PNG, or remove it (or skip bad images)",
            ) from None
        except Exception as exc:  # Pillow's plugins raise many types on corrupt or cut headers
            raise ImageError(f"{what} cannot be opened ({type(exc).__name__}: {exc})",
                             "replace the file, or skip bad images") from None
        fp.lift()
        yield img


def _check_pixels(img: Image.Image, what: str, max_pixels: int | None) -> None:
    w, h = img.size
    if max_pixels is not None and w * h > max_pixels:
        raise ImageError(
            f"{what} declares {w}x{h} = {w * h} pixels, more than the limit of {max_pixels} "
            "(decompression-bomb guard)",
            "downscale the image, or raise max_pixels if you trust it",
        )


@dataclass(frozen=True)
class ImageHeader:
    """What an image's header says: Pillow's format name (``JPEG``, ``PNG`` ...), width and height
    in pixels, and Pillow's mode (``RGB``, ``L``, ``P`` ...)."""

    format: str | None
    width: int
    height: int
    mode: str


def probe_image(source: ImageSource, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> ImageHeader:
    """Read only the header of ``source`` (path, bytes or PIL image): cheap (about 0.2 ms for a
    640x480 JPEG file, against 5 ms to decode it) and bounded (a file is read only as far as its
    header; a file that is not an image, after the few bytes that identify formats).

    Raises :class:`ImageError` for every problem a header shows: a missing file, a directory, an
    empty or unreadable file, data that is not an image Pillow can read, a header cut short, and
    more than ``max_pixels`` pixels (decompression-bomb guard; ``None``: no limit). Damage in the
    pixel data after the header is found only by :func:`load_image`.
    """
    what = describe(source)
    with _opened(source, what) as img:
        _check_pixels(img, what, max_pixels)
        return ImageHeader(img.format, img.size[0], img.size[1], img.mode)


def load_image(
    source: ImageSource,
    *,
    fast_decode_size: tuple[int, int] | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> Image.Image:
    """Read ``source`` (path, bytes or PIL image) into a decoded 8-bit RGB ``PIL.Image``.

    The header is read first (:func:`probe_image`), so a file that is not an image, or declares
    more than ``max_pixels`` pixels, is refused before its data is read (``None``: no limit).

    ``fast_decode_size=(w, h)``: a JPEG is decoded with DCT scaling (``Image.draft``) at the
    smallest scale (1/2, 1/4, 1/8) that keeps it at least ``w`` × ``h``; pass the resize target
    (``PreprocessSpec.draft_size``). Faster, not bit-exact; other formats decode normally.

    Every failure (missing, empty, not an image, truncated, too large) raises :class:`ImageError`
    naming the source and what to do.
    """
    what = describe(source)
    with _opened(source, what) as img:
        _check_pixels(img, what, max_pixels)
        try:
            if fast_decode_size is not None and img is not source and img.format == "JPEG":
                img.draft("RGB", tuple(fast_decode_size))
            img.load()
            return to_rgb(img)
        except ImageError:
            raise
        except Exception as exc:
            raise ImageError(
                f"{what} could not be decoded ({type(exc).__name__}: {exc}); the file is truncated or corrupt",
                "re-download or replace it, or skip bad images",
            ) from None
