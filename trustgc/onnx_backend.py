"""ONNX export of the invertible network f and an onnxruntime backend that scores like the IBINN.

Only the flow is exported: images (B, C, H, W) float32 in [0, 1] -> latents z (B, D) and
log|det J_f| (B,), with a dynamic batch axis.  The Gaussian mixture head stays in torch and every
likelihood, posterior and bits/dim still comes from :func:`trustgc.scoring.score_latents`, so the
formulas live in one place whichever backend ran f.  (The head is a handful of small matrix
operations: ``benchmarks/onnx_vs_torch.py`` measures it below 2% of a batch's time.)

Files written next to the artifact's ``model.json`` (whose schema is left unchanged):

    model.onnx   the flow, weights inside the file (no ``.onnx.data`` side file)
    onnx.json    how it was made: exporter, opset, library versions, the SHA-256 of the
                 ``weights.safetensors`` it was exported from, and the export's parity check

:class:`OnnxFlow` wraps an onnxruntime session and the torch head behind the interface that
:func:`trustgc.inference.score_batch` and :class:`trustgc.trust.Predictor` use (``score``,
``eval``, ``to``, ``head``), so the batched loop in ``model_outputs`` runs it unchanged.
A ``model.onnx`` older than the weights is refused, never silently paired with a new head.
"""

from __future__ import annotations

import logging
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from trustgc.artifact import (
    WEIGHTS_FILE,
    ArtifactError,
    check_derived,
    file_sha256,
    load_model,
    read_json,
    write_json,
)
from trustgc.head import GaussianMixtureHead
from trustgc.scoring import LatentScores, score_latents

__all__ = [
    "DEFAULT_OPSET",
    "EXPORTERS",
    "INPUT_NAME",
    "ONNX_FILE",
    "ONNX_INFO_FILE",
    "OUTPUT_NAMES",
    "OnnxFlow",
    "checked_onnx_path",
    "export_artifact",
    "export_flow",
    "load_onnx_info",
    "select_providers",
]

logger = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
ONNX_INFO_FILE = "onnx.json"
ONNX_INFO_VERSION = 1
INPUT_NAME = "images"
OUTPUT_NAMES = ("latents", "logdet")
# Opset 18 runs on every onnxruntime this project allows (>= 1.17) and has every op f needs.
DEFAULT_OPSET = 18
EXPORTERS = ("auto", "dynamo", "torchscript")
# torch.export specialises a dimension whose example size is 0 or 1, so the example batch used
# for tracing has two images; the exported batch axis is dynamic either way.
_EXAMPLE_BATCH = 2
_CHECK_BATCHES = (1, 3)


class _FlowGraph(nn.Module):
    """What gets exported: f alone, images in [0, 1] -> (latents, log-det)."""

    def __init__(self, flow: nn.Module) -> None:
        super().__init__()
        self.flow = flow

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.flow(x)


def _input_shape(model: nn.Module) -> tuple[int, int, int]:
    spec = model.config.input
    return (spec.channels, spec.height, spec.width)


def _export_dynamo(graph: nn.Module, example: Tensor, path: Path, opset: int) -> None:
    batch = torch.export.Dim("batch", min=1)
    torch.onnx.export(
        graph,
        (example,),
        str(path),
        dynamo=True,
        external_data=False,
        opset_version=opset,
        input_names=[INPUT_NAME],
        output_names=list(OUTPUT_NAMES),
        dynamic_shapes=({0: batch},),
        optimize=True,
        verbose=False,
    )


def _export_torchscript(graph: nn.Module, example: Tensor, path: Path, opset: int) -> None:
    axes = {name: {0: "batch"} for name in (INPUT_NAME, *OUTPUT_NAMES)}
    with warnings.catch_warnings():  # the legacy exporter's deprecation and tracer notes
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            graph,
            (example,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes=axes,
            do_constant_folding=True,
        )


def _compare(session, graph: nn.Module, shape: tuple[int, int, int]) -> dict[str, float]:
    """Run ORT and torch on random batches of several sizes; the largest differences seen."""
    generator = torch.Generator().manual_seed(1)
    worst = {"max_abs_latent_diff": 0.0, "max_rel_logdet_diff": 0.0, "max_abs_latent": 0.0}
    for batch in _CHECK_BATCHES:
        x = torch.rand(batch, *shape, generator=generator)
        with torch.inference_mode():
            z, logdet = graph(x)
        z_ort, logdet_ort = session.run(list(OUTPUT_NAMES), {INPUT_NAME: x.numpy()})
        z, logdet = z.numpy().astype(np.float64), logdet.numpy().astype(np.float64)
        if z_ort.shape != z.shape or logdet_ort.shape != logdet.shape:
            raise RuntimeError(
                f"ONNX output shapes {z_ort.shape}, {logdet_ort.shape} differ from torch's "
                f"{z.shape}, {logdet.shape} at batch {batch}"
            )
        rel = np.abs(logdet_ort - logdet) / np.maximum(np.abs(logdet), 1.0)
        worst["max_abs_latent_diff"] = max(worst["max_abs_latent_diff"], _max(z_ort - z))
        worst["max_rel_logdet_diff"] = max(worst["max_rel_logdet_diff"], float(rel.max()))
        worst["max_abs_latent"] = max(worst["max_abs_latent"], _max(z))
    return worst


