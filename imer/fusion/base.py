"""The contract between the trainer and every fusion method.

A method is a pure ``nn.Module``: ``forward(batch) -> MethodOutput`` and
``loss(out, batch) -> {"total": ..., <term>: ...}``. It declares its training stages (ComP and
MoMKE train unimodal parts first) and freezes/unfreezes its own parameters in
``begin_stage``. The trainer knows nothing else about it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from torch import nn

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
from torch.nn import functional as F

from imer.errors import BadInput
from imer.fusion.data import Batch
from imer.registry import Registry
from imer.types import MODALITY_NAMES, TaskKind, TaskSpec


def _load_methods() -> None:
    import imer.fusion.methods  # noqa: F401  (importing the package registers every method)


METHODS: Registry[type["FusionMethod"]] = Registry("method", loader=_load_methods)
register_method = METHODS.register


@dataclass(frozen=True)
class OptimizerSpec:
    """An optimiser a method declares in its config (``optimizer: OptimizerSpec = ...``).

    Adam (with the run's L2 ``weight_decay``, as the official ComP/MoMKE code) unless a method
    says otherwise; DQF trains with momentum SGD.
    """

    name: Literal["adam", "adamw", "sgd"] = "adam"
    momentum: float = 0.9  # SGD only
    nesterov: bool = False  # SGD only
    # The method's learning rate when the run gives none (TrainConfig.lr = None); None = the
    # trainer's DEFAULT_LR. A transformer fine-tuned over two stages and a two-layer MLP do not
    # share one best rate (see the trainer's README section on defaults).
    lr: float | None = None


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
    default_optimizer: ClassVar["OptimizerSpec"] = OptimizerSpec()
    batch_dependent: ClassVar[bool] = False  # True would opt out of the batch-invariance test
    # Training masks per stage: "protocol" (the run's: --missing-rate, --condition or the mixed
    # default), "complete" (every really present stream: MoMKE's stage 1), or a fixed condition
    # such as "at". Stages not named here use "protocol". Evaluation masks are never the method's.
    stage_masks: ClassVar[dict[str, str]] = {}
    # True: the trainer computes validation metrics under each of the 7 modality combinations at
    # the end of every epoch and passes them to ``on_epoch_end`` (MCULoRA's DPFT).
    wants_combination_feedback: ClassVar[bool] = False

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

    # -- trainer hooks (defaults: the trainer decides) --------------------------
    def mask_policy(self, stage: str) -> str:
        """What ``stage`` trains under: "protocol", "complete" or a condition ("at", ...)."""
        policy = self.stage_masks.get(stage, "protocol")
        if policy not in ("protocol", "complete"):
            from imer.types import parse_modalities

            parse_modalities(policy)  # a clear error for a typo in a method's declaration
        return policy

    def draw_train_mask(self, stage: str, epoch: int, available: "np.ndarray", rng: "np.random.Generator") -> "np.ndarray | None":
        """The method's own training mask for this epoch (bool ``[N, 3]``, a, t, v), or None to use
        the trainer's. The trainer AND-s it with the data's present mask."""
        return None

    def on_epoch_end(self, stage: str, epoch: int, feedback: dict[str, dict[str, float]]) -> None:
        """Called after each epoch's selection. ``feedback`` maps each modality combination
        ("a", "t", "v", "at", "av", "tv", "atv") to validation metrics when
        ``wants_combination_feedback``, else it is empty."""

    @classmethod
    def declared_optimizer(cls, config: Any = None) -> "OptimizerSpec":
        """The optimiser a config of this method declares (the default config when None): its
        ``optimizer`` field, else the class's ``default_optimizer`` (Adam); a field that leaves
        ``lr`` unset takes the class's rate."""
        spec = getattr(cls.config_class() if config is None else config, "optimizer", None)
        if not isinstance(spec, OptimizerSpec):
            return cls.default_optimizer
        return spec if spec.lr is not None else dataclasses.replace(spec, lr=cls.default_optimizer.lr)

    def optimizer_spec(self) -> "OptimizerSpec":
        """The optimiser this method trains with (see :meth:`declared_optimizer`)."""
        return self.declared_optimizer(self.config)

    # -- what evaluation reports besides metrics (e.g. MoMKE's expert load) ---
    def summary_sums(self, out: MethodOutput, batch: Batch) -> dict[str, torch.Tensor]:
        """Per-batch sums of fixed shape, left on the device, that evaluation adds up over a
        split (one host copy at the end, not one per batch); ``{}``: nothing to report."""
        return {}

    def summarize(self, sums: dict[str, "np.ndarray"]) -> dict:
        """A split's added-up :meth:`summary_sums` -> a JSON-ready summary (``imer evaluate --json``)."""
        return {}

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
    def upgrade_config(cls, saved: dict) -> dict:
        """A method config saved by an earlier imer, with the options added since filled in with
        the behaviour that bundle was trained with (a new default must not change an old model).

        Methods override this when they add an option whose default differs from the old
        behaviour; the default changes nothing.
        """
        return dict(saved)

    @classmethod
    def resolve_config(cls, config: Any, data_info: dict) -> Any:
        """Fill data-dependent defaults (e.g. ComP's padded dialogue length) before building.

        ``data_info`` holds ``max_dialogue_len`` of the training split.
        """
        return config


def masked_mean(values: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over ``where`` (0 when nothing is selected), with static shapes.

    No boolean indexing and no ``.any()``: both make the host wait for the GPU every step.
    ``torch.where`` (not a product) keeps a NaN in an unselected slot out of the result.
    """
    w = where.to(values.dtype)
    return torch.where(where, values, torch.zeros_like(values)).sum() / w.sum().clamp_min(1.0)


def task_loss(
    logits: torch.Tensor, batch: Batch, task: TaskSpec, where: torch.Tensor | None = None
) -> torch.Tensor:
    """CE (eq. 16) or MSE (eq. 17) averaged over labelled, non-padding positions (and ``where``).

    Equal to the loss over the selected positions alone, 0 when there are none; sync-free.
    """
    sel = batch.labelled
    if where is not None:
        sel = sel & where
    logits = logits.float()
    if task.kind == TaskKind.CLASSIFICATION:
        y = torch.where(sel, batch.y, torch.zeros_like(batch.y))
        per = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="none").view_as(sel)
    else:
        y = torch.where(sel, batch.y.float(), torch.zeros_like(batch.y, dtype=torch.float32))
        per = (logits.squeeze(-1) - y).square()
    return masked_mean(per, sel)


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
