"""Community (GCNet / MoMKE / ComP) layout importer, on the real label pickles."""

from __future__ import annotations

import builtins
import os
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from imer.errors import BadInput
from imer.fusion.community import (
    IEMOCAP4_LABELS,
    IEMOCAP6_LABELS,
    CommunityLabels,
    import_community,
    iemocap_session,
    read_labels,
    read_pickle,
    session_folds,
)
from imer.fusion.data import load_store, save_store
from imer.types import MODALITY_NAMES, MissingReason, TaskKind


@pytest.fixture(scope="module")
def pkl_dir(shared_data: Path) -> Path:
    d = shared_data / "gcnet-label-pkl"
    if not d.is_dir():
        pytest.skip(f"{d} not found: the GCNet label pickles are needed for these tests")
    return d


@pytest.fixture(scope="module")
def iemocap4(pkl_dir) -> CommunityLabels:
    return read_labels(pkl_dir / "IEMOCAP_features_raw_4way.pkl")


def restrict(labels: CommunityLabels, n: int) -> CommunityLabels:
    """The first ``n`` dialogues of ``labels``."""
    keep = list(labels.dialogues)[:n]
    return CommunityLabels(
        dialogues={d: labels.dialogues[d] for d in keep},
        labels={d: labels.labels[d] for d in keep},
        speakers={d: labels.speakers[d] for d in keep},
        sentences={d: labels.sentences[d] for d in keep},
        splits={d: labels.splits[d] for d in keep},
        task=labels.task,
        source=labels.source,
    )


# ---------------------------------------------------------------------- real label pickles
def test_read_iemocap_4way(iemocap4):
    lab = iemocap4
    assert lab.task.kind == TaskKind.CLASSIFICATION
    assert lab.task.label_names == IEMOCAP4_LABELS == ("happy", "sad", "neutral", "angry")
    assert len(lab.dialogues) == 151
    uids = lab.utterance_ids()
    assert len(uids) == 5531 and len(set(uids)) == 5531
    assert Counter(lab.splits.values()) == {"train": 120, "test": 31}
    # GCNet's single split tests on session 5
    assert {iemocap_session(d) for d, s in lab.splits.items() if s == "test"} == {5}
    values = [v for vs in lab.labels.values() for v in vs]
    assert set(values) == {0, 1, 2, 3}
    for d, us in lab.dialogues.items():
        assert all(u.startswith(d) for u in us)
        assert len(lab.labels[d]) == len(lab.speakers[d]) == len(lab.sentences[d]) == len(us)
        assert set(lab.speakers[d]) <= {"M", "F"}
    texts = lab.transcripts()
    assert len(texts) == 5531 and sum(bool(t.strip()) for t in texts.values()) > 5000
    assert lab.source == "IEMOCAP_features_raw_4way.pkl"


def test_read_iemocap_6way(pkl_dir):
    lab = read_labels(pkl_dir / "IEMOCAP_features_raw_6way.pkl")
    assert lab.task.kind == TaskKind.CLASSIFICATION
    assert lab.task.label_names == IEMOCAP6_LABELS
    assert lab.task.num_outputs == 6
    assert len(lab.dialogues) == 151
    assert set(v for vs in lab.labels.values() for v in vs) == set(range(6))
    assert Counter(lab.splits.values()) == {"train": 120, "test": 31}


def test_read_mosi(pkl_dir):
    lab = read_labels(pkl_dir / "CMUMOSI_features_raw_2way.pkl")
    assert lab.task.kind == TaskKind.REGRESSION
    assert lab.task.num_outputs == 1
    assert len(lab.utterance_ids()) == 2199
    assert set(lab.splits.values()) == {"train", "valid", "test"}
    assert Counter(lab.splits.values()) == {"train": 52, "valid": 10, "test": 31}
    values = np.array([float(v) for vs in lab.labels.values() for v in vs])
    assert values.min() >= -3 and values.max() <= 3
    assert (values == 0).any() and (values != np.round(values)).any()


