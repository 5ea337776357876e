"""``trustgc ood``: the OoD gate measured on what the server sees.

Every image of every set, the in-distribution test set included, reaches the model through
``serving.decode.decode_image``, the handler's own decoding: files (CIFAR-10 test JPEGs straight
from the archive's member bytes, user folders) from their original bytes; arrays (IDX sets, the
synthetic and transformed sets) as PNG files, which decode losslessly to the same pixels.

Per set: ROC-AUC of the served OoD statistic against Fashion-MNIST test (the AUC of the served
p-value, with the step p-value's ties at its floor broken by the continuous statistic it is a
decreasing function of), the share the service rejects as OoD / does not accept at the served
alpha, which component rejected (the served statistic's component with the smallest p-value,
counted over the rejected images), the most frequent predicted class, and what costs the AUC
(:func:`auc_deficit_by_component`: which in-distribution images outrank the set, by component).
The in-distribution rejection rate at several alphas is checked against its 99 % binomial
interval.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from training.data import load_dataset, load_recorded
from training.metrics import accuracy, binomial_interval, roc_auc
from training.served_sets import decode_files, folder_bytes, served_cifar10
from trustgc.trust.calibration import Calibration
from trustgc.trust.predictor import Predictor
from trustgc.trust.statistics import COMBINATIONS, png_encode
from trustgc.trust.table import Decision, ScoreTable

__all__ = [
    "OOD_SETS",
    "OodOptions",
    "as_png",
    "auc_deficit_by_component",
    "evaluate_ood",
    "format_table",
    "make_ood_set",
    "parse_ood_dir",
    "served_ood_statistic",
]

#: The built-in suite, in report order.  Transformed sets derive from Fashion-MNIST *test*.
OOD_SETS: tuple[str, ...] = (
    "mnist",
    "notmnist",
    "cifar10_test",
    "uniform_noise",
    "gaussian_noise",
    "constant",
    "inverted",
    "vflip",
    "hflip",
)


class OodOptions(BaseModel):
    """What ``trustgc ood`` evaluates (the CLI derives its flags from these fields)."""

    model_config = ConfigDict(extra="forbid")

    model: Path = Field(description="model artifact directory")
    sets: tuple[str, ...] = Field(default=OOD_SETS, description="built-in OoD sets to evaluate")
    ood_dirs: dict[str, Path] = Field(
        default_factory=dict, description="extra OoD sets: NAME -> folder of image files"
    )
    limit: int = Field(default=2000, gt=0, description="images per OoD set (seeded sample)")
    data_root: Path | None = Field(
        default=None,
        description="folder holding mnist/, notmnist/, cifar10/ (default: $TRUSTGC_DATA)",
    )
    seed: int = Field(default=0, description="seed of the samples and the synthetic sets")
    alphas: tuple[float, ...] = Field(default=(0.01, 0.05, 0.1), description="in-dist. checks")


def _default_data_root() -> Path:
    from training.data_root import data_root

    return data_root()


def as_png(images: np.ndarray) -> list[bytes]:
    """uint8 (N, C, H, W) -> one PNG file's bytes per image (what a user would upload)."""
    return [png_encode(image) for image in images]


def _sample(count: int, limit: int, rng: np.random.Generator) -> np.ndarray:
    return np.sort(rng.permutation(count)[: min(limit, count)])


# Each builder: (in-distribution test pixels (N, C, H, W), data root, rng, limit) -> image files.
Builder = Callable[[np.ndarray, Path, np.random.Generator, int], list[bytes]]


def _external(name: str) -> Builder:
    def build(test: np.ndarray, root: Path, rng: np.random.Generator, limit: int) -> list[bytes]:
        images = load_dataset(name, "test", root / name).images  # (N, H, W, C)
        images = images[_sample(len(images), limit, rng)].transpose(0, 3, 1, 2)
        return as_png(images)

    return build


def _cifar10_test(test: np.ndarray, root: Path, rng: np.random.Generator, limit: int) -> None:
    """Marker: decoded from the archive's JPEG bytes by :func:`served_cifar10` (cached)."""
    return None


def _uniform_noise(test, root, rng, limit) -> list[bytes]:
    return as_png(rng.integers(0, 256, (limit, *test.shape[1:]), dtype=np.uint8))


def _gaussian_noise(test, root, rng, limit) -> list[bytes]:
    return as_png(np.clip(rng.normal(128, 50, (limit, *test.shape[1:])), 0, 255).astype(np.uint8))


