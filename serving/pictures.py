"""Explanation pictures of served answers: ``classify``/``score --explain`` write one PNG per image.

Both commands hold the same thing per image, the served answer (with its explanation) and the
image, and call :func:`write_picture`, which draws it with the core's one figure,
:func:`trustgc.plots.plot_explanation`: the input, the posterior heatmaps of the answer's top
three classes and its two p-values (OoD, attack) against their alphas.  ``score`` shows the
pixels the model saw; ``classify`` (a client, which does not know the model's input size) the
file as Pillow reads it, padded to a square and shrunk to at most :data:`DISPLAY_SIDE` pixels.

matplotlib and Pillow are imported when a picture is drawn, so a client-only install can still
``classify`` without ``--out``.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from serving.schema import ClassificationResponse

__all__ = ["DISPLAY_SIDE", "display_pixels", "file_pixels", "picture_paths", "write_picture"]

DISPLAY_SIDE = 256
_MAPS = 3
_MISSING = "pictures need matplotlib and Pillow: pip install matplotlib pillow"


def _require_plotting() -> None:
    try:
        import matplotlib  # noqa: F401
        import PIL  # noqa: F401
    except ImportError as error:
        raise RuntimeError(_MISSING) from error


def picture_paths(files: Sequence[Path], out_dir: Path) -> list[Path]:
    """One distinct PNG path under ``out_dir`` per input file, mirroring the files' folders below
    their common parent (class folders often reuse file names: ``0/1.png`` and ``7/1.png``).

    ``x.png`` keeps its name, other files get ``.png`` appended (``x.jpg`` -> ``x.jpg.png``, so
    it cannot meet ``x.png``); a name still taken (a file given twice) gets ``-2``, ``-3``, ...
    """
    if not files:
        return []
    root = Path(os.path.commonpath([os.path.abspath(Path(f).parent) for f in files]))
    taken: set[Path] = set()
    paths = []
    for file in files:
        relative = Path(os.path.abspath(file)).relative_to(root)
        if relative.suffix.lower() != ".png":
            relative = relative.with_name(relative.name + ".png")
        path, copy = out_dir / relative, 1
        while path in taken:
            copy += 1
            path = out_dir / relative.with_name(f"{relative.stem}-{copy}.png")
        taken.add(path)
        paths.append(path)
    return paths


def display_pixels(pixels: np.ndarray) -> np.ndarray:
    """The model's uint8 input (C, H, W) -> (H, W) or (H, W, 3) in [0, 1] for drawing."""
    if pixels.ndim != 3 or pixels.shape[0] not in (1, 3):
        raise ValueError(f"expected pixels of shape (1 or 3, H, W), got {pixels.shape}")
    image = pixels.transpose(1, 2, 0).astype(np.float64) / 255.0
    return image[:, :, 0] if image.shape[2] == 1 else image


def file_pixels(data: bytes) -> np.ndarray:
    """Image file bytes -> (S, S) or (S, S, 3) in [0, 1], S at most DISPLAY_SIDE: padded with
    black to a centred square as the served decoding pads it, so the heatmaps' cells lie over
    the parts of the image the model saw there."""
    _require_plotting()
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        image.seek(0)
        shown = image.convert("L" if image.mode in ("1", "L", "LA", "I", "I;16", "F") else "RGB")
    shown.thumbnail((DISPLAY_SIDE, DISPLAY_SIDE))
    side = max(shown.size)
    square = Image.new(shown.mode, (side, side), 0)
    square.paste(shown, ((side - shown.width) // 2, (side - shown.height) // 2))
    return np.asarray(square, dtype=np.float64) / 255.0


def write_picture(
    image: np.ndarray, answer: ClassificationResponse | dict[str, Any], path: Path
) -> Path:
    """Draw one answer (which must carry its explanation) and its image into ``path``."""
    _require_plotting()
    from trustgc.plots import PValueTest, plot_explanation

    if isinstance(answer, dict):
        answer = ClassificationResponse.model_validate(
            {k: v for k, v in answer.items() if k != "file"}
        )
    if answer.explanation is None:
        raise ValueError("the answer carries no explanation: ask for it with explain")
    probability = {p.index: p.probability for p in answer.probabilities}
    maps = answer.explanation.posterior_heatmaps[:_MAPS]
    titles = [
        f"{m.label}: q={probability[m.index]:.3f}" if m.index in probability else m.label
        for m in maps
    ]
    tests = [
        PValueTest(
            "OoD",
            answer.typicality.p_value,
            answer.typicality.alpha,
            answer.typicality.out_of_distribution,
        ),
        PValueTest("attack", answer.attack.p_value, answer.attack.alpha, answer.attack.suspected),
    ]
    heading = (
        f"{answer.decision}: {answer.prediction.label} "
        f"({answer.prediction.probability:.3f}), model {answer.model.name}"
    )
    values = np.array([m.values for m in maps], dtype=np.float64)
    return plot_explanation(image, values, titles, tests, path, heading)
