"""The explainability stage (Figs. 3-5): decision spaces, class similarity, heatmaps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from training.data_root import data_root
from training.ood import make_ood_set
from trustgc.preprocess import pixels_to_tensor


def _explain_examples(scores: dict[str, np.ndarray], labels: np.ndarray) -> tuple[int, int]:
    """Test images for Fig. 3: a confident and an ambiguous in-distribution decision.

    Both are drawn from the images the production test finds typical (p >= 0.1), so that the
    examples are in-distribution: confident = the correct prediction with top-1 >= 0.99 whose
    OoD score is closest to the median (the most confident one is often atypically close to
    its class mean); ambiguous = the smallest gap between the top-2 posteriors.
    """
    posterior = np.sort(np.exp(scores["log_posterior"]), axis=1)
    correct = scores["log_posterior"].argmax(axis=1) == labels
    typical = scores["production"] <= -np.log(0.1)
    if not typical.any():
        typical = np.ones_like(correct)
    sure = correct & typical & (posterior[:, -1] >= 0.99)
    if not sure.any():
        sure = np.ones_like(correct)
    distance = np.abs(scores["production"] - np.median(scores["production"]))
    confident = int(np.argmin(np.where(sure, distance, np.inf)))
    gap = np.where(typical, posterior[:, -1] - posterior[:, -2], np.inf)
    return confident, int(np.argmin(gap))


def _explain_stage(models, test, clean, options, out: Path) -> dict[str, Any]:
    """Figs. 3-5 analogs on one GC: decision spaces, class similarity, posterior heatmaps."""
    from trustgc.explain import class_distances, class_similarity
    from trustgc.plots import plot_class_similarity, plot_decision_space, plot_heatmaps

    gcs = [m for m in models if m.predictor is not None and m.beta]
    if not gcs:
        return {"skipped": "no generative classifier with beta > 0"}
    model = next((m for m in gcs if m.label == options.explain_beta), gcs[len(gcs) // 2])
    confident, ambiguous = _explain_examples(clean[model.name]["scores"], test.labels)
    ood_name = "mnist"
    nchw = test.images.transpose(0, 3, 1, 2)  # make_ood_set speaks (N, C, H, W)
    try:
        ood = make_ood_set("mnist", nchw, 1, data_root(), options.seed)
    except (ValueError, OSError):
        ood_name, ood = "uniform_noise", make_ood_set("uniform_noise", nchw, 1, None, options.seed)
    ood = ood.transpose(0, 2, 3, 1)
    cases = {
        "confident": test.images[confident],
        "ambiguous": test.images[ambiguous],
        f"ood_{ood_name}": ood[0],
    }
    heat_indices = [int(i) for i in np.random.default_rng(options.seed).permutation(len(test))[:4]]
    images = np.stack([*cases.values(), *test.images[heat_indices]])
    results = model.predictor.predict(pixels_to_tensor(images).numpy(), explain=True)
    names = model.manifest.class_names
    figures: dict[str, Any] = {"model": model.name, "decision_space": {}, "heatmaps": []}
    for (case, _), result in zip(cases.items(), results, strict=False):
        path = plot_decision_space(
            result.explanation["decision_space"], names, out / f"fig3_{case}.png"
        )
        figures["decision_space"][case] = {
            "file": path.name,
            "prediction": names[result.predicted_index],
            "probability": float(result.probabilities.max()),
            "ood_p_value": result.ood_p_value,
            "decision": str(result.decision),
        }
    for i, result in zip(heat_indices, results[len(cases) :], strict=True):
        path = plot_heatmaps(
            test.images[i] / 255.0,
            result.explanation["posterior_heatmaps"],
            names,
            out / f"fig5_heatmaps_{i}.png",
        )
        figures["heatmaps"].append({"file": path.name, "index": i, "label": names[test.labels[i]]})
    head = model.network.head
    plot_class_similarity(class_similarity(head), names, out / "fig4_class_similarity.png")
    distances = class_distances(head)
    upper = np.triu_indices(len(names), 1)
    closest = int(np.argmin(distances[upper]))
    figures["closest_pair"] = [names[upper[0][closest]], names[upper[1][closest]]]
    figures["closest_distance"] = float(distances[upper][closest])
    figures["farthest_distance"] = float(distances[upper].max())
    return figures
