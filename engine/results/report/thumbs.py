"""Small JPEG thumbnails inlined as data URIs, within a count and size budget."""

from __future__ import annotations

import base64
import io
import logging
import os

from PIL import Image

from ...errors import ImageError
from ...images.load import load_image

log = logging.getLogger(__name__)

THUMB_SIDE = 96  # longest side, pixels
JPEG_QUALITY = 70
MAX_THUMBNAILS = 600  # inlined images per report, every occurrence counted
MAX_BYTES = 3 << 20  # bytes of data URIs per report (base64 text, every occurrence counted)


class ThumbnailBudget:
    """Hands out ``data:image/jpeg;base64,...`` URIs of image files until the report holds
    ``max_count`` of them or ``max_bytes`` of their text; after that (and for anything that is not
    a readable image file) it hands out ``None`` and counts what it left out.

    Each file is decoded once (JPEGs with DCT scaling, to at least ``side`` pixels) and shrunk to
    fit ``side`` x ``side``.
    """

    def __init__(self, max_count: int = MAX_THUMBNAILS, max_bytes: int = MAX_BYTES, side: int = THUMB_SIDE):
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.side = side
        self.count = 0
        self.bytes = 0
        self.left_out = 0
        self._cache: dict[str, str | None] = {}

    def uri(self, image_id: str) -> str | None:
        if image_id not in self._cache:
            self._cache[image_id] = self._encode(image_id)
        uri = self._cache[image_id]
        if uri is None:
            return None
        if self.count + 1 > self.max_count or self.bytes + len(uri) > self.max_bytes:
            self.left_out += 1
            return None
        self.count += 1
        self.bytes += len(uri)
        return uri

    def _encode(self, image_id: str) -> str | None:
        if not os.path.isfile(image_id):
            return None
        try:
            img = load_image(image_id, fast_decode_size=(self.side, self.side))
        except ImageError as exc:
            log.info("no thumbnail of %s: %s", image_id, exc.message)
            return None
        img.thumbnail((self.side, self.side), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=JPEG_QUALITY, optimize=True)
        return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
