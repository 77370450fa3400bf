"""The one training loop shared by every fusion method.

``fit`` runs a method's stages in order (ComP: "unimodal" then "fusion"), each with its own
optimiser, early stopping on the selection split and a restore of that stage's best weights.
Device, mixed precision, mask redraw and progress live here, once; which rows train and which
select, and the global seed, are decided by :func:`imer.fusion.experiment.run_experiment`.

Model selection (the split is chosen by ``run_experiment``):
    * ``selection="valid"`` (default, honest): the data's validation split, or — when it has
      none (IEMOCAP's pickle) — ``val_fraction`` of the training *dialogues* held out by seed.
      Evaluation masks are fixed per seed.
    * ``selection="test"`` reproduces the official ComP/MoMKE protocol (best epoch chosen on the
      test split). It is optimistic; results carry ``"selection": "test"`` so nobody mistakes
      them for held-out figures.

Masks: training masks are re-drawn every epoch (the official code re-draws every batch; per
epoch keeps runs reproducible and is the GCNet description), evaluation masks are fixed.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch

from imer.devices import autocast, resolve_device
from imer.errors import BadInput
from imer.fusion.base import FusionMethod
from imer.fusion.data import TensorData
from imer.fusion.evaluation import default_batch_size, evaluate
from imer.fusion.metrics import primary_metric
from imer.fusion.missing import CONDITIONS, MaskSchedule, MissingProtocol, condition_mask
from imer.fusion.train_config import TrainConfig, resolve_lr
from imer.progress import Progress, report
from imer.store.featureset import FeatureSet

__all__ = ["TrainConfig", "TrainResult", "fit", "seed_everything"]


@dataclass
class TrainResult:
    history: list[dict] = field(default_factory=list)
    best: dict[str, dict] = field(default_factory=dict)  # stage -> {"epoch", "metrics"}
    seconds: float = 0.0
    epochs_run: int = 0
    device: str = "cpu"
    selection_split: str = "valid"
    metric: str = ""  # the selection metric (WA, Acc2, ...)
    steps: int = 0  # optimiser steps over all stages (compare methods at equal steps or at convergence)
    warnings: list[str] = field(default_factory=list)  # e.g. a stage whose best epoch is at its very end
    lr: float = 0.0  # the learning rate used (the run's, else the method's declared one)
    batch_mode: str = ""  # "dialogue" or "utterance", as trained
    batch_size: int = 0  # dialogues or utterances per batch, as trained (the run's, else the data-sized default)

    def to_dict(self) -> dict:
        return asdict(self)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def learning_rate(method: FusionMethod, cfg: TrainConfig) -> float:
    """The run's ``lr`` if given, else the method's declared one, else ``DEFAULT_LR``."""
    return resolve_lr(cfg.lr, method.optimizer_spec().lr)


def make_optimizer(method: FusionMethod, groups: list[dict], cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """The optimiser the method declares (Adam by default); fused kernels on CUDA (one launch
    for every parameter instead of several per tensor)."""
    spec = method.optimizer_spec()
    lr = learning_rate(method, cfg)
    fused = {"fused": True} if device.type == "cuda" else {}
    if spec.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=spec.momentum, nesterov=spec.nesterov, **fused)
    if spec.name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, **fused)
    return torch.optim.Adam(groups, lr=lr, **fused)


def stage_epochs(method: FusionMethod, cfg: TrainConfig) -> list[int]:
    """The epoch budget of each stage (``cfg.epochs`` split by the method's ``stage_fractions``)."""
    if cfg.epochs < len(method.stages) * cfg.min_stage_epochs:
        raise BadInput(f"{method.registry_name} trains in {len(method.stages)} stages: give --epochs {len(method.stages) * cfg.min_stage_epochs} or more")
    fractions = np.asarray(method.stage_fractions, dtype=float)
    out = np.maximum(cfg.min_stage_epochs, np.floor(cfg.epochs * fractions / fractions.sum())).astype(int)
    out[-1] = max(cfg.min_stage_epochs, cfg.epochs - int(out[:-1].sum()))
    return [int(e) for e in out]


def stage_protocol(method: FusionMethod, stage: str, cfg: TrainConfig) -> MissingProtocol | None:
    """The protocol a stage trains and selects under; None = complete (really present) data."""
    policy = method.mask_policy(stage)
    if policy == "complete":
        return None
    if policy == "protocol":
        return cfg.protocol()
    return MissingProtocol(condition=policy)


def epoch_mask(
    method: FusionMethod, stage: str, epoch: int, global_epoch: int, train_fs: FeatureSet,
    schedule: MaskSchedule | None, cfg: TrainConfig,
) -> torch.Tensor | None:
    """This epoch's training mask: the method's own, else the stage protocol's, else None (complete)."""
    rng = np.random.default_rng([cfg.seed, 104729, global_epoch, 1])
    own = method.draw_train_mask(stage, epoch, train_fs.present, rng)
    if own is not None:
        own = np.asarray(own, dtype=bool)
        if own.shape != (len(train_fs), 3):
            raise BadInput(f"{method.registry_name}.draw_train_mask gave shape {own.shape}; expected [{len(train_fs)}, 3]")
        return torch.from_numpy(own)
    if schedule is not None:
        return torch.from_numpy(schedule.train_mask(len(train_fs), global_epoch))
    return None


def training_step(
    method: FusionMethod, step_model, batch, opt: torch.optim.Optimizer, scaler, autocast_ctx, params: list, cfg: TrainConfig,
) -> dict[str, torch.Tensor]:
    """One optimiser step on ``batch``; returns the loss terms (on the device, not synced)."""
    with autocast_ctx:
        out = step_model(batch)
        losses = method.loss(out, batch)
    opt.zero_grad(set_to_none=True)
    scaler.scale(losses["total"]).backward()
    if cfg.grad_clip:
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip, foreach=True)
    scaler.step(opt)
    scaler.update()
    return losses


