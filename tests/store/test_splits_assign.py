"""``assign_splits`` (imer/store/splits.py): given splits with aliases, or whole speakers / dialogues held out.

Moved from tests/extractors/test_run.py (the rule was ``imer.extractors.run._splits``).
"""

from __future__ import annotations

import pytest

from imer.errors import BadInput
from imer.store.splits import SPLIT_ALIASES, assign_splits


def _ids(n: int) -> list[str]:
    return [f"u{i}" for i in range(n)]


def test_dialogue_holdout_when_there_are_no_speakers():
    dialogues = [f"d{i // 3}" for i in range(30)]
    splits = assign_splits(_ids(30), [None] * 30, [""] * 30, dialogues, 0.2, 0)
    held = {d for d, s in zip(dialogues, splits) if s == "test"}
    assert len(held) == 2  # round(0.2 * 10)
    assert set(splits) == {"train", "test"}
    for d in set(dialogues):
        assert len({s for d2, s in zip(dialogues, splits) if d2 == d}) == 1
    # one speaker only: fall back to dialogues too
    assert assign_splits(_ids(30), [None] * 30, ["spk"] * 30, dialogues, 0.2, 0) == splits
    # empty-string splits count as "none given", like None
    assert assign_splits(_ids(30), [""] * 30, [""] * 30, dialogues, 0.2, 0) == splits


def test_speaker_holdout_puts_whole_speakers_in_test_and_is_seeded():
    speakers = [f"s{i % 5}" for i in range(20)]
    dialogues = [f"d{i}" for i in range(20)]
    splits = assign_splits(_ids(20), [None] * 20, speakers, dialogues, 0.2, 0)  # 0.2 of 5 speakers = 1
    assert len({sp for sp, s in zip(speakers, splits) if s == "test"}) == 1 and splits.count("test") == 4
    assert set(splits) == {"train", "test"}
    for sp in set(speakers):  # never split inside a speaker
        assert len({s for s2, s in zip(speakers, splits) if s2 == sp}) == 1
    assert assign_splits(_ids(20), [None] * 20, speakers, dialogues, 0.2, 0) == splits  # seeded


def test_holdout_edge_cases():
    ids = _ids(3)
    assert assign_splits(ids, [None] * 3, ["a", "b", "c"], ["1", "2", "3"], 0.0, 0) == ["train"] * 3
    assert assign_splits(ids, [None] * 3, ["a", "a", "a"], ["d", "d", "d"], 0.5, 0) == ["train"] * 3  # one group
    big = assign_splits(ids, [None] * 3, ["a", "b", "c"], ["1", "2", "3"], 0.99, 0)
    assert big.count("train") >= 1  # never everything in test


def test_split_aliases_and_incomplete_splits():
    given = ["train", "Val", "dev", "TEST", "training"]
    assert assign_splits(_ids(5), given, [""] * 5, ["d"] * 5, 0.2, 0) == ["train", "valid", "valid", "test", "train"]
    assert assign_splits(_ids(4), ["train", " Test", "valid", "TRAIN"], ["a", "a", "b", "c"], _ids(4), 0.5, 0) == [
        "train", "test", "valid", "train"]
    assert set(SPLIT_ALIASES.values()) == {"train", "valid", "test"}
    with pytest.raises(BadInput, match="u1"):
        assign_splits(["u0", "u1"], ["train", None], ["", ""], ["a", "b"], 0.2, 0)
    with pytest.raises(BadInput, match="heldout"):
        assign_splits(["u0"], ["heldout"], [""], ["a"], 0.2, 0)
