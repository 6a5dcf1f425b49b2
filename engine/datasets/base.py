"""Dataset records shared by the readers and the tasks."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np


@dataclass(frozen=True)
class BadItem:
    """A row, image or sample that could not be used: where it is and why; ``texts`` counts the
    texts (queries) that were left out with it."""

    where: str
    reason: str
    line: int = 0
    source: str | None = None
    texts: int = 0

    def to_dict(self) -> dict:
        return {"where": self.where, "reason": self.reason}


@dataclass
class RetrievalDataset:
    """An image gallery and its texts; each text has exactly one positive image.

    ``images`` are decodable sources (paths, or anything :func:`clipeval.engine.images.load.load_image`
    accepts), in dataset order; ``text_to_image[t]`` is the index of text ``t``'s image.
    """

    name: str
    images: list
    texts: list[str]
    text_to_image: list[int]
    image_where: list[str] = field(default_factory=list)
    skipped: list[BadItem] = field(default_factory=list)
    merged_rows: int = 0
    limited_from: int | None = None
    # what the reader left out, {"images"|"texts"|"shards": {reason: count}} (see .leftout)
    left_out: dict = field(default_factory=dict)

    def __post_init__(self):
        self.text_to_image = np.asarray(self.text_to_image, dtype=np.int64)

    @property
    def num_images(self) -> int:
        return len(self.images)

    @property
    def num_texts(self) -> int:
        return len(self.texts)

    def _select_images(self, indices: np.ndarray):
        """The image list restricted to ``indices`` (ascending); a lazy list with ``select`` stays lazy."""
        select = getattr(self.images, "select", None)
        if select is not None:
            return select(indices)
        return [self.images[i] for i in indices]

    def limit(self, n: int | None) -> "RetrievalDataset":
        """Exactly the first ``n`` gallery images in dataset order, with their texts."""
        if n is None or n >= len(self.images):
            return self
        keep = self.text_to_image < n
        return replace(
            self,
            images=self._select_images(np.arange(n)),
            texts=[t for t, k in zip(self.texts, keep) if k],
            text_to_image=self.text_to_image[keep],
            image_where=self.image_where[:n],
            limited_from=len(self.images),
        )

    def drop_images(self, bad: set[int]) -> tuple["RetrievalDataset", int]:
        """Remove the images at the indices ``bad`` (and their texts); returns (dataset, texts dropped)."""
        if not bad:
            return self, 0
        keep_img = np.ones(len(self.images), dtype=bool)
        keep_img[list(bad)] = False
        new_index = np.cumsum(keep_img) - 1
        keep_txt = keep_img[self.text_to_image]
        ds = replace(
            self,
            images=self._select_images(np.flatnonzero(keep_img)),
            texts=[t for t, k in zip(self.texts, keep_txt) if k],
            text_to_image=new_index[self.text_to_image[keep_txt]],
            image_where=[w for w, k in zip(self.image_where, keep_img) if k] if self.image_where else [],
        )
        return ds, int((~keep_txt).sum())
