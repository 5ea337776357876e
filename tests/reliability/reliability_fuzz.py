"""Structured fuzz inputs for ``serving.decode.decode_image`` and ``serving.requests``.

Shared by the hypothesis tests (``test_fuzz.py``) and the optional atheris harness
(``atheris_decode.py``).  Images are generated with Pillow in random sizes, modes and formats
(with transparency, animation, EXIF orientation and format options), then mutated the way
broken uploads and attackers mutate files: truncation, bit flips, overwritten, inserted and
deleted byte ranges, and splices of two files.  The invariant under test: a valid image decodes
to the model's ``(C, 28, 28)`` uint8 array; anything else raises ``InputError`` and nothing
else (any other exception would fail a whole TorchServe batch).
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from hypothesis import strategies as st
from PIL import Image

from serving.decode import DecodeLimits, decode_image
from serving.errors import ErrorCode, InputError, http_status

H = W = 28

# Formats the service accepts, with the modes Pillow can write in each.
ACCEPTED = {
    "PNG": ("1", "L", "LA", "P", "RGB", "RGBA", "I;16", "I"),
    "JPEG": ("L", "RGB", "CMYK"),
    "WEBP": ("RGB", "RGBA"),
    "BMP": ("1", "L", "P", "RGB", "RGBA"),
    "GIF": ("L", "P", "RGB"),
    "TIFF": ("1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F"),
}
# Formats Pillow reads but the service must refuse (undecodable_image).
REFUSED = {"ICO": ("L", "RGB"), "PPM": ("L", "RGB"), "TGA": ("L", "RGB"), "PCX": ("L", "RGB")}
MAGICS = (
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff\xe0",
    b"GIF89a",
    b"GIF87a",
    b"BM",
    b"II*\x00",
    b"MM\x00*",
    b"RIFF\x00\x00\x00\x00WEBPVP8 ",
    b"RIFF\x00\x00\x00\x00WEBPVP8L",
    b"RIFF\x00\x00\x00\x00WEBPVP8X",
    b"\x00\x00\x01\x00",  # ICO
    b"P5\n",
)


# --------------------------------------------------------------------------- generation


def _pixels(rng: np.random.Generator, kind: str, size: tuple[int, int]) -> np.ndarray:
    width, height = size
    if kind == "noise":
        return rng.integers(0, 256, (height, width), dtype=np.uint8)
    if kind == "gradient":
        y, x = np.mgrid[0:height, 0:width]
        return ((x * 7 + y * 13) % 256).astype(np.uint8)
    return np.full((height, width), int(rng.integers(0, 256)), np.uint8)


def make_image(mode: str, size: tuple[int, int], kind: str, seed: int) -> Image.Image:
    """A Pillow image of ``mode`` and ``size`` with some content."""
    rng = np.random.default_rng(seed)
    base = Image.fromarray(_pixels(rng, kind, size))
    if mode in ("RGB", "RGBA", "CMYK"):
        bands = [
            base,
            base.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
            base.point(lambda v: 255 - v),
        ]
        rgb = Image.merge("RGB", bands)
        return rgb.convert(mode) if mode != "RGBA" else Image.merge("RGBA", (*bands, base))
    if mode == "LA":
        return Image.merge("LA", (base, base.point(lambda v: 255 - v)))
    if mode == "P":
        return base.convert("RGB").quantize(colors=int(rng.integers(2, 257)))
    if mode == "I;16":
        wide = np.asarray(base, dtype="<u2") * 257
        return Image.frombytes("I;16", size, wide.tobytes())
    if mode == "I":
        return Image.fromarray(np.asarray(base, dtype=np.int32) * 257)
    if mode == "F":
        return Image.fromarray(np.asarray(base, dtype=np.float32) / 255.0)
    return base.convert(mode)


def encode(image: Image.Image, fmt: str, extra: dict) -> bytes:
    """Save ``image`` as ``fmt``; falls back to plainer settings where Pillow refuses."""
    buffer = io.BytesIO()
    options = dict(extra)
    if fmt == "GIF" and options.pop("animated", False):
        frames = [image.transpose(Image.Transpose.ROTATE_180), image]
        options.update(save_all=True, append_images=frames, duration=40, loop=0)
    if fmt == "JPEG" and "orientation" in options:
        exif = Image.Exif()
        exif[0x0112] = options.pop("orientation")
        options["exif"] = exif.tobytes()
    if fmt == "PNG" and "transparency" in options and image.mode not in ("L", "RGB", "P"):
        options.pop("transparency")
    if fmt == "ICO":
        options["sizes"] = [image.size]
    if "transparency" in options and image.mode == "RGB":
        options["transparency"] = (options["transparency"],) * 3
    try:
        image.save(buffer, format=fmt, **options)
    except (OSError, ValueError, TypeError, KeyError):
        buffer = io.BytesIO()
        image.convert("RGB" if fmt != "GIF" else "P").save(buffer, format=fmt)
    return buffer.getvalue()


@st.composite
def images(draw, formats: dict = ACCEPTED, max_side: int = 48) -> bytes:
    """A valid encoded image of a random format, mode, size and content."""
    fmt = draw(st.sampled_from(sorted(formats)))
    mode = draw(st.sampled_from(formats[fmt]))
    side = st.integers(1, max_side)
    size = (draw(side), draw(side))
    if max_side >= 24 and draw(st.integers(0, 9)) == 0:  # now and then a long, thin image
        long = draw(st.integers(max_side, 400))
        size = (long, size[1]) if draw(st.booleans()) else (size[0], long)
    kind = draw(st.sampled_from(["noise", "gradient", "flat"]))
    seed = draw(st.integers(0, 2**16))
    extra: dict = {}
    if fmt == "PNG" and draw(st.booleans()):
        extra["transparency"] = draw(st.integers(0, 255))
    if fmt == "JPEG":
        extra["quality"] = draw(st.integers(5, 100))
        if draw(st.booleans()):
            extra["orientation"] = draw(st.integers(1, 8))
        if draw(st.booleans()):
            extra["progressive"] = True
    if fmt == "GIF":
        extra["animated"] = draw(st.booleans())
        if draw(st.booleans()):
            extra["transparency"] = draw(st.integers(0, 255))
    if fmt == "WEBP":
        extra["lossless"] = draw(st.booleans())
    if fmt == "TIFF":
        extra["compression"] = draw(st.sampled_from([None, "tiff_lzw", "tiff_adobe_deflate"]))
    return encode(make_image(mode, size, kind, seed), fmt, extra)


@st.composite
def mutated(draw, source: st.SearchStrategy[bytes] | None = None) -> bytes:
    """An encoded image with 0-4 mutations: truncate, flip, overwrite, insert, delete, splice."""
    data = bytearray(draw(source if source is not None else images()))
    for _ in range(draw(st.integers(0, 4))):
        operation = draw(
            st.sampled_from(["truncate", "flip", "overwrite", "insert", "delete", "splice"])
        )
        if not data:
            break
        position = draw(st.integers(0, len(data) - 1))
        if operation == "truncate":
            data = data[:position]
        elif operation == "flip":
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif operation == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=16))
            data[position : position + len(chunk)] = chunk
        elif operation == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=64))
        elif operation == "delete":
            del data[position : position + draw(st.integers(1, 64))]
        else:  # splice: this file's head, another file's tail
            other = draw(images(max_side=24))
            data = data[:position] + other[draw(st.integers(0, len(other) - 1)) :]
    return bytes(data)


def png_declaring(width: int, height: int, bit_depth: int = 8, colour: int = 0) -> bytes:
    """A tiny PNG whose header declares any size (decompression bombs, zero sizes)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def headers_declaring() -> st.SearchStrategy[bytes]:
    """PNGs declaring sizes from zero to far beyond the pixel limit."""
    dimension = st.one_of(st.integers(0, 64), st.integers(0, 2**31 - 1))
    return st.builds(
        png_declaring,
        dimension,
        dimension,
        st.sampled_from([1, 2, 4, 8, 16]),
        st.sampled_from([0, 2, 3, 4, 6]),
    )


