"""Smoke tests of benchmarks/model_cost.py's pure parts: counting, PNG lengths, the report."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn


def test_conv_and_linear_macs(model_cost) -> None:
    conv = nn.Conv2d(3, 8, 3, padding=1)
    assert model_cost.conv_linear_macs(conv, torch.zeros(2, 8, 5, 5)) == 2 * 8 * 25 * 3 * 9
    grouped = nn.Conv2d(4, 8, 3, padding=1, groups=2)
    assert model_cost.conv_linear_macs(grouped, torch.zeros(1, 8, 4, 4)) == 8 * 16 * 2 * 9
    linear = nn.Linear(16, 10)
    assert model_cost.conv_linear_macs(linear, torch.zeros(3, 10)) == 3 * 10 * 16
    with pytest.raises(TypeError):
        model_cost.conv_linear_macs(nn.ReLU(), torch.zeros(1))


def test_hook_and_flop_counter_agree_on_a_conv_linear_net(model_cost) -> None:
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)
    )
    x = torch.zeros(2, 1, 6, 6)
    expected = 2 * (4 * 36 * 9 + 5 * 144)
    assert model_cost.hook_macs(net, x) == expected
    assert model_cost.counter_macs(net, x) == expected
    assert not any(m._forward_hooks for m in net.modules())  # hooks removed


def test_cifar_baseline_matches_the_gc_stage_layout(model_cost) -> None:
    from trustgc.config import load_model_config

    gc = load_model_config("cifar10")
    baseline = model_cost.cifar_baseline_config()
    assert baseline.kind == "classifier" and baseline.input == gc.input
    assert [(s.blocks, s.width, s.downsample) for s in baseline.stages] == [
        (s.blocks, s.width, s.downsample) for s in gc.stages
    ]


def test_png_encoder_lengths_equal_the_shipped_statistic(model_cost) -> None:
    from trustgc.trust.statistics import png_code_length_bits

    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (6, 1, 28, 28), dtype=np.uint8)
    gray[:3] //= 64  # some compressible images too
    gray[0] = 0
    color = rng.integers(0, 256, (3, 3, 32, 32), dtype=np.uint8)
    for pixels in (gray, color):
        np.testing.assert_array_equal(
            model_cost.png_encoder_bits(pixels), png_code_length_bits(pixels)
        )
    assert model_cost.png_pil_bits(gray, compress_level=1).shape == (6,)
    assert model_cost.zlib_bits(gray, 1).shape == (6,)


def test_spearman_and_human(model_cost) -> None:
    a = np.arange(10.0)
    assert model_cost.spearman(a, a**3) == pytest.approx(1.0)
    assert model_cost.spearman(a, -a) == pytest.approx(-1.0)
    assert model_cost.human(1_147_602) == "1.15 M"
    assert model_cost.human(4.09e9) == "4.09 G"
    assert model_cost.human(512) == "512"


def test_paired_ratio_is_the_median_of_per_round_ratios(model_cost) -> None:
    raw = {"a": [2.0, 4.0, 30.0], "b": [1.0, 2.0, 10.0]}
    assert model_cost.paired_ratio(raw, "a", "b") == pytest.approx(2.0)
    single = model_cost.time_rounds_raw({"x": lambda: None}, 3, 0.0, warmup=0)
    assert len(single["x"]) == 3


def test_time_rounds_returns_a_time_per_callable(model_cost) -> None:
    calls = []
    timing = model_cost.time_rounds({"a": lambda: calls.append(1), "b": lambda: None}, 2, 0.0)
    assert set(timing) == {"a", "b"} and len(calls) >= 3  # warm-up plus one call per round


def test_render_includes_every_section(model_cost) -> None:
    size = [
        {
            "config": "fashion_mnist",
            "role": "gc",
            "model": "GC",
            "weights": "fresh init",
            "parameters": 1_000_000,
            "network_parameters": 900_000,
            "macs": 20_000_000,
            "conv_linear_macs": 19_000_000,
        },
        {
            "config": "fashion_mnist",
            "role": "baseline",
            "model": "CNN",
            "weights": "fresh init",
            "parameters": 1_100_000,
            "macs": 80_000_000,
            "conv_linear_macs": 80_000_000,
        },
    ]
    ms = {
        "bare_forward": 100.0,
        "predict": 104.0,
        "predict_fast_png": 102.0,
        "model_outputs": 100.5,
        "png": 3.0,
        "png_fast": 1.5,
        "other_statistics": 0.1,
        "p_values": 0.3,
    }
    result = {
        "machine": "test CPU",
        "torch": "2",
        "load_before": 0.1,
        "load_after": 0.2,
        "size": size,
        "throughput": [
            {
                "config": "fashion_mnist",
                "threads": 1,
                "batch": 64,
                "gc_img_s": 100.0,
                "baseline_img_s": 80.0,
                "ratio": 1.25,
                "load_1min": 0.1,
            }
        ],
        "gating": {
            "source": "random pixels",
            "rows": [
                {
                    "threads": 1,
                    "batch": 64,
                    "ms": ms,
                    "rest_ms": 0.1,
                    "rounds": 40,
                    "ratio": 1.04,
                    "ratio_fast_png": 1.02,
                    "png_share": 0.03,
                    "load_1min": 0.1,
                }
            ],
            "png_variants": [
                {
                    "variant": "shipped",
                    "ms_per_batch": 3.0,
                    "us_per_image": 47.0,
                    "mean_bits_per_dim": 5.0,
                    "max_abs_diff_bits": 0.0,
                    "spearman_vs_shipped": 1.0,
                    "images_compared": 64,
                }
            ],
        },
        "onnx": [],
    }
    text = model_cost.render(result)
    assert "| fashion_mnist | GC | fresh init | 1 M (900 k in f) | 20 M | 19 M | 0.25x |" in text
    assert "**1.040x**" in text and "1.25x" in text and "| shipped |" in text
    assert "onnxruntime" not in text