def _max(values: np.ndarray) -> float:
    values = np.abs(values)
    return float(values.max()) if np.all(np.isfinite(values)) else float("inf")


def export_flow(
    model: nn.Module,
    path: Path | str,
    opset: int = DEFAULT_OPSET,
    exporter: str = "auto",
) -> dict[str, Any]:
    """Export ``model.flow`` of an IBINN to ``path`` (one file); returns how it was made.

    ``exporter``: ``dynamo`` (torch.export + onnxscript, torch's default), ``torchscript`` (the
    legacy tracer) or ``auto`` (dynamo, falling back to torchscript if dynamo fails; the reason is
    recorded).  The file is checked with ``onnx.checker`` and run by onnxruntime on random batches
    of sizes 1 and 3 against torch; a mismatch beyond 1e-3 relative raises ``RuntimeError``.
    """
    import onnx
    import onnxruntime

    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    if getattr(getattr(model, "config", None), "kind", None) != "ibinn":
        raise ValueError("only an IB-INN's flow can be exported (the model has no .flow)")
    path = Path(path)
    model = model.to("cpu").eval()
    graph = _FlowGraph(model.flow).eval()
    shape = _input_shape(model)
    example = torch.rand(_EXAMPLE_BATCH, *shape, generator=torch.Generator().manual_seed(0))
    started = time.perf_counter()
    used, fallback_reason = exporter, None
    if exporter in ("auto", "dynamo"):
        try:
            _export_dynamo(graph, example, path, opset)
            used = "dynamo"
        except Exception as error:
            if exporter == "dynamo":
                raise
            fallback_reason = f"{type(error).__name__}: {str(error).splitlines()[0][:500]}"
            logger.warning("dynamo export failed (%s); using the TorchScript exporter", error)
            used = "torchscript"
    if used == "torchscript":
        _export_torchscript(graph, example, path, opset)
    seconds = time.perf_counter() - started
    onnx.checker.check_model(str(path), full_check=True)
    written = onnx.load(str(path), load_external_data=False)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    check = _compare(session, graph, shape)
    tolerance = 1e-3 * max(1.0, check["max_abs_latent"])
    if not (check["max_abs_latent_diff"] <= tolerance and check["max_rel_logdet_diff"] <= 1e-3):
        raise RuntimeError(f"the exported graph disagrees with torch: {check}")
    versions = {"torch": torch.__version__, "onnx": onnx.__version__}
    versions["onnxruntime"] = onnxruntime.__version__
    if used == "dynamo":
        import onnxscript

        versions["onnxscript"] = onnxscript.__version__
    opsets = {entry.domain or "ai.onnx": entry.version for entry in written.opset_import}
    return {
        "format_version": ONNX_INFO_VERSION,
        "file": path.name,
        "exporter": used,
        "exporter_requested": exporter,
        "fallback_reason": fallback_reason,
        "opset": opsets.get("ai.onnx", opset),
        "opset_imports": opsets,
        "versions": versions,
        "input": {"name": INPUT_NAME, "shape": ["batch", *shape], "dtype": "float32"},
        "outputs": {
            OUTPUT_NAMES[0]: {"shape": ["batch", model.config.input.dims], "dtype": "float32"},
            OUTPUT_NAMES[1]: {"shape": ["batch"], "dtype": "float32"},
        },
        "external_data": False,
        "nodes": len(written.graph.node),
        "bytes": path.stat().st_size,
        "sha256": file_sha256(path),
        "export_seconds": round(seconds, 2),
        "check": {"batches": list(_CHECK_BATCHES), **check},
    }


