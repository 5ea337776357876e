"""serving.decode.decode_image on images generated in memory with Pillow."""

from __future__ import annotations

import io
import resource
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image, features

from serving.decode import DecodeLimits, decode_image
from serving.errors import ErrorCode, InputError

H = W = 28


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def decode(data: bytes, channels: int = 1, limits: DecodeLimits = DecodeLimits()) -> np.ndarray:
    out = decode_image(data, H, W, channels, limits)
    assert out.dtype == np.uint8
    assert out.shape == (channels, H, W)
    assert out.flags.c_contiguous
    return out


def error_code(data: bytes, limits: DecodeLimits = DecodeLimits()) -> ErrorCode:
    with pytest.raises(InputError) as caught:
        decode_image(data, H, W, 1, limits)
    assert caught.value.message
    return caught.value.code


def pattern(height: int = H, width: int = W) -> np.ndarray:
    """A smooth grey-level image with structure (JPEG-friendly), uint8."""
    y, x = np.mgrid[0:height, 0:width]
    return ((x * 255 // max(width - 1, 1) + y * 128 // max(height - 1, 1)) % 256).astype(np.uint8)


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
    )


def png_declaring(width: int, height: int) -> bytes:
    """A tiny, valid-looking PNG whose IHDR declares width x height 8-bit grey pixels."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


# --------------------------------------------------------------------------- formats

LOSSLESS = {
    "PNG": {},
    "BMP": {},
    "TIFF": {},
    "GIF": {},
    "WEBP": {"lossless": True},
}


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF"])
@pytest.mark.parametrize("size", [(28, 28), (40, 40), (100, 100)])
def test_every_supported_format_decodes(fmt, size) -> None:
    if fmt == "WEBP" and not features.check("webp"):
        pytest.skip("Pillow was built without WebP")
    source = Image.fromarray(pattern(*size), mode="L")
    options = LOSSLESS.get(fmt, {"quality": 95})
    out = decode(encode(source, fmt, **options))
    expected = np.asarray(source.resize((W, H), Image.Resampling.BILINEAR, reducing_gap=3.0))
    if fmt in LOSSLESS:
        if size == (W, H):
            assert np.array_equal(out[0], np.asarray(source))
        else:  # the same pixels as resizing the original directly
            assert np.abs(out[0].astype(int) - expected).max() <= 1
    else:
        assert np.abs(out[0].astype(int) - expected).mean() < 3


def test_rgb_images_decode_to_luma() -> None:
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[..., 0] = 200
    rgb[..., 1] = 100
    rgb[..., 2] = 50
    out = decode(encode(Image.fromarray(rgb, mode="RGB"), "PNG"))
    luma = round(200 * 0.299 + 100 * 0.587 + 50 * 0.114)
    assert np.all(np.abs(out.astype(int) - luma) <= 1)


def test_rgb_model_gets_three_channels() -> None:
    grey = Image.fromarray(pattern(), mode="L")
    out = decode(encode(grey, "PNG"), channels=3)
    assert np.array_equal(out[0], out[1]) and np.array_equal(out[1], out[2])
    assert np.array_equal(out[0], pattern())


def test_model_sized_greyscale_is_pixel_identical() -> None:
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (H, W), dtype=np.uint8)
    for fmt in ("PNG", "BMP", "TIFF"):
        out = decode(encode(Image.fromarray(pixels, mode="L"), fmt))
        assert np.array_equal(out[0], pixels), fmt


def test_animated_gif_uses_the_first_frame() -> None:
    frames = [Image.new("L", (W, H), value) for value in (40, 200, 120)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    out = decode(data)
    assert np.all(out == 40)


# --------------------------------------------------------------------------- colour


def test_rgba_is_composited_onto_black() -> None:
    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[..., :3] = 255
    rgba[:, :14, 3] = 0  # left half fully transparent white
    rgba[:, 14:, 3] = 255  # right half opaque white
    rgba[10:12, 14:, 3] = 128  # a half-transparent band
    out = decode(encode(Image.fromarray(rgba, mode="RGBA"), "PNG"))[0]
    assert np.all(out[:, :14] == 0)
    assert np.all(out[:10, 14:] == 255) and np.all(out[12:, 14:] == 255)
    assert np.all(np.abs(out[10:12, 14:].astype(int) - 128) <= 1)


def test_la_image_is_composited_onto_black() -> None:
    la = Image.merge("LA", [Image.new("L", (W, H), 255), Image.new("L", (W, H), 0)])
    out = decode(encode(la, "PNG"))
    assert np.all(out == 0)


def test_palette_transparency_is_composited_onto_black() -> None:
    indices = np.zeros((H, W), np.uint8)
    indices[:, W // 2 :] = 1
    image = Image.fromarray(indices, mode="P")
    image.putpalette([255, 255, 255, 90, 90, 90] + [0, 0, 0] * 254)
    data = encode(image, "PNG", transparency=0)  # index 0 (white) is transparent
    reopened = Image.open(io.BytesIO(data))
    assert reopened.mode == "P" and "transparency" in reopened.info
    out = decode(data)[0]
    assert np.all(out[:, : W // 2] == 0)
    assert np.all(out[:, W // 2 :] == 90)


def test_gif_with_transparency_is_composited_onto_black() -> None:
    indices = np.ones((H, W), np.uint8)
    indices[:5] = 0
    image = Image.fromarray(indices, mode="P")
    image.putpalette([255, 255, 255, 170, 170, 170] + [0, 0, 0] * 254)
    out = decode(encode(image, "GIF", transparency=0))[0]
    assert np.all(out[:5] == 0)
    assert np.all(out[5:] == 170)


def test_16_bit_png() -> None:
    values = np.full((H, W), 65535, np.uint16)
    values[:, :7] = 0
    values[:, 7:14] = 32896  # 128 * 257
    values[:, 14:21] = 16448  # 64 * 257
    source = Image.fromarray(values)
    assert source.mode == "I;16"
    data = encode(source, "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    out = decode(data)[0]
    assert np.all(out[:, :7] == 0)
    assert np.all(out[:, 7:14] == 128)
    assert np.all(out[:, 14:21] == 64)
    assert np.all(out[:, 21:] == 255)


def test_dark_16_bit_png_keeps_its_brightness() -> None:
    values = np.full((H, W), 255, np.uint16)  # 255 / 65535: nearly black
    out = decode(encode(Image.fromarray(values), "PNG"))
    assert np.all(out <= 1)


def test_cmyk_jpeg() -> None:
    cmyk = np.zeros((H, W, 4), np.uint8)
    cmyk[:, W // 2 :, 3] = 255  # right half: full black ink; left half: no ink (white)
    data = encode(Image.fromarray(cmyk, mode="CMYK"), "JPEG", quality=100)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    out = decode(data)[0].astype(int)
    assert np.all(out[:, : W // 2 - 2] >= 250)
    assert np.all(out[:, W // 2 + 2 :] <= 5)


def test_exif_orientation_is_applied() -> None:
    stored = np.zeros((H, W), np.uint8)
    stored[:10, :10] = 255  # a bright block in the stored top-left corner
    image = Image.fromarray(stored, mode="L")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation 6: display = stored rotated 90 degrees clockwise
    data = encode(image, "JPEG", quality=100, exif=exif.tobytes())
    out = decode(data)[0].astype(int)
    expected = np.rot90(stored, k=-1)  # clockwise: the block moves to the top-right
    assert np.abs(out - expected).mean() < 4
    assert out[:10, -10:].mean() > 240
    assert out[:10, :10].mean() < 15
    without = decode(encode(image, "JPEG", quality=100))[0].astype(int)
    assert without[:10, :10].mean() > 240  # no EXIF: used as stored


@pytest.mark.parametrize("orientation", [(56, 28), (28, 56)])
def test_non_square_is_padded_centred_then_resized(orientation) -> None:
    width, height = orientation
    out = decode(encode(Image.new("L", (width, height), 255), "PNG"))[0].astype(int)
    image = out if width > height else out.T  # rows across the short side
    # a 2:1 white image padded to a square with black covers the middle half: rows 7..20
    assert np.all(image[:5] == 0) and np.all(image[-5:] == 0)
    assert np.all(image[8:20] == 255)
    assert np.array_equal(image, image[::-1])  # centred: symmetric
    assert np.all(image == image[:, :1])  # nothing cropped along the long side
    assert image.sum(axis=1).sum() == pytest.approx(255 * 14 * 28, rel=0.02)


def test_non_square_keeps_aspect_ratio_of_content() -> None:
    canvas = np.zeros((30, 90), np.uint8)
    canvas[10:20, 40:50] = 255  # a square in the middle of a wide image
    out = decode(encode(Image.fromarray(canvas, mode="L"), "PNG"))[0]
    ys, xs = np.nonzero(out > 127)
    assert ys.max() - ys.min() == xs.max() - xs.min()  # still a square


# --------------------------------------------------------------------------- limits and errors


@pytest.mark.parametrize(
    ("width", "height"),
    [(100_000, 100_000), (20_000, 10_000), (8_000, 6_000)],
    ids=["beyond-pillow-error", "pillow-warning-range", "above-max-pixels"],
)
def test_decompression_bomb_is_refused_without_allocating(width, height) -> None:
    data = png_declaring(width, height)
    assert len(data) < 200
    with Image.open(io.BytesIO(png_declaring(100, 100))) as small:  # the crafting is valid
        assert small.size == (100, 100)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    assert error_code(data) == ErrorCode.IMAGE_TOO_LARGE
    assert time.perf_counter() - started < 1.0
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    assert grown_kib < 50 * 1024  # 48 MB for the smallest declared image, 10 GB for the largest


def test_max_pixels_limit_is_configurable() -> None:
    data = encode(Image.new("L", (100, 100), 10), "PNG")
    assert error_code(data, DecodeLimits(max_pixels=9_999)) == ErrorCode.IMAGE_TOO_LARGE
    assert decode(data, limits=DecodeLimits(max_pixels=10_000)).shape == (1, H, W)


def test_body_over_max_bytes() -> None:
    data = encode(Image.fromarray(pattern(), mode="L"), "PNG")
    limits = DecodeLimits(max_bytes=len(data) - 1)
    assert error_code(data, limits) == ErrorCode.BODY_TOO_LARGE
    assert decode(data, limits=DecodeLimits(max_bytes=len(data))).shape == (1, H, W)


def test_default_body_limit_is_10_mib() -> None:
    assert error_code(b"\x00" * (10 * 1024 * 1024 + 1)) == ErrorCode.BODY_TOO_LARGE


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_image_is_undecodable(fmt) -> None:
    rng = np.random.default_rng(2)
    noise = Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8), mode="L")
    data = encode(noise, fmt)
    for cut in (len(data) // 2, len(data) - 30):  # pixel data missing
        assert error_code(data[:cut]) == ErrorCode.UNDECODABLE_IMAGE, cut


def test_header_only_png_is_undecodable() -> None:
    data = encode(Image.fromarray(pattern(), mode="L"), "PNG")
    assert error_code(data[:40]) == ErrorCode.UNDECODABLE_IMAGE


def test_empty_body() -> None:
    assert error_code(b"") == ErrorCode.EMPTY_BODY


@pytest.mark.parametrize("seed", range(5))
def test_random_bytes_are_undecodable(seed) -> None:
    data = np.random.default_rng(seed).integers(0, 256, 1000, dtype=np.uint8).tobytes()
    assert error_code(data) == ErrorCode.UNDECODABLE_IMAGE


@pytest.mark.parametrize(
    "data",
    [b"hello world", b'{"image": "x"}', b"<svg xmlns='http://www.w3.org/2000/svg'/>"],
    ids=["text", "json", "svg"],
)
def test_non_images_are_undecodable(data) -> None:
    assert error_code(data) == ErrorCode.UNDECODABLE_IMAGE


def test_unsupported_format_is_refused() -> None:
    data = encode(Image.fromarray(pattern(), mode="L"), "PPM")
    assert error_code(data) == ErrorCode.UNDECODABLE_IMAGE


def test_bytearray_and_memoryview_inputs() -> None:
    data = encode(Image.fromarray(pattern(), mode="L"), "PNG")
    assert np.array_equal(decode_image(bytearray(data), H, W, 1)[0], pattern())
    assert np.array_equal(decode_image(memoryview(data), H, W, 1)[0], pattern())
