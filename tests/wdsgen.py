"""Writers of small webdataset fixtures in CLIP_benchmark's layout (import as ``from wdsgen import ...``)."""

from __future__ import annotations

import io
import tarfile

import numpy as np

from datagen import noise_image


def png_bytes(seed: int, size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    noise_image(seed, size).save(buf, format="PNG")
    return buf.getvalue()


def write_tar(path, samples: list[dict[str, bytes]]) -> None:
    """``samples``: dicts with ``__key__`` and ``{suffix: bytes}``; members in dict order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for s in samples:
            for suffix, data in s.items():
                if suffix == "__key__":
                    continue
                info = tarfile.TarInfo(f"{s['__key__']}.{suffix}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def write_split(root, split: str, samples: list[dict], per_shard: int, nshards_file: bool = True) -> list:
    chunks = [samples[i:i + per_shard] for i in range(0, len(samples), per_shard)]
    paths = []
    for i, chunk in enumerate(chunks):
        p = root / split / f"{i}.tar"
        write_tar(p, chunk)
        paths.append(p)
    if nshards_file:
        (root / split / "nshards.txt").write_text(f"{len(chunks)}\n")
    return paths


def retrieval_samples(n: int, seed: int = 0) -> list[dict]:
    """Sample i: a PNG and 1 + i % 3 captions; sample 1's first caption holds an escaped newline."""
    out = []
    for i in range(n):
        caps = [f"caption {j} of image {i}" for j in range(1 + i % 3)]
        if i == 1:
            caps[0] = "two\\nlines"
        out.append({"__key__": f"s{i:07d}", "png": png_bytes(seed + i), "txt": "\n".join(caps).encode()})
    return out


def classification_samples(n: int, n_classes: int, seed: int = 0, multilabel: bool = False) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        s = {"__key__": f"s{i:07d}", "webp" if i % 2 else "png": png_bytes(seed + 100 + i)}
        if s.get("webp"):
            buf = io.BytesIO()
            noise_image(seed + 100 + i).save(buf, format="WEBP", lossless=True)
            s["webp"] = buf.getvalue()
        if multilabel:
            t = (rng.random(n_classes) < 0.4).astype(np.float32)
            buf = io.BytesIO()
            np.save(buf, t)
            s["npy"] = buf.getvalue()
        else:
            s["cls"] = str(i % n_classes).encode()
        out.append(s)
    return out


def write_retrieval_set(root, n: int = 9, per_shard: int = 3, split: str = "test"):
    samples = retrieval_samples(n)
    write_split(root, split, samples, per_shard)
    (root / "dataset_type.txt").write_text("retrieval\n")
    return samples


def write_classification_set(root, n: int = 12, n_classes: int = 6, per_shard: int = 5, split: str = "test",
                             multilabel: bool = False):
    samples = classification_samples(n, n_classes, multilabel=multilabel)
    write_split(root, split, samples, per_shard)
    (root / "classnames.txt").write_text("".join(f"class{c}\n" for c in range(n_classes)))
    (root / "zeroshot_classification_templates.txt").write_text("a photo of a {c}.\na drawing of a {c}.\n")
    if multilabel:
        (root / "dataset_type.txt").write_text("multilabel\n")
    return samples
