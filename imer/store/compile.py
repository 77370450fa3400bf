"""Extraction results -> a :class:`FeatureSet`: labels, the task, splits. Dataset decisions live here.

Extraction hands over, per utterance and modality, a feature vector or a :class:`StreamStatus`
saying why there is none; it never decides labels or splits. ``imer extract`` compiles with
labels and splits; ``predict`` compiles in memory with the bundle's task and no labels at all.
Labels: a user's label set and renames (``CompileConfig.labels``/``label_map``) are applied here,
and :func:`check_labels` reports those that look wrong (:mod:`imer.store.labels`) before extraction.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Sequence

import numpy as np

from imer.errors import BadInput
from imer.pipeline.manifest import Utterance
from imer.store.featureset import FeatureSet
from imer.store.labels import LabelIssue, apply_label_map, check_label_set, find_label_issues
from imer.store.spec import FeatureSpec
from imer.store.splits import assign_splits
from imer.types import MODALITIES, MissingReason, Modality, StreamStatus, TaskKind, TaskSpec

Result = np.ndarray | StreamStatus  # one (utterance, modality): a feature, or why there is none


@dataclass(frozen=True)
class CompileConfig:
    """How labels and splits are read when a store is compiled."""

    task: Literal["auto", "classification", "regression"] = "auto"  # auto: fractional numbers = regression
    holdout: float = 0.2  # share of speakers (or dialogues) put in 'test' when no split is given
    seed: int = 0
    # The classes, in this order; any other label is an error naming its rows. Empty: the labels
    # found become the classes (sorted), and those that look wrong are reported (check_labels).
    labels: tuple[str, ...] = ()
    # Renames applied to labels before anything else (OLD -> NEW; NEW "" = unlabelled).
    label_map: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0.0 <= self.holdout < 1.0:
            raise BadInput(f"holdout {self.holdout}: must be in [0, 1)")
        if self.labels:
            if self.task == "regression":
                raise BadInput("--labels names classes: it cannot be combined with --task regression")
            bad = [n for n in self.labels if not isinstance(n, str) or not n or n != n.strip()]
            if bad:
                raise BadInput(f"--labels: {bad[0]!r} is not a label name (blank or with surrounding spaces)")
            dup = sorted({n for n in self.labels if self.labels.count(n) > 1})
            if dup:
                raise BadInput(f"--labels: {', '.join(map(repr, dup))} given more than once")
            outside = [new for new in self.label_map.values() if new.strip() and new.strip() not in self.labels]
            if outside:
                raise BadInput(f"--label-map maps to {outside[0]!r}, which is not in --labels ({', '.join(self.labels)})")


def infer_task(labels: Sequence[Any], task: str = "auto") -> tuple[TaskSpec, np.ndarray]:
    """Labels -> a task and label array. ``auto``: numbers with a fractional part -> regression;
    anything else -> classes, sorted numerically when all are numbers (so -3 < -1 < 0 < 2 < 10),
    else by name. ``task`` = "classification" or "regression" forces the choice."""
    raw = list(labels)
    given = [x for x in raw if x is not None and str(x).strip() != ""]

    def as_float(x: Any) -> float | None:
        try:
            return float(x)
        except (TypeError, ValueError):
            return None

    numeric = bool(given) and all(as_float(x) is not None for x in given)
    if task == "regression" or (task == "auto" and numeric and any(not float(x).is_integer() for x in given)):
        if not numeric:
            bad = next(x for x in given if as_float(x) is None)
            raise BadInput(f"--task regression needs numeric labels; found {bad!r}")
        values = np.array([np.nan if as_float(x) is None else as_float(x) for x in raw], dtype=np.float32)
        return TaskSpec(TaskKind.REGRESSION, ("sentiment",)), values
    names = sorted({str(x).strip() for x in given}, key=(lambda n: (float(n), n)) if numeric else None)
    return TaskSpec(TaskKind.CLASSIFICATION, tuple(names)), encode_labels(raw, TaskSpec(TaskKind.CLASSIFICATION, tuple(names)))


def encode_labels(raw: Sequence[Any], task: TaskSpec) -> np.ndarray:
    """Labels in a known task's encoding: class index (-1 = none) or float value (NaN = none)."""
    if task.kind == TaskKind.REGRESSION:

        def value(x: Any) -> float:
            try:
                return float(x)
            except (TypeError, ValueError):
                return float("nan")  # no (numeric) label: unlabelled

        return np.array([value(x) for x in raw], dtype=np.float32)
    index = {name: i for i, name in enumerate(task.label_names)}
    return np.array([index.get(str(x).strip(), -1) if x is not None else -1 for x in raw], dtype=np.int64)


