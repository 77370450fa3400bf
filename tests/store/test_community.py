"""Community (GCNet / MoMKE / ComP) layout (imer/store/community.py): import on the real label pickles, export."""

from __future__ import annotations

import builtins
import os
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from imer.errors import BadInput
from imer.progress import ProgressEvent
from imer.store import FeatureSpec, load_store, save_store
from imer.store.community import (
    IEMOCAP4_LABELS,
    IEMOCAP6_LABELS,
    CommunityLabels,
    import_community,
    read_labels,
    read_pickle,
)
from imer.store.splits import iemocap_session, session_folds
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
    events = []
    fs = import_community(iemocap4, {"audio": None, "text": text, "video": None}, progress=events.append)
    assert len(fs) == 5531
    assert fs.dims == {"audio": 1, "text": 4, "video": 1}
    assert fs.present[:, 1].all() and not fs.present[:, [0, 2]].any()
    np.testing.assert_array_equal(fs.feats["text"][:, 0], np.arange(5531, dtype=np.float32))
    assert fs.ids == iemocap4.utterance_ids()
    assert Counter(fs.splits) == {
        s: sum(len(iemocap4.dialogues[d]) for d in iemocap4.dialogues if iemocap4.splits[d] == s)
        for s in ("train", "test")
    }
    assert events and all(isinstance(e, ProgressEvent) and e.stage == "reading features" for e in events)
    assert [(e.done, e.total) for e in events][-1] == (5531, 5531)
    assert [e.done for e in events] == sorted(e.done for e in events)
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
    assert fs.specs == {
        "audio": FeatureSpec(name="community:wav2vec-large-c-UTT", dim=6, config={"folder": "wav2vec-large-c-UTT"}),
        "text": FeatureSpec(name="community:deberta-large-4-UTT", dim=5, config={"folder": "deberta-large-4-UTT"}),
        "video": FeatureSpec(name="community:manet_UTT", dim=3, config={"folder": "manet_UTT"}),
    }
    assert all(s.imported for s in fs.specs.values())
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
    assert back.specs == fs.specs == {"audio": None, "text": FeatureSpec(name="community:t", dim=4, config={"folder": "t"}), "video": None}


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
        assert fs.specs[m] is None


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


@pytest.mark.parametrize("bad, word", [
    (np.array(["0.5", "1.0", "2.0", "3.0"]), "text"),
    (np.array([b"0.5", b"1.0", b"2", b"3"]), "bytes"),
    (np.array([True, False, True, True]), "booleans"),
    (np.array([1 + 2j, 0, 0, 0]), "complex"),
])
def test_import_refuses_non_numeric_npy(small, tmp_path, bad, word):
    """A string array of numbers would convert silently; the file is named and nothing is read."""
    uids = small.utterance_ids()
    _write_all(tmp_path / "t", uids, 4, 0)
    np.save(tmp_path / "t" / f"{uids[3]}.npy", bad)
    with pytest.raises(BadInput, match=rf"{uids[3]}\.npy.*{word}"):
        import_community(small, {"text": tmp_path / "t"})
    np.save(tmp_path / "t" / f"{uids[3]}.npy", np.arange(4, dtype=np.int16))  # integers are numbers
    assert import_community(small, {"text": tmp_path / "t"}).present[:, 1].all()


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


# ---------------------------------------------------------------------- IEMOCAP session folds (rules: test_splits.py)
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


# ---------------------------------------------------------------------- export (imer store -> GCNet layout)
def _exportable(regression: bool = False, seed: int = 0):
    """A synthetic store with missing entries (reasons and details), unlabelled rows and a valid split."""
    from fs_helpers import with_missing
    from synthetic import make_featureset

    from imer.store.splits import make_validation_split

    fs = with_missing(make_featureset(n_dialogues=8, length=(2, 6), regression=regression, seed=seed), seed=seed + 1, details=True)
    fs = make_validation_split(fs, 0.25, seed=seed)
    assert {"train", "valid", "test"} == set(fs.splits)
    assert (~fs.present).any() and (fs.details != "").any() and (~fs.labelled()).any()
    return fs


def _plain_data_only(obj, path="root") -> None:
    """Only list, dict, str, int and float (exact types: no numpy scalars, tuples or sets)."""
    assert type(obj) in (list, dict, str, int, float), f"{path}: {type(obj).__name__}"
    if type(obj) is list:
        for i, v in enumerate(obj):
            _plain_data_only(v, f"{path}[{i}]")
    elif type(obj) is dict:
        for k, v in obj.items():
            assert type(k) is str, f"{path} key {k!r}: {type(k).__name__}"
            _plain_data_only(v, f"{path}[{k!r}]")


