"""iter_pixel_batches(decode="processes"): bit-identical to threads and to inline decoding, the
same failures, bounded prefetch, and no shared memory or worker left behind."""

from __future__ import annotations

import gc
import io
import itertools
import math
import multiprocessing.forkserver
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from datagen import PREPROCESS_32, noise_image
from PIL import Image

from clipeval.engine.images import decode_procs
from clipeval.engine.errors import ConfigError, ImageError
from clipeval.engine.images.load import load_image
from clipeval.engine.images.pipeline import iter_pixel_batches
from clipeval.engine.images.preprocess import Preprocessor

SPEC = PREPROCESS_32
LINUX_SHM = os.path.isdir("/dev/shm") and os.path.exists("/proc/self/maps")
needs_linux_shm = pytest.mark.skipif(not LINUX_SHM, reason="inspects /dev/shm and /proc")


@pytest.fixture(scope="module")
def pp():
    return Preprocessor(SPEC)


@pytest.fixture(scope="module")
def image_paths(tmp_path_factory):
    """30 images: JPEG and PNG, 12..120 px a side (some smaller than the crop), several modes."""
    folder = tmp_path_factory.mktemp("procimgs")
    rng = np.random.default_rng(1)
    formats = [("jpg", "RGB"), ("png", "RGB"), ("jpg", "L"), ("png", "RGBA"), ("png", "P"),
               ("png", "LA"), ("jpg", "CMYK"), ("png", "L")]
    paths = []
    for i in range(30):
        ext, mode = formats[i % len(formats)]
        w, h = int(rng.integers(12, 120)), int(rng.integers(12, 120))
        img = noise_image(i, (w, h), mode)
        if mode == "RGBA":  # real transparency: composited onto white
            alpha = rng.integers(0, 256, (h, w), dtype=np.uint8)
            img.putalpha(Image.fromarray(alpha, "L"))
        path = folder / f"{i:02d}_{mode}.{ext}"
        img.save(path, **({"quality": 85} if ext == "jpg" else {}))
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def corrupt(tmp_path_factory, image_paths):
    folder = tmp_path_factory.mktemp("corrupt")
    path = folder / "truncated.jpg"
    path.write_bytes(pathlib.Path(image_paths[1]).read_bytes()[:200])
    return str(path)


def segments() -> list[str]:
    return sorted(n for n in os.listdir("/dev/shm") if n.startswith(decode_procs.segment_prefix()))


def mapped(name: str) -> bool:
    with open("/proc/self/maps") as f:
        return any(name in line for line in f)


def worker_pids() -> list[int]:
    """Live children of this process's fork server (the decode workers)."""
    server = getattr(multiprocessing.forkserver._forkserver, "_forkserver_pid", None)
    if server is None:
        return []
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == server and fields[0] != "Z":
                pids.append(int(entry))
    return pids


def run(items, pp, **kwargs):
    """(indices, pixels copied out batch by batch, failures, batch lengths)."""
    indices, pixels, failures, lengths = [], [], [], []
    for batch in iter_pixel_batches(items, pp, **kwargs):
        assert batch.pixels.dtype == np.float32 and batch.indices.dtype == np.int64
        assert len(batch.pixels) == len(batch.indices)
        indices.extend(batch.indices.tolist())
        pixels.append(np.array(batch.pixels))  # a view into shared memory: valid until the next batch
        failures.extend(batch.failures)
        lengths.append(len(batch))
    stacked = np.concatenate(pixels) if pixels else np.zeros((0, 3, 32, 32), np.float32)
    return indices, stacked, failures, lengths


@pytest.mark.parametrize("batch_size, workers, fast", [(7, 2, False), (16, 2, True), (4, 1, False), (13, 3, True)])
def test_bit_identical_to_threads_and_inline(pp, image_paths, batch_size, workers, fast):
    items = [(10 + i, p) for i, p in enumerate(image_paths)]
    common = dict(batch_size=batch_size, num_workers=workers, fast_decode=fast)
    procs = run(items, pp, decode="processes", **common)
    threads = run(items, pp, decode="threads", **common)
    inline = run(items, pp, batch_size=batch_size, num_workers=0, fast_decode=fast)
    draft = pp.spec.draft_size if fast else None
    oracle = np.stack([pp(load_image(p, fast_decode_size=draft)) for p in image_paths])
    assert procs[0] == threads[0] == inline[0] == [i for i, _ in items]
    assert procs[3] == [min(batch_size, len(items) - s) for s in range(0, len(items), batch_size)]
    assert procs[2] == []
    assert np.array_equal(procs[1], oracle)
    assert np.array_equal(threads[1], oracle) and np.array_equal(inline[1], oracle)
    if LINUX_SHM:
        assert segments() == []


