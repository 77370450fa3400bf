"""Labels that look wrong, and the label set a user fixes (imer/store/labels.py, imer/store/compile.py).

Issue: a manifest whose labels are the RAVDESS emotion names plus ``hapy`` and ``7`` was accepted
with no word, and the store got two extra classes of one utterance each.
"""

from __future__ import annotations

import numpy as np
import pytest

from imer.errors import BadInput
from imer.extractors.run import ExtractConfig
from imer.pipeline.manifest import Utterance
from imer.store.compile import CompileConfig, check_labels, compile_features, read_labels
from imer.store.labels import (
    LabelIssue,
    apply_label_map,
    check_label_set,
    closest,
    edit_distance,
    find_label_issues,
    near_spelling,
    parse_label_list,
    parse_label_map,
)
from imer.store.format import load_store
from imer.types import Modality, TaskKind, TaskSpec
from imer.workflows import extract_store

A, T, V = Modality.AUDIO, Modality.TEXT, Modality.VIDEO
RAVDESS = ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised")


def _typo_manifest() -> tuple[list[str], list[str]]:
    """Three utterances per RAVDESS emotion, one 'hapy', one '7', one unlabelled: (labels, ids)."""
    labels = [e for e in RAVDESS for _ in range(3)] + ["hapy", "7", ""]
    return labels, [f"u{i:02d}" for i in range(len(labels))]


def _utts(labels, ids=None) -> list[Utterance]:
    ids = ids or [f"u{i:02d}" for i in range(len(labels))]
    return [Utterance(id=i, transcript="x", label=x) for i, x in zip(ids, labels)]


NONE = {A: None, T: None, V: None}


# ---------------------------------------------------------------------- find_label_issues
def test_the_issue_manifest_reports_the_typo_and_the_number():
    labels, ids = _typo_manifest()
    issues = find_label_issues(labels, ids)
    assert issues == [
        LabelIssue("near_spelling", "hapy", 1, ("u24",), resembles="happy", resembles_count=3),
        LabelIssue("number_among_names", "7", 1, ("u25",), others=("angry", "calm", "disgust", "fearful", "happy", "neutral")),
    ]
    assert [i.severity for i in issues] == ["warning", "warning"]
    assert issues[0].message == (
        "label 'hapy' (1 utterance: u24) looks like a misspelling of 'happy' (3 utterances) and became a class of "
        "its own; fix the manifest, map it with --label-map 'hapy=happy', or name the classes with --labels"
    )
    assert issues[1].message == (
        "label '7' (1 utterance: u25) is a number among named classes (angry, calm, disgust, fearful, happy, neutral) "
        "and became a class of its own; fix the manifest, map it with --label-map, or name the classes with --labels"
    )


def test_case_variants_keep_the_most_frequent_spelling():
    labels = ["happy"] * 5 + ["Happy"] * 2 + ["HAPPY"] + ["sad"] * 5
    issues = find_label_issues(labels)
    assert [(i.kind, i.label, i.count, i.resembles, i.resembles_count) for i in issues] == [
        ("case_variant", "HAPPY", 1, "happy", 5), ("case_variant", "Happy", 2, "happy", 5)]
    assert issues[1].rows == ("6", "7")  # row numbers from 1 when no ids are given
    assert "differs only in case from 'happy' (5 utterances)" in issues[1].message
    assert "--label-map 'Happy=happy'" in issues[1].message
    # a tie goes to the lower-case spelling, and a case variant is flagged whatever its size
    tie = find_label_issues(["Sad"] * 10 + ["sad"] * 10 + ["angry"] * 10)
    assert [(i.kind, i.label, i.resembles) for i in tie] == [("case_variant", "Sad", "sad")]


def test_near_spellings_are_small_classes_next_to_bigger_ones():
    base = ["neutral"] * 20 + ["surprised"] * 20 + ["angry"] * 20
    issues = find_label_issues(base + ["nuetral", "suprised", "surprise", "angr"])  # swap, drop, drop, drop
    assert {(i.label, i.resembles) for i in issues} == {
        ("nuetral", "neutral"), ("suprised", "surprised"), ("surprise", "surprised"), ("angr", "angry")}
    assert {i.kind for i in issues} == {"near_spelling"}


