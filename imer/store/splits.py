"""Every rule that decides which utterances train, select and test: in one file.

* :func:`assign_splits` — splits named in a manifest (with common aliases), or, when none are
  given, whole speakers (or dialogues) held out as ``test``.
* :func:`make_validation_split` — a validation split held out of ``train`` when the data has none,
  whole dialogues at a time, so model selection never looks at ``test``.
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


def make_validation_split(fs: FeatureSet, fraction: float, seed: int) -> FeatureSet:
    """Move a random ``fraction`` of training *dialogues* to 'valid' (whole dialogues, so no leakage).

    Used when the data has no validation split: model selection then never looks at test.
    """
    if "valid" in fs.splits:
        return fs
    train_dialogues = sorted({d for d, s in zip(fs.dialogues, fs.splits) if s == "train"})
    if len(train_dialogues) < 2:
        raise BadInput("need at least 2 training dialogues to hold one out for validation")
    rng = np.random.default_rng(seed)
    k = min(len(train_dialogues) - 1, max(1, int(round(fraction * len(train_dialogues)))))
    held = set(rng.choice(train_dialogues, size=k, replace=False).tolist())
    return fs.with_splits(["valid" if (s == "train" and d in held) else s for d, s in zip(fs.dialogues, fs.splits)])


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