def test_bytes_paths_and_pil_sources(pp, image_paths):
    data = pathlib.Path(image_paths[0]).read_bytes()
    sources = [data, bytearray(data), memoryview(data), pathlib.Path(image_paths[0]), Image.open(image_paths[0]),
               Image.open(image_paths[4]), Image.open(io.BytesIO(pathlib.Path(image_paths[3]).read_bytes())),
               noise_image(7, (50, 20), "L")]
    items = list(enumerate(sources))
    _, procs, failures, _ = run(items, pp, batch_size=3, num_workers=2, decode="processes")
    _, threads, _, _ = run(items, pp, batch_size=3, num_workers=2, decode="threads")
    assert failures == []
    assert np.array_equal(procs, threads)
    assert all(np.array_equal(procs[0], procs[k]) for k in range(1, 5))


def mixed(image_paths, corrupt):
    """Good images with bad ones at 5 (truncated JPEG), 9 (not a source), 10 (missing file)."""
    bad = {5: corrupt, 9: 12345, 10: corrupt + ".missing"}
    good = iter(image_paths)
    return [(i, bad[i] if i in bad else next(good)) for i in range(20)], sorted(bad)


def test_skip_reports_the_same_failures_as_threads(pp, image_paths, corrupt):
    items, bad = mixed(image_paths, corrupt)
    procs = run(items, pp, batch_size=6, num_workers=2, decode="processes", on_error="skip")
    threads = run(items, pp, batch_size=6, num_workers=2, decode="threads", on_error="skip")
    assert procs[0] == threads[0] == [i for i, _ in items if i not in bad]
    assert [f[0] for f in procs[2]] == bad
    assert procs[2] == threads[2]  # (index, the original source, reason)
    assert np.array_equal(procs[1], threads[1])
    assert procs[3] == [5, 4, 6, 2]  # rows of the batches: only the images that decoded


@pytest.mark.parametrize("workers", [1, 2])
def test_fail_raises_at_the_first_bad_image_after_earlier_batches(pp, image_paths, corrupt, workers):
    items, _ = mixed(image_paths, corrupt)
    seen = []
    with pytest.raises(ImageError) as err:
        for batch in iter_pixel_batches(items, pp, batch_size=2, num_workers=workers, decode="processes"):
            seen.extend(batch.indices.tolist())
    assert seen == [0, 1, 2, 3]
    assert "#5" in str(err.value) and corrupt in str(err.value)
    if LINUX_SHM:
        assert segments() == [] and worker_pids() == []


def test_prefetch_is_bounded(pp, image_paths):
    pulled = 0

    def endless():
        nonlocal pulled
        for i in itertools.count():
            pulled += 1
            yield i, image_paths[i % len(image_paths)]

    batch_size, workers, prefetch = 3, 2, 1
    seen = []
    gen = iter_pixel_batches(endless(), pp, batch_size=batch_size, num_workers=workers, prefetch_batches=prefetch,
                             decode="processes")
    for k, batch in enumerate(gen):
        assert batch.indices.tolist() == list(range(k * batch_size, (k + 1) * batch_size))
        seen.append(pulled / batch_size - k)  # batches pulled, the one just received included
        if k == 5:
            break
    gen.close()
    # batches_ahead(3, 2, 1) = 3 decoding ahead while the consumer holds one
    assert max(seen) == 1 + math.ceil(2 * workers / batch_size) + 1


@needs_linux_shm
def test_early_close_frees_the_segment_and_keeps_held_pixels_readable(pp, image_paths):
    assert segments() == []
    items = ((i, image_paths[i % len(image_paths)]) for i in range(10_000))
    gen = iter_pixel_batches(items, pp, batch_size=4, num_workers=2, prefetch_batches=3, decode="processes")
    batch = next(gen)
    [name] = segments()
    assert worker_pids() != []
    gen.close()
    assert segments() == [] and worker_pids() == []
    # the name is gone; the memory stays mapped while the consumer holds a view of it
    expected = np.stack([pp(load_image(p)) for p in image_paths[:4]])
    assert np.array_equal(batch.pixels, expected)
    assert mapped(name)
    del batch
    gc.collect()
    assert not mapped(name)


@needs_linux_shm
def test_break_out_of_the_loop_cleans_up(pp, image_paths):
    for batch in iter_pixel_batches(enumerate(image_paths), pp, batch_size=4, num_workers=2, decode="processes"):
        break
    del batch
    gc.collect()  # the abandoned generator is closed when collected
    assert segments() == [] and worker_pids() == []


class _KillsTheWorker(str):
    """A path that, unpickled in a worker, ends that process (stands in for a decoder crash)."""

    def __reduce__(self):
        return (os._exit, (3,))