def test_full_iemocap_import_with_one_modality(iemocap4, tmp_path):
    text = tmp_path / "text"
    text.mkdir()
    for i, u in enumerate(iemocap4.utterance_ids()):
        np.save(text / f"{u}.npy", np.full(4, i, np.float32))
    calls = []
    fs = import_community(iemocap4, {"audio": None, "text": text, "video": None}, progress=lambda d, t: calls.append((d, t)))
    assert len(fs) == 5531
    assert fs.dims == {"audio": 1, "text": 4, "video": 1}
    assert fs.present[:, 1].all() and not fs.present[:, [0, 2]].any()
    np.testing.assert_array_equal(fs.feats["text"][:, 0], np.arange(5531, dtype=np.float32))
    assert fs.ids == iemocap4.utterance_ids()
    assert Counter(fs.splits) == {
        s: sum(len(iemocap4.dialogues[d]) for d in iemocap4.dialogues if iemocap4.splits[d] == s)
        for s in ("train", "test")
    }
    assert calls and calls[-1] == (5531, 5531)
    # labels, dialogues and order line up with the pickle
    d0 = list(iemocap4.dialogues)[0]
    rows = [i for i, d in enumerate(fs.dialogues) if d == d0]
    assert [fs.ids[i] for i in rows] == iemocap4.dialogues[d0]
    assert fs.labels[rows].tolist() == iemocap4.labels[d0]
    assert fs.order[rows].tolist() == list(range(len(rows)))
    assert [fs.speakers[i] for i in rows] == iemocap4.speakers[d0]


# ---------------------------------------------------------------------- import_community on a subset
@pytest.fixture
def small(iemocap4) -> CommunityLabels:
    return restrict(iemocap4, 2)


def _write_all(folder: Path, uids, dim: int, seed: int) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    vecs = {}
    for u in uids:
        vecs[u] = rng.normal(size=dim).astype(np.float32)
        np.save(folder / f"{u}.npy", vecs[u])
    return vecs


def test_import_subset_with_variants(small, tmp_path):
    uids = small.utterance_ids()
    assert 10 < len(uids) < 200
    audio = _write_all(tmp_path / "wav2vec-large-c-UTT", uids, 6, 0)
    text = _write_all(tmp_path / "deberta-large-4-UTT", uids, 5, 1)
    video = _write_all(tmp_path / "manet_UTT", uids, 3, 2)
    # audio: one utterance as [T, D] -> mean over T; one with no file at all
    seq = np.arange(12, dtype=np.float32).reshape(4, 3) * np.array([1, 2, 3], np.float32)
    seq = np.concatenate([seq, seq], axis=1)  # [4, 6]
    np.save(tmp_path / "wav2vec-large-c-UTT" / f"{uids[1]}.npy", seq)
    os.remove(tmp_path / "wav2vec-large-c-UTT" / f"{uids[2]}.npy")
    # video: one utterance as a folder of face tracks -> mean over faces
    os.remove(tmp_path / "manet_UTT" / f"{uids[3]}.npy")
    faces = tmp_path / "manet_UTT" / uids[3]
    faces.mkdir()
    np.save(faces / "a.npy", np.array([1.0, 2.0, 3.0], np.float32))
    np.save(faces / "b.npy", np.array([3.0, 4.0, 5.0], np.float32))

    fs = import_community(small, {"audio": tmp_path / "wav2vec-large-c-UTT", "text": tmp_path / "deberta-large-4-UTT", "video": tmp_path / "manet_UTT"})
    assert len(fs) == len(uids)
    assert fs.dims == {"audio": 6, "text": 5, "video": 3}
    np.testing.assert_allclose(fs.feats["audio"][1], seq.mean(0))
    np.testing.assert_allclose(fs.feats["video"][3], [2.0, 3.0, 4.0])
    np.testing.assert_array_equal(fs.feats["text"], np.stack([text[u] for u in uids]))
    np.testing.assert_array_equal(fs.feats["audio"][0], audio[uids[0]])
    np.testing.assert_array_equal(fs.feats["video"][0], video[uids[0]])
    # the missing file: not present, reason no_feature, zero row
    assert not fs.present[2, 0]
    assert fs.reasons[2, 0] == MissingReason.NO_FEATURE.value == "no_feature"
    assert (fs.feats["audio"][2] == 0).all()
    expect = np.ones((len(uids), 3), bool)
    expect[2, 0] = False
    np.testing.assert_array_equal(fs.present, expect)
    assert (fs.reasons[expect] == "present").all()
    assert fs.extractors["audio"]["name"] == "community:wav2vec-large-c-UTT"
    assert fs.task == small.task
    assert set(fs.dialogues) == set(small.dialogues)