def read_labels(utterances: Sequence[Utterance], config: CompileConfig | None = None) -> list[Any]:
    """The utterances' raw labels after ``config.label_map``; raises :class:`BadInput` naming the
    rows whose label is outside ``config.labels`` when that is set (unlabelled rows pass)."""
    cfg = config or CompileConfig()
    raw = apply_label_map([u.label for u in utterances], cfg.label_map)
    if cfg.labels:
        check_label_set(raw, [u.id for u in utterances], cfg.labels)
    return raw


def check_labels(utterances: Sequence[Utterance], config: CompileConfig | None = None) -> list[LabelIssue]:
    """Check labels before anything is extracted: a label outside ``config.labels`` is an error
    (:func:`read_labels`); otherwise, when the labels will be classes, the ones that look wrong
    (a typo of another class, a case variant, a number among names: :func:`find_label_issues`).
    Regression values and a label set the user named are not second-guessed."""
    cfg = config or CompileConfig()
    raw = read_labels(utterances, cfg)
    if cfg.labels:
        return []
    task, _ = infer_task(raw, cfg.task)
    if task.kind != TaskKind.CLASSIFICATION:
        return []
    return find_label_issues(raw, [u.id for u in utterances])


def compile_features(
    utterances: Sequence[Utterance],
    results: Sequence[Mapping[Modality, Result]],
    specs: Mapping[Modality, FeatureSpec | None],
    config: CompileConfig | None = None,
    task: TaskSpec | None = None,
    splits: bool = True,
) -> tuple[FeatureSet, dict]:
    """Compile per-utterance results into a FeatureSet (and per-modality counts for summaries).

    Args:
        utterances: what was extracted, in row order.
        results: per utterance, modality -> feature ``[D]`` or StreamStatus. A modality with a
            spec but no result counts as UNREADABLE; one without a spec is DISABLED.
        specs: the FeatureSpec per modality (None = the modality is off).
        config: how labels and splits are read (label set and renames: :func:`read_labels`).
        task: a known task (``predict``: the bundle's); labels are then encoded in it, not inferred.
        splits: False leaves every split empty (inference data has none).

    Returns:
        (the feature set, ``{"present": {m: n}, "missing": {m: {reason: n}}}``).
    """
    cfg = config or CompileConfig()
    if len(results) != len(utterances):
        raise BadInput(f"{len(results)} results for {len(utterances)} utterances")
    n = len(utterances)
    feats: dict[str, np.ndarray] = {}
    present = np.zeros((n, 3), dtype=bool)
    reasons = np.full((n, 3), MissingReason.DISABLED.value, dtype=object)
    details = np.full((n, 3), "", dtype=object)
    counts: dict[str, Any] = {"present": {}, "missing": {}}
    for j, m in enumerate(MODALITIES):
        spec = specs.get(m)
        arr = np.zeros((n, spec.dim if spec is not None else 1), np.float32)
        missing: Counter = Counter()
        for i, res in enumerate(results):
            r = res.get(m)
            if r is None:
                r = StreamStatus.missing(MissingReason.UNREADABLE, "file could not be read") if spec is not None else StreamStatus.missing(MissingReason.DISABLED)
            if isinstance(r, StreamStatus):
                if r.present:
                    raise BadInput(f"{utterances[i].id}: {m.value} is marked present but has no feature")
                reasons[i, j], details[i, j] = r.reason.value, r.detail
                missing[r.reason.value] += 1
                continue
            if spec is None:
                raise BadInput(f"{utterances[i].id}: a {m.value} feature but no spec for it")
            v = np.asarray(r, dtype=np.float32)
            if v.shape != (spec.dim,):
                raise BadInput(f"{utterances[i].id}: {m.value} feature has shape {v.shape}, its spec {spec.name!r} says ({spec.dim},)")
            arr[i] = v
            present[i, j] = True
            reasons[i, j] = MissingReason.PRESENT.value
        feats[m.value] = arr
        counts["present"][m.value] = int(present[:, j].sum())
        counts["missing"][m.value] = dict(missing)
    if task is None:
        raw = read_labels(utterances, cfg)
        if cfg.labels:  # the user's classes, in the user's order
            task = TaskSpec(TaskKind.CLASSIFICATION, tuple(cfg.labels))
            labels = encode_labels(raw, task)
        else:
            task, labels = infer_task(raw, cfg.task)
    else:
        labels = encode_labels([u.label for u in utterances], task)
    dialogues = [u.dialogue or u.id for u in utterances]
    speakers = [u.speaker or "" for u in utterances]
    ids = [u.id for u in utterances]
    split_names = assign_splits(ids, [u.split for u in utterances], speakers, dialogues, cfg.holdout, cfg.seed) if splits else [""] * n
    fs = FeatureSet(
        ids=ids,
        feats=feats,
        present=present,
        reasons=reasons,
        details=details,
        labels=labels,
        task=task,
        speakers=speakers,
        dialogues=dialogues,
        order=np.array([u.order for u in utterances], dtype=np.int64),
        splits=split_names,
        specs={m.value: specs.get(m) for m in MODALITIES},
    )
    return fs, counts
