"""Metrics with the community's conventions (GCNet / MoMKE / ComP official code).

Classification (IEMOCAP):
    * ``WA`` — accuracy over real (non-padding, labelled) utterances;
    * ``UA`` — unweighted accuracy = mean per-class recall (sklearn ``balanced_accuracy_score``);
    * ``F1`` — weighted F1.

Sentiment regression (CMU-MOSI / MOSEI), labels in [-3, 3]:
    * ``MAE`` and ``Corr`` (Pearson) over the *non-zero* labels, as the official code does;
    * ``Acc2`` / ``F1`` — **non-zero convention** (official): drop utterances whose label is 0,
      positive class = ``label > 0`` vs ``pred > 0`` (a prediction of exactly 0 is negative);
      F1 weighted;
    * ``Acc2_has0`` / ``F1_has0`` — the "has-zero" variant: all utterances, ``>= 0`` vs ``< 0``;
    * ``Acc7`` — labels and predictions rounded after clipping to [-3, 3], all utterances;
    * ``MAE_all`` / ``Corr_all`` — on every utterance, for comparison with MMSA-style tables.
"""

from __future__ import annotations

import numpy as np

from imer.types import TaskKind, TaskSpec


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score, recall_score

    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if len(y_true) == 0:
        return {"WA": float("nan"), "UA": float("nan"), "F1": float("nan"), "n": 0}
    labels = np.arange(num_classes)
    # Mean recall over the classes that occur in y_true (sklearn's balanced accuracy definition).
    seen = np.unique(y_true)
    recalls = recall_score(y_true, y_pred, labels=seen, average=None, zero_division=0)
    return {
        "WA": float(accuracy_score(y_true, y_pred)),
        "UA": float(np.mean(recalls)),
        "F1": float(f1_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0)),
        "n": int(len(y_true)),
    }


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2 or np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    if len(y_true) == 0:
        keys = ("Acc2", "F1", "MAE", "Corr", "Acc2_has0", "F1_has0", "Acc7", "MAE_all", "Corr_all")
        return {**{k: float("nan") for k in keys}, "n": 0}
    nz = y_true != 0
    out: dict[str, float] = {}
    if nz.any():
        t, p = y_true[nz] > 0, y_pred[nz] > 0
        out["Acc2"] = float(accuracy_score(t, p))
        out["F1"] = float(f1_score(t, p, average="weighted", zero_division=0))
        out["MAE"] = float(np.mean(np.abs(y_true[nz] - y_pred[nz])))
        out["Corr"] = _pearson(y_true[nz], y_pred[nz])
    else:
        out.update({"Acc2": float("nan"), "F1": float("nan"), "MAE": float("nan"), "Corr": float("nan")})
    t0, p0 = y_true >= 0, y_pred >= 0
    out["Acc2_has0"] = float(accuracy_score(t0, p0))
    out["F1_has0"] = float(f1_score(t0, p0, average="weighted", zero_division=0))
    out["Acc7"] = float(np.mean(np.round(np.clip(y_true, -3, 3)) == np.round(np.clip(y_pred, -3, 3))))
    out["MAE_all"] = float(np.mean(np.abs(y_true - y_pred)))
    out["Corr_all"] = _pearson(y_true, y_pred)
    out["n"] = int(len(y_true))
    return out


def compute_metrics(task: TaskSpec, y_true: np.ndarray, output: np.ndarray) -> dict[str, float]:
    """``output``: class scores ``[N, C]`` (classification) or values ``[N]`` (regression)."""
    if task.kind == TaskKind.CLASSIFICATION:
        return classification_metrics(y_true, np.asarray(output).argmax(-1), len(task.label_names))
    return regression_metrics(y_true, np.asarray(output).reshape(-1))


def primary_metric(task: TaskSpec) -> str:
    """The number early stopping maximises: WA for emotions, Acc-2 (non-zero) for sentiment."""
    return "WA" if task.kind == TaskKind.CLASSIFICATION else "Acc2"


def headline_metrics(task: TaskSpec) -> tuple[str, ...]:
    """What a results table shows, matching the papers' tables."""
    if task.kind == TaskKind.CLASSIFICATION:
        return ("WA", "UA", "F1")
    return ("Acc2", "F1", "MAE", "Corr", "Acc7")