def test_import_round_trips_through_store(small, tmp_path):
    uids = small.utterance_ids()
    _write_all(tmp_path / "t", uids[:-3], 4, 0)
    fs = import_community(small, {"text": tmp_path / "t"})
    back = load_store(save_store(fs, tmp_path / "store"))
    assert back.ids == fs.ids
    np.testing.assert_array_equal(back.present, fs.present)
    assert back.reasons.tolist() == fs.reasons.tolist()
    np.testing.assert_array_equal(back.labels, fs.labels)
    np.testing.assert_array_equal(back.feats["text"], fs.feats["text"])


def test_import_inconsistent_dims(small, tmp_path):
    uids = small.utterance_ids()
    _write_all(tmp_path / "a", uids, 6, 0)
    np.save(tmp_path / "a" / f"{uids[4]}.npy", np.zeros(7, np.float32))
    with pytest.raises(BadInput, match="different sizes"):
        import_community(small, {"audio": tmp_path / "a"})


def test_import_modality_none_is_all_missing(small, tmp_path):
    uids = small.utterance_ids()
    _write_all(tmp_path / "t", uids, 4, 0)
    fs = import_community(small, {"audio": None, "text": tmp_path / "t", "video": None})
    for j, m in enumerate(MODALITY_NAMES):
        if m == "text":
            assert fs.present[:, j].all()
            continue
        assert not fs.present[:, j].any()
        assert (fs.reasons[:, j] == "no_feature").all()
        assert (fs.feats[m] == 0).all()
        assert fs.extractors[m] == {"name": "none"}


def test_import_folder_errors(small, tmp_path):
    with pytest.raises(BadInput, match="does not exist"):
        import_community(small, {"text": tmp_path / "nope"})
    (tmp_path / "empty").mkdir()
    np.save(tmp_path / "empty" / "someone_else.npy", np.zeros(3, np.float32))
    with pytest.raises(BadInput, match="no feature file"):
        import_community(small, {"text": tmp_path / "empty"})


