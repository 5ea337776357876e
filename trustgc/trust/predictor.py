"""The one prediction API: a batch of images in, per image a prediction and its trust evidence.

Every server adapter (TorchServe handler, gRPC, CLI) calls :meth:`Predictor.predict`; every
evaluation, report and benchmark calls its columnar form :meth:`Predictor.score` (a
:class:`~trustgc.trust.table.ScoreTable`).  One forward pass gives posteriors and likelihoods;
the p-values are binary searches in the stored reference distributions, so trust costs next to
nothing beside the forward pass.

Decision rule, in order: ``rejected_ood`` if the production OoD p-value is below ``ood_alpha``;
else ``flagged_attack`` if the attack p-value is below ``attack_alpha``; else ``accepted``.

A discriminative model (kind ``classifier``, the CNN baseline) is accepted too, so that the
benchmarks can serve it through the same handler path: it needs no calibration and answers with
its probabilities and neutral trust fields (p-values 1.0, alphas 0.0, statistic ``none``, no
likelihood: bits/dim 0.0 and no per-class values), always ``accepted``.  It has no gating at all.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from trustgc.artifact import ModelManifest, load_model
from trustgc.background import check_background_weights, load_background, onnx_background
from trustgc.inference import ModelOutputs, latent_scores, model_outputs
from trustgc.preprocess import pixels_to_unit
from trustgc.scoring import bits_per_dim
from trustgc.trust.calibration import Calibration, check_against_registry, load_calibration
from trustgc.trust.smoothing import Certificate, certify
from trustgc.trust.statistics import COMBINATIONS, STATISTICS, compute_statistics
from trustgc.trust.table import Decision, ScoreTable, decide

__all__ = ["BACKENDS", "Decision", "Predictor", "ScoreTable", "TrustResult"]

BACKENDS = ("torch", "onnxruntime")  # what runs the network f; scoring is always torch
NO_STATISTIC = "none"  # the statistic names a classifier's neutral trust fields carry

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrustResult:
    """What the model says about one image, and how far to trust it."""

    probabilities: np.ndarray  # (K,) q(y|x)
    class_bits_per_dim: np.ndarray  # (K,) -log q(x|y) in bits per dimension
    bits_per_dim: float  # marginal, -log q(x)
    ood_statistic: str
    ood_p_value: float
    ood_alpha: float
    out_of_distribution: bool
    component_p_values: dict[str, float]
    attack_statistic: str
    attack_p_value: float
    attack_alpha: float
    attack_suspected: bool
    decision: Decision
    explanation: dict[str, Any] | None = field(default=None)
    rejected_by: str | None = None  # the OoD component with the smallest p-value, if rejected

    @property
    def predicted_index(self) -> int:
        return int(np.argmax(self.probabilities))


class Predictor:
    """A loaded, calibrated model ready to answer batches (or a classifier: see the module doc)."""

    def __init__(
        self,
        model: nn.Module,
        manifest: ModelManifest,
        calibration: Calibration | None,
        device: str | torch.device = "cpu",
        backend: str = "torch",
        onnx_path: Path | str | None = None,
        onnx_threads: int = 1,
        background: nn.Module | None = None,
    ) -> None:
        if manifest.config.kind == "classifier":
            self._init_classifier(model, manifest, device, backend)
            return
        if manifest.config.kind != "ibinn":
            raise ValueError("the trust layer needs a generative (ibinn) model")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.backend = backend
        self.model = model.to(device).eval()
        if backend == "onnxruntime":  # f runs in onnxruntime; the head and scoring stay in torch
            from trustgc.onnx_backend import OnnxFlow

            if onnx_path is None:
                raise ValueError("backend 'onnxruntime' needs onnx_path (`trustgc export-onnx`)")
            self.model = OnnxFlow(onnx_path, self.model.head, onnx_threads).to(device)
        check_against_registry(calibration)
        self.manifest = manifest
        self.calibration = calibration
        self.device = torch.device(device)
        self._references = {
            name: reference.reference() for name, reference in calibration.components.items()
        }
        self._combination_references = {
            name: reference.reference(tail_extrapolation=True)
            for name, reference in calibration.combination_components.items()
        }
        self._combined = {
            name: reference.reference() for name, reference in calibration.combined.items()
        }
        self._statistics = tuple(sorted(calibration.components))  # served: what was fitted
        # The background flow (trustgc/background.py) runs in torch beside f on every batch.
        self.background = None if background is None else background.to(device).eval()
        needs = [n for n in self._statistics if STATISTICS[n].requires_background]
        if needs and self.background is None:
            raise ValueError(f"the calibration serves {needs}: they need the background flow")

    def _init_classifier(
        self, model: nn.Module, manifest: ModelManifest, device: str | torch.device, backend: str
    ) -> None:
        """The discriminative baseline: probabilities only, no calibration, torch only."""
        if backend != "torch":
            raise ValueError(f"a classifier runs on the torch backend only, got {backend!r}")
        logger.warning(
            "model %s is a discriminative classifier: no OoD or attack gating (p-values 1.0)",
            manifest.name,
        )
        self.backend = backend
        self.model = model.to(device).eval()
        self.manifest = manifest
        self.calibration = None
        self.background = None
        self.device = torch.device(device)
        self._statistics = ()

    @property
    def is_generative(self) -> bool:
        """False for a classifier: its trust fields are neutral, nothing is ever rejected."""
        return self.manifest.config.kind != "classifier"

    @classmethod
    def from_artifact(
        cls,
        directory: Path | str,
        device: str = "cpu",
        backend: str = "torch",
        onnx_threads: int = 1,
    ) -> Predictor:
        """Load a calibrated artifact; ``backend="onnxruntime"`` runs f from its model.onnx."""
        model, manifest = load_model(directory, device)
        if manifest.config.kind == "classifier":
            return cls(model, manifest, None, device, backend)
        loaded = load_background(directory, manifest.config.input, device)
        background = None if loaded is None else loaded[0]
        calibration = load_calibration(Path(directory))
        if calibration is None:
            raise ValueError(
                f"{directory} is not calibrated: run `trustgc calibrate --model {directory}` first"
            )
        check_background_weights(directory, calibration.split.get("background_weights_sha256"))
        if backend == "torch":
            return cls(model, manifest, calibration, device, background=background)
        from trustgc.onnx_backend import checked_onnx_path

        onnx_path = checked_onnx_path(directory) if backend == "onnxruntime" else None
        if backend == "onnxruntime" and background is not None:
            background = onnx_background(directory, background, onnx_threads) or background
        return cls(
            model, manifest, calibration, device, backend, onnx_path, onnx_threads, background
        )

    @property
    def input_shape(self) -> tuple[int, int, int]:
        spec = self.manifest.config.input
        return (spec.channels, spec.height, spec.width)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.manifest.class_names

    def p_values(self, statistics: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Component p-values plus each combined statistic's (the served OoD and attack ones)."""
        p = {name: self._references[name].p_value(values) for name, values in statistics.items()}
        for name, reference in self._combined.items():
            combination = COMBINATIONS[name]
            inner = {
                c: self._combination_references[c].p_value(statistics[c])
                for c in combination.components
            }
            p[name] = reference.p_value(combination.combine(inner))
        return p

    def score(self, pixels: np.ndarray, batch_size: int = 256) -> ScoreTable:
        """uint8 images (N, C, H, W) in the model's input shape -> one column per quantity.

        The columnar form of :meth:`predict` (which is this plus a per-image split): posteriors,
        bits/dim, every served statistic and its p-value, the combined OoD and attack p-values,
        the flags and decisions, as arrays with one row per image.  Evaluations, reports and
        benchmarks use it instead of rebuilding pixels -> statistics -> p-values themselves.
        """
        return self._score(pixels, batch_size, keep_latents=False)[0]

    def _check_pixels(self, pixels: np.ndarray) -> None:
        """Refuse anything but uint8 images (B, C, H, W) in the model's input shape."""
        if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[1:] != self.input_shape:
            raise ValueError(
                f"expected uint8 images of shape (B, {self.input_shape}), got "
                f"{pixels.dtype} {pixels.shape}"
            )

    def _score(
        self, pixels: np.ndarray, batch_size: int, keep_latents: bool
    ) -> tuple[ScoreTable, ModelOutputs]:
        self._check_pixels(pixels)
        outputs = model_outputs(
            self.model,
            torch.from_numpy(pixels),
            batch_size,
            self.device,
            keep_latents,
            self.background,
        )
        if not self.is_generative:
            return self._classifier_table(outputs), outputs
        calibration = self.calibration
        statistics = compute_statistics(outputs, pixels, self._statistics)
        p = self.p_values(statistics)
        ood = p[calibration.ood_statistic] < calibration.ood_alpha
        attack = p[calibration.attack_statistic] < calibration.attack_alpha
        table = ScoreTable(
            log_posterior=outputs.log_posterior,
            probabilities=outputs.probabilities,
            log_likelihood=outputs.log_likelihood,
            class_bits_per_dim=bits_per_dim(outputs.class_log_likelihood, outputs.dim),
            bits_per_dim=bits_per_dim(outputs.log_likelihood, outputs.dim),
            statistics=statistics,
            p_values=p,
            ood_statistic=calibration.ood_statistic,
            ood_alpha=calibration.ood_alpha,
            attack_statistic=calibration.attack_statistic,
            attack_alpha=calibration.attack_alpha,
            out_of_distribution=ood,
            attack_suspected=attack,
            decisions=decide(ood, attack),
            ood_components=tuple(calibration.ood_components),
        )
        return table, outputs

    @staticmethod
    def _classifier_table(outputs: ModelOutputs) -> ScoreTable:
        """Probabilities with neutral trust columns (see the module doc)."""
        n = outputs.log_posterior.shape[0]
        never = np.zeros(n, dtype=bool)
        return ScoreTable(
            log_posterior=outputs.log_posterior,
            probabilities=outputs.probabilities,
            log_likelihood=None,
            class_bits_per_dim=np.empty((n, 0)),
            bits_per_dim=np.zeros(n),
            statistics={},
            p_values={},
            ood_statistic=NO_STATISTIC,
            ood_alpha=0.0,
            attack_statistic=NO_STATISTIC,
            attack_alpha=0.0,
            out_of_distribution=never,
            attack_suspected=never,
            decisions=decide(never, never),
        )

    def predict(
        self, pixels: np.ndarray, explain: bool | list[bool] = False, batch_size: int = 256
    ) -> list[TrustResult]:
        """uint8 images (B, C, H, W) in the model's input shape -> one result per image.

        :meth:`score` split per image, plus explanations for the images that ask for them
        (generative models only).
        """
        wants = [explain] * len(pixels) if isinstance(explain, bool) else list(explain)
        if len(wants) != len(pixels):
            raise ValueError(f"{len(wants)} explain flags for {len(pixels)} images")
        keep = self.is_generative and any(wants)
        table, outputs = self._score(pixels, batch_size, keep_latents=keep)
        explanations = self._explanations(outputs, wants) if keep else {}
        rejected_by = table.rejected_by  # a property over the whole batch: computed once here
        return [_row(table, i, explanations.get(i), rejected_by[i]) for i in range(len(table))]

    def certify(
        self,
        pixels: np.ndarray,
        sigma: float = 0.25,
        n: int = 1000,
        n0: int = 100,
        alpha: float = 0.001,
        seed: int | None = 0,
    ) -> list[Certificate]:
        """Randomized-smoothing certificates of uint8 images (B, C, H, W): the smoothed
        label and the L2 radius it is certified in (:mod:`trustgc.trust.smoothing`).  Costs
        n0 + n forward passes of f per image; the OoD and attack decisions are not certified.

        ``seed`` makes the noise reproducible (offline scoring, tests); ``None`` draws it from
        the operating system's entropy, as a server must: the guarantee holds over noise the
        input's author cannot know, and a public seed lets them choose inputs against it."""
        self._check_pixels(pixels)

        def labels_of(x: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                if self.is_generative:
                    return latent_scores(self.model, x).logits.argmax(1)
                return self.model(x).argmax(1)

        generator = torch.Generator(device=self.device)
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(seed)
        images = pixels_to_unit(torch.from_numpy(pixels.copy())).to(self.device)
        num_classes = self.manifest.config.num_classes
        return [
            certify(labels_of, image, num_classes, sigma, n, n0, alpha, generator=generator)
            for image in images
        ]

    def _explanations(self, outputs, wants: list[bool]) -> dict[int, dict[str, Any]]:
        """Heatmaps and decision-space coordinates for the images that asked for them."""
        chosen = [i for i, want in enumerate(wants) if want]
        if not chosen:
            return {}
        from trustgc.explain import decision_space, posterior_heatmaps

        latents = torch.from_numpy(outputs.latents[chosen]).to(self.device)
        head = self.model.head
        with torch.inference_mode():
            latents = latents.to(head.full_means.dtype)
            maps = posterior_heatmaps(latents, head, self.manifest.config.latent_shape)
            spaces = decision_space(latents, head, top=min(5, head.num_classes))
        return {
            index: {
                "posterior_heatmaps": maps[row].double().cpu().numpy(),
                "decision_space": spaces[row],
            }
            for row, index in enumerate(chosen)
        }


def _row(
    table: ScoreTable, i: int, explanation: dict[str, Any] | None, rejected_by: str | None
) -> TrustResult:
    """Row ``i`` of a score table as one image's result (``rejected_by``: its entry of
    ``table.rejected_by``, which the caller computes once for the whole table)."""
    return TrustResult(
        probabilities=table.probabilities[i],
        class_bits_per_dim=table.class_bits_per_dim[i],
        bits_per_dim=float(table.bits_per_dim[i]),
        ood_statistic=table.ood_statistic,
        ood_p_value=float(table.ood_p_value[i]),
        ood_alpha=table.ood_alpha,
        out_of_distribution=bool(table.out_of_distribution[i]),
        component_p_values={name: float(table.p_values[name][i]) for name in table.statistics},
        attack_statistic=table.attack_statistic,
        attack_p_value=float(table.attack_p_value[i]),
        attack_alpha=table.attack_alpha,
        attack_suspected=bool(table.attack_suspected[i]),
        decision=table.decisions[i],
        explanation=explanation,
        rejected_by=rejected_by,
    )
