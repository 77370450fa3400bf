"""FeatureSet (imer/store/featureset.py): validation, views, splits and dialogue groups."""

from __future__ import annotations

import numpy as np
import pytest
from fs_helpers import fs_kwargs, with_missing
from synthetic import make_featureset

from imer.errors import BadInput
from imer.store import FeatureSet, FeatureSpec
from imer.types import MODALITY_NAMES


@pytest.fixture
def fs() -> FeatureSet:
    return make_featureset(n_dialogues=6, length=(2, 5), seed=1)


# ---------------------------------------------------------------------- validation
def test_valid_construction(fs):
    assert len(fs) == len(fs.ids)
    assert fs.dims == {"audio": 12, "text": 16, "video": 10}
    assert all(x.dtype == np.float32 for x in fs.feats.values())
    assert fs.details.shape == (len(fs), 3) and (fs.details == "").all()  # no details given: empty strings


def test_duplicate_ids(fs):
    kw = fs_kwargs(fs)
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
    kw = fs_kwargs(fs)
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
        pytest.param(lambda kw: kw.update(details=kw["details"][:-1]), id="details-rows"),
    ],
)
def test_wrong_shapes_not_yet_validated(fs, change):
    kw = fs_kwargs(fs)
    change(kw)
    with pytest.raises(BadInput):
        FeatureSet(**kw)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_features(fs, bad):
    kw = fs_kwargs(fs)
    kw["feats"]["text"][2, 3] = bad
    with pytest.raises(BadInput, match="NaN or inf"):
        FeatureSet(**kw)


@pytest.mark.parametrize("label", [4, 10, -2])
def test_label_out_of_range(fs, label):
    kw = fs_kwargs(fs)
    kw["labels"][0] = label
    with pytest.raises(BadInput, match="outside"):
        FeatureSet(**kw)


def test_unlabelled_is_allowed(fs):
    kw = fs_kwargs(fs)
    kw["labels"][0] = -1
    out = FeatureSet(**kw)
    assert not out.labelled()[0] and out.labelled()[1:].all()


def test_missing_slots_zeroed_at_construction(fs):
    kw = fs_kwargs(fs)
    kw["feats"]["audio"][:3] = 1e6
    kw["present"][:3, 0] = False
    out = FeatureSet(**kw)
    assert (out.feats["audio"][:3] == 0).all()
    np.testing.assert_array_equal(out.feats["audio"][3:], fs.feats["audio"][3:])


def test_feats_cast_to_float32(fs):
    kw = fs_kwargs(fs)
    kw["feats"] = {m: x.astype(np.float64) for m, x in kw["feats"].items()}
    out = FeatureSet(**kw)
    assert all(x.dtype == np.float32 for x in out.feats.values())


def test_construction_does_not_mutate_caller_arrays(fs):
    kw = fs_kwargs(fs)
    audio = kw["feats"]["audio"]
    before = audio.copy()
    kw["present"][:3, 0] = False
    FeatureSet(**kw)
    np.testing.assert_array_equal(audio, before)


# ---------------------------------------------------------------------- specs
def test_spec_dim_must_match_feature_width(fs):
    kw = fs_kwargs(fs)
    kw["specs"]["text"] = FeatureSpec(name="synthetic", dim=fs.dims["text"] + 1)
    with pytest.raises(BadInput, match=r"text: features are 16-d but their spec 'synthetic' says 17-d"):
        FeatureSet(**kw)


def test_specs_must_be_featurespec_records(fs):
    kw = fs_kwargs(fs)
    kw["specs"]["audio"] = {"name": "synthetic", "dim": 12}  # the old free-form dict
    with pytest.raises(BadInput, match="FeatureSpec"):
        FeatureSet(**kw)


def test_spec_none_means_modality_off(fs):
    kw = fs_kwargs(fs)
    kw["specs"]["video"] = None
    out = FeatureSet(**kw)
    assert out.specs["video"] is None and out.specs["audio"] == fs.specs["audio"]


# ---------------------------------------------------------------------- views
def test_subset_split_and_groups(fs):
    test = fs.split("test")
    assert set(test.splits) == {"test"}
    assert len(test) + len(fs.split("train")) == len(fs)
    groups = fs.dialogue_groups()
    assert sum(len(g) for g in groups) == len(fs)
    for g in groups:
        assert len({fs.dialogues[i] for i in g}) == 1
        assert list(fs.order[g]) == sorted(fs.order[g])


def test_subset_carries_details_and_specs():
    src = with_missing(make_featureset(n_dialogues=4, seed=2), seed=3, details=True)
    rows = np.array([5, 0, 3])
    sub = src.subset(rows)
    assert sub.ids == [src.ids[i] for i in rows]
    assert sub.details.tolist() == src.details[rows].tolist()
    assert sub.reasons.tolist() == src.reasons[rows].tolist()
    assert sub.specs == src.specs


def test_dialogue_groups_sorted_by_order(fs):
    # reverse the rows: groups must still come out in utterance order
    rev = fs.subset(np.arange(len(fs))[::-1])
    for g in rev.dialogue_groups():
        assert (np.diff(rev.order[g]) > 0).all()


def test_with_splits_renames_rows_without_touching_the_original(fs):
    names = ["valid" if i % 3 == 0 else s for i, s in enumerate(fs.splits)]
    before = list(fs.splits)
    out = fs.with_splits(names)
    assert out.splits == names and fs.splits == before
    assert out.ids == fs.ids and out.specs == fs.specs
    for m in MODALITY_NAMES:
        np.testing.assert_array_equal(out.feats[m], fs.feats[m])
    out.feats["audio"] = np.zeros_like(out.feats["audio"])  # rebinding in the copy leaves fs alone
    assert fs.feats["audio"].any()