def test_genuine_classes_are_not_flagged():
    # close names, but both big: two real classes
    assert find_label_issues(["anger"] * 30 + ["angry"] * 30 + ["sad"] * 30) == []
    # short codes one letter apart are codes, not typos
    assert find_label_issues(["a"] * 10 + ["b"] * 3 + ["c"] * 10) == []
    # a numbered scheme (MOSI-style -3..3) is not 'numbers among names'
    assert find_label_issues([str(k) for k in range(-3, 4) for _ in range(10)]) == []
    # the real RAVDESS label set, balanced
    assert find_label_issues([e for e in RAVDESS for _ in range(10)]) == []
    # a class bigger than 'few' is never a near-spelling, whatever its neighbour
    assert find_label_issues(["happy"] * 100 + ["hapy"] * 10, few=5) == []
    assert [i.label for i in find_label_issues(["happy"] * 100 + ["hapy"] * 10, few=10)] == ["hapy"]


def test_names_among_numbers_and_unlabelled_rows():
    labels = [str(k) for k in range(3) for _ in range(10)] + ["x", None, "", "  "]
    issues = find_label_issues(labels)
    assert [(i.kind, i.label, i.count, i.others) for i in issues] == [("name_among_numbers", "x", 1, ("0", "1", "2"))]
    assert find_label_issues([None, "", " "]) == []


def test_a_tiny_class_resembling_nothing_is_a_note():
    labels = ["neutral"] * 10 + ["happy"] * 10 + ["sad"] * 10 + ["contempt"]
    issues = find_label_issues(labels)
    assert [(i.kind, i.label, i.count, i.typical, i.severity) for i in issues] == [("rare", "contempt", 1, 10, "note")]
    assert issues[0].message == (
        "class 'contempt' has only 1 utterance (31), while the median class has 10: too few to learn or to evaluate; "
        "check its label, or make those rows unlabelled with --label-map 'contempt='"
    )
    # small data where every class is small: nothing to say
    assert find_label_issues(["neutral"] * 3 + ["happy"] * 3 + ["contempt"]) == []


def test_rows_named_are_capped_but_counted():
    labels = ["happy"] * 200 + ["Happy"] * 12
    (issue,) = find_label_issues(labels, [f"r{i}" for i in range(212)], max_rows=3)
    assert issue.count == 12 and issue.rows == ("r200", "r201", "r202")
    assert "(12 utterances: r200, r201, r202 and 9 more)" in issue.message
    d = issue.to_dict()
    assert d["kind"] == "case_variant" and d["rows"] == ["r200", "r201", "r202"] and d["severity"] == "warning"
    assert d["message"] == issue.message


def test_edit_distance_and_closest():
    assert edit_distance("hapy", "happy") == 1 and edit_distance("nuetral", "neutral") == 1
    assert edit_distance("kitten", "sitting") == 3 and edit_distance("", "abc") == 3
    assert near_spelling("hapy", "happy") and near_spelling("Hapy", "happy") and not near_spelling("happy", "Happy")
    assert near_spelling("disgusted", "disgust") and not near_spelling("fear", "fearful") and not near_spelling("sad", "fear")
    assert closest("Happy", ["sad", "happy"]) == "happy" and closest("hapy", ["sad", "happy"]) == "happy"
    assert closest("7", ["sad", "happy"]) is None


# ---------------------------------------------------------------------- a label set and renames
def test_a_label_outside_the_set_names_its_rows_and_the_closest_label():
    labels, ids = _typo_manifest()
    with pytest.raises(BadInput) as e:
        check_label_set(labels, ids, RAVDESS)
    assert str(e.value) == (
        "2 rows have labels outside --labels (neutral, calm, happy, sad, angry, fearful, disgust, surprised): "
        "'7' in 1 row (u25); 'hapy' in 1 row (u24; did you mean 'happy'?). Fix them in the manifest, add the "
        "labels to --labels, or map them with --label-map OLD=NEW (OLD= makes rows unlabelled)"
    )
    check_label_set(labels[:24] + [None, "", " "], ids[:27], RAVDESS)  # unlabelled rows pass


