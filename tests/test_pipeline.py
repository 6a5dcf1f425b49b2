"""iter_pixel_batches: order, failures, bounded prefetch, early close, equality with the sequential oracle."""

from __future__ import annotations

import gc
import itertools
import threading

import numpy as np
import pytest
from datagen import PREPROCESS_32
from PIL import Image

from clipeval.engine.errors import ConfigError, ImageError
from clipeval.engine.images.load import load_image
from clipeval.engine.images.pipeline import Batch, batches_ahead, iter_pixel_batches
from clipeval.engine.images.preprocess import Preprocessor

SPEC = PREPROCESS_32


@pytest.fixture(scope="module")
def pp():
    return Preprocessor(SPEC)


@pytest.fixture(scope="module")
def image_paths(tmp_path_factory):
    folder = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(23):
        w, h = int(rng.integers(20, 90)), int(rng.integers(20, 90))
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        path = folder / f"{i:02d}.{'jpg' if i % 2 else 'png'}"
        Image.fromarray(arr).save(path)
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def bad_sources(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("not an image")
    return {
        "missing": str(folder / "missing.jpg"),
        "empty": str(folder / "empty.jpg"),
        "text": str(folder / "text.jpg"),
        "bytes": b"\x89PNG garbage",
    }


def oracle(pp, source) -> np.ndarray:
    return pp(load_image(source))


def decode_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("clipeval-decode")]


def collect(batches) -> tuple[np.ndarray, np.ndarray, list]:
    batches = list(batches)
    for b in batches:
        assert isinstance(b, Batch) and b.pixels.dtype == np.float32 and b.indices.dtype == np.int64
        assert len(b.pixels) == len(b.indices)
    indices = np.concatenate([b.indices for b in batches]) if batches else np.zeros(0, np.int64)
    pixels = np.concatenate([b.pixels for b in batches]) if batches else np.zeros((0, 3, 32, 32), np.float32)
    failures = [f for b in batches for f in b.failures]
    return indices, pixels, failures


@pytest.mark.parametrize("workers", [0, 1, 2, 3])
@pytest.mark.parametrize("batch_size", [1, 4, 7, 64])
def test_order_and_pixels_match_sequential_oracle(pp, image_paths, workers, batch_size):
    items = [(100 + 3 * i, p) for i, p in enumerate(image_paths)]
    batches = list(iter_pixel_batches(iter(items), pp, batch_size=batch_size, num_workers=workers))
    assert [len(b) for b in batches] == [min(batch_size, len(items) - s) for s in range(0, len(items), batch_size)]
    indices, pixels, failures = collect(batches)
    assert indices.tolist() == [i for i, _ in items]
    assert failures == []
    expected = np.stack([oracle(pp, p) for p in image_paths])
    assert np.array_equal(pixels, expected)
    assert decode_threads() == []


def test_same_result_for_0_1_2_workers_with_fast_decode(pp, image_paths):
    runs = [
        collect(iter_pixel_batches(enumerate(image_paths), pp, batch_size=5, num_workers=w, fast_decode=True))
        for w in (0, 1, 2)
    ]
    for indices, pixels, _ in runs[1:]:
        assert np.array_equal(indices, runs[0][0]) and np.array_equal(pixels, runs[0][1])
    expected = np.stack([pp(load_image(p, fast_decode_size=pp.spec.draft_size)) for p in image_paths])
    assert np.array_equal(runs[0][1], expected)


def mixed_items(image_paths, bad_sources):
    """Good images with the bad ones at positions 2, 5, 6 and 11."""
    good = iter(image_paths)
    bad = iter(bad_sources.values())
    return [(i, next(bad) if i in (2, 5, 6, 11) else next(good)) for i in range(16)]


@pytest.mark.parametrize("workers", [0, 2])
def test_skip_mode_reports_failures_and_keeps_order(pp, image_paths, bad_sources, workers):
    items = mixed_items(image_paths, bad_sources)
    batches = list(iter_pixel_batches(items, pp, batch_size=4, num_workers=workers, on_error="skip"))
    indices, pixels, failures = collect(batches)
    bad_at = [2, 5, 6, 11]
    assert indices.tolist() == [i for i, _ in items if i not in bad_at]
    assert [f[0] for f in failures] == bad_at
    assert [f[1] for f in failures] == list(bad_sources.values())
    assert all(isinstance(f[2], str) and f[2] for f in failures)
    assert bad_sources["missing"] in failures[0][2]
    assert [len(b.failures) for b in batches] == [1, 2, 1, 0]
    expected = np.stack([oracle(pp, s) for i, s in items if i not in bad_at])
    assert np.array_equal(pixels, expected)


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_fail_mode_raises_at_first_bad_image_after_earlier_batches(pp, image_paths, bad_sources, workers):
    items = mixed_items(image_paths, bad_sources)
    seen = []
    with pytest.raises(ImageError) as err:
        for batch in iter_pixel_batches(items, pp, batch_size=2, num_workers=workers, on_error="fail"):
            seen.extend(batch.indices.tolist())
    assert seen == [0, 1]  # the batch before the first bad item (index 2) was delivered
    assert "#2" in str(err.value) and bad_sources["missing"] in str(err.value)
    assert decode_threads() == []