def test_worker_crash_is_a_clear_error(pp, image_paths):
    items = [(i, p) for i, p in enumerate(image_paths[:6])] + [(6, _KillsTheWorker(image_paths[6]))]
    items += [(i, p) for i, p in enumerate(image_paths[7:12], 7)]
    with pytest.raises(ImageError, match="decode worker process stopped unexpectedly") as err:
        list(iter_pixel_batches(items, pp, batch_size=4, num_workers=2, decode="processes"))
    assert "decode='threads'" in str(err.value)
    if LINUX_SHM:
        assert segments() == [] and worker_pids() == []


def test_error_from_the_input_iterator_propagates_and_cleans_up(pp, image_paths):
    def broken():
        yield from enumerate(image_paths[:5])
        raise RuntimeError("dataset went away")

    with pytest.raises(RuntimeError, match="dataset went away"):
        list(iter_pixel_batches(broken(), pp, batch_size=2, num_workers=2, decode="processes"))
    if LINUX_SHM:
        assert segments() == [] and worker_pids() == []


def test_zero_workers_decodes_inline(pp, image_paths):
    for batch in iter_pixel_batches(enumerate(image_paths[:5]), pp, batch_size=2, num_workers=0, decode="processes"):
        assert batch.pixels.base is None  # its own array: no shared memory, no pool
        if LINUX_SHM:
            assert segments() == []


def test_empty_input_and_unstarted_generator(pp):
    assert list(iter_pixel_batches([], pp, batch_size=4, num_workers=2, decode="processes")) == []
    gen = iter_pixel_batches([], pp, batch_size=4, num_workers=2, decode="processes")
    gen.close()
    if LINUX_SHM:
        assert segments() == []


@pytest.mark.parametrize("value", ["gpu", "Threads", None, 1])
def test_bad_decode_is_a_config_error(pp, value):
    with pytest.raises(ConfigError, match="decode") as err:
        iter_pixel_batches([], pp, batch_size=4, num_workers=1, decode=value)
    assert "threads" in err.value.remedy and "processes" in err.value.remedy


@needs_linux_shm
def test_too_little_shared_memory_is_a_config_error(pp, image_paths):
    free = os.statvfs("/dev/shm").f_bavail * os.statvfs("/dev/shm").f_frsize
    batch_size = free // (3 * 32 * 32 * 4) + 1  # one slot alone is more than is free
    gen = iter_pixel_batches(enumerate(image_paths), pp, batch_size=batch_size, num_workers=1, decode="processes")
    with pytest.raises(ConfigError, match="shared memory") as err:
        next(gen)
    assert "shm-size" in err.value.remedy
    assert segments() == []


_SCRIPT = """
import sys
from clipeval.engine.images.pipeline import iter_pixel_batches
from clipeval.engine.images.preprocess import Preprocessor

if __name__ == "__main__":
    spec, paths = eval(sys.argv[1]), sys.argv[2:]
    batches = iter_pixel_batches(enumerate(paths), Preprocessor(spec), batch_size=2, num_workers=2, decode="processes")
    print("decoded", sum(len(b) for b in batches))
"""


@needs_linux_shm
def test_a_checkout_in_the_working_directory_does_not_shadow_the_package(tmp_path, image_paths):
    """Run from a directory holding another ``clipeval/`` (as a source checkout's root does),
    with the package found through the path only (no editable-install finder)."""
    import clipeval
    import clipeval.engine

    shim = tmp_path / "site" / "clipeval"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text(pathlib.Path(clipeval.__file__).read_text())
    (shim / "engine").symlink_to(pathlib.Path(clipeval.engine.__file__).parent)
    checkout = tmp_path / "checkout"
    (checkout / "clipeval").mkdir(parents=True)
    (checkout / "clipeval" / "__init__.py").write_text("")
    script = tmp_path / "bin" / "decode.py"
    script.parent.mkdir()
    script.write_text(_SCRIPT)
    third_party = {str(pathlib.Path(m.__file__).parents[1]) for m in (np, Image)}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(shim.parent), *sorted(third_party)])}
    done = subprocess.run([sys.executable, "-S", str(script), repr(SPEC), *image_paths[:5]], cwd=checkout, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["decoded", "5"]


def test_prestart_starts_the_fork_server_in_the_background():
    code = (
        "import multiprocessing.forkserver as fs\n"
        "from clipeval.engine.images.decode_procs import prestart\n"
        "assert fs._forkserver._forkserver_pid is None\n"
        "thread = prestart()\n"
        "thread.join(30)\n"
        "assert fs._forkserver._forkserver_pid is not None\n"
        "assert prestart().join(30) is None  # again: harmless\n"
        "print('started')\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "started"
