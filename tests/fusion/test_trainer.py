"""The shared trainer: stages, selection, restore-best, determinism, learning beats chance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from imer.errors import BadInput
from imer.fusion.base import build_method
from imer.fusion.data import Standardizer, TensorData, make_validation_split
from imer.fusion.trainer import TrainConfig, evaluate, fit, prepare_splits, resolve_device, seed_everything
from synthetic import make_featureset


def _data(regression: bool = False, seed: int = 0, **kw):
    fs = make_featureset(n_dialogues=48, noise=1.5, regression=regression, seed=seed, **kw)
    return Standardizer.fit(fs.split("train")).apply(fs)


def _model(name, fs, **opts):
    return build_method(name, fs.dims, fs.task, {"hidden": 32, "dropout": 0.1, **opts}, {"max_dialogue_len": 10})


def test_concat_learns_well_above_chance():
    fs = _data()
    m = _model("concat", fs)
    res = fit(m, fs, TrainConfig(epochs=25, lr=3e-3, patience=None, batch_size=64, missing_rate=0.2))
    test = TensorData(fs.split("test"))
    wa = evaluate(m, test, None, "utterance", 256)["WA"]
    assert wa > 0.6, f"4 classes, chance 0.25: got {wa:.3f}"
    assert res.epochs_run == 25 and res.selection_split == "valid"


def test_regression_trains_and_reports_sentiment_metrics():
    fs = _data(regression=True)
    m = _model("concat", fs)
    fit(m, fs, TrainConfig(epochs=20, lr=3e-3, patience=None, batch_size=64))
    metrics = evaluate(m, TensorData(fs.split("test")), None, "utterance", 256)
    assert {"Acc2", "F1", "MAE", "Corr", "Acc7"} <= set(metrics)
    assert metrics["Acc2"] > 0.75 and metrics["Corr"] > 0.5


def test_two_stage_schedule_and_restore_best():
    fs = _data()
    m = _model("comp", fs)
    res = fit(m, fs, TrainConfig(epochs=10, lr=3e-3, patience=None, batch_size=8))
    stages = [h["stage"] for h in res.history]
    assert stages == ["unimodal"] * 5 + ["fusion"] * 5
    # The model left behind is the fusion stage's best epoch, not its last.
    _, val, _ = prepare_splits(fs, TrainConfig())
    from imer.fusion.missing import MaskSchedule, MissingProtocol

    mask = MaskSchedule(MissingProtocol(missing_rate=0.0), 0, val.present).eval_mask(len(val))
    again = evaluate(m, TensorData(val), mask, "dialogue", 8)
    assert again["WA"] == pytest.approx(res.best["fusion"]["metrics"]["WA"])
    assert res.best["fusion"]["metrics"]["WA"] == max(h["valid"]["WA"] for h in res.history if h["stage"] == "fusion")


def test_same_seed_same_run():
    fs = _data()
    runs = []
    for _ in range(2):
        seed_everything(7)  # weight init, as 'imer train --seed' does before building the model
        m = _model("comp", fs)
        runs.append(fit(m, fs, TrainConfig(epochs=4, lr=3e-3, patience=None, batch_size=8, missing_rate=0.5, seed=7)))
    assert [h["loss"] for h in runs[0].history] == [h["loss"] for h in runs[1].history]


def test_early_stopping_stops_a_stage():
    fs = _data()
    m = _model("concat", fs)
    res = fit(m, fs, TrainConfig(epochs=50, lr=0.0, patience=3))  # lr 0: nothing improves after epoch 0
    assert res.epochs_run == 4


def test_selection_on_test_is_explicit():
    fs = _data()
    train, sel, name = prepare_splits(fs, TrainConfig(selection="test"))
    assert name == "test" and set(sel.splits) == {"test"}
    train, sel, name = prepare_splits(fs, TrainConfig())
    assert name == "valid" and set(sel.splits) == {"valid"} and "test" not in train.splits
    assert not set(train.dialogues) & set(sel.dialogues)


def test_non_finite_loss_is_a_clear_error():
    fs = _data()
    fs.feats["audio"][fs.present[:, 0]] = 3e38  # absurd scale: activations overflow to inf
    m = _model("concat", fs)
    with pytest.raises(BadInput, match="lower --lr|extreme values"):
        fit(m, fs, TrainConfig(epochs=2, lr=1.0))


def test_device_errors():
    if not torch.cuda.is_available():
        with pytest.raises(BadInput, match="CUDA is not available"):
            resolve_device("cuda")
    assert resolve_device("cpu").type == "cpu"


def test_bad_train_config():
    with pytest.raises(BadInput):
        TrainConfig(selection="best").validate()
    with pytest.raises(BadInput):
        TrainConfig(missing_rate=1.2).validate()
    with pytest.raises(BadInput):
        TrainConfig(condition="xyz").validate()
    with pytest.raises(BadInput):
        fit(_model("concat", _data()), _data().split("test"), TrainConfig(epochs=1))


def test_training_masks_are_redrawn_and_honour_real_gaps():
    fs = _data()
    fs.present[::5, 1] = False  # real missing text
    seen = []
    m = _model("concat", fs)
    orig = m.forward

    def spy(batch):
        seen.append(batch.present.clone())
        return orig(batch)

    m.forward = spy
    fit(m, fs, TrainConfig(epochs=2, lr=1e-3, missing_rate=0.5, batch_size=10_000, batch_mode="utterance", patience=None))
    train_batches = [p for p in seen if p.shape[0] > 100]
    assert len(train_batches) >= 2 and not torch.equal(train_batches[0], train_batches[1])
    train, _, _ = prepare_splits(fs, TrainConfig())
    really_missing = ~torch.from_numpy(train.present)
    # Whatever the protocol drew, really-missing streams stay missing (rows are shuffled: compare counts).
    for p in train_batches:
        assert int((p[:, 0, 1]).sum()) <= int((~really_missing[:, 1]).sum())


@pytest.mark.parametrize("method", ["concat", "comp"])
def test_mixed_precision_path_runs_on_cpu(monkeypatch, method):
    """The GPU's bf16 autocast path, exercised with CPU autocast (CI has no GPU)."""
    import imer.fusion.trainer as trainer_mod

    monkeypatch.setattr(trainer_mod, "_autocast", lambda device, enabled: (torch.autocast("cpu", dtype=torch.bfloat16), torch.bfloat16))
    fs = _data()
    m = _model(method, fs)
    res = fit(m, fs, TrainConfig(epochs=4, lr=3e-3, patience=None, batch_size=8, missing_rate=0.3))
    assert all(np.isfinite(h["loss"]["total"]) for h in res.history)
    assert all(p.dtype == torch.float32 for p in m.parameters())  # weights stay fp32 under autocast


def test_epochs_fewer_than_stages_is_a_clear_error():
    fs = _data()
    with pytest.raises(BadInput, match="2 stages"):
        fit(_model("comp", fs), fs, TrainConfig(epochs=1))


def test_normaliser_never_sees_validation_rows():
    from imer.fusion.experiment import run_experiment

    fs = _data()
    res = run_experiment(fs, "concat", TrainConfig(epochs=1, seed=3), {"hidden": 8}, evaluate=False)
    held = make_validation_split(fs, 0.1, 3)
    train_only = Standardizer.fit(held.split("train"))
    np.testing.assert_allclose(res.standardizer.mean["audio"], train_only.mean["audio"], rtol=1e-6)
    with_valid = Standardizer.fit(fs.split("train"))
    assert not np.allclose(res.standardizer.mean["audio"], with_valid.mean["audio"])
