"""Bytes in, the model's uint8 input out: decoding under limits, orientation, mode and size.

Policy (documented for users in docs/serving.md):

1. The body must be at most ``max_bytes``; the format is sniffed by Pillow (PNG, JPEG, WebP,
   BMP, GIF, TIFF); anything else is an ``undecodable_image``.
2. The declared size is checked *before* decoding: more than ``max_pixels`` is refused, which
   stops decompression bombs (a small file declaring a huge image).
3. Animated images use their first frame; EXIF orientation is applied.
4. Colour: transparency is composited onto black (the Fashion-MNIST background); then the
   image is converted to grayscale ('L', ITU-R 601 luma) or RGB as the model expects; 16-bit
   and CMYK inputs are converted by Pillow.
5. Size: a non-square image is padded with black to a centred square (aspect ratio kept,
   nothing cropped), then resized to the model's H x W with Pillow's antialiased bilinear
   filter.  An image already of the model's size is used as is, pixel for pixel.  A non-square
   image whose long side exceeds ``MAX_PADDED_SIDE`` is first shrunk (aspect ratio kept) so
   that the padded square stays bounded: padding a 40000 x 1 PNG of 100 bytes would otherwise
   allocate 1.6 GB.

Pillow parses untrusted bytes: *any* exception it raises while opening or decoding means the
body is not a usable image and becomes an ``undecodable_image`` (a ``MemoryError``, an
``image_too_large``), so nothing but :class:`InputError` leaves :func:`decode_image` (an
escaping exception would fail every request of the TorchServe batch).
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from serving.errors import ErrorCode, InputError

__all__ = ["DecodeLimits", "decode_image"]

ALLOWED_FORMATS = ("BMP", "GIF", "JPEG", "PNG", "TIFF", "WEBP")
MAX_PADDED_SIDE = 4096  # a padded square has at most 4096 x 4096 pixels
_OBJECT_REPR = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>")


def _describe(error: BaseException) -> str:
    """The exception's text without Python object reprs (no heap addresses in answers)."""
    return _OBJECT_REPR.sub("the body", str(error)) or type(error).__name__


def _text_hint(data: bytes) -> str:
    """What to say when the body is text (a form's text field, a file name, a URL), else ''."""
    head = data[:200]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return ""
    if not text.strip() or not all(c.isprintable() or c.isspace() for c in text):
        return ""
    shown = " ".join(text.split())[:40]
    return (
        f"it is text ({shown!r}); send the image file's bytes (curl --data-binary @image.png "
        "-H 'Content-Type: application/octet-stream') or the file as a multipart file field"
    )


@dataclass(frozen=True)
class DecodeLimits:
    max_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 40_000_000
    min_side: int = 1


def _open(data: bytes, limits: DecodeLimits) -> Image.Image:
    if not data:
        raise InputError(ErrorCode.EMPTY_BODY, "the request carries no image bytes")
    if len(data) > limits.max_bytes:
        raise InputError(
            ErrorCode.BODY_TOO_LARGE,
            f"image body of {len(data)} bytes exceeds the limit of {limits.max_bytes} bytes",
        )
    Image.init()  # register every plugin before restricting the formats
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=list(ALLOWED_FORMATS))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning, MemoryError) as error:
        raise InputError(ErrorCode.IMAGE_TOO_LARGE, _describe(error)) from error
    except Exception as error:  # UnidentifiedImageError, OSError, SyntaxError, ... any parse error
        raise InputError(
            ErrorCode.UNDECODABLE_IMAGE,
            "the body is not a supported image (PNG, JPEG, WebP, BMP, GIF, TIFF): "
            f"{_text_hint(data) or _describe(error)}",
        ) from error
    width, height = image.size
    if width * height > limits.max_pixels:
        raise InputError(
            ErrorCode.IMAGE_TOO_LARGE,
            f"image of {width}x{height} pixels exceeds the limit of {limits.max_pixels} pixels",
        )
    if min(width, height) < limits.min_side:
        raise InputError(ErrorCode.IMAGE_TOO_SMALL, f"image of {width}x{height} is too small")
    return image


def _to_mode(image: Image.Image, channels: int) -> Image.Image:
    """Composite transparency onto black, then convert to 'L' or 'RGB'."""
    if image.mode in ("P", "PA") or "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "La", "RGBa"):
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)  # 16-bit: full scale is 65535
        image = Image.fromarray(np.clip(array / 65535.0 * 255.0 + 0.5, 0, 255).astype(np.uint8))
    return image.convert("L" if channels == 1 else "RGB")


def _to_size(image: Image.Image, height: int, width: int) -> Image.Image:
    if image.size == (width, height):
        return image
    side = max(image.size)
    if image.size[0] != image.size[1] and side > MAX_PADDED_SIDE:
        scale = MAX_PADDED_SIDE / side
        shrunk = (max(1, round(image.size[0] * scale)), max(1, round(image.size[1] * scale)))
        image = image.resize(shrunk, Image.Resampling.BILINEAR, reducing_gap=3.0)
        side = max(image.size)
    if image.size[0] != image.size[1]:
        fill = 0 if image.mode == "L" else (0, 0, 0)
        square = Image.new(image.mode, (side, side), fill)
        square.paste(image, ((side - image.size[0]) // 2, (side - image.size[1]) // 2))
        image = square
    return image.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=3.0)


def decode_image(
    data: bytes, height: int, width: int, channels: int, limits: DecodeLimits = DecodeLimits()
) -> np.ndarray:
    """Image bytes -> uint8 array (C, H, W) in the model's input spec; raises InputError."""
    image = _open(bytes(data), limits)
    try:
        image.seek(0)  # first frame of an animation
        image = ImageOps.exif_transpose(image) or image
        image = _to_mode(image, channels)
        image = _to_size(image, height, width)
        array = np.asarray(image, dtype=np.uint8)
    except InputError:
        raise
    except (Image.DecompressionBombError, MemoryError) as error:
        raise InputError(ErrorCode.IMAGE_TOO_LARGE, _describe(error)) from error
    except Exception as error:  # truncated or corrupt data; malformed tags (e.g. TypeError)
        raise InputError(
            ErrorCode.UNDECODABLE_IMAGE, f"the image data is corrupt: {_describe(error)}"
        ) from error
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    return np.ascontiguousarray(array)
