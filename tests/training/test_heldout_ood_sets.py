"""training/scripts/heldout_ood_sets.py's GIMP pattern reader against a file written by hand."""

from __future__ import annotations

import importlib.util
import struct
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "training" / "scripts" / "heldout_ood_sets.py"


@pytest.fixture(scope="module")
def heldout():
    spec = importlib.util.spec_from_file_location("heldout_ood_sets", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def gimp_pattern(pixels: np.ndarray, name: bytes = b"test\x00") -> bytes:
    """A .pat as GIMP writes it: header size, version 1, width, height, depth, b'GPAT', name."""
    height, width = pixels.shape[:2]
    depth = 1 if pixels.ndim == 2 else pixels.shape[2]
    header = struct.pack(">5I", 24 + len(name), 1, width, height, depth) + b"GPAT" + name
    return header + pixels.astype(np.uint8).tobytes()


@pytest.mark.parametrize("shape", [(5, 7), (4, 3, 3), (2, 6, 4)])
def test_gimp_patterns_read_back_pixel_for_pixel(heldout, tmp_path, shape) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    path = tmp_path / "p.pat"
    path.write_bytes(gimp_pattern(pixels))
    image = heldout.read_gimp_pattern(path)
    assert image.size == (shape[1], shape[0])
    assert np.array_equal(np.asarray(image), pixels)


def test_not_a_pattern_is_refused(heldout, tmp_path) -> None:
    path = tmp_path / "x.pat"
    path.write_bytes(gimp_pattern(np.zeros((2, 2)))[:20] + b"XXXX" + b"\x00" * 8)
    with pytest.raises(ValueError, match="not a GIMP pattern"):
        heldout.read_gimp_pattern(path)
