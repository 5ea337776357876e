"""The contract every invertible layer follows, and the container that chains them.

Every layer maps ``x -> (y, logdet)`` where ``logdet`` has shape ``[batch]`` and equals
``log|det dy/dx|`` for each sample.  ``inverse(y) -> (x, logdet_inv)`` returns the log-det of
the inverse map, which is the negative of the forward one.  Keeping this one contract (as
nflows and FrEIA do) lets the model sum log-dets without knowing what each layer is.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor, nn

__all__ = ["InvertibleLayer", "InvertibleSequential"]


class InvertibleLayer(nn.Module, ABC):
    """A bijection with a tractable Jacobian log-determinant.

    forward(x)  = (f(x),     log|det J_f(x)|)
    inverse(y)  = (f^-1(y),  log|det J_{f^-1}(y)|) = (x, -log|det J_f(x)|)
    """

    @abstractmethod
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Map ``x`` forward; return the output and the per-sample log-det."""

    @abstractmethod
    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """Map ``y`` back; return the input and the per-sample log-det of the inverse."""

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of one sample's output for one sample's input (no batch axis)."""
        return input_shape


class InvertibleSequential(InvertibleLayer):
    """Chains invertible layers, summing log-dets from zero; inverts in reverse order."""

    def __init__(self, *layers: InvertibleLayer) -> None:
        super().__init__()
        for position, layer in enumerate(layers):
            if not isinstance(layer, InvertibleLayer):
                raise TypeError(
                    f"layer {position} is {type(layer).__name__}, expected an InvertibleLayer"
                )
        self.layers = nn.ModuleList(layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        logdet = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for position, layer in enumerate(self.layers):
            try:
                x, layer_logdet = layer(x)
            except RuntimeError as error:  # name the failing layer: shape bugs are common
                raise RuntimeError(
                    f"layer {position} ({type(layer).__name__}) failed on input of shape "
                    f"{tuple(x.shape)}: {error}"
                ) from error
            logdet = logdet + layer_logdet
        return x, logdet

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        logdet = torch.zeros(y.shape[0], dtype=y.dtype, device=y.device)
        for position in reversed(range(len(self.layers))):
            layer = self.layers[position]
            try:
                y, layer_logdet = layer.inverse(y)
            except RuntimeError as error:
                raise RuntimeError(
                    f"inverse of layer {position} ({type(layer).__name__}) failed on input of "
                    f"shape {tuple(y.shape)}: {error}"
                ) from error
            logdet = logdet + layer_logdet
        return y, logdet

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        shape = input_shape
        for layer in self.layers:
            shape = layer.output_shape(shape)
        return shape
