"""load_image: every mode to the right RGB, every source kind, every way a file can be bad."""

from __future__ import annotations

import io
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from clipeval.engine.errors import ImageError
from clipeval.engine.images.load import load_image, to_rgb

RNG_SEED = 11


def rgb_noise(w=31, h=23, seed=RNG_SEED) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def on_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Oracle: composite onto opaque white, rounded half up (what transformers' convert_rgb gives)."""
    a = alpha.astype(np.int64)[..., None]
    return np.floor((rgb.astype(np.int64) * a + 255 * (255 - a)) / 255 + 0.5).astype(np.uint8)


def grey3(g: np.ndarray) -> np.ndarray:
    return np.repeat(g[..., None], 3, axis=-1).astype(np.uint8)


def as_array(img: Image.Image) -> np.ndarray:
    assert img.mode == "RGB"
    return np.asarray(img)


# --- modes --------------------------------------------------------------------------------------


def test_rgb_unchanged():
    arr = rgb_noise()
    assert np.array_equal(as_array(load_image(Image.fromarray(arr))), arr)


def test_L_replicates_grey():
    g = rgb_noise()[..., 0]
    assert np.array_equal(as_array(load_image(Image.fromarray(g, "L"))), grey3(g))


def test_1_is_black_or_white():
    bits = rgb_noise()[..., 0] > 127
    img = Image.fromarray(bits)
    assert img.mode == "1"
    assert np.array_equal(as_array(load_image(img)), grey3(bits * 255))


def test_RGBA_composites_on_white():
    arr = rgb_noise()
    alpha = np.random.default_rng(1).integers(0, 256, arr.shape[:2], dtype=np.uint8)
    alpha[0, :3] = (0, 255, 128)
    got = as_array(load_image(Image.fromarray(np.dstack([arr, alpha]), "RGBA")))
    assert np.array_equal(got, on_white(arr, alpha))
    assert np.array_equal(got[0, 0], [255, 255, 255])  # fully transparent -> white
    assert np.array_equal(got[0, 1], arr[0, 1])  # opaque -> itself


def test_LA_composites_on_white():
    g = rgb_noise()[..., 0]
    alpha = np.random.default_rng(2).integers(0, 256, g.shape, dtype=np.uint8)
    img = Image.fromarray(np.dstack([g, alpha]), "LA")
    assert np.array_equal(as_array(load_image(img)), on_white(grey3(g), alpha))


def palette_image(with_transparency: bool) -> tuple[Image.Image, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    index = rng.integers(0, 8, (17, 19), dtype=np.uint8)
    palette = rng.integers(0, 256, (256, 3), dtype=np.uint8)
    img = Image.fromarray(index, "P")
    img.putpalette(palette.ravel().tolist())
    if with_transparency:
        img.info["transparency"] = 5
    return img, index, palette


def test_P_uses_the_palette():
    img, index, palette = palette_image(False)
    assert np.array_equal(as_array(load_image(img)), palette[index])


def test_P_with_transparency_composites_on_white():
    img, index, palette = palette_image(True)
    expected = palette[index].copy()
    expected[index == 5] = 255
    assert (index == 5).any()
    assert np.array_equal(as_array(load_image(img)), expected)


def test_P_with_transparency_from_a_png_and_gif_file(tmp_path):
    img, index, palette = palette_image(True)
    expected = palette[index].copy()
    expected[index == 5] = 255
    for ext in ("png", "gif"):
        path = tmp_path / f"pal.{ext}"
        img.save(path, transparency=5)
        assert np.array_equal(as_array(load_image(path)), expected), ext


def test_CMYK_follows_the_subtractive_formula():
    cmyk = np.random.default_rng(4).integers(0, 256, (13, 11, 4), dtype=np.uint8).astype(np.int64)
    expected = np.floor((255 - cmyk[..., :3]) * (255 - cmyk[..., 3:]) / 255 + 0.5).astype(np.uint8)
    got = as_array(load_image(Image.fromarray(cmyk.astype(np.uint8), "CMYK")))
    assert np.array_equal(got, expected)


SIXTEEN = np.array([[0, 128, 129, 257, 32767, 32768, 65534, 65535, 1000, 40000]], dtype=np.uint16)


def sixteen_expected(v: np.ndarray) -> np.ndarray:
    return grey3(np.floor(np.clip(v.astype(np.float64), 0, 65535) * 255 / 65535 + 0.5))


def test_I16_scales_to_8_bit_instead_of_clipping(tmp_path):
    img = Image.fromarray(SIXTEEN)
    assert img.mode == "I;16"
    expected = sixteen_expected(SIXTEEN)
    assert np.array_equal(as_array(load_image(img)), expected)
    assert expected[0, 4, 0] == 127 and expected[0, 5, 0] == 128  # mid-grey, not clipped to white
    path = tmp_path / "grey16.png"
    img.save(path)
    assert Image.open(path).mode == "I;16"
    assert np.array_equal(as_array(load_image(path)), expected)


def test_I_is_read_as_16_bit_and_clipped():
    values = np.array([[-5, 0, 257, 65535, 70000, 32768]], dtype=np.int32)
    img = Image.fromarray(values)
    assert img.mode == "I"
    assert np.array_equal(as_array(load_image(img)), sixteen_expected(values))


def test_F_follows_pillow_clip_and_truncate():
    values = np.array([[0.4, 1.6, 2.5, 2.9, 254.9, 255.5, -0.5, -5.0, 1e9]], dtype=np.float32)
    expected = grey3(np.clip(np.trunc(values), 0, 255))
    assert np.array_equal(as_array(load_image(Image.fromarray(values))), expected)


def test_to_rgb_returns_rgb_for_every_mode():
    base = Image.fromarray(rgb_noise())
    for mode in ("1", "L", "P", "RGB", "RGBA", "LA", "CMYK", "YCbCr", "I", "F", "I;16", "HSV", "LAB", "PA", "RGBa", "La"):
        img = base.convert("L").convert(mode) if mode in ("I", "F", "I;16") else base.convert(mode)
        out = to_rgb(img)
        assert out.mode == "RGB" and out.size == base.size, mode


# --- sources ----------------------------------------------------------------------------------


def write_jpeg(path, w=64, h=48, quality=90):
    Image.fromarray(rgb_noise(w, h)).save(path, quality=quality)
    return path


def test_path_bytes_and_pil_give_identical_pixels(tmp_path):
    folder = tmp_path / "ünïcödé dir with spaces"
    folder.mkdir()
    path = write_jpeg(folder / "图 片 1.jpg")
    from_path = as_array(load_image(path))
    from_str = as_array(load_image(str(path)))
    from_bytes = as_array(load_image(path.read_bytes()))
    from_bytearray = as_array(load_image(bytearray(path.read_bytes())))
    from_pil = as_array(load_image(Image.open(path)))
    for other in (from_str, from_bytes, from_bytearray, from_pil):
        assert np.array_equal(from_path, other)
    assert from_path.shape == (48, 64, 3)


def test_png_round_trip_is_lossless(tmp_path):
    arr = rgb_noise()
    Image.fromarray(arr).save(tmp_path / "a.png")
    assert np.array_equal(as_array(load_image(tmp_path / "a.png")), arr)


def test_fast_decode_reduces_jpeg_but_not_below_the_target(tmp_path):
    path = write_jpeg(tmp_path / "big.jpg", 640, 480)
    assert load_image(path).size == (640, 480)
    assert load_image(path, fast_decode_size=(224, 224)).size == (320, 240)  # 1/2 scale keeps >= 224
    assert load_image(path, fast_decode_size=(100, 100)).size == (160, 120)  # 1/4
    assert load_image(path, fast_decode_size=(400, 300)).size == (640, 480)  # no smaller scale fits
    Image.fromarray(rgb_noise(640, 480)).save(tmp_path / "big.png")
    assert load_image(tmp_path / "big.png", fast_decode_size=(224, 224)).size == (640, 480)  # not a JPEG
    assert load_image(Image.open(path), fast_decode_size=(224, 224)).size == (640, 480)  # caller's image untouched


# --- bad input --------------------------------------------------------------------------------


def png_header_only(width: int, height: int) -> bytes:
    """A PNG declaring width x height RGB pixels but carrying a few bytes of data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_only(100_000, 100_000))  # 30 GB of pixels if decoded
    with pytest.raises(ImageError) as err:
        load_image(path)
    assert str(path) in str(err.value)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_image_over_our_pixel_limit_is_refused(tmp_path):
    path = tmp_path / "large.png"
    path.write_bytes(png_header_only(10_000, 9_000))  # above the limit, below Pillow's own error
    with pytest.raises(ImageError) as err:
        load_image(path)
    assert "limit" in str(err.value) and str(path) in str(err.value)
    small = tmp_path / "small.png"
    Image.fromarray(rgb_noise(100, 100)).save(small)
    with pytest.raises(ImageError):
        load_image(small, max_pixels=100 * 100 - 1)
    assert load_image(small, max_pixels=100 * 100).size == (100, 100)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_file_is_an_image_error(tmp_path, fmt):
    buf = io.BytesIO()
    Image.fromarray(rgb_noise(200, 150)).save(buf, fmt)
    data = buf.getvalue()
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError) as err:
        load_image(path)
    assert str(path) in str(err.value) and err.value.remedy
    with pytest.raises(ImageError):
        load_image(data[: len(data) // 2])


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageError) as err:
        load_image(path)
    assert str(path) in str(err.value) and "empty" in str(err.value)
    with pytest.raises(ImageError):
        load_image(b"")


def test_text_file_named_jpg(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a picture\n")
    with pytest.raises(ImageError) as err:
        load_image(path)
    assert str(path) in str(err.value) and "not an image" in str(err.value)


def test_missing_file_and_directory(tmp_path):
    path = tmp_path / "nowhere" / "x.jpg"
    with pytest.raises(ImageError) as err:
        load_image(path)
    assert str(path) in str(err.value) and "does not exist" in str(err.value) and err.value.remedy
    with pytest.raises(ImageError) as err:
        load_image(tmp_path)
    assert "directory" in str(err.value)


def test_unsupported_source_type():
    with pytest.raises(ImageError) as err:
        load_image(12345)
    assert "int" in str(err.value)


@pytest.mark.parametrize("size", [(640, 480), (481, 1023), (1800, 449), (225, 2000), (900, 900)])
def test_draft_never_decodes_below_the_resize_target(tmp_path, size):
    from clipeval.engine.images.preprocess import PreprocessSpec

    path = write_jpeg(tmp_path / "x.jpg", *size)
    for spec_size in ({"shortest_edge": 224}, {"shortest_edge": 112}, {"height": 200, "width": 300}):
        spec = PreprocessSpec.from_dict({
            "do_convert_rgb": True, "do_resize": True, "size": spec_size, "resample": "bicubic",
            "do_center_crop": True, "crop_size": {"height": 100, "width": 100},
            "do_rescale": False, "do_normalize": False,
        })
        w, h = load_image(path, fast_decode_size=spec.draft_size).size
        tw, th = spec.resize_target(*size)
        # never reduced below the target (an image already smaller than it is not reduced at all)
        assert w >= min(tw, size[0]) and h >= min(th, size[1]), (size, spec_size, (w, h), (tw, th))
        if w < size[0]:
            assert w >= tw and h >= th


# --- header probe: bad files refused before their data is read ----------------------------------

from clipeval.engine.images import load as images_mod  # noqa: E402
from clipeval.engine.images.load import DEFAULT_MAX_PIXELS, HEADER_READS, probe_image  # noqa: E402


class CountingRaw(io.RawIOBase):
    """A raw file that counts the bytes read through it (all of PIL's reads pass here)."""

    total = 0

    def __init__(self, path):
        self._f = io.FileIO(path, "r")

    def readable(self):
        return True

    def seekable(self):
        return True

    def readinto(self, buf):
        n = self._f.readinto(buf)
        CountingRaw.total += n or 0
        return n

    def seek(self, offset, whence=0):
        return self._f.seek(offset, whence)

    def tell(self):
        return self._f.tell()

    def close(self):
        self._f.close()
        super().close()


@pytest.fixture()
def counted_reads(monkeypatch):
    """Route the image module's file opens through :class:`CountingRaw`; yields the counter."""
    CountingRaw.total = 0

    def counting_open(path, mode="r", *args, **kwargs):
        assert mode == "rb"
        return io.BufferedReader(CountingRaw(path), buffer_size=8192)

    monkeypatch.setattr(images_mod, "open", counting_open, raising=False)
    yield CountingRaw


TWO_GB = 2 * 1024 ** 3


@pytest.mark.parametrize("head", [b"", b"this is not a picture, only text\n", b"\x00" * 64, b"GIF8", b"\x89PNG\r\n\x1a\n",
                                  b"\xff\xd8\xff"])
def test_a_2gb_file_that_is_not_an_image_is_refused_after_its_first_bytes(tmp_path, counted_reads, head):
    """A 2 GB file named .jpg is refused without reading it: after the few bytes that identify
    formats, or (a file that starts like a JPEG, whose reader skips junk one byte per read) after
    ``HEADER_READS`` reads at most."""
    bound = 64 * 1024 if not head.startswith(b"\xff\xd8") else HEADER_READS + 64 * 1024
    path = tmp_path / "huge.jpg"
    with open(path, "wb") as f:  # sparse: 2 GB on paper, nothing on disk
        f.write(head)
        f.truncate(TWO_GB)
    assert path.stat().st_size == TWO_GB
    for check in (probe_image, load_image):
        counted_reads.total = 0
        with pytest.raises(ImageError) as err:
            check(path)
        assert str(path) in str(err.value) and err.value.remedy
        assert counted_reads.total <= bound, (check.__name__, counted_reads.total)


def test_probe_reads_only_the_header_of_a_large_valid_image(tmp_path, counted_reads):
    path = tmp_path / "big.png"
    Image.fromarray(rgb_noise(1500, 1000)).save(path)  # ~4.5 MB of incompressible pixels
    header = probe_image(path)
    assert (header.format, header.width, header.height, header.mode) == ("PNG", 1500, 1000, "RGB")
    assert counted_reads.total <= 64 * 1024 < path.stat().st_size
    counted_reads.total = 0
    assert load_image(path).size == (1500, 1000)
    assert counted_reads.total >= path.stat().st_size - 64 * 1024  # decoding does read it all


def _encoded(fmt: str, size=(37, 29), mode="RGB") -> bytes:
    buf = io.BytesIO()
    img = Image.fromarray(rgb_noise(*size))
    if mode != "RGB":
        img = img.convert(mode)
    img.save(buf, fmt)
    return buf.getvalue()


VALID = {
    "jpg": _encoded("JPEG"), "png": _encoded("PNG"), "gif": _encoded("GIF", mode="P"),
    "bmp": _encoded("BMP"), "webp": _encoded("WEBP"), "tif": _encoded("TIFF"), "ppm": _encoded("PPM"),
}


@pytest.mark.parametrize("ext", sorted(VALID))
@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow's TIFF reader warns of the cut EXIF it reads
def test_every_cut_of_a_valid_file_probe_never_refuses_what_decodes(tmp_path, ext):
    """The kind "a file cut short": at every cut length (the whole header byte by byte, then
    coarser) the probe refuses only files that do not decode, and every failure is an ImageError."""
    data = VALID[ext]
    header = probe_image(data)
    assert (header.width, header.height) == (37, 29)
    cuts = sorted(set(range(0, min(len(data), 300))) | set(range(300, len(data), max(1, len(data) // 40))))
    refused = 0
    for n in cuts:
        path = tmp_path / f"cut{n}.{ext}"
        path.write_bytes(data[:n])
        try:
            probe_image(path)
        except ImageError as exc:
            refused += 1
            assert str(path) in exc.message and exc.remedy
            with pytest.raises(ImageError):  # a probe refusal is never a false alarm
                load_image(path)
            continue
        try:
            load_image(path)
        except ImageError:
            pass  # damage past the header: found while decoding
    assert refused >= min(10, len(cuts) // 4)  # a header cut short is caught by the probe


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_probe_kinds_of_bad_file(tmp_path):
    """One of each kind the pre-check must catch, and what it says."""
    long_name = tmp_path / ("x" * 300 + ".jpg")
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image\n")
    (tmp_path / "bomb.png").write_bytes(png_header_only(100_000, 100_000))
    (tmp_path / "over.png").write_bytes(png_header_only(10_000, 9_000))
    (tmp_path / "cut.png").write_bytes(VALID["png"][:20])
    (tmp_path / "a dir.jpg").mkdir()
    cases = {
        tmp_path / "missing.jpg": "does not exist",
        long_name: "cannot be read",
        fifo: "not a regular file",
        tmp_path / "a dir.jpg": "directory",
        tmp_path / "empty.jpg": "empty",
        tmp_path / "text.jpg": "not an image",
        tmp_path / "bomb.png": "pixels",
        tmp_path / "over.png": f"limit of {DEFAULT_MAX_PIXELS}",
        tmp_path / "cut.png": "cannot be opened",
    }
    for path, needle in cases.items():
        with pytest.raises(ImageError) as err:
            probe_image(path)
        assert needle in str(err.value), (path.name[:20], str(err.value))
        assert err.value.remedy
    probe_image(tmp_path / "over.png", max_pixels=None)  # the limit is the only problem there


def test_large_but_valid_headers_are_read(tmp_path):
    """Metadata that real files carry (a 1 MB ICC profile in 16 JPEG segments, 60 KB of EXIF,
    a GIF comment of 4,000 sub-blocks, a 900 KB PNG text chunk) is within the header budget."""
    rng = np.random.default_rng(5)
    img = Image.fromarray(rgb_noise(64, 48))
    icc = bytes(rng.integers(0, 256, 1024 * 1024, dtype=np.uint8))
    exif = Image.Exif()
    exif[0x010E] = "x" * 60_000  # ImageDescription
    img.save(tmp_path / "meta.jpg", icc_profile=icc, exif=exif)
    img.convert("P").save(tmp_path / "meta.gif", comment=b"c" * (255 * 4000))
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("workflow", "w" * 900_000)
    img.save(tmp_path / "meta.png", pnginfo=info)
    for name in ("meta.jpg", "meta.gif", "meta.png"):
        header = probe_image(tmp_path / name)
        assert (header.width, header.height) == (64, 48), name
        assert load_image(tmp_path / name).size == (64, 48)
