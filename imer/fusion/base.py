"""The contract between the trainer and every fusion method.

A method is a pure ``nn.Module``: ``forward(batch) -> MethodOutput`` and
``loss(out, batch) -> {"total": ..., <term>: ...}``. It declares its training stages (ComP and
MoMKE train unimodal parts first) and freezes/unfreezes its own parameters in
``begin_stage``. The trainer knows nothing else about it.
"""

from __future__ import annotations

import dataclasses
import json
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


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _coerce(cls_name: str, name: str, value: Any, hint: Any) -> Any:
    """Check (and gently convert) one option against its field type; BadInput on a mismatch."""
    import typing

    args = typing.get_args(hint)
    if type(None) in args:  # Optional[X]
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
    bad = BadInput(f"{cls_name}: option {name} must be {getattr(hint, '__name__', hint)}, got {value!r}")
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, str)) and str(value).strip().lower() in _TRUE | _FALSE:
            return str(value).strip().lower() in _TRUE
        raise bad
    if hint is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
            return int(value)
        raise bad
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if hint is str and not isinstance(value, str):
        raise bad
    return value


def config_from_dict(cls: type, d: dict | None) -> Any:
    """Build a config dataclass, refusing unknown keys (listing the valid ones) and wrong types.

    A typo or ``use_gm=no`` must not silently leave an ablation switch on.
    """
    import typing

    d = dict(d or {})
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(names))
    if unknown:
        raise BadInput(f"{cls.__name__}: unknown option(s) {unknown}; valid: {sorted(names)}")
    hints = typing.get_type_hints(cls)
    return cls(**{k: _coerce(cls.__name__, k, v, hints.get(k, Any)) for k, v in d.items()})


def parse_overrides(pairs: list[str], method: str | None = None) -> dict[str, Any]:
    """``["momentum=0.3", "use_gm=false"]`` -> ``{"momentum": 0.3, "use_gm": False}`` (JSON values)."""
    out: dict[str, Any] = {}
    for p in pairs:
        if "=" not in p:
            raise BadInput(f"--set {p!r}: use KEY=VALUE, e.g. --set momentum=0.3")
        k, v = p.split("=", 1)
        k = k.strip()
        if "." in k:  # 'comp.momentum': the prefix must name the method being built
            prefix, k = k.rsplit(".", 1)
            if method is not None and prefix != method:
                raise BadInput(f"--set {p!r} is for {prefix!r}, but the method is {method!r}")
        try:
            out[k] = json.loads(v.lower() if v.lower() in ("true", "false", "null") else v)
        except json.JSONDecodeError:
            out[k] = v
    return out


class FusionMethod(nn.Module):
    """Base class. Subclasses set ``config_class`` and implement ``forward`` and ``loss``."""

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
    cls = METHODS.get(name)
    cfg = config_from_dict(cls.config_class, config)
    if data_info is not None:
        cfg = cls.resolve_config(cfg, data_info)
    return cls(cfg, dims, task)