def test_a_label_set_error_caps_the_rows_it_names():
    labels = ["happy"] + ["Happy"] * 13
    with pytest.raises(BadInput, match=r"^13 rows have labels outside --labels \(happy\): 'Happy' in 13 rows "
                                       r"\(u1, u2, u3, u4, u5, u6, u7, u8, u9, u10 and 3 more; did you mean 'happy'\?\)"):
        check_label_set(labels, [f"u{i}" for i in range(14)], ["happy"])


def test_label_map_renames_and_unlabels():
    assert apply_label_map(["hapy", " Happy ", "7", None, "sad", 3], {"hapy": "happy", "Happy": "happy", "7": ""}) == [
        "happy", "happy", None, None, "sad", 3]
    assert apply_label_map(["a"], {}) == ["a"]


def test_parse_label_list_and_map(tmp_path):
    assert parse_label_list("neutral, happy,sad") == ("neutral", "happy", "sad")
    f = tmp_path / "labels.txt"
    f.write_text("# RAVDESS\nneutral\ncalm, happy\n\nsad  # the last one\n")
    assert parse_label_list(f"@{f}") == ("neutral", "calm", "happy", "sad")
    with pytest.raises(BadInput, match="'happy' given more than once"):
        parse_label_list("happy,sad,happy")
    with pytest.raises(BadInput, match="no label names"):
        parse_label_list(" , ")
    with pytest.raises(BadInput, match="not found"):
        parse_label_list(f"@{tmp_path / 'nope.txt'}")
    assert parse_label_map("Happy=happy, hapy = happy,xxx=") == {"Happy": "happy", "hapy": "happy", "xxx": ""}
    m = tmp_path / "map.txt"
    m.write_text("Happy=happy\nhapy=happy\n")
    assert parse_label_map(f"@{m}") == {"Happy": "happy", "hapy": "happy"}
    with pytest.raises(BadInput, match="'hapy' is not OLD=NEW"):
        parse_label_map("hapy")
    with pytest.raises(BadInput, match="mapped twice"):
        parse_label_map("a=b,a=c")


def test_compile_config_checks_the_label_set():
    assert CompileConfig(labels=("a", "b"), label_map={"A": "a", "x": ""}).labels == ("a", "b")
    with pytest.raises(BadInput, match="cannot be combined with --task regression"):
        CompileConfig(labels=("a",), task="regression")
    with pytest.raises(BadInput, match="'a' given more than once"):
        CompileConfig(labels=("a", "b", "a"))
    with pytest.raises(BadInput, match="maps to 'c', which is not in --labels"):
        CompileConfig(labels=("a", "b"), label_map={"x": "c"})
    with pytest.raises(BadInput, match="not a label name"):
        CompileConfig(labels=("a", " b"))


# ---------------------------------------------------------------------- compile: check_labels, compile_features
def test_check_labels_reports_classes_only():
    labels, ids = _typo_manifest()
    assert [(i.kind, i.label) for i in check_labels(_utts(labels, ids))] == [
        ("near_spelling", "hapy"), ("number_among_names", "7")]
    # regression values are not classes: nothing to say, even for an odd one
    assert check_labels(_utts(["0.5", "-1.25", "3", "2.75"] * 5 + ["7"])) == []
    assert check_labels(_utts(["happy", "hapy", "7"] * 3), CompileConfig(task="regression", label_map={"happy": "1", "hapy": "1", "7": "7"})) == []
    # a named label set has been checked exactly: no guesses
    mapped = CompileConfig(labels=RAVDESS + ("7",), label_map={"hapy": "happy"})
    assert check_labels(_utts(labels, ids), mapped) == []
    with pytest.raises(BadInput, match=r"'hapy' in 1 row \(u24; did you mean 'happy'\?\)"):
        check_labels(_utts(labels, ids), CompileConfig(labels=RAVDESS, label_map={"7": ""}))


