"""The feature store on disk (imer/store/format.py): round trips, atomic writes, damage, versions."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from fs_helpers import assert_same_featureset, fs_kwargs, with_missing
from synthetic import make_featureset

from imer.errors import BadInput
from imer.store import STORE_VERSION, FeatureSet, FeatureSpec, is_store, load_store, save_store
from imer.types import MODALITY_NAMES, TaskKind, TaskSpec


@pytest.fixture
def fs() -> FeatureSet:
    return make_featureset(n_dialogues=6, length=(2, 5), seed=1)


# ---------------------------------------------------------------------- round trips
@pytest.mark.parametrize("regression", [False, True], ids=["classification", "regression"])
def test_store_round_trip(tmp_path, regression):
    src = with_missing(make_featureset(n_dialogues=5, regression=regression, seed=3), seed=4, details=True)
    kw = fs_kwargs(src)
    kw["ids"][0] = "Ses01F_impro01_F000 ünïcødé"
    kw["splits"] = ["valid" if d == kw["dialogues"][-1] else s for d, s in zip(kw["dialogues"], kw["splits"])]
    src = FeatureSet(**kw)
    assert (src.details != "").any()
    out = save_store(src, tmp_path / "store")
    assert is_store(out)
    back = load_store(out)
    assert_same_featureset(src, back)
    assert back.task.kind == (TaskKind.REGRESSION if regression else TaskKind.CLASSIFICATION)
    assert (~back.labelled()).sum() == (~src.labelled()).sum() > 0


def test_store_has_no_pickle_and_safetensors_loads(tmp_path, fs):
    from safetensors.numpy import load_file

    out = save_store(with_missing(fs), tmp_path / "s")
    names = sorted(os.listdir(out))
    assert names == ["features.safetensors", "store.json", "utterances.jsonl"]
    assert not list(out.rglob("*.pkl")) and not list(out.rglob("*.pickle"))
    tensors = load_file(str(out / "features.safetensors"))
    assert set(tensors) == set(MODALITY_NAMES)
    for m in MODALITY_NAMES:
        assert tensors[m].dtype == np.float32
        assert tensors[m].shape == (len(fs), fs.dims[m])
    header = json.loads((out / "store.json").read_text())
    assert header["format"] == "imer-feature-store" and header["num_utterances"] == len(fs)
    rows = [json.loads(line) for line in (out / "utterances.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == fs.ids


def test_store_no_tmp_leftovers(tmp_path, fs):
    out = save_store(fs, tmp_path / "s")
    save_store(fs.subset(np.arange(5)), out)  # overwrite in place
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]
    assert len(load_store(out)) == 5


def test_store_failed_write_leaves_old_store_and_no_tmp(tmp_path, fs, monkeypatch):
    import imer.fsutil as fsutil_mod

    out = save_store(fs, tmp_path / "s")

    def boom(*a):
        raise OSError("disk full")

    monkeypatch.setattr(fsutil_mod.os, "fsync", boom)  # fails while writing the new files
    with pytest.raises(OSError):
        save_store(fs.subset(np.arange(3)), out)
    monkeypatch.undo()
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]
    assert_same_featureset(fs, load_store(out))


def test_store_interrupted_commit_is_never_half_valid(tmp_path, fs, monkeypatch):
    import imer.fsutil as fsutil_mod

    out = save_store(fs, tmp_path / "s")
    real = fsutil_mod.os.replace
    calls = []

    def die_after_first(src, dst):
        calls.append(dst)
        if len(calls) > 1:
            raise OSError("killed")
        real(src, dst)

    monkeypatch.setattr(fsutil_mod.os, "replace", die_after_first)
    with pytest.raises(OSError):
        save_store(fs.subset(np.arange(3)), out)
    monkeypatch.undo()
    # New features are in place but the rest is not: the folder must not load as a store.
    assert not is_store(out)
    with pytest.raises(BadInput, match="store.json"):
        load_store(out)
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]


def test_save_store_onto_a_file_is_refused(tmp_path, fs):
    (tmp_path / "taken").write_text("not a folder")
    with pytest.raises(BadInput, match="not a folder"):
        save_store(fs, tmp_path / "taken")


# ---------------------------------------------------------------------- damaged stores
def test_load_store_without_header(tmp_path):
    (tmp_path / "features.safetensors").write_bytes(b"")
    with pytest.raises(BadInput, match="store.json") as e:
        load_store(tmp_path)
    assert "imer extract" in str(e.value)
    assert not is_store(tmp_path)


def test_load_store_wrong_format_or_version(tmp_path, fs):
    out = save_store(fs, tmp_path / "s")
    header = json.loads((out / "store.json").read_text())
    (out / "store.json").write_text(json.dumps({**header, "version": 99}))
    with pytest.raises(BadInput, match="newer"):
        load_store(out)
    (out / "store.json").write_text(json.dumps({**header, "format": "something-else"}))
    with pytest.raises(BadInput, match="format"):
        load_store(out)


def test_load_store_incomplete(tmp_path, fs):
    out = save_store(fs, tmp_path / "s")
    lines = (out / "utterances.jsonl").read_text().splitlines()
    (out / "utterances.jsonl").write_text("\n".join(lines[:-2]) + "\n")
    with pytest.raises(BadInput, match="incomplete"):
        load_store(out)


# ---------------------------------------------------------------------- format versions
def _write_v1_store(path, fs: FeatureSet, extractors: dict[str, dict]) -> None:
    """The three files exactly as imer 0.1 wrote them (store.json version 1, key "extractor")."""
    from safetensors.numpy import save_file

    path.mkdir(parents=True)
    rows = []
    for i, uid in enumerate(fs.ids):
        label = int(fs.labels[i]) if fs.labels[i] >= 0 else None
        rows.append(json.dumps({
            "id": uid,
            "label": label,
            "speaker": fs.speakers[i],
            "dialogue": fs.dialogues[i],
            "order": int(fs.order[i]),
            "split": fs.splits[i],
            "present": {m: bool(fs.present[i, j]) for j, m in enumerate(MODALITY_NAMES)},
            "reason": {m: str(fs.reasons[i, j]) for j, m in enumerate(MODALITY_NAMES)},
            "detail": {m: str(fs.details[i, j]) for j, m in enumerate(MODALITY_NAMES) if fs.details[i, j]},
        }, ensure_ascii=False))
    header = {
        "format": "imer-feature-store",
        "version": 1,
        "num_utterances": len(fs),
        "task": {"kind": fs.task.kind.value, "label_names": list(fs.task.label_names)},
        "modalities": {m: {"dim": fs.dims[m], "extractor": extractors[m]} for m in MODALITY_NAMES},
    }
    save_file({m: fs.feats[m] for m in MODALITY_NAMES}, str(path / "features.safetensors"))
    (path / "utterances.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    (path / "store.json").write_text(json.dumps(header, indent=2))


def test_version_1_store_still_loads(tmp_path):
    src = with_missing(make_featureset(n_dialogues=4, seed=6), seed=2, details=True)
    kw = fs_kwargs(src)
    kw["present"][:, 2] = False  # video off: every row missing, reason disabled
    kw["reasons"][:, 2] = "disabled"
    kw["details"][:, 2] = ""
    kw["feats"]["video"] = np.zeros((len(src), 1), np.float32)
    kw["specs"] = {}
    src = FeatureSet(**kw)
    extractors = {
        "audio": {
            "name": "egemaps",
            "config": {"feature_set": "eGeMAPSv02", "level": "functionals"},
            "dim": src.dims["audio"],
            "decode": {"sample_rate": 16000},
        },
        "text": {
            "name": "minilm",
            "config": {"model": "all-MiniLM-L6-v2"},
            "dim": src.dims["text"],
            "decode": {},
            "standin": True,  # free-form extra written by 0.1 stand-in extractors
        },
        "video": {"name": "none"},
    }
    _write_v1_store(tmp_path / "v1", src, extractors)
    back = load_store(tmp_path / "v1")
    assert back.specs == {
        "audio": FeatureSpec(
            name="egemaps", dim=src.dims["audio"],
            config={"feature_set": "eGeMAPSv02", "level": "functionals"}, decode={"sample_rate": 16000},
        ),
        "text": FeatureSpec(
            name="minilm", dim=src.dims["text"], config={"model": "all-MiniLM-L6-v2", "standin": True}, decode={},
        ),
        "video": None,
    }
    assert back.specs["audio"].kind == "utterance" and back.specs["text"].kind == "utterance"
    src.specs = dict(back.specs)  # the only field the old header spelled differently
    assert_same_featureset(src, back)
    assert (back.details[:, :2] != "").any()


def test_version_1_header_without_spec_dim_takes_the_modality_dim(tmp_path):
    src = make_featureset(n_dialogues=3, seed=7)
    extractors = {m: {"name": "synthetic", "config": {"seed": 7}} for m in MODALITY_NAMES}  # no "dim" in the spec
    _write_v1_store(tmp_path / "v1", src, extractors)
    back = load_store(tmp_path / "v1")
    assert back.specs == {m: FeatureSpec(name="synthetic", dim=src.dims[m], config={"seed": 7}) for m in MODALITY_NAMES}


def test_saved_store_is_version_2_and_round_trips_specs(tmp_path):
    src = make_featureset(n_dialogues=4, seed=8)
    kw = fs_kwargs(src)
    kw["specs"] = {
        "audio": FeatureSpec(
            name="wav2vec2", dim=src.dims["audio"], config={"layers": (-1, -2), "pool": {"kind": "mean", "eps": 1.5e-6}},
            decode={"sample_rate": 16000, "mono": True},
        ),
        "text": FeatureSpec(name="community:deberta-large-4-UTT", dim=src.dims["text"], config={"folder": "deberta-large-4-UTT"}),
        "video": FeatureSpec(name="manet", dim=src.dims["video"], config={"fps": 5}, decode={"fps": 5}, kind="frame"),
    }
    src = FeatureSet(**kw)
    out = save_store(src, tmp_path / "s")
    header = json.loads((out / "store.json").read_text())
    assert header["version"] == STORE_VERSION == 2
    for m in MODALITY_NAMES:
        entry = header["modalities"][m]
        assert set(entry) == {"dim", "feature"}  # no version-1 "extractor" key
        assert entry["dim"] == src.dims[m]
        assert entry["feature"] == src.specs[m].to_dict()
    assert header["modalities"]["audio"]["feature"]["config"]["layers"] == [-1, -2]  # JSON-normalised
    back = load_store(out)
    assert back.specs == src.specs
    assert back.specs["video"].kind == "frame"
    assert back.specs["text"].imported and not back.specs["audio"].imported
    for m in MODALITY_NAMES:
        assert back.specs[m].same_features(src.specs[m])
        assert back.specs[m].to_dict() == src.specs[m].to_dict()
    assert_same_featureset(src, back)


def test_version_2_modality_off_is_null(tmp_path):
    src = make_featureset(n_dialogues=3, seed=9)
    kw = fs_kwargs(src)
    kw["specs"]["video"] = None
    out = save_store(FeatureSet(**kw), tmp_path / "s")
    header = json.loads((out / "store.json").read_text())
    assert header["modalities"]["video"] == {"dim": src.dims["video"], "feature": None}
    assert load_store(out).specs["video"] is None


def test_newer_store_version_is_refused_with_upgrade_hint(tmp_path, fs):
    out = save_store(fs, tmp_path / "s")
    header = json.loads((out / "store.json").read_text())
    (out / "store.json").write_text(json.dumps({**header, "version": STORE_VERSION + 1}))
    with pytest.raises(BadInput, match=r"newer than this imer reads \(2\); upgrade imer"):
        load_store(out)
    assert is_store(out)  # it is a store, only one this imer cannot read


def test_regression_task_survives_version_1(tmp_path):
    src = make_featureset(n_dialogues=3, regression=True, seed=10)
    kw = fs_kwargs(src)
    kw["labels"][0] = np.nan
    src = FeatureSet(**kw)
    from safetensors.numpy import save_file

    path = tmp_path / "v1"
    path.mkdir()
    rows = [
        json.dumps({
            "id": u, "label": None if np.isnan(src.labels[i]) else float(src.labels[i]), "speaker": src.speakers[i],
            "dialogue": src.dialogues[i], "order": int(src.order[i]), "split": src.splits[i],
            "present": {m: True for m in MODALITY_NAMES}, "reason": {m: "present" for m in MODALITY_NAMES},
        })
        for i, u in enumerate(src.ids)
    ]
    header = {
        "format": "imer-feature-store", "version": 1, "num_utterances": len(src),
        "task": TaskSpec(TaskKind.REGRESSION, ("sentiment",)).to_dict(),
        "modalities": {m: {"dim": src.dims[m], "extractor": {"name": "synthetic", "config": {"seed": 10}, "dim": src.dims[m]}} for m in MODALITY_NAMES},
    }
    save_file({m: src.feats[m] for m in MODALITY_NAMES}, str(path / "features.safetensors"))
    (path / "utterances.jsonl").write_text("\n".join(rows) + "\n")
    (path / "store.json").write_text(json.dumps(header))
    assert_same_featureset(src, load_store(path))
