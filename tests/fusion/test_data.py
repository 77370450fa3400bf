"""From a FeatureSet to what a model sees (imer/fusion/data.py): Normalizer, TensorData, Batch.

FeatureSet validation, the on-disk store and the split rules are tested in tests/store/.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fs_helpers import fs_kwargs, with_missing
from synthetic import make_featureset

from imer.errors import BadInput
from imer.fusion.data import Normalizer, TensorData
from imer.store import FeatureSet
from imer.types import MODALITY_NAMES


@pytest.fixture
def fs() -> FeatureSet:
    return make_featureset(n_dialogues=6, length=(2, 5), seed=1)


# ---------------------------------------------------------------------- Normalizer
def test_normalizer_fits_present_rows_only(fs):
    kw = fs_kwargs(fs)
    kw["present"][:4, 0] = False
    kw["feats"]["audio"][:4] = 1e6  # garbage left by a producer in the missing slots
    a = FeatureSet(**kw)
    kw2 = fs_kwargs(fs)
    kw2["present"][:4, 0] = False
    kw2["feats"]["audio"][:4] = -123.0
    b = FeatureSet(**kw2)
    sa, sb = Normalizer.fit(a), Normalizer.fit(b)
    ref = fs.feats["audio"][4:]
    np.testing.assert_allclose(sa.mean["audio"], ref.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sa.std["audio"], ref.std(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(sa.mean["audio"], sb.mean["audio"])
    # the zeros of missing rows are not averaged in either
    with_zeros = a.feats["audio"].mean(0)
    assert not np.allclose(sa.mean["audio"], with_zeros)


def test_normalizer_apply_keeps_missing_zero(fs):
    src = with_missing(make_featureset(n_dialogues=8, seed=5, scale={"audio": 5000.0}), seed=2)
    std = Normalizer.fit(src)
    out = std.apply(src)
    for j, m in enumerate(MODALITY_NAMES):
        x = out.feats[m]
        assert x.dtype == np.float32
        assert (x[~out.present[:, j]] == 0).all()
        pres = x[out.present[:, j]]
        np.testing.assert_allclose(pres.mean(0), 0, atol=1e-4)
        np.testing.assert_allclose(pres.std(0), 1, atol=1e-3)
    # the input is untouched, and everything but the features is carried over
    assert np.abs(src.feats["audio"]).max() > 100
    assert out.ids == src.ids and out.specs == src.specs
    assert out.reasons.tolist() == src.reasons.tolist() and out.details.tolist() == src.details.tolist()


def test_normalizer_constant_dims_and_empty_modality(fs):
    kw = fs_kwargs(fs)
    kw["feats"]["text"][:, 0] = 5.0
    kw["present"][:, 2] = False  # no video at all
    src = FeatureSet(**kw)
    std = Normalizer.fit(src)
    assert std.std["text"][0] == 1.0 and std.mean["text"][0] == pytest.approx(5.0)
    assert (std.std["text"][1:] != 1.0).all()
    np.testing.assert_array_equal(std.mean["video"], np.zeros(fs.dims["video"], np.float32))
    np.testing.assert_array_equal(std.std["video"], np.ones(fs.dims["video"], np.float32))
    out = std.apply(src)
    assert (out.feats["text"][:, 0] == 0).all()
    assert np.isfinite(out.feats["text"]).all()
    assert (out.feats["video"] == 0).all()


def test_normalizer_tensors_round_trip(fs):
    std = Normalizer.fit(fs)
    back = Normalizer.from_tensors(std.tensors())
    for m in MODALITY_NAMES:
        np.testing.assert_array_equal(back.mean[m], std.mean[m])
        np.testing.assert_array_equal(back.std[m], std.std[m])
        np.testing.assert_allclose(back.transform(m, fs.feats[m]), std.apply(fs).feats[m], atol=1e-6)


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
