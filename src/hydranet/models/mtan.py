r"""MTAN, the Multi-Task Attention Network (Liu, Johns and Davison, CVPR 2019), over a staged backbone.

The shared backbone is split into stages with outputs :math:`p_1, \dots, p_N` (the stages of an
``nn.Sequential`` such as :class:`~hydranet.models.ConvNet` or :class:`~hydranet.models.MLP`). Each task
:math:`t` owns, at every stage :math:`j`, a soft attention module that masks the shared features:

.. math::

    a^t_1 = h_1\big(g_1(p_1)\big), \qquad
    a^t_j = h_j\Big(g_j\big([\,p_j;\; f^t_j(\hat a^t_{j-1})\,]\big)\Big), \qquad
    \hat a^t_j = a^t_j \odot p_j

with :math:`g_j` = 1×1 conv → BN → ReLU and :math:`h_j` = 1×1 conv → BN → sigmoid (so
:math:`a^t_j \in (0, 1)`, one mask value per feature), :math:`[\cdot;\cdot]` concatenation over
channels, and :math:`f^t_j` the block that brings the previous attended features to stage :math:`j`'s
channels and resolution (3×3 conv → BN → ReLU, then max pooling to :math:`p_j`'s size). The
parameter-free stages after the last attended one (global pooling, flattening) then run on
:math:`\hat a^t_N`, and head :math:`t` reads the result. On vector stages (an MLP backbone) the 1×1
convolutions are linear layers with ``BatchNorm1d``, and :math:`f^t_j` is linear → BN → ReLU.

The paper's encoder attends on an intermediate feature :math:`u_j` of each block and masks its output
:math:`p_j`; here a stage is the unit, so :math:`u_j = p_j`. The paper (and LibMTL) share each
:math:`f_j` between the tasks; here, by default, every task has its own (``share_blocks=False``), so
that the partition is exact: ``task_parameters(t)`` are task :math:`t`'s attention modules, blocks and
head, and the backbone reaches the losses only through :math:`(p_1, \dots, p_N)` — the ``features``
(a tuple of the stage outputs) that ``jacobian="representation"`` differentiates. The branches read
aliases of the :math:`p_j`, so that :math:`\partial L / \partial p_j` is the partial derivative (through
the branches only, not through the later stages) and the chain rule
:math:`\sum_j (\partial L/\partial p_j)\, \mathrm{d}p_j/\mathrm{d}\theta` counts every path once. With
``share_blocks=True`` (the paper's layout) the shared :math:`f_j` sit behind the stage outputs, so
there is no representation every shared parameter goes through and ``return_features=True`` is refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hydranet.models.hydra import (
    DropoutArg,
    Features,
    HeadArg,
    HeadOptions,
    HiddenArg,
    MultiTaskModel,
    TaskSelection,
    _shape,
)
from hydranet.tasks import Task, TaskDict

__all__ = ["MTAN", "attention_module", "split_stages"]


def _has_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def split_stages(backbone: nn.Sequential) -> tuple[list[nn.Sequential], nn.Sequential]:
    """``(stages, tail)``: one stage per child with parameters (parameter-free children before it join it),
    and the parameter-free children after the last one (pooling, flattening) as the tail."""
    stages: list[list[nn.Module]] = [[]]
    for child in backbone:
        stages[-1].append(child)
        if _has_parameters(child):
            stages.append([])
    tail = stages.pop()
    if not stages:
        raise ValueError("MTAN: the backbone has no stage with parameters; there is nothing to share and attend.")
    return [nn.Sequential(*s) for s in stages], nn.Sequential(*tail)


def attention_module(in_channels: int, hidden: int, out_channels: int, maps: bool) -> nn.Sequential:
    """MTAN's attention: 1×1 conv → BN → ReLU → 1×1 conv → BN → sigmoid (linear layers and BatchNorm1d on vectors)."""
    if maps:
        return nn.Sequential(
            nn.Conv2d(in_channels, hidden, 1), nn.BatchNorm2d(hidden), nn.ReLU(),
            nn.Conv2d(hidden, out_channels, 1), nn.BatchNorm2d(out_channels), nn.Sigmoid(),
        )  # fmt: skip
    return nn.Sequential(
        nn.Linear(in_channels, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
        nn.Linear(hidden, out_channels), nn.BatchNorm1d(out_channels), nn.Sigmoid(),
    )  # fmt: skip


class _Block(nn.Module):
    r""":math:`f_j`: the previous attended features ``[B, *shape_in]`` to stage ``j``'s ``[B, *shape_out]``."""

    def __init__(self, shape_in: tuple[int, ...], shape_out: tuple[int, ...]) -> None:
        super().__init__()
        c_in, c_out = shape_in[0], shape_out[0]
        if len(shape_out) == 3:
            self.layers = nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU())
        else:  # maps to a vector stage: average the maps first
            pool: list[nn.Module] = [nn.AdaptiveAvgPool2d(1), nn.Flatten()] if len(shape_in) == 3 else []
            self.layers = nn.Sequential(*pool, nn.Linear(c_in, c_out), nn.BatchNorm1d(c_out), nn.ReLU())
        self.size = shape_out[1:]

    def forward(self, x: Tensor) -> Tensor:
        y = self.layers(x)
        if self.size and tuple(y.shape[-2:]) != tuple(self.size):
            y = F.adaptive_max_pool2d(y, self.size)  # the paper's 2×2 max pooling, for any ratio of sizes
        return y