def any_body() -> st.SearchStrategy[bytes]:
    """Every kind of body the fuzz tests send to the decoder."""
    return st.one_of(
        images(),
        mutated(),
        mutated(images(formats=REFUSED, max_side=16)),
        headers_declaring(),
        st.builds(
            lambda magic, tail: magic + tail, st.sampled_from(MAGICS), st.binary(max_size=512)
        ),
        st.binary(max_size=1024),
    )


# --------------------------------------------------------------------------- requests

OPTION_NAMES = ("explain", "top_k", "format")
BODY_NAMES = ("data", "body", "file", "image")
_text = st.text(max_size=24)
_values = st.one_of(
    st.binary(max_size=48),
    _text,
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(_text, _text, max_size=2),
    st.builds(bytearray, st.binary(max_size=16)),
)
_option_values = st.one_of(
    st.sampled_from(["true", "false", "1", "0", "yes", "3", "10", "1000", "1001", "-1", "2.5"]),
    st.sampled_from(["json", "protobuf", "PROTOBUF", " json ", "xml", "", "\x00", "1e3"]),
    _values,
)


VALID_OPTIONS = {
    "explain": ("true", "false", "True", "0", "1", " false "),
    "top_k": ("1", "3", "10", "1000", " 5 "),
    "format": ("json", "protobuf"),
}