def export_artifact(
    directory: Path | str, opset: int = DEFAULT_OPSET, exporter: str = "auto"
) -> dict[str, Any]:
    """Write ``model.onnx`` and ``onnx.json`` into a model artifact directory; returns the info.

    Both files are replaced only after a successful export and check.
    """
    directory = Path(directory)
    model, manifest = load_model(directory, "cpu")
    if manifest.config.kind != "ibinn":
        raise ValueError(f"{directory} holds a {manifest.config.kind!r} model; only ibinn exports")
    temporary = directory / f".{ONNX_FILE}.partial"
    try:
        info = export_flow(model, temporary, opset, exporter)
        temporary.replace(directory / ONNX_FILE)
    finally:
        temporary.unlink(missing_ok=True)
    info.update(
        file=ONNX_FILE,
        model=manifest.name,
        model_version=manifest.version,
        weights_sha256=file_sha256(directory / WEIGHTS_FILE),
        exported_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    write_json(directory / ONNX_INFO_FILE, info)
    return info


def load_onnx_info(directory: Path | str) -> dict[str, Any] | None:
    """``onnx.json`` of an artifact, or None if the model was never exported."""
    path = Path(directory) / ONNX_INFO_FILE
    return read_json(path) if path.is_file() else None


def checked_onnx_path(directory: Path | str) -> Path:
    """The artifact's ``model.onnx``, after checking it was exported from the current weights."""
    directory = Path(directory)
    path = directory / ONNX_FILE
    info = load_onnx_info(directory)
    if not path.is_file() or info is None:
        raise ArtifactError(
            f"{directory} has no {ONNX_FILE} with its {ONNX_INFO_FILE}: run "
            f"`trustgc export-onnx --model {directory}` first"
        )
    check_derived(directory, ONNX_INFO_FILE, info.get("weights_sha256"))
    if info.get("sha256") not in (None, file_sha256(path)):
        raise ArtifactError(f"{path} does not match the checksum in {ONNX_INFO_FILE}")
    return path


def _gpu_present() -> bool:
    return torch.cuda.is_available() or Path("/proc/driver/nvidia/version").is_file()


def select_providers(device: str = "auto") -> list[str]:
    """onnxruntime execution providers, best first.

    ``auto``: CUDA when the onnxruntime-gpu build is installed (``pip install .[gpu]``) and an
    NVIDIA GPU is present, else CPU.  ``cpu`` forces the CPU provider; ``cuda`` requires CUDA.
    """
    import onnxruntime

    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    cuda = "CUDAExecutionProvider" in onnxruntime.get_available_providers() and _gpu_present()
    if device == "cuda" and not cuda:
        raise ValueError("the CUDA provider needs onnxruntime-gpu and an NVIDIA GPU")
    if cuda and device != "cpu":
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxFlow:
    """f run by onnxruntime plus the torch head: scores images like :meth:`IBINN.score`.

    ``threads`` is onnxruntime's intra-op thread count.  The default of 1 suits a TorchServe
    worker: the deployment runs one worker per core (``minWorkers`` in model-config.yaml), and
    several multi-threaded workers on the same cores only contend.  A single process that owns
    the machine may set it to the number of physical cores.  Inter-op parallelism is off (f is a
    chain), and graph optimisation is ``ORT_ENABLE_ALL`` (NCHWc convolutions, fusions).
    ``spin=False`` makes idle pool threads sleep instead of busy-waiting (it only matters for
    ``threads > 1``): on cores shared with other workers, spinning threads steal the time the
    working ones need (measured 1.4-1.7x slower at 2 threads on a loaded 2-core machine).
    """

    def __init__(
        self,
        path: Path | str,
        head: GaussianMixtureHead,
        threads: int = 1,
        providers: list[str] | str = "auto",
        spin: bool = False,
    ) -> None:
        import onnxruntime

        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        chosen = select_providers(providers) if isinstance(providers, str) else list(providers)
        self.path = Path(path)
        self.threads = int(threads)
        self.session = onnxruntime.InferenceSession(str(path), options, providers=chosen)
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if [i.name for i in inputs] != [INPUT_NAME] or [o.name for o in outputs] != list(
            OUTPUT_NAMES
        ):
            raise ArtifactError(
                f"{path}: expected input {INPUT_NAME!r} and outputs {OUTPUT_NAMES}, got "
                f"{[i.name for i in inputs]} and {[o.name for o in outputs]}"
            )
        self.input_shape = tuple(int(d) for d in inputs[0].shape[1:])
        self.head = head.eval()

    @classmethod
    def from_artifact(
        cls,
        directory: Path | str,
        head: GaussianMixtureHead | None = None,
        threads: int = 1,
        providers: list[str] | str = "auto",
        spin: bool = False,
    ) -> OnnxFlow:
        """Open an artifact's checked ``model.onnx``; the head is loaded from its weights unless
        given."""
        path = checked_onnx_path(directory)
        if head is None:
            head = load_model(directory, "cpu")[0].head
        return cls(path, head, threads, providers, spin)

    @property
    def providers(self) -> list[str]:
        """The providers the session actually uses (onnxruntime may drop unusable ones)."""
        return self.session.get_providers()

    def eval(self) -> OnnxFlow:
        return self

    def to(self, device: str | torch.device) -> OnnxFlow:
        """Where the head and the returned tensors live; the session keeps its providers."""
        self.head.to(device)
        return self

    def __call__(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Images in [0, 1], (B, C, H, W) -> latents (B, D) and log|det J_f| (B,), float32."""
        if x.dim() != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(
                f"expected images of shape (B, {self.input_shape}), got {tuple(x.shape)}"
            )
        array = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        z, logdet = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: array})
        device = self.head.full_means.device
        return torch.from_numpy(z).to(device), torch.from_numpy(logdet).to(device)

    def score(self, x: Tensor) -> LatentScores:
        """Run f in onnxruntime and score the latents with the shared torch scoring code."""
        z, logdet = self(x)
        return score_latents(z, logdet, self.head, inputs=x)
