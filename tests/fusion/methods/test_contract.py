"""Contract every registered fusion method must keep (parametrised over the registry)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from imer.config import from_dict, parse_set, to_dict
from imer.fusion.base import METHODS, build_method
from imer.fusion.bundle import BundleSpec, bundle_spec, load_bundle, read_bundle_spec, save_bundle
from imer.fusion.data import Batch, Normalizer
from imer.store import FeatureSpec
from imer.types import MODALITY_NAMES, TaskKind, TaskSpec

DIMS = {"audio": 5, "text": 7, "video": 3}


def _options(name: str) -> dict:
    """The method's own small variant (its config's ``tiny()``), as plain options."""
    return dataclasses.asdict(METHODS.get(name).config_class.tiny())


def _identity_normalizer() -> Normalizer:
    return Normalizer({k: np.zeros(d, np.float32) for k, d in DIMS.items()}, {k: np.ones(d, np.float32) for k, d in DIMS.items()})


def _batch(b: int, l: int, task: TaskSpec, seed: int = 0, missing: float = 0.3) -> Batch:
    g = torch.Generator().manual_seed(seed)
    present = torch.rand(b, l, 3, generator=g) > missing
    valid = torch.ones(b, l, dtype=torch.bool)
    valid[-1, l // 2 :] = False  # ragged dialogue: padding at the end of the last one
    y = torch.randint(0, 4, (b, l), generator=g) if task.kind == TaskKind.CLASSIFICATION else torch.randn(b, l, generator=g)
    return Batch(
        feats={m: torch.randn(b, l, d, generator=g) for m, d in DIMS.items()},
        present=present,
        valid=valid,
        y=y,
        index=torch.arange(b * l).view(b, l),
    )


CLS = TaskSpec(TaskKind.CLASSIFICATION, ("a", "b", "c", "d"))
REG = TaskSpec(TaskKind.REGRESSION, ("sentiment",))


def test_registry_names_equal_file_stems():
    folder = Path(__file__).resolve().parents[3] / "imer" / "fusion" / "methods"
    stems = sorted(p.stem for p in folder.glob("*.py") if p.stem != "__init__")
    assert METHODS.names() == stems
    for name in METHODS.names():
        assert METHODS.get(name).description, f"{name} needs a one-line description for 'imer methods'"


@pytest.mark.parametrize("name", METHODS.names())
def test_config_class_has_tiny(name):
    cls = METHODS.get(name).config_class
    assert dataclasses.is_dataclass(cls) and callable(getattr(cls, "tiny", None)), f"{name}: config needs a tiny() classmethod"
    tiny = cls.tiny()
    assert type(tiny) is cls
    assert tiny != cls(), f"{name}: tiny() should be smaller than the defaults"
    assert from_dict(cls, to_dict(tiny)) == tiny
    m = build_method(name, DIMS, CLS, _options(name), {"max_dialogue_len": 6})
    assert isinstance(m.config, cls)


@pytest.mark.parametrize("name", METHODS.names())
@pytest.mark.parametrize("task", [CLS, REG], ids=["cls", "reg"])
@pytest.mark.parametrize("length", [1, 6], ids=["utterance", "dialogue"])
def test_output_shapes_every_stage(name, task, length):
    m = build_method(name, DIMS, task, _options(name), {"max_dialogue_len": 6})
    batch = _batch(3, length, task)
    for stage in m.stages:
        m.begin_stage(stage)
        m.train()
        out = m(batch)
        assert out.logits.shape == (3, length, task.num_outputs)
        losses = m.loss(out, batch)
        assert "total" in losses and torch.isfinite(losses["total"])
        losses["total"].backward()


@pytest.mark.parametrize("name", METHODS.names())
def test_missing_slot_values_are_ignored(name):
    torch.manual_seed(0)
    m = build_method(name, DIMS, CLS, _options(name), {"max_dialogue_len": 6}).eval()
    batch = _batch(2, 6, CLS)
    ref = m(batch).logits
    garbage = {k: torch.where(batch.present[..., j : j + 1], v, torch.full_like(v, 1e4)) for j, (k, v) in enumerate(batch.feats.items())}
    out = m(dataclasses.replace(batch, feats=garbage)).logits
    torch.testing.assert_close(out[batch.valid], ref[batch.valid])


@pytest.mark.parametrize("name", METHODS.names())
def test_batch_equals_items_alone(name):
    cls = METHODS.get(name)
    if cls.batch_dependent:
        pytest.skip(f"{name} declares itself batch-dependent")
    torch.manual_seed(0)
    m = build_method(name, DIMS, CLS, _options(name), {"max_dialogue_len": 6}).eval()
    batch = _batch(3, 6, CLS)
    together = m(batch).logits
    for i in range(3):
        n = int(batch.valid[i].sum())
        one = Batch(
            feats={k: v[i : i + 1, :n] for k, v in batch.feats.items()},
            present=batch.present[i : i + 1, :n],
            valid=batch.valid[i : i + 1, :n],
            y=batch.y[i : i + 1, :n],
            index=batch.index[i : i + 1, :n],
        )
        torch.testing.assert_close(m(one).logits[0], together[i, :n], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", METHODS.names())
def test_present_mask_changes_output(name):
    torch.manual_seed(0)
    m = build_method(name, DIMS, CLS, _options(name), {"max_dialogue_len": 6}).eval()
    batch = _batch(2, 6, CLS, missing=0.0)
    fewer = dataclasses.replace(batch, present=batch.present.clone().index_fill_(2, torch.tensor([0]), False))
    assert not torch.allclose(m(batch).logits, m(fewer).logits)


@pytest.mark.parametrize("name", METHODS.names())
def test_bundle_round_trip(name, tmp_path):
    torch.manual_seed(0)
    m = build_method(name, DIMS, CLS, _options(name), {"max_dialogue_len": 6}).eval()
    std = _identity_normalizer()
    features = {k: FeatureSpec(name="synthetic", dim=d, config={"d": d}) for k, d in DIMS.items()}
    save_bundle(tmp_path, m, std, bundle_spec(m, features))
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob("*.pt*"))
    bundle = load_bundle(tmp_path)
    loaded, std2, spec = bundle.method, bundle.normalizer, bundle.spec
    batch = _batch(2, 6, CLS)
    torch.testing.assert_close(loaded(batch).logits, m(batch).logits)
    assert spec.method == name and spec.features == features and spec.label_names == list(CLS.label_names)
    assert spec.task == CLS and spec.dims == DIMS and spec.method_config == dataclasses.asdict(m.config)
    assert isinstance(spec, BundleSpec) and read_bundle_spec(tmp_path) == spec
    for k in MODALITY_NAMES:
        np.testing.assert_array_equal(std2.std[k], std.std[k])


@pytest.mark.parametrize("name", METHODS.names())
def test_nan_in_missing_slots_is_ignored(name):
    torch.manual_seed(0)
    m = build_method(name, DIMS, CLS, _options(name), {"max_dialogue_len": 6}).eval()
    batch = _batch(2, 6, CLS)
    nan = {k: torch.where(batch.present[..., j : j + 1], v, torch.full_like(v, float("nan"))) for j, (k, v) in enumerate(batch.feats.items())}
    out = m(dataclasses.replace(batch, feats=nan)).logits
    assert torch.isfinite(out[batch.valid]).all()
    torch.testing.assert_close(out[batch.valid], m(batch).logits[batch.valid])


def test_stage_one_bundle_predicts_as_stage_one(tmp_path):
    torch.manual_seed(0)
    m = build_method("comp", DIMS, CLS, _options("comp"), {"max_dialogue_len": 6})
    m.begin_stage("unimodal")
    m.eval()
    save_bundle(tmp_path, m, _identity_normalizer(), bundle_spec(m, {}))
    bundle = load_bundle(tmp_path)
    loaded = bundle.method
    assert bundle.spec.stage == "unimodal" and loaded.stage == "unimodal"
    assert bundle.spec.features == {k: None for k in MODALITY_NAMES}
    batch = _batch(2, 6, CLS)
    torch.testing.assert_close(loaded(batch).logits, m(batch).logits)


def test_method_options_are_type_checked():
    from imer.errors import BadInput

    opts = parse_set(["use_gm=no", "hidden=16", "comp.momentum=0.5"], scope="comp")
    assert opts == {"use_gm": "no", "hidden": 16, "momentum": 0.5}  # bool coercion happens in from_dict
    m = build_method("comp", DIMS, CLS, {**opts, "heads": 2}, {"max_dialogue_len": 6})
    assert m.config.use_gm is False and m.config.hidden == 16 and m.config.momentum == 0.5
    with pytest.raises(BadInput, match="momentum"):
        build_method("comp", DIMS, CLS, parse_set(["momentum=0.3x"], scope="comp"), {"max_dialogue_len": 6})
    with pytest.raises(BadInput, match="hidden"):
        build_method("comp", DIMS, CLS, {"hidden": 16.5})
    with pytest.raises(BadInput, match="use_kp"):
        build_method("comp", DIMS, CLS, {"use_kp": "maybe"})
    with pytest.raises(BadInput, match="is for 'concat', but this run is 'comp'"):
        parse_set(["concat.hidden=64"], scope="comp")
    with pytest.raises(BadInput, match=r"unknown option\(s\) \['momentun'\]; valid: .*'momentum'"):
        build_method("comp", DIMS, CLS, {"momentun": 0.3})
