"""Split rules (imer/store/splits.py): validation hold-out and IEMOCAP sessions."""

from __future__ import annotations

import pytest
from fs_helpers import fs_kwargs
from synthetic import make_featureset

from imer.errors import BadInput
from imer.store import FeatureSet
from imer.store.splits import iemocap_session, make_validation_split


@pytest.fixture
def fs() -> FeatureSet:
    return make_featureset(n_dialogues=6, length=(2, 5), seed=1)


# ---------------------------------------------------------------------- validation split
def _split_of_dialogues(fs: FeatureSet) -> dict[str, str]:
    out: dict[str, set] = {}
    for d, s in zip(fs.dialogues, fs.splits):
        out.setdefault(d, set()).add(s)
    assert all(len(v) == 1 for v in out.values()), "a dialogue spans several splits"
    return {d: v.pop() for d, v in out.items()}


def test_validation_split_moves_whole_dialogues():
    fs = make_featureset(n_dialogues=40, seed=2)  # 10 test, 30 train dialogues
    before = _split_of_dialogues(fs)
    out = make_validation_split(fs, 0.2, seed=0)
    after = _split_of_dialogues(out)
    moved = [d for d in before if before[d] != after[d]]
    assert len(moved) == 6  # round(0.2 * 30)
    assert all(before[d] == "train" and after[d] == "valid" for d in moved)
    assert [s for s in out.splits if s == "test"] == [s for s in fs.splits if s == "test"]
    assert "valid" not in fs.splits  # input untouched
    assert out.ids == fs.ids


def test_validation_split_deterministic():
    fs = make_featureset(n_dialogues=40, seed=2)
    a = make_validation_split(fs, 0.2, seed=7)
    b = make_validation_split(fs, 0.2, seed=7)
    assert a.splits == b.splits
    others = [make_validation_split(fs, 0.2, seed=s).splits for s in range(8, 12)]
    assert any(o != a.splits for o in others)


def test_validation_split_noop_when_valid_exists(fs):
    kw = fs_kwargs(fs)
    kw["splits"] = ["valid" if d == kw["dialogues"][-1] else s for d, s in zip(kw["dialogues"], kw["splits"])]
    src = FeatureSet(**kw)
    out = make_validation_split(src, 0.5, seed=0)
    assert out.splits == src.splits


def test_validation_split_needs_two_train_dialogues():
    fs = make_featureset(n_dialogues=2, test_fraction=0.5)
    with pytest.raises(BadInput):
        make_validation_split(fs, 0.2, seed=0)


def test_validation_split_keeps_some_training():
    fs = make_featureset(n_dialogues=4, test_fraction=0.25)  # 3 train dialogues
    out = make_validation_split(fs, 0.9, seed=0)
    assert "train" in out.splits


# ---------------------------------------------------------------------- IEMOCAP sessions
@pytest.mark.parametrize(
    "dialogue, session",
    [("Ses03M_impro08b", 3), ("Ses01F_script01_1", 1), ("Ses05M_impro04", 5), ("Ses5F_x", 5)],
)
def test_iemocap_session(dialogue, session):
    assert iemocap_session(dialogue) == session


@pytest.mark.parametrize("bad", ["c7UH_rxdZv4", "", "ses01F", "Session1"])
def test_iemocap_session_bad(bad):
    with pytest.raises(BadInput):
        iemocap_session(bad)


# ---------------------------------------------------------------------- speakers or dialogues
def _one_speaker_per_dialogue(n_speakers: int, per_speaker: int = 6) -> FeatureSet:
    """RAVDESS-like: every utterance is its own dialogue, spoken by one actor."""
    kw = fs_kwargs(make_featureset(n_dialogues=n_speakers * per_speaker, length=(1, 1), seed=3))
    n = len(kw["ids"])
    kw["speakers"] = [f"actor{i // per_speaker:02d}" for i in range(n)]
    kw["dialogues"] = list(kw["ids"])
    kw["splits"] = ["train"] * n
    return FeatureSet(**kw)


def test_validation_holds_out_whole_speakers_when_they_partition_the_dialogues():
    from imer.store.splits import validation_groups

    fs = _one_speaker_per_dialogue(10)
    assert validation_groups(fs)[0] == "speakers"
    out = make_validation_split(fs, 0.2, seed=0)
    by_speaker: dict[str, set] = {}
    for spk, s in zip(out.speakers, out.splits):
        by_speaker.setdefault(spk, set()).add(s)
    assert all(len(v) == 1 for v in by_speaker.values()), "a speaker is on both sides of the validation split"
    assert sum(v == {"valid"} for v in by_speaker.values()) == 2  # round(0.2 * 10) speakers, whole


def test_validation_falls_back_to_dialogues_when_speakers_share_dialogues():
    from imer.store.splits import validation_groups

    fs = make_featureset(n_dialogues=20, seed=2)  # IEMOCAP-like: speakers A and B in every dialogue
    assert validation_groups(fs)[0] == "dialogues"
    two = _one_speaker_per_dialogue(2)  # too few speakers to hold one out and keep training varied
    assert validation_groups(two)[0] == "dialogues"
    assert validation_groups(two, "speakers")[0] == "speakers"  # asked for explicitly: allowed
    with pytest.raises(BadInput, match="one named speaker"):
        validation_groups(fs, "speakers")
    assert validation_groups(_one_speaker_per_dialogue(4), "dialogues")[0] == "dialogues"
    with pytest.raises(BadInput, match="auto, speakers or dialogues"):
        validation_groups(fs, "actors")
