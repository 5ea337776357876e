"""Odd and malicious request bodies shared by the reliability tests (built with Pillow)."""

from __future__ import annotations

import functools
import io
import struct

import numpy as np
from PIL import Image

TEN_MIB = 10 * 1024 * 1024


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


@functools.cache
def garment() -> np.ndarray:
    """Fashion-MNIST test image 0 (an ankle boot), 28x28 uint8."""
    from training.data import load_dataset

    return load_dataset("fashion_mnist", "test").images[0, ..., 0]


@functools.cache
def garment_png() -> bytes:
    return encode(Image.fromarray(garment()), "PNG")


def noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width), dtype=np.uint8)


def truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def png_16_bit() -> bytes:
    wide = (garment().astype("<u2") * 257).tobytes()
    return encode(Image.frombytes("I;16", (28, 28), wide), "PNG")


def cmyk_jpeg() -> bytes:
    rgb = Image.merge("RGB", [Image.fromarray(garment())] * 3)
    return encode(rgb.convert("CMYK"), "JPEG", quality=95)


def palette_with_transparency() -> bytes:
    image = Image.fromarray(garment()).convert("P")
    return encode(image, "PNG", transparency=0)


def animated_gif() -> bytes:
    first = Image.fromarray(garment())
    second = first.transpose(Image.Transpose.ROTATE_180)
    return encode(first, "GIF", save_all=True, append_images=[second], duration=50, loop=0)


def exif_rotated_jpeg() -> bytes:
    """Stored rotated 90 degrees counter-clockwise, with EXIF orientation 6 (rotate 90 degrees
    clockwise to display) saying so."""
    stored = Image.fromarray(garment()).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(stored, "JPEG", quality=100, exif=exif.tobytes())


def huge_rgb_jpeg() -> bytes:
    """A 4000x3000 RGB photo-like JPEG (about 2-5 MB, under the 10 MiB limit)."""
    y, x = np.mgrid[0:3000, 0:4000]
    base = ((x // 7 + y // 5) % 256).astype(np.uint8)
    grain = noise(3000, 4000, seed=3) // 8
    rgb = np.stack([base, base[::-1] // 2 + grain, grain * 4], axis=-1)
    data = encode(Image.fromarray(rgb.astype(np.uint8)), "JPEG", quality=85)
    assert 1024 * 1024 < len(data) < TEN_MIB, len(data)
    return data


def tiff_with_float_strip_offsets() -> bytes:
    """A 200-byte TIFF whose StripOffsets tag is a FLOAT: Pillow raised TypeError on it."""
    data = bytearray(encode(Image.new("L", (8, 8), 7), "TIFF"))
    offset = struct.unpack("<I", data[4:8])[0]
    for index in range(struct.unpack("<H", data[offset : offset + 2])[0]):
        entry = offset + 2 + 12 * index
        tag, _, _, value = struct.unpack("<HHII", data[entry : entry + 12])
        if tag == 273:  # StripOffsets: LONG -> FLOAT
            data[entry : entry + 12] = struct.pack("<HHIf", tag, 11, 1, float(value))
    return bytes(data)


def extreme_aspect_png() -> bytes:
    """40000x1 pixels in about 100 bytes: padding it to a square used to allocate 1.6 GB."""
    return encode(Image.new("L", (40_000, 1), 255), "PNG")
