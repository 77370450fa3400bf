"""The one training loop shared by every fusion method.

``fit`` runs a method's stages in order (ComP: "unimodal" then "fusion"), each with its own
optimiser, early stopping on the selection split and a restore of that stage's best weights.
Device, mixed precision, seeds, mask redraw and progress live here, once.

Model selection:
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

from imer.errors import BadInput
from imer.fusion.base import FusionMethod
from imer.fusion.data import FeatureSet, TensorData, make_validation_split
from imer.fusion.metrics import compute_metrics, primary_metric
from imer.fusion.missing import MaskSchedule, MissingProtocol
from imer.types import TaskKind


@dataclass
class TrainConfig:
    epochs: int = 100  # total over all stages, split by the method's stage_fractions
    lr: float = 1e-4  # official ComP command
    weight_decay: float = 1e-5  # official ComP command (Adam L2)
    batch_size: int | None = None  # default: 32 dialogues or 256 utterances
    batch_mode: str | None = None  # "dialogue" | "utterance"; default: the method's
    patience: int | None = 30  # epochs without improvement before a stage stops; None = never
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # bf16 autocast on CUDA (fp16 + scaler where bf16 is unsupported); off on CPU
    missing_rate: float | None = 0.0
    condition: str | None = None
    val_fraction: float = 0.1
    selection: str = "valid"  # "valid" (honest) | "test" (official protocol, optimistic)
    grad_clip: float | None = 5.0
    min_stage_epochs: int = 1
    bucket: bool = True  # dialogue batches of similar length (less padding); False = fully random batches

    def protocol(self) -> MissingProtocol:
        if self.condition is not None:
            return MissingProtocol(condition=self.condition)
        return MissingProtocol(missing_rate=float(self.missing_rate or 0.0))

    def validate(self) -> None:
        if self.selection not in ("valid", "test"):
            raise BadInput(f"selection {self.selection!r}: use 'valid' or 'test'")
        if self.epochs < 1:
            raise BadInput("epochs must be at least 1")
        self.protocol()


@dataclass
class TrainResult:
    history: list[dict] = field(default_factory=list)
    best: dict[str, dict] = field(default_factory=dict)  # stage -> {"epoch", "metrics"}
    seconds: float = 0.0
    epochs_run: int = 0
    device: str = "cpu"
    selection_split: str = "valid"

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_device(name: str) -> torch.device:
    from imer.devices import resolve_device as resolve_name

    return torch.device(resolve_name(name))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _autocast(device: torch.device, enabled: bool):
    if device.type == "cuda" and enabled:
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype), dtype
    return torch.autocast(device.type, enabled=False), None


def prepare_splits(fs: FeatureSet, cfg: TrainConfig) -> tuple[FeatureSet, FeatureSet, str]:
    """(train, selection) sets; holds out validation dialogues when the data has none."""
    if "train" not in fs.splits:
        raise BadInput("the data has no 'train' split; assign splits in the manifest or importer")
    if cfg.selection == "test":
        if "test" not in fs.splits:
            raise BadInput("--selection test needs a 'test' split")
        return fs.split("train"), fs.split("test"), "test"
    # Unlabelled utterances stay in their dialogues (context for dialogue methods); losses and
    # metrics skip them through the labelled mask.
    with_val = make_validation_split(fs, cfg.val_fraction, cfg.seed)
    return with_val.split("train"), with_val.split("valid"), "valid"


@torch.no_grad()
def predict_outputs(
    method: FusionMethod,
    data: TensorData,
    mask: np.ndarray | None,
    batch_mode: str,
    batch_size: int,
    amp: bool = False,
) -> np.ndarray:
    """Model outputs aligned to ``data.fs`` rows: probabilities ``[N, C]`` or values ``[N]``."""
    method.eval()
    pm = None if mask is None else np.asarray(mask, dtype=bool)
    k = method.num_outputs
    out = torch.zeros(data.n, k, device=data.device)
    ctx, _ = _autocast(data.device, amp)
    for batch in data.iterate(batch_mode, batch_size, shuffle=False, protocol_mask=pm):
        with ctx:
            logits = method(batch).logits.float()
        sel = batch.valid
        vals = torch.softmax(logits, -1) if method.task.kind == TaskKind.CLASSIFICATION else logits
        out[batch.index[sel]] = vals[sel]
    arr = out.cpu().numpy()
    return arr if method.task.kind == TaskKind.CLASSIFICATION else arr[:, 0]


def evaluate(
    method: FusionMethod,
    data: TensorData,
    mask: np.ndarray | None,
    batch_mode: str,
    batch_size: int,
    amp: bool = False,
) -> dict[str, float]:
    outputs = predict_outputs(method, data, mask, batch_mode, batch_size, amp)
    sel = data.fs.labelled()
    return compute_metrics(method.task, data.fs.labels[sel], outputs[sel])


ProgressFn = Callable[[dict], None]


def fit(
    method: FusionMethod,
    fs: FeatureSet,
    cfg: TrainConfig,
    progress: ProgressFn | None = None,
    on_stage_end: Callable[[str, FusionMethod, TrainResult], None] | None = None,
) -> TrainResult:
    """Train ``method`` on ``fs`` (already standardised) following ``cfg``.

    ``progress`` receives dicts: ``{"event": "stage", ...}``, ``{"event": "epoch", ...}``.
    ``on_stage_end`` is called after each stage's best weights are restored (checkpointing).
    """
    cfg.validate()
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    train_fs, sel_fs, sel_name = prepare_splits(fs, cfg)
    if len(sel_fs) == 0 or not sel_fs.labelled().any():
        raise BadInput(f"the {sel_name} split has no labelled utterances to select a model on")
    train = TensorData(train_fs, device)
    select = TensorData(sel_fs, device)
    protocol = cfg.protocol()
    train_masks = MaskSchedule(protocol, cfg.seed, train_fs.present)
    sel_mask = MaskSchedule(protocol, cfg.seed, sel_fs.present).eval_mask(len(sel_fs))
    mode = cfg.batch_mode or method.default_batch_mode
    bs = cfg.batch_size or (32 if mode == "dialogue" else 256)
    method.to(device)
    autocast_ctx, amp_dtype = _autocast(device, cfg.amp)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    key = primary_metric(method.task)

    if cfg.epochs < len(method.stages) * cfg.min_stage_epochs:
        raise BadInput(f"{method.registry_name} trains in {len(method.stages)} stages: give --epochs {len(method.stages) * cfg.min_stage_epochs} or more")
    fractions = np.asarray(method.stage_fractions, dtype=float)
    stage_epochs = np.maximum(cfg.min_stage_epochs, np.floor(cfg.epochs * fractions / fractions.sum())).astype(int)
    stage_epochs[-1] = max(cfg.min_stage_epochs, cfg.epochs - int(stage_epochs[:-1].sum()))
    result = TrainResult(device=str(device), selection_split=sel_name)
    start = time.perf_counter()
    global_epoch = 0
    for stage, n_epochs in zip(method.stages, stage_epochs):
        method.begin_stage(stage)
        groups = [g for g in method.param_groups(cfg.weight_decay) if g["params"]]
        params = [p for g in groups for p in g["params"]]
        opt = torch.optim.Adam(groups, lr=cfg.lr)
        best_score, best_state, best_epoch, bad = -math.inf, None, -1, 0
        if progress:
            progress({"event": "stage", "stage": stage, "epochs": int(n_epochs), "batches": train.num_batches(mode, bs)})
        for epoch in range(int(n_epochs)):
            method.train()
            mask = torch.from_numpy(train_masks.train_mask(train.n, global_epoch))
            gen = torch.Generator().manual_seed(cfg.seed * 100_003 + global_epoch)
            sums: dict[str, torch.Tensor] = {}
            nb = 0
            for batch in train.iterate(mode, bs, shuffle=True, generator=gen, protocol_mask=mask, bucket=cfg.bucket):
                with autocast_ctx:
                    out = method(batch)
                    losses = method.loss(out, batch)
                total = losses["total"]
                opt.zero_grad(set_to_none=True)
                scaler.scale(total).backward()
                if cfg.grad_clip:
                    scaler.unscale_(opt)
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                scaler.step(opt)
                scaler.update()
                for k, v in losses.items():  # stays on the device: no sync per batch
                    sums[k] = sums.get(k, 0.0) + v.detach().float()
                nb += 1
            if not all(math.isfinite(float(v)) for v in sums.values()):  # one host sync per epoch
                raise BadInput(
                    f"the loss became non-finite in stage {stage!r}, epoch {epoch}: lower --lr, "
                    "or check the features for extreme values"
                )
            metrics = evaluate(method, select, sel_mask, mode, bs, cfg.amp)
            score = metrics.get(key, float("nan"))
            improved = score > best_score or best_state is None
            if improved:
                best_score, best_epoch, bad = score, epoch, 0
                best_state = {k: v.detach().clone() for k, v in method.state_dict().items()}
            else:
                bad += 1
            record = {
                "stage": stage,
                "epoch": epoch,
                "loss": {k: float(v) / max(nb, 1) for k, v in sums.items()},
                sel_name: metrics,
                "improved": improved,
            }
            result.history.append(record)
            global_epoch += 1
            result.epochs_run = global_epoch
            if progress:
                progress({"event": "epoch", **record, "best": best_score, "epochs": int(n_epochs)})
            if cfg.patience is not None and bad >= cfg.patience:
                break
        method.load_state_dict(best_state)  # restore the stage's best weights (Departures 8 of ComP)
        first = next(i for i, h in enumerate(result.history) if h["stage"] == stage)
        result.best[stage] = {"epoch": best_epoch, "metrics": result.history[first + best_epoch][sel_name]}
        if on_stage_end:
            on_stage_end(stage, method, result)
    result.seconds = time.perf_counter() - start
    method.eval()
    return result