@pytest.mark.parametrize("regression", [False, True], ids=["classification", "regression"])
def test_export_then_import_gives_back_the_same_featureset(tmp_path, regression):
    from fs_helpers import assert_same_featureset

    from imer.store.community import export_community, import_folder

    fs = _exportable(regression)
    events = []
    summary = export_community(fs, tmp_path / "out", progress=events.append)
    label_file = tmp_path / "out" / "imer_features_raw.pkl"
    assert summary["labels"] == str(label_file) and label_file.is_file()
    assert summary["utterances"] == len(fs) and summary["dialogues"] == len(set(fs.dialogues))
    assert summary["folders"] == {m: f"synthetic-{m}_UTT" for m in MODALITY_NAMES}
    assert events and all(isinstance(e, ProgressEvent) and e.stage == "writing features" for e in events)
    assert (events[-1].done, events[-1].total) == (3 * len(fs), 3 * len(fs))

    back = import_folder(label_file, {}, None)
    assert_same_featureset(fs, back)  # ids in order, feats, present, reasons, details, labels, task, ...
    assert back.specs == fs.specs


def test_export_label_pickle_is_plain_data_in_the_community_layout(tmp_path):
    import pickletools

    from imer.store.community import export_community

    fs = _exportable()
    export_community(fs, tmp_path / "out", name="mine")
    label_file = tmp_path / "out" / "mine_features_raw.pkl"
    raw = label_file.read_bytes()
    assert not [op.name for op, _, _ in pickletools.genops(raw) if "GLOBAL" in op.name or op.name in ("REDUCE", "INST", "OBJ")]
    obj = read_pickle(label_file)  # the restricted unpickler, without trust_pickle
    _plain_data_only(obj)
    assert len(obj) == 7  # [videoIDs, videoLabels, videoSpeakers, videoSentences, trainVid, valVid, testVid]
    video_ids, video_labels, video_speakers, video_sentences, train, valid, test = obj
    for name, vids in (("train", train), ("valid", valid), ("test", test)):
        assert sorted(vids) == sorted({d for d, s in zip(fs.dialogues, fs.splits) if s == name})
    for d, us in video_ids.items():
        rows = [i for i, x in enumerate(fs.dialogues) if x == d]
        assert us == [fs.ids[i] for i in rows]
        assert video_labels[d] == [int(fs.labels[i]) for i in rows]
        assert video_speakers[d] == [fs.speakers[i] for i in rows]
        assert video_sentences[d] == [""] * len(rows)
    lab = read_labels(label_file)  # without trust_pickle
    assert lab.utterance_ids() == sorted(lab.utterance_ids(), key=lambda u: (lab.splits[u.split("_")[0]], u))
    assert set(lab.utterance_ids()) == set(fs.ids)


def test_export_without_valid_split_has_six_entries(tmp_path):
    from synthetic import make_featureset

    from imer.store.community import export_community

    fs = make_featureset(n_dialogues=4, seed=3)
    export_community(fs, tmp_path / "out")
    obj = read_pickle(tmp_path / "out" / "imer_features_raw.pkl")
    assert len(obj) == 6 and set(obj[4]) | set(obj[5]) == set(fs.dialogues)


def test_export_missing_entries_have_no_npy_file(tmp_path):
    from imer.store.community import export_community

    fs = _exportable()
    export_community(fs, tmp_path / "out")
    for j, m in enumerate(MODALITY_NAMES):
        folder = tmp_path / "out" / f"synthetic-{m}_UTT"
        files = {p.name for p in folder.iterdir()}
        assert files == {f"{u}.npy" for i, u in enumerate(fs.ids) if fs.present[i, j]}
        for i, u in enumerate(fs.ids):
            if fs.present[i, j]:
                np.testing.assert_array_equal(np.load(folder / f"{u}.npy", allow_pickle=False), fs.feats[m][i])
    # exporting again after an entry went missing removes its stale file
    present = fs.present.copy()
    i = int(np.nonzero(present[:, 0])[0][0])
    present[i, 0] = False
    reasons = fs.reasons.copy()
    reasons[i, 0] = MissingReason.SILENT_AUDIO.value
    from imer.store import FeatureSet

    fs2 = FeatureSet(**{**{f: getattr(fs, f) for f in ("ids", "feats", "labels", "task", "speakers", "dialogues", "order", "splits", "specs", "details")}, "present": present, "reasons": reasons})
    export_community(fs2, tmp_path / "out")
    assert not (tmp_path / "out" / "synthetic-audio_UTT" / f"{fs.ids[i]}.npy").exists()


