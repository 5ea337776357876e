"""Offline scoring: the served answer for every image file, without a server.

``trustgc score FILES|DIR --model DIR --out results.jsonl|csv`` runs each file through the
handler's own steps: the same decoding (:func:`serving.decode.decode_image` with the handler's
limits), the same backend choice (:func:`trustgc.backend.choose_backend`), the same
:class:`trustgc.trust.Predictor` and the same answer schema (:func:`serving.responses.
build_response`), so a row equals what ``POST /predictions/NAME`` answers for that file.  A file
that cannot be read or decoded becomes an error row (``file`` + ``error``, the handler's error
body) and scoring goes on.

Images are scored one at a time by default, as a sequential client's requests are: float
arithmetic then runs on the same batch shapes as in the server and the answers are identical
bit for bit.  ``batch_size`` > 1 is faster; its answers may then differ from the served ones in
the last float32 digits (rarely one step of a p-value).

With ``explain`` the rows carry the served explanation and, given a pictures directory, each
image that was scored gets a PNG (:func:`serving.pictures.write_picture`) drawn from the pixels
the model saw; a bad file gets its error row and no picture.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, model_validator
from tqdm import tqdm

from serving import paths
from serving.certificates import (
    CERTIFY_ALPHA,
    DEFAULT_CERTIFY_SIGMA,
    MAX_CERTIFY_SAMPLES,
    certificate_for,
)
from serving.decode import DecodeLimits, decode_image
from serving.errors import ErrorCode, InputError
from serving.files import collect_files
from serving.requests import RequestOptions
from serving.responses import build_response
from serving.schema import error_response
from trustgc.backend import choose_backend
from trustgc.trust.predictor import Predictor

__all__ = [
    "OUTPUT_FORMATS",
    "CertifyOptions",
    "OfflineScorer",
    "collect_files",
    "resolve_out",
    "score_files",
]

OUTPUT_FORMATS = (".jsonl", ".csv")
#: The results file written inside an ``--out`` directory.
RESULTS_NAME = "results.jsonl"
#: Columns of a CSV row (a flattened answer); JSON lines carry the whole answer.
CSV_COLUMNS = (
    "file",
    "decision",
    "label",
    "probability",
    "ood_p_value",
    "ood_alpha",
    "attack_p_value",
    "attack_alpha",
    "bits_per_dim",
    "certified_label",
    "certified_radius",
    "error_code",
    "error_message",
)


def _handler_settings(model_config: Path | None) -> dict[str, Any]:
    """The ``trustgc:`` section of the model-config yaml the archives carry (as the handler)."""
    path = Path(model_config) if model_config else paths.model_config()
    if not path.is_file():
        return {}
    import yaml

    return dict((yaml.safe_load(path.read_text()) or {}).get("trustgc", {}) or {})


@dataclass
class OfflineScorer:
    """A loaded artifact answering like the served handler."""

    predictor: Predictor
    name: str
    limits: DecodeLimits
    top_k: int = RequestOptions().top_k

    @classmethod
    def from_artifact(
        cls,
        model_dir: Path,
        name: str | None = None,
        model_config: Path | None = None,
        top_k: int | None = None,
    ) -> OfflineScorer:
        settings = _handler_settings(model_config)
        torch.set_num_threads(max(1, int(settings.get("torch_threads", 1))))
        choice = choose_backend(model_dir, str(settings.get("backend", "auto")))
        predictor = Predictor.from_artifact(
            model_dir,
            backend=choice.backend,
            onnx_threads=max(1, int(settings.get("onnx_threads", 1))),
        )
        defaults = DecodeLimits()
        limits = DecodeLimits(
            max_bytes=int(settings.get("max_body_bytes", defaults.max_bytes)),
            max_pixels=int(settings.get("max_image_pixels", defaults.max_pixels)),
        )
        top_k = RequestOptions(top_k=top_k).top_k if top_k else RequestOptions().top_k
        return cls(predictor, name or predictor.manifest.name, limits, top_k)

    def _decode(self, path: Path) -> np.ndarray | dict[str, Any]:
        """Pixels (C, H, W), or the handler's error body for this file."""
        channels, height, width = self.predictor.input_shape
        try:
            data = path.read_bytes()
        except OSError as error:
            return error_response(
                ErrorCode.MISSING_IMAGE.value, f"cannot read {path}: {error.strerror or error}"
            ).model_dump(mode="json")
        try:
            return decode_image(data, height, width, channels, self.limits)
        except InputError as error:
            return error_response(error.code.value, error.message).model_dump(mode="json")

    def score(
        self, files: list[Path], batch_size: int = 1, explain: bool = False
    ) -> Iterator[dict[str, Any]]:
        """One row per file, in order: ``file`` plus the answer's fields, or plus ``error``."""
        for row, _ in self.score_with_pixels(files, batch_size, explain):
            yield row

    def score_with_pixels(
        self, files: list[Path], batch_size: int = 1, explain: bool = False
    ) -> Iterator[tuple[dict[str, Any], np.ndarray | None]]:
        """Rows as :meth:`score`, each with the decoded pixels (None for an error row)."""
        manifest = self.predictor.manifest
        for start in range(0, len(files), batch_size):
            chunk = files[start : start + batch_size]
            decoded = [self._decode(path) for path in chunk]
            good = [i for i, item in enumerate(decoded) if isinstance(item, np.ndarray)]
            answers: dict[int, dict[str, Any]] = {}
            if good:
                pixels = np.stack([decoded[i] for i in good])
                with torch.inference_mode():
                    results = self.predictor.predict(pixels, explain=explain)
                for i, result in zip(good, results, strict=True):
                    response = build_response(
                        result, self.name, manifest.version, manifest.class_names, self.top_k
                    )
                    answers[i] = json.loads(response.model_dump_json(exclude_none=True))
            for i, path in enumerate(chunk):
                item = decoded[i]
                if i in answers:
                    yield {"file": str(path), **answers[i]}, item  # type: ignore[misc]
                else:
                    yield {"file": str(path), **item}, None  # type: ignore[dict-item]


