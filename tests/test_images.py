"""load_image: every mode to the right RGB, every source kind, every way a file can be bad."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from clipeval.engine.errors import ImageError
from clipeval.engine.images import load_image, to_rgb

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
    from clipeval.engine.preprocess import PreprocessSpec

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