def test_export_import_with_a_modality_off(tmp_path):
    from fs_helpers import assert_same_featureset, fs_kwargs

    from imer.store import FeatureSet
    from imer.store.community import export_community, import_folder

    fs = _exportable(seed=4)
    kw = fs_kwargs(fs)
    kw["feats"]["video"] = np.zeros((len(fs), 1), np.float32)
    kw["present"][:, 2] = False
    kw["reasons"][:, 2] = MissingReason.DISABLED.value
    kw["details"][:, 2] = ""
    kw["specs"]["video"] = None
    fs = FeatureSet(**kw)
    summary = export_community(fs, tmp_path / "out")
    assert summary["folders"]["video"] is None
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.is_dir()) == ["synthetic-audio_UTT", "synthetic-text_UTT"]
    back = import_folder(tmp_path / "out" / "imer_features_raw.pkl", {}, None)
    assert_same_featureset(fs, back)


def test_export_refuses_a_dialogue_in_two_splits(tmp_path):
    from synthetic import make_featureset

    from imer.store.community import export_community

    fs = make_featureset(n_dialogues=4, seed=5)
    d0 = fs.dialogues[0]
    rows = [i for i, d in enumerate(fs.dialogues) if d == d0]
    splits = list(fs.splits)
    splits[rows[0]] = "test" if splits[rows[1]] == "train" else "train"
    with pytest.raises(BadInput, match=rf"dialogue {d0!r} has utterances in splits \['test', 'train'\]"):
        export_community(fs.with_splits(splits), tmp_path / "out")
    assert not (tmp_path / "out" / "imer_features_raw.pkl").exists()


def test_export_import_through_the_cli(tmp_path):
    import json

    from fs_helpers import assert_same_featureset
    from typer.testing import CliRunner

    from imer.cli.app import app

    runner = CliRunner()
    fs = _exportable(seed=6)
    store = save_store(fs, tmp_path / "store")
    r = runner.invoke(app, ["export-community", str(store), "--out", str(tmp_path / "gcnet"), "--json"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    summary = json.loads(r.stdout)
    assert summary["labels"] == str(tmp_path / "gcnet" / "imer_features_raw.pkl")
    assert summary["utterances"] == len(fs)
    r = runner.invoke(app, ["import-community", "--labels", str(tmp_path / "gcnet" / "imer_features_raw.pkl"), "--out", str(tmp_path / "store2"), "--json"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    s = json.loads(r.stdout)
    assert s["out"] == str(tmp_path / "store2") and s["utterances"] == len(fs)
    assert_same_featureset(load_store(store), load_store(tmp_path / "store2"))


def test_export_import_modality_with_spec_but_every_entry_missing(tmp_path):
    from fs_helpers import assert_same_featureset, fs_kwargs

    from imer.store import FeatureSet
    from imer.store.community import export_community, import_folder

    fs = _exportable(seed=7)
    kw = fs_kwargs(fs)
    kw["present"][:, 2] = False  # a video extractor ran, but found no face anywhere
    kw["reasons"][:, 2] = MissingReason.NO_FACE.value
    kw["details"][:, 2] = ""
    fs = FeatureSet(**kw)
    export_community(fs, tmp_path / "out")
    assert_same_featureset(fs, import_folder(tmp_path / "out" / "imer_features_raw.pkl", {}, None))


def test_import_of_an_export_with_another_folder_keeps_that_folders_spec(tmp_path):
    from imer.store.community import export_community, import_folder

    fs = _exportable(seed=8)
    export_community(fs, tmp_path / "out")
    other = tmp_path / "w2v"
    _write_all(other, fs.ids, 4, 0)
    back = import_folder(tmp_path / "out" / "imer_features_raw.pkl", {"audio": other}, None)
    assert back.specs["audio"] == FeatureSpec(name="community:w2v", dim=4, config={"folder": "w2v"})
    assert back.specs["text"] == fs.specs["text"]  # still from the export