def _csv_row(row: dict[str, Any]) -> dict[str, Any]:
    if "error" in row:
        error = row["error"]
        return {"file": row["file"], "error_code": error["code"], "error_message": error["message"]}
    return {
        "file": row["file"],
        "decision": row["decision"],
        "label": row["prediction"]["label"],
        "probability": row["prediction"]["probability"],
        "ood_p_value": row["typicality"]["p_value"],
        "ood_alpha": row["typicality"]["alpha"],
        "attack_p_value": row["attack"]["p_value"],
        "attack_alpha": row["attack"]["alpha"],
        "bits_per_dim": row["log_likelihood"]["bits_per_dim"],
        **(
            {
                "certified_label": row["certificate"]["label"],
                "certified_radius": row["certificate"]["radius"],
            }
            if "certificate" in row
            else {}
        ),
    }


class CertifyOptions(BaseModel):
    """``trustgc score --certify N``: randomized-smoothing certificates (trustgc.trust.smoothing)
    beside the served answers; N noisy copies per image (plus 100 to pick the class)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    n: int
    sigma: float = DEFAULT_CERTIFY_SIGMA
    alpha: float = CERTIFY_ALPHA

    @model_validator(mode="after")
    def _in_range(self) -> CertifyOptions:
        if not 1 <= self.n <= MAX_CERTIFY_SAMPLES or self.sigma <= 0 or not 0 < self.alpha < 1:
            raise ValueError(
                f"--certify needs 1 <= N <= {MAX_CERTIFY_SAMPLES}, --sigma > 0 and "
                f"0 < alpha < 1, got {self.n}, {self.sigma}, {self.alpha}"
            )
        return self


def resolve_out(out: Path) -> tuple[Path, Path]:
    """``--out`` -> (results file, pictures directory).

    A .jsonl or .csv name is the results file, its pictures go into the folder named after it
    (``results.jsonl`` -> ``results/``); a directory (existing, or a name without a suffix)
    gets ``results.jsonl`` and the pictures inside.
    """
    out = Path(out)
    if out.is_dir() or not out.suffix:
        return out / RESULTS_NAME, out
    if out.suffix not in OUTPUT_FORMATS:
        raise ValueError(
            f"--out {out}: use a {' or '.join(OUTPUT_FORMATS)} file name or a directory"
        )
    return out, out.with_suffix("")


def score_files(
    inputs: Iterable[Path],
    model_dir: Path,
    out: Path,
    name: str | None = None,
    batch_size: int = 1,
    progress: bool = True,
    top_k: int | None = None,
    explain: bool = False,
    certify: CertifyOptions | None = None,
) -> dict[str, int]:
    """Score every file under ``inputs`` into ``out`` (see :func:`resolve_out`); counts of rows
    and errors, and with ``explain`` of pictures (one per scored image)."""
    results, pictures_dir = resolve_out(out)
    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {batch_size}")
    files = collect_files(inputs)
    if not files:
        raise ValueError("no image files found in the given paths")
    pictures = None
    if explain:
        from serving.pictures import display_pixels, picture_paths, write_picture

        pictures = picture_paths(files, pictures_dir)
    scorer = OfflineScorer.from_artifact(Path(model_dir), name, top_k=top_k)
    if explain and not scorer.predictor.is_generative:
        raise ValueError(f"--explain: {model_dir} is a discriminative baseline, it has no heatmaps")
    results.parent.mkdir(parents=True, exist_ok=True)
    counts = {"rows": 0, "errors": 0} | ({"pictures": 0} if explain else {})
    bar = tqdm(total=len(files), unit="img", desc="scoring", disable=not progress)
    with results.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, CSV_COLUMNS) if results.suffix == ".csv" else None
        if writer:
            writer.writeheader()
        for index, (row, pixels) in enumerate(scorer.score_with_pixels(files, batch_size, explain)):
            if certify is not None and pixels is not None:
                label = row["prediction"]["label"]
                certificate = certificate_for(
                    scorer.predictor, pixels, label, certify.n, certify.sigma, certify.alpha, seed=0
                )
                row["certificate"] = certificate.model_dump()
            if writer:
                writer.writerow(_csv_row(row))
            else:
                handle.write(json.dumps(row) + "\n")
            if pictures is not None and pixels is not None:
                write_picture(display_pixels(pixels), row, pictures[index])
                counts["pictures"] += 1
            counts["rows"] += 1
            counts["errors"] += "error" in row
            bar.update(1)
    bar.close()
    return counts