class WeightAverage:
    """An exponential moving average of the trainable weights, updated after every optimiser
    step and swapped into the model to score and keep it.

    Why: with a few optimiser steps an epoch at lr 1e-3, the weights of one epoch swing (on the
    IEMOCAP-structured stand-in store, ComP's validation WA jumped between 64 % and 87 % from one
    epoch to the next), so selection picks a lucky epoch rather than a good model, and on small
    data (RAVDESS, 840 utterances) the last weights fit their batches more than the task. The
    average of recent weights is the usual cure (Polyak averaging; SWA/EMA in
    ``torch.optim.swa_utils``, whose ``AveragedModel`` keeps a second copy of the module and
    counts updates with a device tensor it reads back on the host: this keeps one flat list of
    tensors and one fused ``lerp`` per step, with no host synchronisation).

    ``half_life`` is in optimiser steps: the trainer converts the configured half-life in epochs
    with the stage's batches per epoch, so methods with 4 and 25 steps an epoch average over the
    same share of training.
    """

    def __init__(self, params: list[torch.nn.Parameter], half_life: float):
        self.params = [p for p in params if p.requires_grad]
        self.decay = 0.5 ** (1.0 / max(half_life, 1e-6))
        with torch.no_grad():
            self.average = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        if self.params:
            torch._foreach_lerp_(self.average, [p.detach() for p in self.params], 1.0 - self.decay)

    @torch.no_grad()
    def swap(self) -> None:
        """Exchange the live and the averaged weights (call twice to swap back)."""
        for p, a in zip(self.params, self.average):
            tmp = p.detach().clone()
            p.copy_(a)
            a.copy_(tmp)


def combination_feedback(method: FusionMethod, data: TensorData, mode: str, bs: int, amp: bool) -> dict[str, dict[str, float]]:
    """Validation metrics under each of the 7 fixed modality combinations (for methods that adapt),
    with the method's own summary of the split under that combination (``summarize``) merged in."""
    out = {}
    for c in CONDITIONS:
        sums: dict[str, np.ndarray] = {}
        metrics = evaluate(method, data, condition_mask(data.n, c), mode, bs, amp, sums=sums)
        out[c] = {**metrics, **(method.summarize(sums) if sums else {})}
    return out