def option_value(name: str) -> st.SearchStrategy:
    """Half valid values of option ``name``, half anything."""
    return st.one_of(st.sampled_from(VALID_OPTIONS[name]), _option_values)


def header_names() -> st.SearchStrategy[str]:
    option = st.builds(
        lambda prefix, name: prefix + name,
        st.sampled_from(["X-Trustgc-", "x-trustgc-", "X-TRUSTGC-"]),
        st.sampled_from(["explain", "top-k", "top_k", "format", "Top-K", "colour", ""]),
    )
    return st.one_of(option, st.sampled_from(["Content-Type", "Authorization"]), _text)


def entries(body: st.SearchStrategy[bytes] | None = None) -> st.SearchStrategy:
    """TorchServe request entries: mostly an image field plus options, else odd dicts or
    garbage."""
    keys = st.one_of(st.sampled_from([*BODY_NAMES, *OPTION_NAMES]), _text)
    values = _values if body is None else st.one_of(body, _values)
    fields = st.dictionaries(keys, st.one_of(values, _option_values), max_size=5)
    options = st.fixed_dictionaries(
        {}, optional={name: option_value(name) for name in OPTION_NAMES}
    )
    with_body = st.builds(
        lambda key, image, rest: {**rest, key: image},
        st.sampled_from(BODY_NAMES),
        body if body is not None else st.binary(max_size=64),
        options,
    )
    # weighted: one_of() would flatten the nested one_of() of _values into many branches
    return st.integers(0, 9).flatmap(
        lambda k: with_body if k < 6 else (fields if k < 8 else _values)
    )


def request_headers() -> st.SearchStrategy[dict]:
    """Mostly well-formed option headers, sometimes malformed ones or anything."""
    valid = st.fixed_dictionaries(
        {},
        optional={
            "X-Trustgc-Explain": st.sampled_from(VALID_OPTIONS["explain"]),
            "X-Trustgc-Top-K": st.sampled_from(VALID_OPTIONS["top_k"]),
            "X-Trustgc-Format": st.sampled_from(VALID_OPTIONS["format"]),
        },
    )
    anything = st.dictionaries(header_names(), st.one_of(_option_values, _text), max_size=3)
    return st.integers(0, 2).flatmap(lambda k: valid if k else anything)


# --------------------------------------------------------------------------- checks


def check_decode(data: bytes, channels: int = 1, limits: DecodeLimits = DecodeLimits()):
    """The invariant: a (C, H, W) uint8 array, or an InputError with a mapped code."""
    try:
        out = decode_image(data, H, W, channels, limits)
    except InputError as error:
        assert isinstance(error.code, ErrorCode)
        assert isinstance(error.message, str) and error.message
        status, _ = http_status(error.code)
        assert 400 <= status < 500
        return error.code
    assert isinstance(out, np.ndarray)
    assert out.dtype == np.uint8
    assert out.shape == (channels, H, W)
    assert out.flags.c_contiguous
    return None
