"""The contract between the trainer and every fusion method.

A method is a pure ``nn.Module``: ``forward(batch) -> MethodOutput`` and
``loss(out, batch) -> {"total": ..., <term>: ...}``. It declares its training stages (ComP and
MoMKE train unimodal parts first) and freezes/unfreezes its own parameters in
``begin_stage``. The trainer knows nothing else about it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from imer.errors import BadInput
from imer.fusion.data import Batch
from imer.registry import Registry
from imer.types import MODALITY_NAMES, TaskKind, TaskSpec


def _load_methods() -> None:
    import imer.fusion.methods  # noqa: F401  (importing the package registers every method)


METHODS: Registry[type["FusionMethod"]] = Registry("method", loader=_load_methods)
register_method = METHODS.register


@dataclass
class MethodOutput:
    """``logits``: ``[B, L, C]`` class scores, or ``[B, L, 1]`` for regression. ``aux``: anything else."""

    logits: torch.Tensor
    aux: dict[str, Any] = field(default_factory=dict)


class FusionMethod(nn.Module):
    """Base class. Subclasses set ``config_class`` and implement ``forward`` and ``loss``.

    ``config_class`` is a dataclass with the paper's defaults and a ``tiny()`` classmethod giving
    a small variant (d = 8) that the registry-wide contract test builds, so adding a method never
    edits that test.
    """

    config_class: ClassVar[type]
    description: ClassVar[str] = ""
    stages: ClassVar[tuple[str, ...]] = ("fusion",)
    # Share of the epoch budget per stage (ComP's official run: 150 + 150 epochs).
    stage_fractions: ClassVar[tuple[float, ...]] = (1.0,)
    default_batch_mode: ClassVar[str] = "utterance"
    batch_dependent: ClassVar[bool] = False  # True would opt out of the batch-invariance test

    def __init__(self, config: Any, dims: dict[str, int], task: TaskSpec):
        super().__init__()
        self.config = config
        self.dims = dict(dims)
        self.task = task
        self.num_outputs = task.num_outputs
        self.stage = self.stages[-1]  # inference uses the full model unless a stage is begun

    # -- to implement ---------------------------------------------------------
    def forward(self, batch: Batch) -> MethodOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def loss(self, out: MethodOutput, batch: Batch) -> dict[str, torch.Tensor]:
        """Default: the task loss on the fused output."""
        t = task_loss(out.logits, batch, self.task)
        return {"total": t, "task": t}

    def begin_stage(self, name: str) -> None:
        if name not in self.stages:
            raise BadInput(f"{type(self).__name__} has stages {self.stages}, not {name!r}")
        self.stage = name

    # -- helpers shared by all methods ---------------------------------------
    @staticmethod
    def masked_inputs(batch: Batch) -> dict[str, torch.Tensor]:
        """X-hat of ComP eq. 1: missing slots set to exactly zero, whatever the batch held."""
        # torch.where, not a product: 0 * NaN would let a NaN in a missing slot through.
        return {
            m: torch.where(batch.present[..., j : j + 1], batch.feats[m], torch.zeros_like(batch.feats[m]))
            for j, m in enumerate(MODALITY_NAMES)
        }

    def export_config(self) -> dict:
        return dataclasses.asdict(self.config)

    def param_groups(self, weight_decay: float) -> list[dict]:
        """Optimiser parameter groups for the current stage (trainable parameters only)."""
        return [{"params": [p for p in self.parameters() if p.requires_grad], "weight_decay": weight_decay}]

    @classmethod
    def resolve_config(cls, config: Any, data_info: dict) -> Any:
        """Fill data-dependent defaults (e.g. ComP's padded dialogue length) before building.

        ``data_info`` holds ``max_dialogue_len`` of the training split.
        """
        return config


def task_loss(
    logits: torch.Tensor, batch: Batch, task: TaskSpec, where: torch.Tensor | None = None
) -> torch.Tensor:
    """CE (eq. 16) or MSE (eq. 17) over labelled, non-padding positions (and ``where`` if given)."""
    sel = batch.labelled
    if where is not None:
        sel = sel & where
    if not sel.any():
        return logits.sum() * 0.0
    logits = logits.float()
    if task.kind == TaskKind.CLASSIFICATION:
        return F.cross_entropy(logits[sel], batch.y[sel])
    return F.mse_loss(logits[sel].squeeze(-1), batch.y[sel].float())


def build_method(
    name: str,
    dims: dict[str, int],
    task: TaskSpec,
    config: dict | None = None,
    data_info: dict | None = None,
) -> FusionMethod:
    """Registry name + options -> a ready module. ``data_info`` resolves data-dependent defaults."""
    from imer.config import from_dict

    cls = METHODS.get(name)
    cfg = from_dict(cls.config_class, config, f"method {name!r}")
    if data_info is not None:
        cfg = cls.resolve_config(cfg, data_info)
    return cls(cfg, dims, task)
