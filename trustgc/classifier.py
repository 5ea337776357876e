"""The discriminative baseline: a feed-forward CNN classifier with the same stage layout.

It answers the question "what does generative classification cost?": trained on the same data
with the same budget, it gives the accuracy, calibration and robustness of a plain classifier.
Each stage is a 2x downsampling (strided conv) followed by residual blocks of the stage's width.
"""

from __future__ import annotations

from torch import Tensor, nn

from trustgc.config import ModelConfig

__all__ = ["CNNClassifier"]


class _ResidualBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
        )
        self.activation = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.activation(x + self.body(x))


class CNNClassifier(nn.Module):
    """ResNet-style CNN: input normalisation, stages, global average pooling, linear layer."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.kind != "classifier":
            raise ValueError(f"CNNClassifier needs kind 'classifier', got {config.kind!r}")
        self.config = config
        spec = config.input
        self.register_buffer("mean", _per_channel(spec.mean))
        self.register_buffer("std", _per_channel(spec.std))
        layers: list[nn.Module] = []
        channels = spec.channels
        for stage in config.stages:
            stride = 1 if stage.downsample == "none" else 2
            layers += [
                nn.Conv2d(channels, stage.width, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(stage.width),
                nn.ReLU(inplace=True),
            ]
            layers += [_ResidualBlock(stage.width) for _ in range(stage.blocks)]
            channels = stage.width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, config.num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Images in [0, 1], (B, C, H, W) -> class logits (B, K)."""
        features = self.features((x - self.mean) / self.std)
        return self.classifier(features.mean(dim=(2, 3)))


def _per_channel(values: tuple[float, ...]):
    import torch

    return torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1)
