"""One experiment = split, normalise on train, seed, build, fit, save the bundle, evaluate the table.

The CLI, the benchmarks and cross-validation all call :func:`run_experiment` (or :func:`run_cv`),
so the order of those steps, the split rules and the rule that normalisation statistics come from
the training split only live in one place.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from imer.errors import BadInput
from imer.fusion.base import METHODS, FusionMethod, build_method
from imer.fusion.bundle import bundle_spec, save_bundle
from imer.fusion.data import Normalizer
from imer.fusion.evaluation import evaluate_table
from imer.fusion.metrics import headline_metrics
from imer.fusion.missing import CONDITIONS, MISSING_RATES
from imer.fusion.trainer import TrainConfig, TrainResult, fit, seed_everything
from imer.progress import Progress
from imer.store.featureset import FeatureSet
from imer.store.splits import folds, make_validation_split


@dataclass
class ExperimentResult:
    model: FusionMethod
    normalizer: Normalizer
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
            "selection_metric": t.metric,
            "steps": t.steps,
            "best": t.best,
            "warnings": list(t.warnings),
            "params": int(sum(p.numel() for p in self.model.parameters())),
        }


def prepare_splits(fs: FeatureSet, cfg: TrainConfig) -> tuple[FeatureSet, str]:
    """``fs`` with a selection split, and its name.

    ``selection="valid"`` keeps the data's validation split or holds ``val_fraction`` of the
    training speakers (when they partition the dialogues) or dialogues out, before the
    normaliser is fitted, so selection never sees statistics of its own data; ``selection="test"`` selects on test (the official protocol; optimistic).
    """
    if "train" not in fs.splits:
        raise BadInput("the data has no 'train' split; assign splits in the manifest or importer")
    if cfg.selection == "test":
        if "test" not in fs.splits:
            raise BadInput("--selection test needs a 'test' split")
        return fs, "test"
    return make_validation_split(fs, cfg.val_fraction, cfg.seed, cfg.val_by), "valid"


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
    progress: Progress | None = None,
    meta: dict | None = None,
) -> ExperimentResult:
    """Train ``method`` on ``fs`` (raw features) and, if asked, evaluate it on the test split.

    The bundle in ``out`` is written after every stage (so an interrupted run keeps its last
    finished stage) and once more with the test table. ``meta`` may name ``data`` and ``fold``.
    """
    cfg.validate()
    fs, sel_name = prepare_splits(fs, cfg)
    if sel_name == "test" and METHODS.get(method).wants_combination_feedback and "valid" not in fs.splits:
        # Selection may read test (the official protocol); training feedback never does.
        fs = make_validation_split(fs, cfg.val_fraction, cfg.seed, cfg.val_by)
    train_split = fs.split("train")
    if len(train_split) == 0:
        raise BadInput("no utterance has split 'train'")
    normalizer = Normalizer.fit(train_split)  # training split only, present rows only
    data = normalizer.apply(fs)
    max_len = max((len(g) for g in train_split.dialogue_groups()), default=1)
    seed_everything(cfg.seed)  # weight initialisation, batches and masks follow the run's seed
    model = build_method(method, fs.dims, fs.task, options, {"max_dialogue_len": max_len, "batch_mode": cfg.batch_mode})
    meta = dict(meta or {})

    def checkpoint(stage: str, m: FusionMethod, result: TrainResult) -> None:
        if out is not None:
            save_bundle(out, m, normalizer, bundle_spec(m, fs.specs, asdict(cfg), train_result=result.to_dict(), **meta))

    feedback = data.split("valid") if model.wants_combination_feedback and "valid" in data.splits else None
    result = fit(model, data.split("train"), data.split(sel_name), cfg, sel_name, progress=progress,
                 on_stage_end=checkpoint, feedback_fs=feedback)
    rows: list[dict] = []
    if evaluate and "test" in fs.splits:
        rows = evaluate_table(
            model, data.split("test"), rates=rates, conditions=conditions, mask_seeds=mask_seeds,
            batch_mode=cfg.batch_mode, batch_size=cfg.batch_size, device=result.device, progress=progress,
        )
        if out is not None:
            spec = bundle_spec(model, fs.specs, asdict(cfg), train_result=result.to_dict(), test=rows, **meta)
            save_bundle(out, model, normalizer, spec)
    return ExperimentResult(model, normalizer, result, rows)


@dataclass
class CVResult:
    """Per-fold results and the table averaged over folds."""

    protocol: str
    folds: list[tuple[str, ExperimentResult]]
    rows: list[dict]


def run_cv(
    fs: FeatureSet,
    method: str,
    cfg: TrainConfig,
    protocol: str = "sessions",
    options: dict | None = None,
    out: str | Path | None = None,
    mask_seeds: tuple[int, ...] = (0, 1, 2),
    progress: Progress | None = None,
    on_fold: "callable | None" = None,
    meta: dict | None = None,
) -> CVResult:
    """Cross-validation: one :func:`run_experiment` per fold (bundle in ``out/<fold>``), table averaged.

    ``on_fold(name, test_size)`` is called before each fold starts (the CLI prints a line).
    """
    results = []
    for name, part in folds(fs, protocol):
        if on_fold is not None:
            on_fold(name, part.splits.count("test"))
        res = run_experiment(
            part, method, cfg, options, out=None if out is None else Path(out) / name, evaluate=True,
            mask_seeds=mask_seeds, progress=progress, meta={**(meta or {}), "fold": name},
        )
        results.append((name, res))
    tables = [r.rows for _, r in results if r.rows]
    return CVResult(protocol, results, average_rows(tables, fs.task) if tables else [])


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
