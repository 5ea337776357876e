"""Held-out OoD folders from Debian packages that no part of the project ever saw.

    apt-get install gimp-data adwaita-icon-theme visp-images-data
    python training/scripts/heldout_ood_sets.py --out runs/heldout_ood
    trustgc ood --model model_store/fashion_mnist --ood-dir textures=runs/heldout_ood/textures \
        --ood-dir icons=runs/heldout_ood/icons --ood-dir visp=runs/heldout_ood/visp

Three kinds of image the gate was never trained, selected or calibrated on, chosen before any
was scored, to check that the OoD test generalises beyond the sets it was built with:

- ``textures``: GIMP's 58 patterns (fabric, stone, wood, paper, ...; its .pat format is read
  here) and the 61 paper textures of GIMP's gimpressionist plug-in, 10 seeded random square
  crops of 32-128 px each;
- ``icons``: the Adwaita icon theme's PNG icons, the largest size of each name (flat symbolic
  graphics; transparency becomes the black background when decoded, as for any upload);
- ``visp``: the ViSP image set (grayscale camera frames of calibration targets, a cube, a
  castle model), every k-th frame of each sequence so that no sequence dominates.

Files are written as PNG at their own size: the served decoding (``serving.decode``) does the
rest, as for any user folder.  Nothing here is committed; the results are.
"""

from __future__ import annotations

import argparse
import struct
from pathlib import Path

import numpy as np
from PIL import Image

GIMP = Path("/usr/share/gimp/2.0")
ADWAITA = Path("/usr/share/icons/Adwaita")
VISP = Path("/usr/share/visp-images-data/ViSP-images")
CROPS_PER_TEXTURE = 10
FRAMES_PER_SEQUENCE = 40


def read_gimp_pattern(path: Path) -> Image.Image:
    """A GIMP .pat file: big-endian header (size, version, width, height, bytes per pixel,
    b'GPAT', name), then the raw pixels row by row."""
    data = path.read_bytes()
    header_size, _, width, height, depth = struct.unpack(">5I", data[:20])
    if data[20:24] != b"GPAT" or depth not in (1, 2, 3, 4):
        raise ValueError(f"{path}: not a GIMP pattern")
    pixels = np.frombuffer(data[header_size : header_size + width * height * depth], np.uint8)
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[depth]
    return Image.fromarray(pixels.reshape(height, width, depth).squeeze(), mode)


def textures(out: Path, rng: np.random.Generator) -> int:
    patterns = sorted((GIMP / "patterns").rglob("*.pat"))
    papers = sorted((GIMP / "gimpressionist" / "Paper").glob("*.pgm"))
    sources = [(p, read_gimp_pattern(p)) for p in patterns] + [(p, Image.open(p)) for p in papers]
    count = 0
    for source, image in sources:
        width, height = image.size
        for crop in range(CROPS_PER_TEXTURE):
            side = int(rng.integers(32, 129))
            side = min(side, width, height)
            left = int(rng.integers(0, width - side + 1))
            top = int(rng.integers(0, height - side + 1))
            patch = image.crop((left, top, left + side, top + side))
            patch.save(out / f"{source.parent.name}_{source.stem}_{crop}.png")
            count += 1
    return count


def icons(out: Path) -> int:
    largest: dict[str, tuple[int, Path]] = {}
    for path in ADWAITA.rglob("*.png"):
        size_folder = next((p for p in path.parts if "x" in p and p.split("x")[0].isdigit()), "0x0")
        size = int(size_folder.split("x")[0])
        if size >= 32 and size > largest.get(path.stem, (0, path))[0]:
            largest[path.stem] = (size, path)
    for name, (_, path) in sorted(largest.items()):
        Image.open(path).save(out / f"{name}.png")
    return len(largest)


def visp(out: Path) -> int:
    count = 0
    for folder in sorted({p.parent for p in VISP.rglob("*.pgm")}):
        frames = sorted(folder.glob("*.pgm"))
        step = max(1, len(frames) // FRAMES_PER_SEQUENCE)
        for path in frames[::step]:
            name = "_".join(path.relative_to(VISP).with_suffix("").parts)
            Image.open(path).save(out / f"{name}.png")
            count += 1
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/heldout_ood"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    for name, build in (("textures", lambda d: textures(d, rng)), ("icons", icons), ("visp", visp)):
        folder = args.out / name
        folder.mkdir(parents=True, exist_ok=True)
        print(f"{name}: {build(folder)} images in {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