@pytest.mark.parametrize("batch_size, workers, prefetch, bound", [
    (3, 2, 1, 3),  # 1 + ceil(2 * 2 / 3)
    (2, 5, 0, 5),  # more workers than a batch holds: enough batches for two items per worker
    (16, 4, 2, 3),  # a large batch keeps every worker busy alone: 2 + 1, not 2 + 4
])
def test_prefetch_is_bounded_on_an_endless_input(pp, image_paths, batch_size, workers, prefetch, bound):
    pulled = 0

    def endless():
        nonlocal pulled
        for i in itertools.count():
            pulled += 1
            yield i, image_paths[i % len(image_paths)]

    assert batches_ahead(batch_size, workers, prefetch) == bound
    gen = iter_pixel_batches(endless(), pp, batch_size=batch_size, num_workers=workers, prefetch_batches=prefetch)
    ahead_seen = []
    for k, batch in enumerate(gen):
        assert batch.indices.tolist() == list(range(k * batch_size, (k + 1) * batch_size))
        # batches in flight, the one just received included
        in_flight = pulled / batch_size - k
        ahead_seen.append(in_flight)
        assert in_flight <= bound
        if k == 6:
            break
    assert max(ahead_seen) == bound  # it does read ahead, up to the bound
    gen.close()
    assert decode_threads() == []


def test_inline_mode_pulls_one_batch_at_a_time(pp, image_paths):
    pulled = 0

    def counted():
        nonlocal pulled
        for item in enumerate(image_paths):
            pulled += 1
            yield item

    for k, _ in enumerate(iter_pixel_batches(counted(), pp, batch_size=4, num_workers=0)):
        assert pulled == min((k + 1) * 4, len(image_paths))


def test_early_break_shuts_workers_down(pp, image_paths):
    items = ((i, image_paths[i % len(image_paths)]) for i in range(10_000))
    for batch in iter_pixel_batches(items, pp, batch_size=4, num_workers=2, prefetch_batches=3):
        assert len(batch) == 4
        break
    gc.collect()  # the abandoned generator is closed when collected
    assert decode_threads() == []


def test_explicit_close_and_unstarted_generator(pp, image_paths):
    gen = iter_pixel_batches(enumerate(image_paths), pp, batch_size=2, num_workers=2)
    next(gen)
    assert decode_threads() != []
    gen.close()
    assert decode_threads() == []
    unstarted = iter_pixel_batches(enumerate(image_paths), pp, batch_size=2, num_workers=2)
    assert decode_threads() == []
    unstarted.close()


def test_error_from_the_input_iterator_propagates_and_cleans_up(pp, image_paths):
    def broken():
        yield from enumerate(image_paths[:5])
        raise RuntimeError("dataset went away")

    with pytest.raises(RuntimeError, match="dataset went away"):
        list(iter_pixel_batches(broken(), pp, batch_size=2, num_workers=2))
    assert decode_threads() == []


def test_empty_input(pp):
    assert list(iter_pixel_batches([], pp, batch_size=4, num_workers=2)) == []
    assert list(iter_pixel_batches([], pp, batch_size=4, num_workers=0)) == []


def test_bytes_and_pil_sources(pp, image_paths):
    with open(image_paths[0], "rb") as f:
        data = f.read()
    items = [(0, data), (1, Image.open(image_paths[0])), (2, image_paths[0])]
    _, pixels, _ = collect(iter_pixel_batches(items, pp, batch_size=2, num_workers=2))
    assert np.array_equal(pixels[0], pixels[1]) and np.array_equal(pixels[0], pixels[2])


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"batch_size": 0}, "batch_size"),
        ({"num_workers": -1}, "num_workers"),
        ({"prefetch_batches": -1}, "prefetch_batches"),
        ({"on_error": "ignore"}, "on_error"),
        ({"batch_size": True}, "batch_size"),
    ],
)
def test_bad_arguments_are_config_errors(pp, kwargs, word):
    args = {"batch_size": 4, "num_workers": 1, **kwargs}
    with pytest.raises(ConfigError, match=word):
        iter_pixel_batches([], pp, **args)