def test_without_a_label_set_the_typos_still_become_classes():
    """The warning does not change the data: the store is what the manifest says."""
    labels, ids = _typo_manifest()
    fs, _ = compile_features(_utts(labels, ids), [{}] * len(ids), NONE, CompileConfig(holdout=0.0))
    assert fs.task.label_names == ("7", "angry", "calm", "disgust", "fearful", "happy", "hapy", "neutral", "sad", "surprised")


def test_a_label_set_fixes_the_classes_and_their_order():
    labels, ids = _typo_manifest()
    cfg = CompileConfig(holdout=0.0, labels=("happy", "sad") + tuple(e for e in RAVDESS if e not in ("happy", "sad")) + ("contempt",),
                        label_map={"hapy": "happy", "7": ""})
    fs, _ = compile_features(_utts(labels, ids), [{}] * len(ids), NONE, cfg)
    assert fs.task == TaskSpec(TaskKind.CLASSIFICATION, cfg.labels)  # 'contempt' is a class with no utterance
    names = [fs.task.label_names[k] if k >= 0 else None for k in fs.labels]
    assert names[:3] == ["neutral"] * 3 and names[24] == "happy" and names[25] is None and names[26] is None
    assert (fs.labels == -1).sum() == 2
    assert read_labels(_utts(labels, ids), cfg)[24:] == ["happy", None, ""]
    with pytest.raises(BadInput, match=r"^2 rows have labels outside --labels"):
        compile_features(_utts(labels, ids), [{}] * len(ids), NONE, CompileConfig(labels=RAVDESS))


def test_a_known_task_is_not_renamed():
    """predict compiles with the bundle's task and no label set: labels are encoded as they are."""
    task = TaskSpec(TaskKind.CLASSIFICATION, ("happy", "sad"))
    fs, _ = compile_features(_utts(["sad", "hapy", None]), [{}] * 3, NONE, task=task, splits=False)
    assert fs.labels.tolist() == [1, -1, -1]


# ---------------------------------------------------------------------- through extract_store
def test_extract_store_reports_label_issues_in_the_summary(tmp_path):
    labels, ids = _typo_manifest()
    fs, summary = extract_store(_utts(labels, ids), tmp_path / "o", ExtractConfig(backends=dict(NONE)), CompileConfig(holdout=0.0))
    assert [i["kind"] for i in summary.label_issues] == ["near_spelling", "number_among_names"]
    assert summary.label_issues[0] == {
        "kind": "near_spelling", "label": "hapy", "count": 1, "rows": ["u24"], "resembles": "happy",
        "resembles_count": 3, "others": [], "typical": 0, "severity": "warning",
        "message": find_label_issues(labels, ids)[0].message}
    assert summary.warnings == [i.message for i in find_label_issues(labels, ids)]
    assert summary.to_dict()["warnings"] == summary.warnings
    assert "hapy" in load_store(tmp_path / "o").task.label_names


def test_extract_store_refuses_a_label_outside_the_set_before_extracting(tmp_path, monkeypatch):
    import imer.workflows as wf

    def boom(*a, **k):
        raise AssertionError("extraction started")

    monkeypatch.setattr(wf, "extract_features", boom)
    labels, ids = _typo_manifest()
    with pytest.raises(BadInput, match="'hapy' in 1 row"):
        extract_store(_utts(labels, ids), tmp_path / "o", ExtractConfig(backends=dict(NONE)), CompileConfig(labels=RAVDESS))
    assert not (tmp_path / "o").exists()


def test_extract_store_with_a_rare_class_has_a_note_but_no_warning(tmp_path):
    labels = ["neutral"] * 10 + ["happy"] * 10 + ["contempt"]
    _, summary = extract_store(_utts(labels), tmp_path / "o", ExtractConfig(backends=dict(NONE)), CompileConfig(holdout=0.0))
    assert summary.warnings == []
    assert [(i["kind"], i["label"], i["severity"]) for i in summary.label_issues] == [("rare", "contempt", "note")]


def test_labels_are_unchanged_without_options():
    labels = ["sad", " happy ", None, 3]
    assert read_labels(_utts(labels)) == labels
    assert np.array_equal(compile_features(_utts(labels), [{}] * 4, NONE)[0].labels, [2, 1, -1, 0])
