r"""Backbones: networks mapping a batch of inputs to feature vectors ``[batch, out_features]``.

Built in:

* :class:`MLP` for tabular inputs: ``[Linear, norm, activation, dropout]`` blocks (inputs are flattened,
  so 28×28 images work too);
* :class:`ConvNet` for small images (28×28 to 64×64): conv-BN-ReLU-maxpool blocks, then global average
  pooling :math:`z = \frac{1}{HW}\sum_{i,j} F_{:,i,j}` (or average pooling over a grid of cells, for
  tasks that depend on where things are);
* :class:`LeNet`: LeNet-5 style (two 5×5 convolutions, then 120 and 84 units).

Each is an ``nn.Sequential`` of stages, which is what :class:`~hydranet.models.CrossStitch` stitches
between, and carries ``out_features``, which is how :class:`~hydranet.models.HydraNet` learns the
feature size.

Adapters for pretrained families: :func:`from_torchvision` and :func:`from_timm` build the model with its
classifier removed and set ``out_features``. Nothing is downloaded unless asked (``weights=None``,
``pretrained=False`` by default).

:func:`build_backbone` resolves registry names (used by configs): ``"mlp"``, ``"convnet"``, ``"lenet"``,
``"torchvision:<name>"``, ``"timm:<name>"``, and anything added to :data:`BACKBONES`.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor, nn

from hydranet._checks import CUTOFF, did_you_mean
from hydranet.models.heads import activation as make_activation

__all__ = ["MLP", "ConvNet", "LeNet", "from_torchvision", "from_timm", "BACKBONES", "build_backbone"]

_NORMS: tuple[str | None, ...] = (None, "batch", "layer")


def _positive(value: Any, what: str) -> int:
    if not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
        raise ValueError(f"{what} must be a positive integer, got {value!r}.")
    return value


def _widths(values: Sequence[int], what: str, example: str) -> tuple[int, ...]:
    widths = tuple(values) if not isinstance(values, int) else (values,)
    if not widths:
        raise ValueError(f"{what} needs at least one layer, e.g. {example}.")
    for w in widths:
        _positive(w, f"{what}: every width")
    return widths


def _dropout(p: float) -> float:
    if not 0.0 <= float(p) < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {p!r}.")
    return float(p)


class MLP(nn.Sequential):
    """Fully connected backbone for tabular inputs.

    ``Flatten``, then one stage per hidden size: ``Linear -> [BatchNorm1d | LayerNorm] -> activation ->
    [Dropout]``. ``out_features`` is the last hidden size.

    Args:
        in_features: number of input values per sample (after flattening).
        hidden: hidden sizes, one stage each.
        dropout: dropout probability after each activation.
        norm: ``None``, ``"batch"`` or ``"layer"``.
        activation: ``"relu"``, ``"gelu"``, ``"silu"``, ``"tanh"`` or ``"leaky_relu"``.
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int] = (256, 128),
        dropout: float = 0.0,
        norm: str | None = None,
        activation: str = "relu",
    ) -> None:
        _positive(in_features, "MLP in_features")
        sizes = _widths(hidden, "An MLP backbone", "hidden=(128,)")
        if norm not in _NORMS:
            raise ValueError(f"Unknown norm {norm!r}; choose None, 'batch' or 'layer'.")
        p = _dropout(dropout)
        make_activation(activation)  # validates the name before any layer is built
        stages: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for size in sizes:
            layers: list[nn.Module] = [nn.Linear(width, size)]
            if norm == "batch":
                layers.append(nn.BatchNorm1d(size))
            elif norm == "layer":
                layers.append(nn.LayerNorm(size))
            layers.append(make_activation(activation))
            if p:
                layers.append(nn.Dropout(p))
            stages.append(nn.Sequential(*layers))
            width = size
        super().__init__(*stages)
        self.in_features = in_features
        self.out_features = width


