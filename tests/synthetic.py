"""A small learnable dataset: each modality carries a noisy, class-dependent signal."""

from __future__ import annotations

import numpy as np

from imer.store import FeatureSet, FeatureSpec
from imer.types import MODALITY_NAMES, TaskKind, TaskSpec


def make_featureset(
    n_dialogues: int = 40,
    length: tuple[int, int] = (4, 10),
    dims: dict[str, int] | None = None,
    classes: int = 4,
    noise: float = 1.5,
    regression: bool = False,
    seed: int = 0,
    test_fraction: float = 0.25,
    scale: dict[str, float] | None = None,
) -> FeatureSet:
    """Dialogues with a per-class mean per modality plus Gaussian noise; splits by dialogue."""
    rng = np.random.default_rng(seed)
    dims = dims or {"audio": 12, "text": 16, "video": 10}
    scale = scale or {}
    centres = {m: rng.normal(size=(classes, d)) for m, d in dims.items()}
    ids, dlg, order, spk, split, labels = [], [], [], [], [], []
    feats = {m: [] for m in MODALITY_NAMES}
    for k in range(n_dialogues):
        n = int(rng.integers(length[0], length[1] + 1))
        sp = "test" if k < int(n_dialogues * test_fraction) else "train"
        for i in range(n):
            c = int(rng.integers(classes))
            ids.append(f"d{k:03d}_u{i:02d}")
            dlg.append(f"d{k:03d}")
            order.append(i)
            spk.append("A" if i % 2 == 0 else "B")
            split.append(sp)
            labels.append(c)
            for m in MODALITY_NAMES:
                feats[m].append((centres[m][c] + noise * rng.normal(size=dims[m])) * scale.get(m, 1.0))
    n = len(ids)
    labels_arr = np.asarray(labels)
    if regression:
        values = np.linspace(-3, 3, classes)[labels_arr].astype(np.float32)
        task = TaskSpec(TaskKind.REGRESSION, ("sentiment",))
        y = values
    else:
        task = TaskSpec(TaskKind.CLASSIFICATION, tuple(f"c{i}" for i in range(classes)))
        y = labels_arr
    return FeatureSet(
        ids=ids,
        feats={m: np.asarray(v, dtype=np.float32) for m, v in feats.items()},
        present=np.ones((n, 3), bool),
        reasons=np.full((n, 3), "present", dtype=object),
        labels=y,
        task=task,
        speakers=spk,
        dialogues=dlg,
        order=np.asarray(order),
        splits=split,
        specs={m: FeatureSpec(name="synthetic", dim=int(np.asarray(feats[m]).shape[1]), config={"seed": seed}) for m in MODALITY_NAMES},
    )
