"""Smoke tests of benchmarks/quantize_int8.py's pure parts: which nodes each variant keeps in
fp32 on the shipped flow's graph, and the AUC of a low-is-suspicious score."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def flow_graph():
    return onnx.load(str(ROOT / "model_store" / "fashion_mnist" / "model.onnx"))


def test_variants_keep_disjoint_layers_of_every_subnet(quantize_int8, flow_graph) -> None:
    linear = {n.name for n in flow_graph.graph.node if n.op_type in ("Conv", "Gemm")}
    inputs = set(quantize_int8.fp32_nodes(flow_graph, "fp32_inputs"))
    scales = set(quantize_int8.fp32_nodes(flow_graph, "fp32_scales"))
    stage1 = set(quantize_int8.fp32_nodes(flow_graph, "fp32_stage1_inputs"))
    assert quantize_int8.fp32_nodes(flow_graph, "plain") == []
    # every subnet has one first and one last layer: as many of each, none shared
    assert inputs and len(inputs) == len(scales) and not inputs & scales
    assert inputs | scales <= linear
    assert stage1 and stage1 < inputs
    with pytest.raises(ValueError, match="unknown variant"):
        quantize_int8.fp32_nodes(flow_graph, "fp16")


def test_auc_counts_pairs_with_low_scores_suspicious(quantize_int8) -> None:
    rng = np.random.default_rng(0)
    inlier, outlier = rng.normal(size=60), np.append(rng.normal(-0.5, 1.0, 39), 0.0)
    inlier[0] = 0.0  # one tie, counted as half
    pairs = inlier[:, None] - outlier[None, :]
    expected = (np.sum(pairs > 0) + 0.5 * np.sum(pairs == 0)) / pairs.size
    assert quantize_int8.auc(inlier, outlier) == pytest.approx(expected, abs=1e-12)
