"""Images to the base64 JPEG data URLs that OpenAI-compatible chat APIs take.

Every source goes through :func:`clipeval.engine.images.load.load_image` first, so any mode Pillow can
open (palette, transparency, 16-bit grey, CMYK, ...) becomes 8-bit RGB before the JPEG encoder
sees it; the reference tool saves the image as it comes and fails on RGBA or palette images.
"""

from __future__ import annotations

import base64
import io

from PIL import Image

from ..images.load import ImageSource, load_image

JPEG_QUALITY = 90


def downscale(img: Image.Image, max_side: int | None) -> Image.Image:
    """``img`` shrunk (aspect kept, bicubic) so its longer side is at most ``max_side``."""
    if not max_side:
        return img
    w, h = img.size
    longest = max(w, h)
    if longest <= max_side:
        return img
    scale = max_side / longest
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return img.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)


def encode_jpeg(source: ImageSource, max_side: int | None = None, quality: int = JPEG_QUALITY) -> bytes:
    """The JPEG bytes sent for ``source``: RGB, downscaled to ``max_side``; deterministic.

    Raises :class:`~clipeval.engine.errors.ImageError` for a missing or undecodable image.
    """
    img = downscale(load_image(source), max_side)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def data_url(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def image_data_url(source: ImageSource, max_side: int | None = None, quality: int = JPEG_QUALITY) -> str:
    """``data:image/jpeg;base64,...`` for ``source`` (see :func:`encode_jpeg`)."""
    return data_url(encode_jpeg(source, max_side, quality))
