"""Helpers shared by the FeatureSet, store and fusion-data tests (``tests/`` is on sys.path)."""

from __future__ import annotations

import numpy as np

from imer.store import FeatureSet
from imer.types import MODALITY_NAMES, MissingReason, TaskKind


def fs_kwargs(fs: FeatureSet) -> dict:
    """Independent copies of every constructor argument of ``fs``."""
    return dict(
        ids=list(fs.ids),
        feats={m: x.copy() for m, x in fs.feats.items()},
        present=fs.present.copy(),
        reasons=fs.reasons.copy(),
        details=fs.details.copy(),
        labels=fs.labels.copy(),
        task=fs.task,
        speakers=list(fs.speakers),
        dialogues=list(fs.dialogues),
        order=fs.order.copy(),
        splits=list(fs.splits),
        specs=dict(fs.specs),  # FeatureSpec is frozen: sharing the records is safe
    )


MISSING_REASONS = (MissingReason.SILENT_AUDIO.value, MissingReason.EMPTY_TRANSCRIPT.value, MissingReason.NO_FACE.value)


def with_missing(fs: FeatureSet, seed: int = 0, rate: float = 0.3, details: bool = False) -> FeatureSet:
    """``fs`` with random entries marked missing (with varied reasons) and a few unlabelled rows.

    ``details``: also give every missing entry a human-readable detail string.
    """
    rng = np.random.default_rng(seed)
    kw = fs_kwargs(fs)
    absent = rng.random((len(fs), 3)) < rate
    absent[absent.all(1), 1] = False
    kw["present"] = ~absent
    reasons = np.full((len(fs), 3), MissingReason.PRESENT.value, dtype=object)
    for j in range(3):
        reasons[absent[:, j], j] = MISSING_REASONS[j]
    kw["reasons"] = reasons
    if details:
        det = np.full((len(fs), 3), "", dtype=object)
        for i, j in zip(*np.nonzero(absent)):
            det[i, j] = f"{MODALITY_NAMES[j]} of {fs.ids[i]}: détail {i}.{j}"
        kw["details"] = det
    labels = kw["labels"]
    if fs.task.kind == TaskKind.CLASSIFICATION:
        labels[::7] = -1
    else:
        labels[::7] = np.nan
    return FeatureSet(**kw)


def assert_same_featureset(a: FeatureSet, b: FeatureSet) -> None:
    """Every field equal (features bit for bit, NaN labels equal)."""
    assert a.ids == b.ids
    assert a.task == b.task
    for m in MODALITY_NAMES:
        assert b.feats[m].dtype == np.float32
        np.testing.assert_array_equal(a.feats[m], b.feats[m])
    np.testing.assert_array_equal(a.present, b.present)
    assert a.reasons.tolist() == b.reasons.tolist()
    assert a.details.tolist() == b.details.tolist()
    np.testing.assert_array_equal(a.labels, b.labels)  # nan == nan here
    assert a.labels.dtype == b.labels.dtype
    assert a.splits == b.splits
    assert a.dialogues == b.dialogues
    assert a.speakers == b.speakers
    np.testing.assert_array_equal(a.order, b.order)
    assert a.specs == b.specs
