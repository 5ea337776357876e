"""``trustgc archive``: build ``model_store/NAME.mar`` from a calibrated model artifact.

The archive holds the artifact's data files and the model-config yaml; its handler is the small
shim ``serving/torchserve_entry.py`` that imports the installed package, so code is never
duplicated inside the archive.

Nothing stale is packed: the calibration (and ``model.onnx`` when present) must have been made
from the artifact's current weights, and the calibration must be able to reach its alphas;
otherwise the archive is refused with the command that fixes it.  The archive's version is the
artifact's (``model.json``) unless ``version`` overrides it, in which case the packed
``model.json`` carries the override too, so the served answer names the archive's version.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from serving import paths
from trustgc.artifact import MANIFEST_FILE, load_manifest, write_json
from trustgc.background import BACKGROUND_DIR, background_dir
from trustgc.trust.calibration import CALIBRATION_FILE, load_calibration

__all__ = ["ARTIFACT_FILES", "OPTIONAL_ARTIFACT_FILES", "build_archive"]

ARTIFACT_FILES = ("model.json", "weights.safetensors", CALIBRATION_FILE)
# Packed when present: the exported flow for `backend: onnxruntime` (trustgc export-onnx).
OPTIONAL_ARTIFACT_FILES = ("model.onnx", "onnx.json")
ENTRY = Path(__file__).resolve().parent / "torchserve_entry.py"
# TorchServe puts versions in URLs (/models/NAME/VERSION): keep them to URL-safe characters.
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def build_archive(
    model_dir: Path,
    export_dir: Path,
    name: str | None = None,
    model_config: Path | None = None,
    allow_uncalibrated: bool = False,
    version: str | None = None,
) -> Path:
    """Write ``export_dir/NAME.mar``; returns its path.

    ``allow_uncalibrated`` packs a discriminative baseline (kind ``classifier``) without
    ``calibration.json``: it has no p-values (see trustgc.trust.predictor), so the benchmarks
    can serve it through the same handler.  A generative model always needs its calibration.
    ``model_config`` defaults to the production yaml of the project directory
    (:func:`serving.paths.model_config`).
    """
    model_dir = Path(model_dir)
    manifest = load_manifest(model_dir)
    required = ARTIFACT_FILES
    if allow_uncalibrated:
        if manifest.config.kind != "classifier":
            raise ValueError(
                f"{model_dir} is a generative model ({manifest.config.kind}): only a classifier "
                "may be archived without calibration"
            )
        required = tuple(f for f in ARTIFACT_FILES if f != CALIBRATION_FILE)
    missing = [f for f in required if not (model_dir / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{model_dir} lacks {missing}: train and calibrate it first")
    if CALIBRATION_FILE in required:
        load_calibration(model_dir)  # refuses stale or too-small references
    if (model_dir / "model.onnx").is_file():
        from trustgc.onnx_backend import checked_onnx_path

        checked_onnx_path(model_dir)  # refuses an export of other weights
    name = name or manifest.name
    version = version or manifest.version
    if not _VERSION.fullmatch(version):
        raise ValueError(
            f"version {version!r}: use letters, digits, '.', '_' or '-' (at most 64 characters)"
        )
    export_dir.mkdir(parents=True, exist_ok=True)
    archiver = Path(sys.executable).with_name("torch-model-archiver")
    with tempfile.TemporaryDirectory() as staging:
        present = [f for f in OPTIONAL_ARTIFACT_FILES if (model_dir / f).is_file()]
        staged = [shutil.copy2(model_dir / f, Path(staging) / f) for f in (*required, *present)]
        if background_dir(model_dir) is not None:  # the ratio statistic's flow, as a folder
            # the archiver copies a folder's contents: wrap it so that background/ stays one
            wrapper = Path(staging) / "with_background"
            (wrapper / BACKGROUND_DIR).mkdir(parents=True)
            source = model_dir / BACKGROUND_DIR
            if (source / "model.onnx").is_file():
                from trustgc.onnx_backend import checked_onnx_path

                checked_onnx_path(source)  # refuses an export of other background weights
            for f in (*ARTIFACT_FILES[:2], *OPTIONAL_ARTIFACT_FILES):  # no calibration of its own
                if (source / f).is_file():
                    shutil.copy2(source / f, wrapper / BACKGROUND_DIR / f)
            staged.append(wrapper)
        if version != manifest.version:  # the served answer names the archive's version
            packed = manifest.model_copy(update={"version": version})
            write_json(Path(staging) / MANIFEST_FILE, packed.model_dump(mode="json"))
        command = [
            str(archiver),
            "--model-name",
            name,
            "--version",
            version,
            "--handler",
            str(ENTRY),
            "--extra-files",
            ",".join(map(str, staged)),
            "--config-file",
            str(model_config or paths.model_config()),
            "--export-path",
            str(export_dir),
            "--force",
        ]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return export_dir / f"{name}.mar"
