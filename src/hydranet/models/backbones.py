"""Backbones: a feature extractor mapping inputs to ``[batch, out_features]``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor, nn

__all__ = ["MLP", "ConvNet", "BACKBONES", "build_backbone"]

_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}


class MLP(nn.Sequential):
    """Fully connected layers for tabular inputs: ``[Linear, norm, activation, dropout] * len(hidden)``."""

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int] = (256, 128),
        dropout: float = 0.0,
        norm: str | None = None,
        activation: str = "relu",
    ) -> None:
        if activation not in _ACTIVATIONS:
            raise ValueError(f"Unknown activation {activation!r}; choose one of {sorted(_ACTIVATIONS)}.")
        if norm not in (None, "batch", "layer"):
            raise ValueError(f"Unknown norm {norm!r}; choose None, 'batch' or 'layer'.")
        if not hidden:
            raise ValueError("An MLP backbone needs at least one hidden layer, e.g. hidden=(128,).")
        layers: list[nn.Module] = [nn.Flatten()]
        width = int(in_features)
        for size in hidden:
            layers.append(nn.Linear(width, int(size)))
            if norm == "batch":
                layers.append(nn.BatchNorm1d(int(size)))
            elif norm == "layer":
                layers.append(nn.LayerNorm(int(size)))
            layers.append(_ACTIVATIONS[activation]())
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = int(size)
        super().__init__(*layers)
        self.out_features = width


class ConvNet(nn.Module):
    """A small ConvNet for 28×28 to 64×64 images: conv-BN-ReLU-maxpool blocks, global average pooling."""

    def __init__(self, in_channels: int = 1, widths: Sequence[int] = (32, 64), dropout: float = 0.0) -> None:
        super().__init__()
        if not widths:
            raise ValueError("A ConvNet needs at least one block width, e.g. widths=(32, 64).")
        blocks: list[nn.Module] = []
        channels = int(in_channels)
        for width in widths:
            blocks += [
                nn.Conv2d(channels, int(width), 3, padding=1, bias=False),
                nn.BatchNorm2d(int(width)),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            channels = int(width)
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.out_features = channels

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4:
            raise ValueError(f"ConvNet expects images [batch, channels, height, width], got shape {tuple(x.shape)}.")
        return self.dropout(self.pool(self.features(x)).flatten(1))


BACKBONES: dict[str, Callable[..., nn.Module]] = {"mlp": MLP, "convnet": ConvNet}


def build_backbone(name: str, **kwargs: Any) -> nn.Module:
    """A backbone by registry name (``mlp``, ``convnet``) with its arguments."""
    if name not in BACKBONES:
        raise ValueError(f"Unknown backbone {name!r}; available: {', '.join(sorted(BACKBONES))}.")
    return BACKBONES[name](**kwargs)
