"""FeatureSet validation, the on-disk feature store, standardisation, splits and batching."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from synthetic import make_featureset

from imer.errors import BadInput
from imer.fusion.data import (
    FeatureSet,
    Standardizer,
    TensorData,
    is_store,
    load_store,
    make_validation_split,
    save_store,
)
from imer.types import MODALITY_NAMES, MissingReason, TaskKind


def _kwargs(fs: FeatureSet) -> dict:
    """Independent copies of every constructor argument of ``fs``."""
    return dict(
        ids=list(fs.ids),
        feats={m: x.copy() for m, x in fs.feats.items()},
        present=fs.present.copy(),
        reasons=fs.reasons.copy(),
        labels=fs.labels.copy(),
        task=fs.task,
        speakers=list(fs.speakers),
        dialogues=list(fs.dialogues),
        order=fs.order.copy(),
        splits=list(fs.splits),
        extractors={m: dict(v) for m, v in fs.extractors.items()},
    )


def with_missing(fs: FeatureSet, seed: int = 0, rate: float = 0.3) -> FeatureSet:
    """``fs`` with random entries marked missing (with varied reasons) and a few unlabelled rows."""
    rng = np.random.default_rng(seed)
    kw = _kwargs(fs)
    absent = rng.random((len(fs), 3)) < rate
    absent[absent.all(1), 1] = False
    kw["present"] = ~absent
    reasons = np.full((len(fs), 3), MissingReason.PRESENT.value, dtype=object)
    choices = [MissingReason.SILENT_AUDIO.value, MissingReason.EMPTY_TRANSCRIPT.value, MissingReason.NO_FACE.value]
    for j in range(3):
        reasons[absent[:, j], j] = choices[j]
    kw["reasons"] = reasons
    labels = kw["labels"]
    if fs.task.kind == TaskKind.CLASSIFICATION:
        labels[::7] = -1
    else:
        labels[::7] = np.nan
    return FeatureSet(**kw)


@pytest.fixture
def fs() -> FeatureSet:
    return make_featureset(n_dialogues=6, length=(2, 5), seed=1)


# ---------------------------------------------------------------------- validation
def test_valid_construction(fs):
    assert len(fs) == len(fs.ids)
    assert fs.dims == {"audio": 12, "text": 16, "video": 10}
    assert all(x.dtype == np.float32 for x in fs.feats.values())


def test_duplicate_ids(fs):
    kw = _kwargs(fs)
    kw["ids"][1] = kw["ids"][0]
    with pytest.raises(BadInput, match="more than once"):
        FeatureSet(**kw)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda kw: kw["feats"].update(audio=kw["feats"]["audio"][:-1]), id="feat-rows"),
        pytest.param(lambda kw: kw["feats"].update(text=kw["feats"]["text"][:, 0]), id="feat-1d"),
        pytest.param(lambda kw: kw["feats"].update(video=kw["feats"]["video"][None]), id="feat-3d"),
        pytest.param(lambda kw: kw["feats"].pop("video"), id="feat-missing-modality"),
        pytest.param(lambda kw: kw["feats"].update(depth=kw["feats"]["video"]), id="feat-extra-modality"),
        pytest.param(lambda kw: kw.update(present=kw["present"][:, :2]), id="present-cols"),
        pytest.param(lambda kw: kw.update(present=kw["present"][:-1]), id="present-rows"),
        pytest.param(lambda kw: kw.update(speakers=kw["speakers"][:-1]), id="speakers"),
        pytest.param(lambda kw: kw.update(dialogues=kw["dialogues"] + ["x"]), id="dialogues"),
        pytest.param(lambda kw: kw.update(splits=kw["splits"][:-1]), id="splits"),
    ],
)
def test_wrong_shapes(fs, change):
    kw = _kwargs(fs)
    change(kw)
    with pytest.raises(BadInput):
        FeatureSet(**kw)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda kw: kw.update(labels=kw["labels"][:-1]), id="labels-short"),
        pytest.param(lambda kw: kw.update(labels=kw["labels"][:, None]), id="labels-2d"),
        pytest.param(lambda kw: kw.update(order=kw["order"][:-1]), id="order-short"),
        pytest.param(lambda kw: kw.update(reasons=kw["reasons"][:, :2]), id="reasons-cols"),
    ],
)
def test_wrong_shapes_not_yet_validated(fs, change):
    kw = _kwargs(fs)
    change(kw)
    with pytest.raises(BadInput):
        FeatureSet(**kw)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_features(fs, bad):
    kw = _kwargs(fs)
    kw["feats"]["text"][2, 3] = bad
    with pytest.raises(BadInput, match="NaN or inf"):
        FeatureSet(**kw)


@pytest.mark.parametrize("label", [4, 10, -2])
def test_label_out_of_range(fs, label):
    kw = _kwargs(fs)
    kw["labels"][0] = label
    with pytest.raises(BadInput, match="outside"):
        FeatureSet(**kw)


def test_unlabelled_is_allowed(fs):
    kw = _kwargs(fs)
    kw["labels"][0] = -1
    out = FeatureSet(**kw)
    assert not out.labelled()[0] and out.labelled()[1:].all()


def test_missing_slots_zeroed_at_construction(fs):
    kw = _kwargs(fs)
    kw["feats"]["audio"][:3] = 1e6
    kw["present"][:3, 0] = False
    out = FeatureSet(**kw)
    assert (out.feats["audio"][:3] == 0).all()
    np.testing.assert_array_equal(out.feats["audio"][3:], fs.feats["audio"][3:])


def test_feats_cast_to_float32(fs):
    kw = _kwargs(fs)
    kw["feats"] = {m: x.astype(np.float64) for m, x in kw["feats"].items()}
    out = FeatureSet(**kw)
    assert all(x.dtype == np.float32 for x in out.feats.values())


def test_construction_does_not_mutate_caller_arrays(fs):
    kw = _kwargs(fs)
    audio = kw["feats"]["audio"]
    before = audio.copy()
    kw["present"][:3, 0] = False
    FeatureSet(**kw)
    np.testing.assert_array_equal(audio, before)


def test_subset_split_and_groups(fs):
    test = fs.split("test")
    assert set(test.splits) == {"test"}
    assert len(test) + len(fs.split("train")) == len(fs)
    groups = fs.dialogue_groups()
    assert sum(len(g) for g in groups) == len(fs)
    for g in groups:
        assert len({fs.dialogues[i] for i in g}) == 1
        assert list(fs.order[g]) == sorted(fs.order[g])


def test_dialogue_groups_sorted_by_order(fs):
    # reverse the rows: groups must still come out in utterance order
    rev = fs.subset(np.arange(len(fs))[::-1])
    for g in rev.dialogue_groups():
        assert (np.diff(rev.order[g]) > 0).all()


# ---------------------------------------------------------------------- feature store
def _assert_same(a: FeatureSet, b: FeatureSet) -> None:
    assert a.ids == b.ids
    assert a.task == b.task
    for m in MODALITY_NAMES:
        assert b.feats[m].dtype == np.float32
        np.testing.assert_array_equal(a.feats[m], b.feats[m])
    np.testing.assert_array_equal(a.present, b.present)
    assert a.reasons.tolist() == b.reasons.tolist()
    np.testing.assert_array_equal(a.labels, b.labels)  # nan == nan here
    assert a.labels.dtype == b.labels.dtype
    assert a.splits == b.splits
    assert a.dialogues == b.dialogues
    assert a.speakers == b.speakers
    np.testing.assert_array_equal(a.order, b.order)
    assert a.extractors == b.extractors


@pytest.mark.parametrize("regression", [False, True], ids=["classification", "regression"])
def test_store_round_trip(tmp_path, regression):
    src = with_missing(make_featureset(n_dialogues=5, regression=regression, seed=3), seed=4)
    kw = _kwargs(src)
    kw["ids"][0] = "Ses01F_impro01_F000 ünïcødé"
    kw["splits"] = ["valid" if d == kw["dialogues"][-1] else s for d, s in zip(kw["dialogues"], kw["splits"])]
    src = FeatureSet(**kw)
    out = save_store(src, tmp_path / "store")
    assert is_store(out)
    back = load_store(out)
    _assert_same(src, back)
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
    _assert_same(fs, load_store(out))


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


# ---------------------------------------------------------------------- Standardizer
def test_standardizer_fits_present_rows_only(fs):
    kw = _kwargs(fs)
    kw["present"][:4, 0] = False
    kw["feats"]["audio"][:4] = 1e6  # garbage left by a producer in the missing slots
    a = FeatureSet(**kw)
    kw2 = _kwargs(fs)
    kw2["present"][:4, 0] = False
    kw2["feats"]["audio"][:4] = -123.0
    b = FeatureSet(**kw2)
    sa, sb = Standardizer.fit(a), Standardizer.fit(b)
    ref = fs.feats["audio"][4:]
    np.testing.assert_allclose(sa.mean["audio"], ref.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sa.std["audio"], ref.std(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(sa.mean["audio"], sb.mean["audio"])
    # the zeros of missing rows are not averaged in either
    with_zeros = a.feats["audio"].mean(0)
    assert not np.allclose(sa.mean["audio"], with_zeros)


def test_standardizer_apply_keeps_missing_zero(fs):
    src = with_missing(make_featureset(n_dialogues=8, seed=5, scale={"audio": 5000.0}), seed=2)
    std = Standardizer.fit(src)
    out = std.apply(src)
    for j, m in enumerate(MODALITY_NAMES):
        x = out.feats[m]
        assert x.dtype == np.float32
        assert (x[~out.present[:, j]] == 0).all()
        pres = x[out.present[:, j]]
        np.testing.assert_allclose(pres.mean(0), 0, atol=1e-4)
        np.testing.assert_allclose(pres.std(0), 1, atol=1e-3)
    # the input is untouched
    assert np.abs(src.feats["audio"]).max() > 100


def test_standardizer_constant_dims_and_empty_modality(fs):
    kw = _kwargs(fs)
    kw["feats"]["text"][:, 0] = 5.0
    kw["present"][:, 2] = False  # no video at all
    src = FeatureSet(**kw)
    std = Standardizer.fit(src)
    assert std.std["text"][0] == 1.0 and std.mean["text"][0] == pytest.approx(5.0)
    assert (std.std["text"][1:] != 1.0).all()
    np.testing.assert_array_equal(std.mean["video"], np.zeros(fs.dims["video"], np.float32))
    np.testing.assert_array_equal(std.std["video"], np.ones(fs.dims["video"], np.float32))
    out = std.apply(src)
    assert (out.feats["text"][:, 0] == 0).all()
    assert np.isfinite(out.feats["text"]).all()
    assert (out.feats["video"] == 0).all()


def test_standardizer_tensors_round_trip(fs):
    std = Standardizer.fit(fs)
    back = Standardizer.from_tensors(std.tensors())
    for m in MODALITY_NAMES:
        np.testing.assert_array_equal(back.mean[m], std.mean[m])
        np.testing.assert_array_equal(back.std[m], std.std[m])
        np.testing.assert_allclose(back.transform(m, fs.feats[m]), std.apply(fs).feats[m], atol=1e-6)


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
    kw = _kwargs(fs)
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


# ---------------------------------------------------------------------- TensorData
@pytest.fixture
def tdata() -> TensorData:
    return TensorData(with_missing(make_featureset(n_dialogues=9, length=(2, 7), seed=4), seed=1))


def test_dialogue_batches_shape_and_padding(tdata):
    fs = tdata.fs
    lengths = {d: fs.dialogues.count(d) for d in set(fs.dialogues)}
    batches = list(tdata.iterate("dialogue", batch_size=4))
    assert len(batches) == tdata.num_batches("dialogue", 4) == 3
    for b in batches:
        B, L = b.index.shape
        assert b.valid.shape == (B, L) and b.y.shape == (B, L) and b.present.shape == (B, L, 3)
        for m in MODALITY_NAMES:
            assert b.feats[m].shape == (B, L, fs.dims[m])
        pad = ~b.valid
        assert (b.index[pad] == -1).all() and (b.index[b.valid] >= 0).all()
        assert not b.present[pad].any()
        assert (b.y[pad] == -1).all()
        for m in MODALITY_NAMES:
            assert (b.feats[m][pad] == 0).all()
        # each row is one dialogue, in utterance order, padded at the end; L = longest in batch
        widths = b.valid.sum(1)
        assert int(widths.max()) == L
        for r in range(B):
            idx = b.index[r, : widths[r]].numpy()
            assert (b.valid[r, : widths[r]]).all() and not b.valid[r, widths[r] :].any()
            assert len({fs.dialogues[i] for i in idx}) == 1
            assert widths[r] == lengths[fs.dialogues[idx[0]]]
            assert list(fs.order[idx]) == list(range(len(idx)))
            np.testing.assert_array_equal(b.feats["text"][r, : widths[r]].numpy(), fs.feats["text"][idx])
            np.testing.assert_array_equal(b.y[r, : widths[r]].numpy(), fs.labels[idx])


def test_utterance_batches(tdata):
    batches = list(tdata.iterate("utterance", batch_size=16))
    assert len(batches) == tdata.num_batches("utterance", 16)
    for b in batches:
        B = b.index.shape[0]
        assert b.index.shape == (B, 1) and b.valid.all()
        for m in MODALITY_NAMES:
            assert b.feats[m].shape == (B, 1, tdata.fs.dims[m])


@pytest.mark.parametrize("mode", ["dialogue", "utterance"])
@pytest.mark.parametrize("shuffle", [False, True])
def test_every_utterance_once_per_epoch(tdata, mode, shuffle):
    g = torch.Generator().manual_seed(0)
    seen = []
    for b in tdata.iterate(mode, batch_size=3, shuffle=shuffle, generator=g):
        seen.extend(b.index[b.valid].tolist())
    assert sorted(seen) == list(range(tdata.n))


def test_shuffle_reproducible_with_generator(tdata):
    def order(seed):
        g = torch.Generator().manual_seed(seed)
        return [b.index[:, 0].tolist() for b in tdata.iterate("utterance", 8, shuffle=True, generator=g)]

    assert order(1) == order(1)
    assert order(1) != order(2)


@pytest.mark.parametrize("mode", ["dialogue", "utterance"])
def test_protocol_mask_is_anded(tdata, mode):
    rng = np.random.default_rng(0)
    pm = torch.from_numpy(rng.random((tdata.n, 3)) < 0.5)
    data_present = torch.from_numpy(tdata.fs.present)
    for b in tdata.iterate(mode, batch_size=4, protocol_mask=pm):
        v = b.valid
        rows = b.index[v]
        assert torch.equal(b.present[v], data_present[rows] & pm[rows])
        assert not b.present[~v].any()
    # a really-missing stream stays missing even under an all-True protocol mask
    for b in tdata.iterate(mode, batch_size=4, protocol_mask=torch.ones(tdata.n, 3, dtype=torch.bool)):
        assert torch.equal(b.present[b.valid], data_present[b.index[b.valid]])


def test_batch_labelled_mask_regression():
    fs = with_missing(make_featureset(n_dialogues=4, regression=True, seed=2))
    td = TensorData(fs)
    for b in td.iterate("dialogue", batch_size=2):
        assert b.y.dtype == torch.float32
        lab = b.labelled
        assert not lab[~b.valid].any()
        expect = ~np.isnan(fs.labels[b.index[b.valid].numpy()])
        np.testing.assert_array_equal(lab[b.valid].numpy(), expect)


def test_bad_batch_mode(tdata):
    with pytest.raises(BadInput):
        next(tdata.iterate("sentence", 4))


def test_bucketed_dialogue_batches_cover_every_utterance_once_with_less_padding():
    import torch

    from imer.fusion.data import TensorData

    fs = make_featureset(n_dialogues=40, length=(2, 30), seed=4)
    data = TensorData(fs)
    g = torch.Generator().manual_seed(0)
    plain = list(data.iterate("dialogue", 8, shuffle=True, generator=g))
    g = torch.Generator().manual_seed(0)
    bucketed = list(data.iterate("dialogue", 8, shuffle=True, generator=g, bucket=True))
    for batches in (plain, bucketed):
        seen = torch.cat([b.index[b.valid] for b in batches]).sort().values
        assert seen.tolist() == list(range(len(fs)))
    cells = lambda bs: sum(b.valid.numel() for b in bs)  # noqa: E731
    assert cells(bucketed) < cells(plain)
