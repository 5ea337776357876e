"""PNG-length surrogate (training/surrogates.py) against Pillow's real PNG encoder.

Ground truth: the filter bytes Pillow actually writes (read back from the IDAT stream) and the
exact PNG length of Fashion-MNIST test images, clean and perturbed (Gaussian, uniform, sparse,
low-frequency noise of several sizes), which the fit never saw.
"""

from __future__ import annotations

import io
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import spearmanr

from training.data import FASHION_MNIST_DIR, load_fashion_mnist
from training.surrogates import (
    PNG_FILTERS,
    AnchoredPngLength,
    filter_residuals,
    fit_png_surrogate,
    perturbed_copies,
    select_filters,
    unit_to_pixel_values,
)
from trustgc.trust.statistics import png_code_length_bits

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(
        not (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").exists(),
        reason="needs Debian's dataset-fashion-mnist",
    ),
]


def unit(pixels: np.ndarray) -> torch.Tensor:
    return (torch.from_numpy(pixels).float() + 0.5) / 256.0


def pillow_row_filters(image: np.ndarray) -> np.ndarray:
    """The filter type byte of each row of Pillow's PNG of one (1, H, W) uint8 image."""
    buffer = io.BytesIO()
    Image.fromarray(image[0]).save(buffer, format="PNG")
    data, position, idat = buffer.getvalue(), 8, b""
    while position < len(data):
        length = int.from_bytes(data[position : position + 4], "big")
        if data[position + 4 : position + 8] == b"IDAT":
            idat += data[position + 8 : position + 8 + length]
        position += 12 + length
    raw = zlib.decompress(idat)
    width = image.shape[2]
    return np.array([raw[row * (width + 1)] for row in range(image.shape[1])])


@pytest.fixture(scope="module")
def images() -> dict[str, np.ndarray]:
    train = load_fashion_mnist("train").images.transpose(0, 3, 1, 2)
    test = load_fashion_mnist("test").images.transpose(0, 3, 1, 2)
    rng = np.random.default_rng(0)
    return {"train": train[rng.choice(len(train), 150, replace=False)], "test": test[:100]}


@pytest.fixture(scope="module")
def surrogate(images):
    return fit_png_surrogate(perturbed_copies(images["train"], seed=1))


def test_residuals_by_hand():
    """One 2 x 3 image: every filter's residuals worked out on paper (neighbours outside = 0)."""
    values = torch.tensor([[[[10.0, 20.0, 250.0], [12.0, 15.0, 5.0]]]])
    residuals = filter_residuals(values)[0, :, 0]
    expected = {
        "none": [[10, 20, -6], [12, 15, 5]],  # 250 as a signed byte is -6
        "sub": [[10, 10, -26], [12, 3, -10]],  # 250 - 20 = 230 -> -26
        "up": [[10, 20, -6], [2, -5, 11]],  # 5 - 250 = -245 -> 11
        "average": [[10, 15, -16], [7, -1, -127]],  # 250 - 10 -> -16; 5 - 132 = -127
        # Paeth row 2: (12 | up 10, left 0, upleft 0) -> up; (15 | 20, 12, 10) -> p = 22,
        # nearest 20; (5 | 250, 15, 20) -> p = 245, nearest 250
        "paeth": [[10, 10, -26], [2, -5, 11]],
    }
    for index, name in enumerate(PNG_FILTERS):
        assert residuals[index].tolist() == expected[name], name


def test_filter_choice_matches_pillow(images):
    """The surrogate picks, row by row, the filter Pillow's encoder writes into the file."""
    pixels = perturbed_copies(images["test"][:20], sizes=(3.0, 20.0), seed=3)
    with torch.no_grad():
        chosen = select_filters(filter_residuals(unit_to_pixel_values(unit(pixels)))).numpy()
    pillow = np.stack([pillow_row_filters(image) for image in pixels])
    assert np.array_equal(chosen, pillow)


def test_tracks_exact_png_length_on_perturbed_images(images, surrogate):
    """Spearman >= 0.9 against Pillow on unseen test images, clean and perturbed, overall and
    within each perturbation family (where sizes overlap less and ranking is harder)."""
    sizes = (1.0, 4.0, 12.0, 32.0)
    pixels = perturbed_copies(images["test"], sizes=sizes, seed=2)
    with torch.no_grad():
        estimate = surrogate.bits(unit(pixels)).numpy()
    exact = png_code_length_bits(pixels)
    overall = spearmanr(estimate, exact).statistic
    print(f"surrogate vs exact PNG length: Spearman {overall:.4f} on {len(pixels)} images")
    assert overall >= 0.9
    n = len(images["test"])
    for group in range(len(pixels) // n):
        rows = slice(group * n, (group + 1) * n)
        assert spearmanr(estimate[rows], exact[rows]).statistic >= 0.9, group
    relative_error = np.median(np.abs(estimate - exact) / exact)
    assert relative_error < 0.05


def test_gradient_lowers_the_exact_length(images, surrogate):
    """A few gradient steps down the surrogate shorten the real PNG of a noisy image: the
    gradient points where the encoder saves bits."""
    pixels = perturbed_copies(images["test"][:8], sizes=(12.0,), kinds=("gaussian",), seed=4)[8:]
    x = unit(pixels).requires_grad_(True)
    for _ in range(20):
        (grad,) = torch.autograd.grad(surrogate.bits(x).sum(), x)
        with torch.no_grad():
            x -= 2.0 / 256 * grad.sign()
            x.clamp_(0.0, 1.0)
    after = png_code_length_bits(
        torch.clamp(torch.round(unit_to_pixel_values(x.detach())), 0, 255).to(torch.uint8).numpy()
    )
    assert np.all(after < png_code_length_bits(pixels))


def test_anchor_matches_exact_length(images, surrogate):
    pixels = perturbed_copies(images["test"][:6], sizes=(8.0,), kinds=("sparse",), seed=5)
    anchored = AnchoredPngLength(surrogate, len(pixels))
    x = unit(pixels)
    anchored.anchor(x)
    assert torch.allclose(
        anchored(x).double(), torch.from_numpy(png_code_length_bits(pixels)), atol=1e-2
    )
    rows = torch.tensor([1, 4])
    shifted = unit(np.clip(pixels[[1, 4]].astype(np.int64) + 3, 0, 255).astype(np.uint8))
    anchored.anchor(shifted, rows)
    expected = png_code_length_bits(
        np.clip(pixels[[1, 4]].astype(np.int64) + 3, 0, 255).astype(np.uint8)
    )
    assert torch.allclose(anchored(shifted, rows).double(), torch.from_numpy(expected), atol=1e-2)
    assert torch.allclose(anchored(x[[0]], torch.tensor([0])).double(), anchored(x)[[0]].double())
