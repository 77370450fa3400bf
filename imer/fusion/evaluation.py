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


UTTERANCES_PER_BATCH = 256


def default_batch_size(mode: str, mean_dialogue_len: float = 0.0) -> int:
    """Batch size when none is given: 256 utterances, or 32 dialogues but never fewer than ~256 utterances.

    Dialogue batches count dialogues, so a fixed 32 means ~1,500 utterances on IEMOCAP (mean
    dialogue length ~49) but 32 on a corpus of one-utterance "dialogues" such as RAVDESS speech:
    50x noisier steps and 8x more of them, which over-fits the training voices (4-fold
    speaker-held-out RAVDESS, comp: 46.5 WA at 32 vs 47.6 at 256). The floor only changes data
    whose dialogues average fewer than 8 utterances.
    """
    if mode != "dialogue":
        return UTTERANCES_PER_BATCH
    if mean_dialogue_len <= 0:
        return 32
    return max(32, -(-UTTERANCES_PER_BATCH // max(1, round(mean_dialogue_len))))


@torch.no_grad()
def predict_outputs(
    method: FusionMethod,
    data: TensorData,
    mask: np.ndarray | None,
    batch_mode: str,
    batch_size: int,
    amp: bool = False,
    sums: dict[str, np.ndarray] | None = None,
) -> np.ndarray:
    """Model outputs aligned to ``data.fs`` rows: probabilities ``[N, C]`` or values ``[N]``.

    ``sums``: when given, the method's :meth:`~FusionMethod.summary_sums` over the split are
    added into it (numpy, summed on the device and copied once at the end).
    """
    method.eval()
    pm = None if mask is None else np.asarray(mask, dtype=bool)
    k = method.num_outputs
    out = torch.zeros(data.n + 1, k, device=data.device)  # row n collects the padding positions
    ctx, _ = autocast(data.device, amp)
    acc: dict[str, torch.Tensor] = {}
    for batch in data.iterate(batch_mode, batch_size, shuffle=False, protocol_mask=pm):
        with ctx:
            result = method(batch)
        logits = result.logits.float()
        if sums is not None:
            for key, val in method.summary_sums(result, batch).items():
                acc[key] = acc[key] + val.float() if key in acc else val.float()
        vals = torch.softmax(logits, -1) if method.task.kind == TaskKind.CLASSIFICATION else logits
        rows = torch.where(batch.valid, batch.index, torch.full_like(batch.index, data.n))  # no boolean indexing
        out[rows.reshape(-1)] = vals.reshape(-1, k)
    arr = out[: data.n].cpu().numpy()
    if sums is not None:
        for key, val in acc.items():
            host = val.cpu().numpy()
            sums[key] = sums[key] + host if key in sums else host
    return arr if method.task.kind == TaskKind.CLASSIFICATION else arr[:, 0]


def evaluate(
    method: FusionMethod,
    data: TensorData,
    mask: np.ndarray | None,
    batch_mode: str,
    batch_size: int,
    amp: bool = False,
    sums: dict[str, np.ndarray] | None = None,
) -> dict[str, float]:
    """The task's metrics on the labelled rows of ``data`` under ``mask`` (``sums``: see
    :func:`predict_outputs`)."""
    outputs = predict_outputs(method, data, mask, batch_mode, batch_size, amp, sums)
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
    data = TensorData(fs, device)
    bs = batch_size or default_batch_size(mode, data.mean_dialogue_len)
    protocols = [MissingProtocol(missing_rate=r) for r in rates] + [MissingProtocol(condition=c) for c in conditions]
    seeds = list(mask_seeds)
    keys = headline_metrics(method.task)
    rows = []
    total = sum(1 if p.condition is not None else len(seeds) for p in protocols)
    done = 0
    for proto in protocols:
        per_seed, achieved = [], []
        sums: dict[str, np.ndarray] = {}
        for s in seeds:
            mask = MaskSchedule(proto, s, fs.present).eval_mask(len(fs)) & fs.present
            achieved.append(achieved_missing_rate(mask))
            per_seed.append(evaluate(method, data, mask, mode, bs, sums=sums))
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
        summary = method.summarize(sums) if sums else {}
        if summary:  # e.g. MoMKE's expert load under this protocol (over all its mask seeds)
            row["summary"] = summary
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
