"""The results table of the field: metrics per missing rate and per fixed condition."""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np

from imer.fusion.base import FusionMethod
from imer.fusion.data import FeatureSet, TensorData
from imer.fusion.metrics import headline_metrics
from imer.fusion.missing import CONDITIONS, MISSING_RATES, MaskSchedule, MissingProtocol, achieved_missing_rate
from imer.fusion.trainer import evaluate


def evaluate_table(
    method: FusionMethod,
    fs: FeatureSet,
    rates: Iterable[float] = MISSING_RATES,
    conditions: Iterable[str] = CONDITIONS,
    mask_seeds: Iterable[int] = (0, 1, 2),
    batch_mode: str | None = None,
    batch_size: int | None = None,
    device: str = "cpu",
    progress: Callable[[int, int], None] | None = None,
) -> list[dict]:
    """One row per protocol: nominal and achieved missing rate, metric mean and std over mask seeds.

    Masks are fixed per (seed, protocol) and AND-ed with the data's own present mask, so the
    achieved rate includes streams that are really missing.
    """
    mode = batch_mode or method.default_batch_mode
    bs = batch_size or (32 if mode == "dialogue" else 256)
    data = TensorData(fs, device)
    protocols = [MissingProtocol(missing_rate=r) for r in rates] + [MissingProtocol(condition=c) for c in conditions]
    seeds = list(mask_seeds)
    keys = headline_metrics(method.task)
    rows = []
    total, done = len(protocols) * len(seeds), 0
    for proto in protocols:
        per_seed, achieved = [], []
        for s in seeds:
            mask = MaskSchedule(proto, s, fs.present).eval_mask(len(fs)) & fs.present
            achieved.append(achieved_missing_rate(mask))
            per_seed.append(evaluate(method, data, mask, mode, bs))
            done += 1
            if progress:
                progress(done, total)
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
