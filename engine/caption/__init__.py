"""Captioning images through an OpenAI-compatible chat API (task ``image_caption``).

- :mod:`.encode`: any image to a base64 JPEG data URL (RGB-safe, optional downscale).
- :mod:`.client`: the aiohttp client (retries, backoff, ``Retry-After``, clear refusals).
- :mod:`.journal`: the append-only journal that makes a run resumable.
- :mod:`.pool`: bounded concurrency over many images.

The task that turns captions into a BEIR folder is :mod:`clipeval.engine.tasks.image_caption`.
"""

from .client import DEFAULT_PROMPT, CaptionAPIError, CaptionClient, ClientSettings, ItemFailed, Refused
from .encode import encode_jpeg, image_data_url
from .journal import JOURNAL_NAME, Journal
from .pool import Item, PoolReport, caption_pool

__all__ = ["DEFAULT_PROMPT", "CaptionAPIError", "CaptionClient", "ClientSettings", "ItemFailed", "Refused",
           "encode_jpeg", "image_data_url", "JOURNAL_NAME", "Journal", "Item", "PoolReport", "caption_pool"]