def fit(
    method: FusionMethod,
    train_fs: FeatureSet,
    sel_fs: FeatureSet,
    cfg: TrainConfig,
    sel_name: str = "valid",
    progress: Progress | None = None,
    on_stage_end: Callable[[str, FusionMethod, TrainResult], None] | None = None,
    feedback_fs: FeatureSet | None = None,
) -> TrainResult:
    """Train ``method`` on ``train_fs``, selecting each stage's best epoch on ``sel_fs``.

    Both sets are ready (split and normalised by the caller: :func:`~imer.fusion.experiment.run_experiment`
    owns splitting and seeding). Per stage, the method decides the training masks
    (``mask_policy``: the run's protocol, complete data or a fixed condition; or its own
    ``draw_train_mask``), its optimiser (``optimizer_spec``), and may get per-combination
    validation feedback (``on_epoch_end``). ``progress`` gets one event per epoch, stage
    ``"stage <name>"``, with the loss and the selection metric by name. ``on_stage_end`` is called
    after each stage's best weights are restored (checkpointing).

    The training step makes no host-device synchronisation: batch order and shapes are decided
    on the host, losses are mask-weighted (no boolean indexing), and per-epoch loss sums stay on
    the device until the epoch's one check for non-finite values.
    """
    cfg.validate()
    device = resolve_device(cfg.device)
    if len(train_fs) == 0:
        raise BadInput("no utterance to train on (the 'train' split is empty)")
    if len(sel_fs) == 0 or not sel_fs.labelled().any():
        raise BadInput(f"the {sel_name} split has no labelled utterances to select a model on")
    train = TensorData(train_fs, device)
    select = TensorData(sel_fs, device)
    feedback_data = None
    if method.wants_combination_feedback:
        # Feedback steers training (MCULoRA's DPFT): it comes from validation data, never from
        # the test split, whatever the split the epochs are selected on.
        if feedback_fs is None and sel_name == "test":
            raise BadInput(f"{method.registry_name} adapts its training to validation feedback: "
                           "give it a validation split (feedback_fs) when selecting on test")
        feedback_data = select if feedback_fs is None else TensorData(feedback_fs, device)
    mode = cfg.batch_mode or method.default_batch_mode
    bs = cfg.batch_size or default_batch_size(mode, train.mean_dialogue_len)
    method.to(device)
    step_model = torch.compile(method, dynamic=True, backend=cfg.compile_backend) if cfg.compile else method
    autocast_ctx, amp_dtype = autocast(device, cfg.amp)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    key = primary_metric(method.task)
    budget = stage_epochs(method, cfg)
    result = TrainResult(device=str(device), selection_split=sel_name, metric=key, lr=learning_rate(method, cfg),
                         batch_mode=mode, batch_size=bs)
    start = time.perf_counter()
    global_epoch = 0
    for stage, n_epochs in zip(method.stages, budget):
        method.begin_stage(stage)
        protocol = stage_protocol(method, stage, cfg)
        schedule = None if protocol is None else MaskSchedule(protocol, cfg.seed, train_fs.present)
        sel_mask = None if protocol is None else MaskSchedule(protocol, cfg.seed, sel_fs.present).eval_mask(len(sel_fs))
        groups = [g for g in method.param_groups(cfg.weight_decay) if g["params"]]
        params = [p for g in groups for p in g["params"]]
        opt = make_optimizer(method, groups, cfg, device)
        sched = (
            torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(n_epochs, 1), eta_min=0.01 * result.lr)
            if cfg.schedule == "cosine" else None
        )
        average = (
            WeightAverage(params, cfg.ema_half_life * train.batches_per_epoch(mode, bs)) if cfg.ema_half_life > 0 else None
        )
        best_score, best_state, best_epoch, bad = -math.inf, None, -1, 0
        report(progress, f"stage {stage}", 0, int(n_epochs))
        for epoch in range(int(n_epochs)):
            method.train()
            t_epoch = time.perf_counter()
            mask = epoch_mask(method, stage, epoch, global_epoch, train_fs, schedule, cfg)
            gen = torch.Generator().manual_seed(cfg.seed * 100_003 + global_epoch)
            sums: dict[str, torch.Tensor] = {}
            nb = 0
            for batch in train.iterate(mode, bs, shuffle=True, generator=gen, protocol_mask=mask, bucket=cfg.bucket):
                losses = training_step(method, step_model, batch, opt, scaler, autocast_ctx, params, cfg)
                if average is not None:
                    average.update()
                for k, v in losses.items():  # stays on the device: no sync per batch
                    sums[k] = sums.get(k, 0.0) + v.detach().float()
                nb += 1
            result.steps += nb
            if sched is not None:
                sched.step()
            if not all(math.isfinite(float(v)) for v in sums.values()):  # one host sync per epoch
                raise BadInput(
                    f"the loss became non-finite in stage {stage!r}, epoch {epoch}: lower --lr, "
                    "or check the features for extreme values"
                )
            if average is not None:  # score (and keep) the averaged weights; train on the live ones
                average.swap()
            metrics = evaluate(method, select, sel_mask, mode, bs, cfg.amp)
            feedback = combination_feedback(method, feedback_data, mode, bs, cfg.amp) if feedback_data is not None else {}
            score = metrics.get(key, float("nan"))
            improved = score > best_score or best_state is None
            if improved:
                best_score, best_epoch, bad = score, epoch, 0
                best_state = {k: v.detach().clone() for k, v in method.state_dict().items()}
            else:
                bad += 1
            if average is not None:
                average.swap()
            method.on_epoch_end(stage, epoch, feedback)
            record = {
                "stage": stage,
                "epoch": epoch,
                "loss": {k: float(v) / max(nb, 1) for k, v in sums.items()},
                sel_name: metrics,
                "improved": improved,
                "seconds": round(time.perf_counter() - t_epoch, 4),  # training + selection of this epoch
            }
            result.history.append(record)
            global_epoch += 1
            result.epochs_run = global_epoch
            report(
                progress, f"stage {stage}", epoch + 1, int(n_epochs),
                loss=record["loss"].get("total", float("nan")), split=sel_name, metric=key, value=score, best=best_score,
            )
            if cfg.patience is not None and bad >= cfg.patience:
                break
        method.load_state_dict(best_state)  # restore the stage's best weights (Departures 8 of ComP)
        first = next(i for i, h in enumerate(result.history) if h["stage"] == stage)
        ran = global_epoch - first
        late = best_epoch >= n_epochs - max(1, int(math.ceil(0.1 * n_epochs))) and ran == n_epochs and n_epochs >= 10
        result.best[stage] = {
            "epoch": best_epoch, "epochs": int(n_epochs), "ran": ran, "late": bool(late),
            "protocol": "complete" if protocol is None else protocol.name,
            "metrics": result.history[first + best_epoch][sel_name],
        }
        if late:
            result.warnings.append(
                f"stage {stage!r}: the best epoch ({best_epoch + 1} of {n_epochs}) is in the last 10 % of the stage; "
                "the model may be under-trained: raise --epochs or --lr"
            )
        if on_stage_end:
            on_stage_end(stage, method, result)
    result.seconds = time.perf_counter() - start
    method.eval()
    return result
