"""Every rule that decides which utterances train, select and test: in one file.

* :func:`assign_splits` — splits named in a manifest (with common aliases), or, when none are
  given, whole speakers (or dialogues) held out as ``test``.
* :func:`make_validation_split` — a validation split held out of ``train`` when the data has none:
  whole speakers when they partition the dialogues (speaker-independent selection), else whole
  dialogues; model selection never looks at ``test``.
* :func:`session_folds` — IEMOCAP's 5-fold leave-one-session-out protocol.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from imer.errors import BadInput
from imer.store.featureset import FeatureSet

SPLIT_ALIASES = {
    "train": "train", "training": "train",
    "valid": "valid", "val": "valid", "validation": "valid", "dev": "valid",
    "test": "test", "eval": "test", "evaluation": "test",
}


def assign_splits(
    ids: Sequence[str],
    given: Sequence[str | None],
    speakers: Sequence[str],
    dialogues: Sequence[str],
    holdout: float,
    seed: int,
) -> list[str]:
    """Keep given splits (train/valid/test, aliases mapped); otherwise hold out whole speakers
    (or dialogues, when fewer than two speakers are named) as 'test'. Splits must be given for
    every row or for none."""
    norm = [(s or "").strip().lower() for s in given]
    if any(norm):
        for uid, raw, s in zip(ids, given, norm):
            if s not in SPLIT_ALIASES:
                what = "no split" if not s else f"split {raw!r}"
                raise BadInput(
                    f"utterance {uid!r} has {what}: give every row one of train, valid, test "
                    f"(aliases: {', '.join(k for k in SPLIT_ALIASES if k not in ('train', 'valid', 'test'))}), "
                    "or leave the split column empty everywhere to hold out speakers automatically"
                )
        return [SPLIT_ALIASES[s] for s in norm]
    groups = list(speakers) if len({s for s in speakers if s}) >= 2 else list(dialogues)
    uniq = sorted(set(groups))
    if len(uniq) < 2 or holdout <= 0:
        return ["train"] * len(ids)
    rng = np.random.default_rng(seed)
    k = min(len(uniq) - 1, max(1, int(round(holdout * len(uniq)))))
    test = set(rng.choice(uniq, size=k, replace=False).tolist())
    return ["test" if g in test else "train" for g in groups]


def validation_groups(fs: FeatureSet, by: str = "auto") -> tuple[str, list[str]]:
    """What a validation split holds out whole: ``("speakers", per-row speaker)`` or
    ``("dialogues", per-row dialogue)``.

    ``auto`` holds out speakers when they partition the training dialogues (every dialogue has
    one named speaker: RAVDESS, CREMA-D, a folder of clips per actor) and there are at least 3
    of them; then model selection rewards recognising emotions of people the model has not
    heard, which is what ``predict`` faces. Otherwise (IEMOCAP's M/F per dialogue, MELD's many
    speakers per scene, no speakers) whole dialogues are held out.
    """
    if by not in ("auto", "speakers", "dialogues"):
        raise BadInput(f"validation hold-out {by!r}: use auto, speakers or dialogues")
    rows = [i for i, s in enumerate(fs.splits) if s == "train"]
    per_dialogue: dict[str, set[str]] = {}
    for i in rows:
        per_dialogue.setdefault(fs.dialogues[i], set()).add(fs.speakers[i])
    speakers = {fs.speakers[i] for i in rows if fs.speakers[i]}
    partition = all(len(v) == 1 and "" not in v for v in per_dialogue.values())
    if by == "speakers" and not (partition and len(speakers) >= 2):
        raise BadInput(
            "validation by speakers needs every training dialogue to have one named speaker and at least 2 speakers; "
            "use dialogues"
        )
    if by == "speakers" or (by == "auto" and partition and len(speakers) >= 3):
        return "speakers", list(fs.speakers)
    return "dialogues", list(fs.dialogues)


def make_validation_split(fs: FeatureSet, fraction: float, seed: int, by: str = "auto") -> FeatureSet:
    """Move a random ``fraction`` of the training speakers or dialogues (see
    :func:`validation_groups`) to 'valid', whole, so no speaker or dialogue is on both sides.

    Used when the data has no validation split: model selection then never looks at test.
    """
    if "valid" in fs.splits:
        return fs
    kind, groups = validation_groups(fs, by)
    train_groups = sorted({g for g, s in zip(groups, fs.splits) if s == "train"})
    if len(train_groups) < 2:
        raise BadInput(f"need at least 2 training {kind} to hold one out for validation")
    rng = np.random.default_rng(seed)
    k = min(len(train_groups) - 1, max(1, int(round(fraction * len(train_groups)))))
    held = set(rng.choice(train_groups, size=k, replace=False).tolist())
    return fs.with_splits(["valid" if (s == "train" and g in held) else s for g, s in zip(groups, fs.splits)])


_SESSION = re.compile(r"^Ses0?(\d+)")


def iemocap_session(dialogue_id: str) -> int:
    """'Ses03M_impro08b' -> 3 (IEMOCAP's five recording sessions)."""
    m = _SESSION.match(dialogue_id)
    if not m:
        raise BadInput(f"{dialogue_id!r} is not an IEMOCAP dialogue id (SesNN...)")
    return int(m.group(1))


def session_folds(fs: FeatureSet) -> list[tuple[str, FeatureSet]]:
    """IEMOCAP's 5-fold leave-one-session-out protocol: fold k tests on session k, trains on the rest."""
    sessions = np.array([iemocap_session(d) for d in fs.dialogues])
    return [
        (f"session{s}", fs.with_splits(["test" if x == s else "train" for x in sessions]))
        for s in sorted(set(sessions.tolist()))
    ]


FOLDS = {"sessions": session_folds}


def folds(fs: FeatureSet, protocol: str) -> list[tuple[str, FeatureSet]]:
    """Cross-validation folds by protocol name (``sessions``)."""
    if protocol not in FOLDS:
        raise BadInput(f"cross-validation {protocol!r}: choose one of {', '.join(FOLDS)}")
    return FOLDS[protocol](fs)