def _constant(test, root, rng, limit) -> list[bytes]:
    values = rng.integers(0, 256, limit, dtype=np.uint8)
    return as_png(np.broadcast_to(values[:, None, None, None], (limit, *test.shape[1:])).copy())


def _transformed(transform: Callable[[np.ndarray], np.ndarray]) -> Builder:
    def build(test: np.ndarray, root: Path, rng: np.random.Generator, limit: int) -> list[bytes]:
        return as_png(np.ascontiguousarray(transform(test[_sample(len(test), limit, rng)])))

    return build


_BUILDERS: dict[str, Builder] = {
    "mnist": _external("mnist"),
    "notmnist": _external("notmnist"),
    "cifar10_test": _cifar10_test,
    "uniform_noise": _uniform_noise,
    "gaussian_noise": _gaussian_noise,
    "constant": _constant,
    "inverted": _transformed(lambda x: 255 - x),
    "vflip": _transformed(lambda x: x[:, :, ::-1]),
    "hflip": _transformed(lambda x: x[:, :, :, ::-1]),
}
assert tuple(_BUILDERS) == OOD_SETS  # one list of names


def make_ood_set(
    name: str, test: np.ndarray, limit: int, data_root: Path | None, seed: int = 0
) -> np.ndarray:
    """The set's images as the server decodes them, uint8 (N, C, H, W) like ``test``.

    ``data_root`` is needed by the sets read from files (MNIST, notMNIST, CIFAR-10) only."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown OoD set {name!r}; known: {', '.join(OOD_SETS)}")
    rng = np.random.default_rng([seed, OOD_SETS.index(name)])
    shape = tuple(test.shape[1:])
    if name == "cifar10_test":
        photos = served_cifar10(Path(data_root), "test", shape)
        return photos[_sample(len(photos), limit, rng)]
    return decode_files(_BUILDERS[name](test, data_root and Path(data_root), rng, limit), shape)


def served_ood_statistic(calibration: Calibration, statistics: dict[str, np.ndarray]) -> np.ndarray:
    """The served OoD statistic T itself (higher = more OoD), before its step p-value.

    The served p-value is a decreasing step function of T, so T ranks images as the p-value
    does, with the p-value's ties at its floor 1 / (n + 1) broken: its AUC is the gate's.
    """
    return COMBINATIONS[calibration.ood_statistic].combine(_inner_p_values(calibration, statistics))


def auc_deficit_by_component(
    t_in: np.ndarray, t_out: np.ndarray, in_p_values: dict[str, np.ndarray]
) -> dict:
    """Who costs the AUC: the in-distribution images that rank above OoD images, and why.

    ``1 - AUC`` is the mean over in-distribution images of the share of OoD images each one
    outranks (ties half).  Each in-distribution image is attributed to its served component
    with the smallest inner p-value (as ``rejected_by`` names a rejected image's); the deficit
    splits accordingly.  Returns the count of in-distribution images outranking at least one
    OoD image, the deficit in AUC percentage points per component, and the OoD images' own
    median T next to the largest in-distribution T.
    """
    ordered = np.sort(t_out)
    below = np.searchsorted(ordered, t_in, side="left")
    ties = np.searchsorted(ordered, t_in, side="right") - below
    outranked = (below + 0.5 * ties) / len(t_out)
    names = list(in_p_values)
    driver = np.argmin(np.stack([in_p_values[name] for name in names]), axis=0)
    return {
        "in_distribution_ranked_above": int(np.count_nonzero(outranked)),
        "deficit_percent_by_component": {
            name: 100.0 * float(outranked[driver == i].sum()) / len(t_in)
            for i, name in enumerate(names)
        },
        "t_out_median": float(np.median(t_out)),
        "t_in_max": float(np.max(t_in)),
    }


def _inner_p_values(calibration: Calibration, statistics: dict[str, np.ndarray]) -> dict:
    return {
        name: calibration.combination_components[name]
        .reference(tail_extrapolation=True)
        .p_value(statistics[name])
        for name in COMBINATIONS[calibration.ood_statistic].components
    }


def _set_report(
    table: ScoreTable,
    table_in: ScoreTable,
    t_in: np.ndarray,
    t_out: np.ndarray,
    components: tuple[str, ...],
    class_names: tuple[str, ...],
) -> dict:
    rejected = table.out_of_distribution
    by = Counter(table.rejected_by[rejected].tolist())
    predicted = Counter(table.predicted_index.tolist()).most_common(1)[0]
    return {
        "n": len(table),
        "auc_percent": 100.0 * roc_auc(t_in, t_out),
        "rejected_ood": float(rejected.mean()),
        "not_accepted": float(np.mean(table.decisions != Decision.ACCEPTED)),
        "rejected_by": {name: int(by.get(name, 0)) for name in components},
        "component_auc_percent": {
            name: 100.0 * roc_auc(-np.log(table_in.p_values[name]), -np.log(table.p_values[name]))
            for name in components
        },
        "top_class": {"name": class_names[predicted[0]], "share": predicted[1] / len(table)},
    }


def evaluate_ood(options: OodOptions) -> dict:
    """Run the suite (and the user's folders) through the served path; a JSON-ready report."""
    unknown = set(options.sets) - set(OOD_SETS)
    if unknown:
        raise ValueError(f"unknown OoD sets {sorted(unknown)}; known: {', '.join(OOD_SETS)}")
    root = options.data_root or _default_data_root()
    predictor = Predictor.from_artifact(options.model)
    calibration = predictor.calibration
    components = tuple(calibration.ood_components)
    dataset = predictor.manifest.training.get("dataset", "fashion_mnist")
    test_set = load_recorded(predictor.manifest.training, "test")  # where it was trained
    shape = predictor.input_shape
    test = decode_files(as_png(test_set.images.transpose(0, 3, 1, 2)), shape)
    table_in = predictor.score(test)
    t_in = served_ood_statistic(calibration, table_in.statistics)
    inner_in = _inner_p_values(calibration, table_in.statistics)
    in_distribution = {
        "set": f"{dataset} test",
        "n": len(test),
        "accuracy": accuracy(table_in.probabilities, test_set.labels),
        "rejection": {},
    }
    for alpha in options.alphas:
        rate = float(np.mean(table_in.ood_p_value < alpha))
        low, high = binomial_interval(len(test), alpha, 0.99)
        in_distribution["rejection"][str(alpha)] = {
            "rate": rate,
            "interval_99": [low, high],
            "inside": low <= rate <= high,
        }
    in_distribution["not_accepted_at_served_alpha"] = float(
        np.mean(table_in.decisions != Decision.ACCEPTED)
    )
    inputs = {
        name: make_ood_set(name, test, options.limit, root, options.seed) for name in options.sets
    }
    for name, folder in options.ood_dirs.items():
        files = folder_bytes(folder)
        chosen = _sample(len(files), options.limit, np.random.default_rng(options.seed))
        inputs[name] = decode_files([files[i] for i in chosen], shape)
    sets = {}
    for name, pixels in inputs.items():
        table = predictor.score(pixels)
        t_out = served_ood_statistic(calibration, table.statistics)
        sets[name] = _set_report(table, table_in, t_in, t_out, components, predictor.class_names)
        sets[name]["auc_deficit"] = auc_deficit_by_component(t_in, t_out, inner_in)
    return {
        "model": str(options.model),
        "decoding": "serving.decode.decode_image (the handler's path) for every image",
        "served": {
            "statistic": calibration.ood_statistic,
            "components": list(components),
            "alpha": calibration.ood_alpha,
        },
        "limit": options.limit,
        "seed": options.seed,
        "in_distribution": in_distribution,
        "sets": sets,
    }


def format_table(result: dict) -> str:
    """The report as a Markdown table (docs/method.md's OoD table)."""
    components = result["served"]["components"]
    lines = [
        "| OoD set | n | AUC % | rejected as OoD | not accepted | rejected by "
        f"({', '.join(components)}) | top class |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in result["sets"].items():
        by = " / ".join(str(row["rejected_by"][c]) for c in components)
        top = row["top_class"]
        lines.append(
            f"| {name} | {row['n']} | {row['auc_percent']:.2f} "
            f"| {100 * row['rejected_ood']:.1f} % | {100 * row['not_accepted']:.1f} % | {by} "
            f"| {top['name']} ({100 * top['share']:.0f} %) |"
        )
    return "\n".join(lines)


def parse_ood_dir(text: str) -> tuple[str, Path]:
    """``NAME=DIR`` of ``--ood-dir`` -> (name, folder)."""
    name, sep, folder = text.partition("=")
    if not sep or not name or not folder:
        raise ValueError(f"--ood-dir takes NAME=DIR, got {text!r}")
    return name, Path(folder)