class _GlobalPool(nn.Sequential):
    """Average pooling to a ``grid`` of cells (``(1, 1)``: global), flattened, then optional dropout."""

    def __init__(self, dropout: float, grid: tuple[int, int] = (1, 1)) -> None:
        layers: list[nn.Module] = [nn.AdaptiveAvgPool2d(grid), nn.Flatten()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        super().__init__(*layers)


def _grid(pool: int | Sequence[int]) -> tuple[int, int]:
    cells = (pool, pool) if isinstance(pool, int) else tuple(pool) if isinstance(pool, Sequence) else ()
    if len(cells) != 2 or not all(isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in cells):
        raise ValueError(f"pool must be a positive int or (rows, cols) of positive ints, got {pool!r}; e.g. pool=(1, 2).")
    return cells


class ConvNet(nn.Sequential):
    r"""A small ConvNet for 28×28 to 64×64 images.

    One stage per width: ``Conv2d(k×k, same padding) -> [BatchNorm2d] -> activation -> MaxPool2d(2)``;
    then average pooling of the last maps to a ``pool`` grid, flattened to ``[batch, widths[-1] * rows
    * cols]``. Each stage halves the image, so the images must be at least ``2 ** len(widths)`` pixels
    on a side (16 for three stages).

    Global pooling (``pool=1``, the default) forgets *where* things are; tasks that depend on position
    (the left and the right digit of one image, the box of an object) want a grid, e.g. ``pool=(1, 2)``
    keeps the left and right halves apart.
    Accepts ``channels_last`` inputs and models (``model.to(memory_format=torch.channels_last)``).

    Args:
        in_channels: image channels (1 for grey, 3 for RGB).
        widths: output channels of each stage; the feature size is ``widths[-1]``.
        kernel_size: odd convolution size.
        norm: ``"batch"`` (default) or ``None``.
        dropout: dropout on the pooled features.
        activation: activation name (see :data:`~hydranet.models.heads.ACTIVATIONS`).
        pool: cells of the final average pooling, ``rows`` or ``(rows, cols)``; the feature size is
            ``widths[-1] * rows * cols``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        widths: Sequence[int] = (32, 64),
        kernel_size: int = 3,
        norm: str | None = "batch",
        dropout: float = 0.0,
        activation: str = "relu",
        pool: int | Sequence[int] = 1,
    ) -> None:
        _positive(in_channels, "ConvNet in_channels")
        grid = _grid(pool)
        sizes = _widths(widths, "A ConvNet", "widths=(32, 64)")
        if not (isinstance(kernel_size, int) and kernel_size > 0 and kernel_size % 2 == 1):
            raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size!r}.")
        if norm not in (None, "batch"):
            raise ValueError(f"Unknown norm {norm!r} for ConvNet; choose 'batch' or None.")
        p = _dropout(dropout)
        make_activation(activation)
        stages: list[nn.Module] = []
        channels = in_channels
        for width in sizes:
            layers: list[nn.Module] = [
                nn.Conv2d(channels, width, kernel_size, padding=kernel_size // 2, bias=norm is None)
            ]
            if norm == "batch":
                layers.append(nn.BatchNorm2d(width))
            # pooling after the last stage too: max then average pooling of the last maps trains better
            # than averaging them directly (MultiMNIST demo: 0.46 / 0.28 accuracy against 0.35 / 0.25)
            layers += [make_activation(activation), nn.MaxPool2d(2)]
            stages.append(nn.Sequential(*layers))
            channels = width
        stages.append(_GlobalPool(p, grid))
        super().__init__(*stages)
        self.in_channels = in_channels
        self.out_features = channels * grid[0] * grid[1]
        self.min_size = 2 ** len(sizes)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"ConvNet(in_channels={self.in_channels}) expects images [batch, {self.in_channels}, height, width], "
                f"got shape {list(x.shape)}."
                + (" Add the channel dimension: x.unsqueeze(1)." if x.ndim == 3 else "")
            )
        if min(x.shape[-2:]) < self.min_size:
            raise ValueError(
                f"Images of {x.shape[-2]}×{x.shape[-1]} are too small for {len(self) - 1} stages (each halves the "
                f"size; at least {self.min_size}×{self.min_size}): use fewer widths."
            )
        return super().forward(x)


class LeNet(nn.Sequential):
    """LeNet-5 style backbone: ``conv5×5(6) -> pool -> conv5×5(16) -> pool -> 120 -> 84`` features.

    The first convolution pads by 2, so 28×28 digits keep LeNet's 32×32 geometry; an adaptive pooling
    to 5×5 lets other image sizes (at least 12×12) through.

    Args:
        in_channels: image channels.
        activation: ``"relu"`` (default) or ``"tanh"`` (the original).
        out_features: size of the last layer (84 in LeNet-5).
    """

    def __init__(self, in_channels: int = 1, activation: str = "relu", out_features: int = 84) -> None:
        _positive(in_channels, "LeNet in_channels")
        _positive(out_features, "LeNet out_features")
        act = lambda: make_activation(activation)  # noqa: E731
        super().__init__(
            nn.Sequential(nn.Conv2d(in_channels, 6, 5, padding=2), act(), nn.MaxPool2d(2)),
            nn.Sequential(nn.Conv2d(6, 16, 5), act(), nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(5), nn.Flatten()),
            nn.Sequential(nn.Linear(16 * 5 * 5, 120), act()),
            nn.Sequential(nn.Linear(120, out_features), act()),
        )
        self.in_channels = in_channels
        self.out_features = out_features


def _import(module: str, extra: str, caller: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as err:
        package = module.split(".")[0]
        raise ImportError(
            f"{caller} needs {package}, which is not installed: pip install hydranet[{extra}]  "
            f"(or pip install {package})."
        ) from err


def _strip_linear(model: nn.Module, attribute: str) -> int | None:
    """Replace ``model.<attribute>`` (a Linear, or the last Linear of a Sequential) by Identity; its input size."""
    part = getattr(model, attribute, None)
    if isinstance(part, nn.Linear):
        setattr(model, attribute, nn.Identity())
        return part.in_features
    if isinstance(part, nn.Sequential):
        # keep what precedes the last Linear (pooling, LayerNorm2d + Flatten, pre-logits): those make the features
        for index in reversed(range(len(part))):
            layer = part[index]
            if isinstance(layer, nn.Linear):
                width = layer.in_features
                part[index] = nn.Identity()
                return width
    return None


def from_torchvision(name: str, weights: Any = None, **kwargs: Any) -> nn.Module:
    """A torchvision classification model with its classifier replaced by ``nn.Identity``.

    The classifier is the ``fc`` (ResNet, RegNet, Inception), ``classifier`` (VGG, DenseNet, MobileNet,
    EfficientNet, ConvNeXt; its last linear layer) or ``heads``/``head`` (ViT, Swin) attribute. The
    returned model maps images to ``[batch, out_features]`` and carries ``out_features``.

    Args:
        name: the builder's name in ``torchvision.models``, e.g. ``"resnet18"``.
        weights: passed to the builder; ``None`` (default) builds random weights and downloads nothing.
        **kwargs: other builder arguments.
    """
    models = _import("torchvision.models", "vision", f"from_torchvision({name!r})")
    builder = getattr(models, name, None)
    if not callable(builder) or name.startswith("_") or isinstance(builder, type):
        available = sorted(n for n in dir(models) if n[:1].islower() and callable(getattr(models, n)))
        close = difflib.get_close_matches(name, available, n=3, cutoff=CUTOFF)  # several: builders come in families
        raise ValueError(
            f"torchvision.models has no model builder {name!r}."
            + (f" Did you mean {', '.join(map(repr, close))}?" if close else "")
        )
    model = builder(weights=weights, **kwargs)
    for attribute in ("fc", "classifier", "heads", "head"):
        width = _strip_linear(model, attribute)
        if width is not None:
            model.out_features = width
            return model
    raise ValueError(
        f"Cannot find the classifier of torchvision's {name!r} (no linear fc, classifier, heads or head): remove it "
        "yourself and pass the model to HydraNet with feature_dim= or input_shape=."
    )


def from_timm(name: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """A timm model built with ``num_classes=0`` (pooled features, no classifier); sets ``out_features``.

    Args:
        name: a ``timm.create_model`` name, e.g. ``"resnet18"`` or ``"convnext_atto"``.
        pretrained: download pretrained weights (``False`` by default: nothing is downloaded).
        **kwargs: other ``create_model`` arguments (``in_chans=1``, ``drop_rate=0.1``, ...).
    """
    timm = _import("timm", "timm", f"from_timm({name!r})")
    if kwargs.get("num_classes", 0) != 0:
        raise ValueError("from_timm builds a feature extractor (num_classes=0); the task heads replace the classifier.")
    kwargs.pop("num_classes", None)
    model = timm.create_model(name, pretrained=pretrained, num_classes=0, **kwargs)
    # head_hidden_size: the pooled width after a pre-logits layer (MobileNetV3); num_features otherwise
    width = getattr(model, "head_hidden_size", None) or getattr(model, "num_features", None)
    if not isinstance(width, int):
        raise ValueError(f"timm model {name!r} does not announce its feature size (num_features); pass feature_dim=.")
    model.out_features = width
    return model


#: Registry of backbone factories by name; configs name backbones through it. Add your own:
#: ``BACKBONES["mine"] = MyBackbone``. ``torchvision:<name>`` and ``timm:<name>`` are resolved by prefix.
BACKBONES: dict[str, Callable[..., nn.Module]] = {"mlp": MLP, "convnet": ConvNet, "lenet": LeNet}
_PREFIXES: dict[str, Callable[..., nn.Module]] = {"torchvision": from_torchvision, "timm": from_timm}


def build_backbone(name: str, *, input_shape: int | Sequence[int] | None = None, **kwargs: Any) -> nn.Module:
    """A backbone by registry name, e.g. ``build_backbone("convnet", widths=(32, 64), input_shape=(3, 64, 64))``.

    ``input_shape`` (one sample's shape) fills in what the factory needs and was not given:
    ``in_features`` (the flattened size), ``in_channels`` (the first dimension), ``in_chans`` (timm), or
    ``input_shape`` itself when the factory takes it.
    """
    if not isinstance(name, str):
        raise TypeError(f"Backbone name must be a string, got {type(name).__name__}.")
    prefix, _, model_name = name.partition(":")
    if model_name:
        if prefix not in _PREFIXES:
            raise ValueError(f"Unknown backbone family {prefix!r} in {name!r}; use one of {', '.join(_PREFIXES)}.")
        if prefix == "timm" and input_shape is not None:
            kwargs.setdefault("in_chans", _as_shape(input_shape)[0])
        return _PREFIXES[prefix](model_name, **kwargs)
    if name not in BACKBONES:
        raise ValueError(
            f"Unknown backbone {name!r}.{did_you_mean(name, BACKBONES)}"
            + f" Registered: {', '.join(BACKBONES)}; or 'torchvision:<name>', 'timm:<name>'."
        )
    factory = BACKBONES[name]
    if input_shape is not None:
        shape = _as_shape(input_shape)
        accepted = inspect.signature(factory).parameters
        derived = {"in_features": math.prod(shape), "in_channels": shape[0], "input_shape": shape}
        for key, value in derived.items():
            if key in accepted:
                kwargs.setdefault(key, value)
    try:
        inspect.signature(factory).bind(**kwargs)
    except TypeError as err:
        raise ValueError(f"Backbone {name!r}: {err}. Its arguments: {inspect.signature(factory)}.") from err
    return factory(**kwargs)


def _as_shape(input_shape: int | Sequence[int]) -> tuple[int, ...]:
    return (input_shape,) if isinstance(input_shape, int) else tuple(input_shape)