def test_import_refuses_object_npy(small, tmp_path):
    uids = small.utterance_ids()
    _write_all(tmp_path / "t", uids, 4, 0)
    np.save(tmp_path / "t" / f"{uids[0]}.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(BadInput, match="pickle"):
        import_community(small, {"text": tmp_path / "t"})


def test_import_one_dimensional_features(small, tmp_path):
    uids = small.utterance_ids()
    (tmp_path / "t").mkdir()
    for i, u in enumerate(uids):
        np.save(tmp_path / "t" / f"{u}.npy", np.array([float(i)], np.float32))
    np.save(tmp_path / "t" / f"{uids[0]}.npy", np.array([[1.0], [2.0], [6.0]], np.float32))  # [T, 1]
    fs = import_community(small, {"text": tmp_path / "t"})
    assert fs.dims["text"] == 1
    assert fs.feats["text"][0, 0] == pytest.approx(3.0)
    assert fs.feats["text"][5, 0] == 5.0


# ---------------------------------------------------------------------- pickle safety
MARKER = "imer-test-marker: this must only appear when trust_pickle=True"


class PrintOnLoad:
    """Unpickling calls builtins.print(MARKER): harmless, but observable."""

    def __reduce__(self):
        return (builtins.print, (MARKER,))


class EvalOnLoad:
    def __reduce__(self):
        return (builtins.eval, ("6 * 7",))


class CwdOnLoad:
    def __reduce__(self):
        return (os.getcwd, ())


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_malicious_pickle_refused_then_trusted(tmp_path, capsys):
    p = _write(tmp_path, "evil.pkl", pickle.dumps(PrintOnLoad()))
    with pytest.raises(BadInput, match="--trust-pickle"):
        read_pickle(p)
    with pytest.raises(BadInput, match="--trust-pickle"):
        read_labels(p)
    assert MARKER not in capsys.readouterr().out
    assert read_pickle(p, trust_pickle=True) is None  # print's return value
    assert MARKER in capsys.readouterr().out


@pytest.mark.parametrize("payload", [EvalOnLoad(), CwdOnLoad()], ids=["eval", "os.getcwd"])
def test_code_reference_refused(tmp_path, payload):
    # hidden inside an otherwise plausible label-pickle structure
    p = _write(tmp_path, "x.pkl", pickle.dumps([{"d": ["u"]}, {"d": [payload]}, {}, {}, ["d"], []]))
    with pytest.raises(BadInput, match="--trust-pickle"):
        read_pickle(p)
    if isinstance(payload, EvalOnLoad):
        assert read_pickle(p, trust_pickle=True)[1]["d"] == [42]


def test_plain_data_pickle_loads_without_trust(tmp_path):
    obj = [{"d1": ["u1", "u2"]}, {"d1": np.array([0, 3])}, {"d1": ["M", "F"]}, {"d1": ["hi", "yo"]}, ["d1"], []]
    p = _write(tmp_path, "plain_4way.pkl", pickle.dumps(obj, protocol=2))
    back = read_pickle(p)
    assert back[0] == obj[0] and back[4] == ["d1"]
    np.testing.assert_array_equal(back[1]["d1"], [0, 3])
    lab = read_labels(p)
    assert lab.task.label_names == IEMOCAP4_LABELS
    assert lab.utterance_ids() == ["u1", "u2"] and lab.splits == {"d1": "train"}


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(pickle.dumps([1, 2, {"a": [3, 4]}])[:-4], id="truncated"),
        pytest.param(b"", id="empty"),
        pytest.param(b"hello, this is not a pickle", id="text"),
    ],
)
def test_unreadable_pickle(tmp_path, data):
    p = _write(tmp_path, "bad.pkl", data)
    with pytest.raises(BadInput):
        read_pickle(p)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(pickle.dumps([1, 2, {"a": [3, 4]}])[:-4], id="truncated"),
        pytest.param(b"hello, this is not a pickle", id="text"),
    ],
)
def test_unreadable_pickle_error_is_accurate(tmp_path, data):
    p = _write(tmp_path, "bad.pkl", data)
    with pytest.raises(BadInput) as e:
        read_pickle(p)
    assert "--trust-pickle" not in str(e.value)
    with pytest.raises(BadInput):
        read_pickle(p, trust_pickle=True)


def test_missing_and_malformed_label_file(tmp_path):
    with pytest.raises(BadInput, match="not found"):
        read_pickle(tmp_path / "absent.pkl")
    p = _write(tmp_path, "dict.pkl", pickle.dumps({"videoIDs": {}}))
    with pytest.raises(BadInput, match="expected a list"):
        read_labels(p)


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


def test_session_folds(iemocap4):
    fs = import_community(iemocap4, {})  # no features needed: every stream missing
    assert len(fs) == 5531 and not fs.present.any()
    original_splits = list(fs.splits)
    folds = session_folds(fs)
    assert [name for name, _ in folds] == [f"session{k}" for k in range(1, 6)]
    tested = []
    for k, (name, fold) in enumerate(folds, start=1):
        assert fold.ids == fs.ids
        sessions = [iemocap_session(d) for d in fold.dialogues]
        assert all((s == k) == (sp == "test") for s, sp in zip(sessions, fold.splits))
        assert set(fold.splits) == {"train", "test"}
        tested.extend(i for i, sp in enumerate(fold.splits) if sp == "test")
    assert sorted(tested) == list(range(len(fs)))  # every utterance tested exactly once
    assert fs.splits == original_splits


def test_session_folds_rejects_non_iemocap(pkl_dir):
    mosi = read_labels(pkl_dir / "CMUMOSI_features_raw_2way.pkl")
    with pytest.raises(BadInput):
        session_folds(import_community(restrict(mosi, 2), {}))
