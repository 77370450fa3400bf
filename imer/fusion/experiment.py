"""One experiment = standardise on train, build, fit, save the bundle, evaluate the table.

The CLI, the benchmarks and cross-validation all call :func:`run_experiment`, so the order of
those steps (and the rule that normalisation statistics come from the training split only)
lives in one place.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from imer.errors import BadInput
from imer.fusion.base import FusionMethod, build_method
from imer.fusion.bundle import save_bundle
from imer.fusion.data import FeatureSet, Standardizer, make_validation_split
from imer.fusion.evaluation import evaluate_table
from imer.fusion.metrics import headline_metrics
from imer.fusion.missing import CONDITIONS, MISSING_RATES
from imer.fusion.trainer import TrainConfig, TrainResult, fit, seed_everything


@dataclass
class ExperimentResult:
    model: FusionMethod
    standardizer: Standardizer
    train: TrainResult
    rows: list[dict] = field(default_factory=list)  # test table (empty when not evaluated)

    def summary(self) -> dict:
        t = self.train
        return {
            "method": self.model.registry_name,
            "device": t.device,
            "epochs_run": t.epochs_run,
            "seconds": round(t.seconds, 2),
            "epochs_per_second": round(t.epochs_run / max(t.seconds, 1e-9), 3),
            "selection_split": t.selection_split,
            "best": t.best,
            "params": int(sum(p.numel() for p in self.model.parameters())),
        }


def run_experiment(
    fs: FeatureSet,
    method: str,
    cfg: TrainConfig,
    options: dict | None = None,
    out: str | Path | None = None,
    evaluate: bool = True,
    mask_seeds: tuple[int, ...] = (0, 1, 2),
    rates: tuple[float, ...] = MISSING_RATES,
    conditions: tuple[str, ...] = CONDITIONS,
    progress: Callable[[dict], None] | None = None,
    eval_progress: Callable[[int, int], None] | None = None,
    meta: dict | None = None,
) -> ExperimentResult:
    """Train ``method`` on ``fs`` (raw features) and, if asked, evaluate it on the test split.

    The bundle in ``out`` is written after every stage (so an interrupted run keeps its last
    finished stage) and once more with the test table.
    """
    if len(fs.split("train")) == 0:
        raise BadInput("no utterance has split 'train'")
    if cfg.selection == "valid":
        # Hold the validation dialogues out *before* fitting the normaliser, so that model
        # selection never sees statistics of its own data (a no-op when 'valid' exists).
        fs = make_validation_split(fs, cfg.val_fraction, cfg.seed)
    train_split = fs.split("train")
    std = Standardizer.fit(train_split)  # training split only, present rows only
    data = std.apply(fs)
    max_len = max((len(g) for g in train_split.dialogue_groups()), default=1)
    seed_everything(cfg.seed)  # weight initialisation is part of the run's seed
    model = build_method(method, fs.dims, fs.task, options, {"max_dialogue_len": max_len, "batch_mode": cfg.batch_mode})
    meta = {"label_names": list(fs.task.label_names), **(meta or {})}

    def checkpoint(stage: str, m: FusionMethod, result: TrainResult) -> None:
        if out is not None:
            save_bundle(out, m, std, fs.extractors, asdict(cfg), {**meta, "stage": stage, "train_result": result.to_dict()})

    result = fit(model, data, cfg, progress=progress, on_stage_end=checkpoint)
    rows: list[dict] = []
    if evaluate and "test" in fs.splits:
        rows = evaluate_table(
            model, data.split("test"), rates=rates, conditions=conditions, mask_seeds=mask_seeds,
            batch_mode=cfg.batch_mode, batch_size=cfg.batch_size, device=result.device, progress=eval_progress,
        )
        if out is not None:
            save_bundle(out, model, std, fs.extractors, asdict(cfg), {**meta, "train_result": result.to_dict(), "test": rows})
    return ExperimentResult(model, std, result, rows)


def average_rows(per_fold: list[list[dict]], task) -> list[dict]:
    """Cross-validation table: metric mean over folds, std across folds."""
    out = []
    for rows in zip(*per_fold):
        row = {k: rows[0][k] for k in ("protocol", "missing_rate", "condition")}
        row["achieved_missing_rate"] = float(np.mean([r["achieved_missing_rate"] for r in rows]))
        row["folds"] = len(rows)
        for k in headline_metrics(task):
            vals = np.array([r[k] for r in rows], dtype=float)
            row[k] = float(np.mean(vals))
            row[f"{k}_std"] = float(np.std(vals))
        out.append(row)
    return out