class MTAN(MultiTaskModel):
    r"""Multi-Task Attention Network (Liu et al., CVPR 2019): per-task soft attention on a shared backbone.

    Args:
        backbone: an ``nn.Sequential`` of stages (the built-in :class:`~hydranet.models.ConvNet`,
            :class:`~hydranet.models.MLP`, :class:`~hydranet.models.LeNet` are); every stage with
            parameters is attended, and its output must be maps ``[B, C, H, W]`` or vectors ``[B, C]``.
        tasks: the tasks.
        attention_hidden: width of the attention modules' middle layer (default: the stage's channels
            :math:`C_j`, as in the paper).
        share_blocks: share the blocks :math:`f_j` between tasks, as the paper does; this rules out
            ``return_features`` (see the module docstring).
        heads, head, hidden, dropout: the heads (:class:`~hydranet.models.hydra.HeadOptions`), as for
            :class:`~hydranet.models.HydraNet`; they read the task's attended, pooled features.
        input_shape: one sample's shape without the batch dimension (required: a dry run measures each
            stage's output shape).

    ``shared_parameters()`` are the backbone's; ``task_parameters(t)`` are task :math:`t`'s attention
    modules, blocks (unless shared) and head. The backbone runs once per batch; only the requested
    tasks' attention branches and heads run.
    """

    def __init__(
        self,
        backbone: nn.Module,
        tasks: Iterable[Task] | Mapping[str, Task],
        *,
        attention_hidden: int | None = None,
        share_blocks: bool = False,
        heads: Mapping[str, nn.Module] | None = None,
        head: HeadArg = "linear",
        hidden: HiddenArg = None,
        dropout: DropoutArg = 0.0,
        input_shape: int | Sequence[int] | None = None,
    ) -> None:
        super().__init__(tasks)
        if not isinstance(backbone, nn.Sequential):
            raise TypeError(
                f"MTAN needs the backbone as an nn.Sequential of stages to attend after, got {type(backbone).__name__}: "
                "wrap its layers, e.g. nn.Sequential(stage1, stage2, pool)."
            )
        if input_shape is None:
            raise ValueError(
                "MTAN needs input_shape=(...) (one sample's shape, without the batch dimension): a dry run measures "
                "the channels and sizes of every stage, which the attention modules are built for."
            )
        if attention_hidden is not None and not (
            isinstance(attention_hidden, int) and not isinstance(attention_hidden, bool) and attention_hidden > 0
        ):
            raise ValueError(f"MTAN: attention_hidden must be a positive integer or None, got {attention_hidden!r}.")
        if not isinstance(share_blocks, bool):
            raise TypeError(f"MTAN: share_blocks must be True or False, got {share_blocks!r}.")
        stages, tail = split_stages(backbone)
        self.stages = nn.ModuleList(stages)
        self.tail = tail
        self.share_blocks = share_blocks
        shapes, probe = self._measure(_shape(input_shape))
        self.stage_shapes = shapes

        def attention(j: int) -> nn.Sequential:
            c = shapes[j][0]
            return attention_module(c if j == 0 else 2 * c, attention_hidden or c, c, maps=len(shapes[j]) == 3)

        def blocks() -> nn.ModuleList:
            return nn.ModuleList([_Block(shapes[j - 1], shapes[j]) for j in range(1, len(shapes))])

        self.attention = TaskDict({t: nn.ModuleList([attention(j) for j in range(len(shapes))]) for t in self.tasks})
        if share_blocks:
            self.blocks: nn.ModuleList | None = blocks()
            self.task_blocks = TaskDict()
        else:
            self.blocks = None
            self.task_blocks = TaskDict({t: blocks() for t in self.tasks})
        given = set(heads or {})
        if probe.ndim != 2 and given != set(self.tasks):
            raise ValueError(
                f"MTAN: after the attended stages the backbone returns {list(probe.shape)}, but heads read vectors "
                "[batch, D]: end the backbone with pooling and flattening (ConvNet does), or pass heads= modules."
            )
        self.feature_dim = int(probe.shape[1]) if probe.ndim == 2 else None
        self._attach_heads(self.feature_dim, HeadOptions(heads, head, hidden, dropout), probe)

    def _measure(self, input_shape: tuple[int, ...]) -> tuple[list[tuple[int, ...]], Tensor]:
        """Each stage's output shape (one sample), and the tail's output on a dry run of two zero inputs."""
        ref = next(self.stages.parameters())
        h = torch.zeros(2, *input_shape, dtype=ref.dtype, device=ref.device)
        shapes: list[tuple[int, ...]] = []
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                for j, stage in enumerate(self.stages):
                    h = stage(h)
                    if h.ndim not in (2, 4):
                        raise ValueError(
                            f"MTAN attends on maps [B, C, H, W] or vectors [B, C]; stage {j} returns "
                            f"{list(h.shape)}. Merge that stage with the next one (one nn.Sequential child)."
                        )
                    if j and h.ndim == 4 and len(shapes[-1]) == 1:
                        raise ValueError(f"MTAN: stage {j} returns maps after a stage that returns vectors.")
                    shapes.append(tuple(h.shape[1:]))
                probe = self.tail(h)
        except ValueError:
            raise
        except Exception as err:
            raise ValueError(
                f"MTAN: the backbone's stages failed on a dry run with input_shape={input_shape}: {err}. Check that "
                "input_shape is one sample's shape without the batch dimension."
            ) from err
        finally:
            self.train(was_training)
        return shapes, probe

    def forward(
        self, x: Any, tasks: TaskSelection = None, return_features: bool = False
    ) -> dict[str, Tensor] | tuple[dict[str, Tensor], Features]:
        if return_features and self.share_blocks:
            raise ValueError(
                "MTAN(share_blocks=True) has no shared representation: its shared blocks f_j run inside every "
                "task's attention branch, so shared parameters reach the losses beyond the stage outputs. Use "
                "share_blocks=False for jacobian='representation', or the 'loop' / 'vmap' Jacobian."
            )
        return super().forward(x, tasks, return_features)

    def features(self, x: Any) -> tuple[Tensor, ...]:
        """The shared stage outputs :math:`(p_1, \\dots, p_N)`, each ``[B, *stage_shapes[j]]``."""
        outputs = []
        for stage in self.stages:
            x = stage(x)
            # p_j also feeds stage j+1: the branches read an alias, so the gradient with respect to a
            # feature is the partial one (through the branches only) and the chain rule counts each path once
            outputs.append(x.view_as(x))
        return tuple(outputs)

    def masks(self, features: Sequence[Tensor], task: str) -> list[Tensor]:
        r"""Task ``task``'s attention masks :math:`a^t_1, \dots, a^t_N` on the stage outputs ``features``."""
        return self._attend(features, task)[1]

    def _attend(self, features: Sequence[Tensor], task: str) -> tuple[Tensor, list[Tensor]]:
        attention = cast(nn.ModuleList, self.attention[task])
        blocks = self.blocks if self.blocks is not None else cast(nn.ModuleList, self.task_blocks[task])
        attended: Tensor | None = None
        masks = []
        for j, p in enumerate(features):
            inputs = p if attended is None else torch.cat([p, blocks[j - 1](attended)], dim=1)
            mask = attention[j](inputs)
            attended = mask * p
            masks.append(mask)
        assert attended is not None
        return attended, masks

    def heads_from_features(self, features: Features, tasks: TaskSelection = None) -> dict[str, Tensor]:
        """Each requested task's attention branch over the stage outputs, the tail, then its head."""
        names = self.select_tasks(tasks)
        stages = (features,) if isinstance(features, Tensor) else tuple(features)
        if len(stages) != len(self.stages):
            raise ValueError(
                f"MTAN expects the {len(self.stages)} stage outputs of model.features(x), got {len(stages)} tensor(s)."
            )
        return {t: self._head(t, self.tail(self._attend(stages, t)[0])) for t in names}

    def _task_modules(self, task: str) -> list[nn.Module]:
        modules: list[nn.Module] = [self.heads[task], self.attention[task]]
        if self.blocks is None:
            modules.append(self.task_blocks[task])
        return modules
