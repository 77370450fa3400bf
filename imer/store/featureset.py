"""FeatureSet: the compiled dataset every stage after extraction talks through.

Host-side numpy: one row per utterance with its features per modality, the present mask and
missing reasons, labels, speaker, dialogue, order and split, plus the :class:`FeatureSpec` of
what made each modality's features. Missing entries are zero rows *and* ``present == False``
with a reason: the mask, never the zeros, says a stream is absent.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from imer.errors import BadInput
from imer.store.spec import FeatureSpec
from imer.types import MODALITY_NAMES, TaskKind, TaskSpec

SPLITS = ("train", "valid", "test")


@dataclass
class FeatureSet:
    """One row per utterance; rows of the same dialogue are ordered by ``order``.

    Attributes:
        ids: unique utterance ids.
        feats: modality name -> float32 ``[N, D]``; rows where the modality is missing are zero.
        present: bool ``[N, 3]`` in (audio, text, video) order.
        reasons: str ``[N, 3]``: :class:`MissingReason` values (``"present"`` where present).
        labels: int64 class index (``-1`` = unlabelled) or float32 value (``nan`` = unlabelled).
        task: what the labels mean.
        speakers, dialogues, splits: per-utterance strings (split in train/valid/test or "").
        order: int64 position of the utterance inside its dialogue.
        details: optional str ``[N, 3]``: a human-readable detail per missing entry
            (e.g. "RMS 2.1e-05 < 1e-03"); empty strings where there is none.
        specs: modality -> :class:`FeatureSpec` of the extractor that made the features
            (None: the modality is off); carried into model bundles so that ``predict`` can
            rebuild exactly the same extractors.
    """

    ids: list[str]
    feats: dict[str, np.ndarray]
    present: np.ndarray
    reasons: np.ndarray
    labels: np.ndarray
    task: TaskSpec
    speakers: list[str]
    dialogues: list[str]
    order: np.ndarray
    splits: list[str]
    specs: dict[str, FeatureSpec | None] = field(default_factory=dict)
    details: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.ids)
        if len(set(self.ids)) != n:
            dup = next(i for i in self.ids if self.ids.count(i) > 1)
            raise BadInput(f"utterance id {dup!r} appears more than once")
        if set(self.feats) != set(MODALITY_NAMES):
            raise BadInput(f"features must cover {MODALITY_NAMES}, got {sorted(self.feats)}")
        self.present = np.asarray(self.present, dtype=bool)
        if self.present.shape != (n, 3):
            raise BadInput(f"present mask has shape {self.present.shape}; expected [{n}, 3]")
        for j, m in enumerate(MODALITY_NAMES):
            x = np.asarray(self.feats[m])
            if x.ndim != 2 or x.shape[0] != n:
                raise BadInput(f"{m} features have shape {x.shape}; expected [{n}, D]")
            # Our own copy, so zeroing missing slots never writes into the caller's array;
            # a missing slot holds zeros whatever the producer left there (NaN included).
            x = np.array(x, dtype=np.float32, copy=True)
            x[~self.present[:, j]] = 0.0
            if not np.isfinite(x).all():
                raise BadInput(f"{m} features contain NaN or inf values in present entries")
            self.feats[m] = x
        self.reasons = np.asarray(self.reasons, dtype=object)
        if self.reasons.shape != (n, 3):
            raise BadInput(f"reasons table has shape {self.reasons.shape}; expected [{n}, 3]")
        if self.details is None:
            self.details = np.full((n, 3), "", dtype=object)
        self.details = np.asarray(self.details, dtype=object)
        if self.details.shape != (n, 3):
            raise BadInput(f"details table has shape {self.details.shape}; expected [{n}, 3]")
        for m in MODALITY_NAMES:
            spec = self.specs.get(m)
            if spec is not None and not isinstance(spec, FeatureSpec):
                raise BadInput(f"{m}: specs must hold FeatureSpec records, got {type(spec).__name__}")
            if spec is not None and spec.dim != self.feats[m].shape[1]:
                raise BadInput(f"{m}: features are {self.feats[m].shape[1]}-d but their spec {spec.name!r} says {spec.dim}-d")
        self.order = np.asarray(self.order, dtype=np.int64)
        if self.order.shape != (n,):
            raise BadInput(f"order has shape {self.order.shape}; expected [{n}]")
        if np.shape(self.labels) != (n,):
            raise BadInput(f"labels have shape {np.shape(self.labels)}; expected [{n}]")
        for name in ("speakers", "dialogues", "splits"):
            if len(getattr(self, name)) != n:
                raise BadInput(f"{name} has {len(getattr(self, name))} entries for {n} utterances")
        if self.task.kind == TaskKind.CLASSIFICATION:
            self.labels = np.asarray(self.labels, dtype=np.int64)
            k = len(self.task.label_names)
            bad = (self.labels >= k) | (self.labels < -1)
            if bad.any():
                raise BadInput(f"label {self.labels[bad][0]} outside 0..{k - 1} (-1 = unlabelled)")
        else:
            self.labels = np.asarray(self.labels, dtype=np.float32)

    # ------------------------------------------------------------------ views
    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dims(self) -> dict[str, int]:
        return {m: int(x.shape[1]) for m, x in self.feats.items()}

    def subset(self, index: Sequence[int] | np.ndarray) -> "FeatureSet":
        idx = np.asarray(index, dtype=np.int64)
        pick = lambda seq: [seq[i] for i in idx]  # noqa: E731
        return FeatureSet(
            ids=pick(self.ids),
            feats={m: x[idx] for m, x in self.feats.items()},
            present=self.present[idx],
            reasons=self.reasons[idx],
            details=self.details[idx],
            labels=self.labels[idx],
            task=self.task,
            speakers=pick(self.speakers),
            dialogues=pick(self.dialogues),
            order=self.order[idx],
            splits=pick(self.splits),
            specs=dict(self.specs),
        )

    def with_splits(self, splits: Sequence[str]) -> "FeatureSet":
        """The same rows with other split names (the features are shared, not copied)."""
        out = dataclasses.replace(self, feats=dict(self.feats), splits=list(splits), specs=dict(self.specs))
        return out

    def split(self, name: str) -> "FeatureSet":
        return self.subset([i for i, s in enumerate(self.splits) if s == name])

    def labelled(self) -> np.ndarray:
        if self.task.kind == TaskKind.CLASSIFICATION:
            return self.labels >= 0
        return ~np.isnan(self.labels)

    def dialogue_groups(self) -> list[np.ndarray]:
        """Row indices per dialogue, each sorted by ``order``, dialogues in first-seen order."""
        groups: dict[str, list[int]] = {}
        for i, d in enumerate(self.dialogues):
            groups.setdefault(d, []).append(i)
        return [np.asarray(sorted(g, key=lambda i: self.order[i]), dtype=np.int64) for g in groups.values()]

    def summary(self) -> dict:
        return {
            "utterances": len(self),
            "dialogues": len(set(self.dialogues)),
            "splits": {s: self.splits.count(s) for s in sorted(set(self.splits))},
            "dims": self.dims,
            "present": {m: int(self.present[:, j].sum()) for j, m in enumerate(MODALITY_NAMES)},
            "task": self.task.to_dict(),
        }
