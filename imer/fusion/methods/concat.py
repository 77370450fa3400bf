"""Concatenation baseline: the floor every results table needs.

Each modality is projected to ``hidden`` dims (the projection of a missing slot is zeroed, so it
contributes nothing), the three projections are concatenated and classified. It is also ComP's
Table 3 row with every component removed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from imer.fusion.base import FusionMethod, MethodOutput, register_method
from imer.fusion.data import Batch
from imer.fusion.layers import mlp
from imer.types import MODALITY_NAMES, TaskSpec


@dataclass
class ConcatConfig:
    hidden: int = 256
    dropout: float = 0.5
    classifier_layers: int = 2

    @classmethod
    def tiny(cls) -> "ConcatConfig":
        """Small enough for the contract test."""
        return cls(hidden=8)


@register_method("concat")
class Concat(FusionMethod):
    """Projection + concatenation + MLP classifier (baseline)."""

    config_class = ConcatConfig
    description = "baseline: per-modality projection, concatenation, MLP classifier"

    def __init__(self, config: ConcatConfig, dims: dict[str, int], task: TaskSpec):
        super().__init__(config, dims, task)
        h = config.hidden
        self.proj = nn.ModuleDict(
            {m: nn.Sequential(nn.Linear(dims[m], h), nn.GELU(), nn.Dropout(config.dropout)) for m in MODALITY_NAMES}
        )
        self.classifier = mlp(3 * h, h, self.num_outputs, config.dropout, config.classifier_layers)

    def forward(self, batch: Batch) -> MethodOutput:
        x = self.masked_inputs(batch)
        z = []
        for j, m in enumerate(MODALITY_NAMES):
            # Zero the projection of a missing slot too, so it carries no bias term.
            z.append(self.proj[m](x[m]) * batch.present[..., j : j + 1].to(x[m].dtype))
        return MethodOutput(self.classifier(torch.cat(z, dim=-1)))
