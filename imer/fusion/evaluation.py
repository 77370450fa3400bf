"""Inference and the results table of the field: one path for training, ``evaluate`` and ``predict``.

:func:`predict_outputs` is the only place a trained method is run on data; the trainer's
selection, ``imer evaluate``'s table and ``Predictor`` all go through it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from imer.devices import autocast
from imer.errors import BadInput
from imer.fusion.base import FusionMethod
from imer.fusion.data import TensorData
from imer.fusion.metrics import compute_metrics, headline_metrics
from imer.fusion.missing import CONDITIONS, MISSING_RATES, MaskSchedule, MissingProtocol, achieved_missing_rate
from imer.progress import Progress, report
from imer.store.featureset import FeatureSet
from imer.types import TaskKind


def default_batch_size(mode: str) -> int:
    return 32 if mode == "dialogue" else 256


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
    out = torch.zeros(data.n + 1, k, device=data.device)  # row n collects the padding positions
    ctx, _ = autocast(data.device, amp)
    for batch in data.iterate(batch_mode, batch_size, shuffle=False, protocol_mask=pm):
        with ctx:
            logits = method(batch).logits.float()
        vals = torch.softmax(logits, -1) if method.task.kind == TaskKind.CLASSIFICATION else logits
        rows = torch.where(batch.valid, batch.index, torch.full_like(batch.index, data.n))  # no boolean indexing
        out[rows.reshape(-1)] = vals.reshape(-1, k)
    arr = out[: data.n].cpu().numpy()
    return arr if method.task.kind == TaskKind.CLASSIFICATION else arr[:, 0]


def evaluate(
    method: FusionMethod,
    data: TensorData,
    mask: np.ndarray | None,
    batch_mode: str,
    batch_size: int,
    amp: bool = False,
) -> dict[str, float]:
    """The task's metrics on the labelled rows of ``data`` under ``mask``."""
    outputs = predict_outputs(method, data, mask, batch_mode, batch_size, amp)
    sel = data.fs.labelled()
    return compute_metrics(method.task, data.fs.labels[sel], outputs[sel])


def evaluate_table(
    method: FusionMethod,
    fs: FeatureSet,
    rates: Iterable[float] = MISSING_RATES,
    conditions: Iterable[str] = CONDITIONS,
    mask_seeds: Iterable[int] = (0, 1, 2),
    batch_mode: str | None = None,
    batch_size: int | None = None,
    device: str | torch.device = "cpu",
    progress: Progress | None = None,
) -> list[dict]:
    """One row per protocol: nominal and achieved missing rate, metric mean and std over mask seeds.

    Masks are fixed per (seed, protocol) and AND-ed with the data's own present mask, so the
    achieved rate includes streams that are really missing.
    """
    mode = batch_mode or method.default_batch_mode
    bs = batch_size or default_batch_size(mode)
    data = TensorData(fs, device)
    protocols = [MissingProtocol(missing_rate=r) for r in rates] + [MissingProtocol(condition=c) for c in conditions]
    seeds = list(mask_seeds)
    keys = headline_metrics(method.task)
    rows = []
    total = sum(1 if p.condition is not None else len(seeds) for p in protocols)
    done = 0
    for proto in protocols:
        per_seed, achieved = [], []
        for s in seeds:
            mask = MaskSchedule(proto, s, fs.present).eval_mask(len(fs)) & fs.present
            achieved.append(achieved_missing_rate(mask))
            per_seed.append(evaluate(method, data, mask, mode, bs))
            done += 1
            report(progress, "evaluating", done, total)
            if proto.condition is not None:  # deterministic: one seed is enough
                break
        row = {
            "protocol": proto.name,
            "missing_rate": proto.missing_rate,
            "condition": proto.condition,
            "achieved_missing_rate": float(np.mean(achieved)),
            "seeds": len(per_seed),
        }
        for k in keys:
            vals = np.array([m[k] for m in per_seed], dtype=float)
            row[k] = float(np.mean(vals))
            row[f"{k}_std"] = float(np.std(vals))
        rows.append(row)
    return rows


def evaluate_bundle(
    model: str | Path,
    data: str | Path,
    split: str = "test",
    mask_seeds: int = 3,
    device: str = "auto",
    progress: Progress | None = None,
) -> dict:
    """``imer evaluate``: a bundle on a store's split -> ``{"method", "split", "rows", ...}``.

    Refuses a store whose features were made by other extractors than the model's.
    """
    from imer.devices import resolve_device
    from imer.fusion.bundle import load_bundle
    from imer.store.format import load_store

    if mask_seeds < 1:
        raise BadInput("--mask-seeds must be at least 1")
    dev = resolve_device(device)
    loaded = load_bundle(model, dev)
    fs = load_store(data)
    loaded.spec.check_compatible(fs.dims, fs.specs)
    part = fs if split == "all" else fs.split(split)
    if len(part) == 0:
        raise BadInput(f"{data}: split {split!r} is empty; splits here: {sorted(set(fs.splits))}")
    rows = evaluate_table(
        loaded.method, loaded.normalizer.apply(part), mask_seeds=range(mask_seeds), device=dev, progress=progress
    )
    return {"model": str(model), "data": str(data), "split": split, "method": loaded.spec.method, "task": fs.task, "rows": rows}
