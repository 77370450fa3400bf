"""Labels -> a task (imer/store/compile.py: ``infer_task``, ``encode_labels``) and ``compile_features``.

The label rules moved from tests/extractors/test_run.py (they were ``imer.extractors.run._labels``).
"""

from __future__ import annotations

import numpy as np
import pytest

from imer.errors import BadInput
from imer.pipeline.manifest import Utterance
from imer.store.compile import CompileConfig, compile_features, encode_labels, infer_task
from imer.store.spec import FeatureSpec
from imer.types import MissingReason, Modality, StreamStatus, TaskKind, TaskSpec

A, T, V = Modality.AUDIO, Modality.TEXT, Modality.VIDEO


# ---------------------------------------------------------------------- infer_task
def test_labels_become_sorted_classes():
    task, labels = infer_task(["sad", "angry", None, "happy", " sad ", ""])
    assert task.kind == TaskKind.CLASSIFICATION and task.label_names == ("angry", "happy", "sad")
    assert labels.dtype == np.int64 and labels.tolist() == [2, 0, -1, 1, 2, -1]


def test_integer_labels_are_classes_sorted_by_name():
    task, labels = infer_task(["1", "0", "2", "1", 2, 0])
    assert task.kind == TaskKind.CLASSIFICATION and task.label_names == ("0", "1", "2")
    assert labels.tolist() == [1, 0, 2, 1, 2, 0]


def test_numeric_non_integer_labels_are_regression():
    task, labels = infer_task(["1.5", "-0.25", None, 3, "2.0"])
    assert task.kind == TaskKind.REGRESSION and task.label_names == ("sentiment",)
    assert labels.dtype == np.float32
    np.testing.assert_array_equal(labels[[0, 1, 3, 4]], np.array([1.5, -0.25, 3.0, 2.0], np.float32))
    assert np.isnan(labels[2])


def test_no_labels_is_classification_with_no_classes():
    task, labels = infer_task([None, None])
    assert task.kind == TaskKind.CLASSIFICATION and task.label_names == () and labels.tolist() == [-1, -1]


def test_numeric_class_labels_sort_numerically_and_task_can_be_forced():
    raw = ["-3", "2", "0", "-1", "10", None]
    task, y = infer_task(raw)
    assert task.label_names == ("-3", "-1", "0", "2", "10") and y.tolist() == [0, 3, 2, 1, 4, -1]
    task, y = infer_task(raw, "regression")
    assert task.kind.value == "regression" and y[:5].tolist() == [-3, 2, 0, -1, 10] and np.isnan(y[5])
    task, y = infer_task(["1.5", "2.5"], "classification")
    assert task.kind == TaskKind.CLASSIFICATION and task.label_names == ("1.5", "2.5") and y.tolist() == [0, 1]
    with pytest.raises(BadInput, match="numeric"):
        infer_task(["happy"], "regression")


def test_encode_labels_in_a_known_task():
    cls = TaskSpec(TaskKind.CLASSIFICATION, ("angry", "happy"))
    assert encode_labels(["happy", " angry ", None, "sad"], cls).tolist() == [1, 0, -1, -1]
    reg = encode_labels(["0.5", None, "x"], TaskSpec(TaskKind.REGRESSION, ("sentiment",)))
    assert reg[0] == np.float32(0.5) and np.isnan(reg[1]) and np.isnan(reg[2])


# ---------------------------------------------------------------------- compile_features
def _utts(**kw) -> list[Utterance]:
    n = len(next(iter(kw.values())))
    return [Utterance(id=f"u{i}", **{k: v[i] for k, v in kw.items()}) for i in range(n)]


def test_compile_features_reasons_counts_and_specs():
    spec = FeatureSpec(name="fake", dim=2)
    utts = _utts(label=["a", "b", "a"], speaker=["s1", "s2", "s3"])
    results = [
        {T: np.array([1.0, 2.0], np.float32)},
        {T: StreamStatus.missing(MissingReason.EMPTY_TRANSCRIPT, "blank")},
        {},  # a spec but no result: the file could not be read
    ]
    fs, counts = compile_features(utts, results, {A: None, T: spec, V: None}, CompileConfig(holdout=0.0))
    assert fs.ids == ["u0", "u1", "u2"] and fs.specs == {"audio": None, "text": spec, "video": None}
    assert fs.dims == {"audio": 1, "text": 2, "video": 1}
    assert fs.reasons.tolist() == [["disabled", "present", "disabled"], ["disabled", "empty_transcript", "disabled"],
                                   ["disabled", "unreadable", "disabled"]]
    assert fs.details[1, 1] == "blank"
    np.testing.assert_array_equal(fs.feats["text"], [[1.0, 2.0], [0.0, 0.0], [0.0, 0.0]])
    assert counts == {"present": {"audio": 0, "text": 1, "video": 0},
                      "missing": {"audio": {"disabled": 3}, "text": {"empty_transcript": 1, "unreadable": 1},
                                  "video": {"disabled": 3}}}
    assert fs.task.label_names == ("a", "b") and fs.labels.tolist() == [0, 1, 0]
    assert fs.splits == ["train"] * 3  # holdout 0


def test_compile_features_with_a_known_task_and_no_splits():
    task = TaskSpec(TaskKind.CLASSIFICATION, ("x", "y"))
    fs, _ = compile_features(_utts(label=[None, "y"]), [{}, {}], {A: None, T: None, V: None}, task=task, splits=False)
    assert fs.task == task and fs.labels.tolist() == [-1, 1] and fs.splits == ["", ""]


def test_compile_features_refuses_inconsistent_results():
    spec = FeatureSpec(name="fake", dim=2)
    with pytest.raises(BadInput, match="2 results for 1 utterances"):
        compile_features(_utts(label=[None]), [{}, {}], {T: spec})
    with pytest.raises(BadInput, match=r"shape \(3,\)"):
        compile_features(_utts(label=[None]), [{T: np.zeros(3, np.float32)}], {T: spec})
    with pytest.raises(BadInput, match="no spec"):
        compile_features(_utts(label=[None]), [{T: np.zeros(2, np.float32)}], {T: None})
    with pytest.raises(BadInput, match="present"):
        compile_features(_utts(label=[None]), [{T: StreamStatus.ok()}], {T: spec})


def test_compile_config_checks_holdout():
    with pytest.raises(BadInput, match="holdout"):
        CompileConfig(holdout=1.0)
    with pytest.raises(BadInput, match="holdout"):
        CompileConfig(holdout=-0.1)
