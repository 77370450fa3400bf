"""The shared trainer: stages, selection, restore-best, determinism, learning beats chance.

``fit`` takes ready (split, normalised) sets and neither splits nor seeds; ``run_experiment``
owns both. ``_fit`` below does what the old ``fit(method, fs, cfg)`` did (seed, split, train),
so the learning tests keep their numbers.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from synthetic import make_featureset

from imer.devices import resolve_device
from imer.errors import BadInput
from imer.fusion.base import build_method
from imer.fusion.data import Normalizer, TensorData
from imer.fusion.evaluation import evaluate
from imer.fusion.experiment import prepare_splits, run_experiment
from imer.fusion.trainer import TrainConfig, TrainResult, fit, seed_everything
from imer.progress import ProgressEvent
from imer.store.splits import make_validation_split


def _data(regression: bool = False, seed: int = 0, **kw):
    fs = make_featureset(n_dialogues=48, noise=1.5, regression=regression, seed=seed, **kw)
    return Normalizer.fit(fs.split("train")).apply(fs)


def _model(name, fs, **opts):
    return build_method(name, fs.dims, fs.task, {"hidden": 32, "dropout": 0.1, **opts}, {"max_dialogue_len": 10})


def _fit(method, fs, cfg: TrainConfig, progress=None) -> TrainResult:
    """The old ``fit(method, fs, cfg)``: seed globally, split off the selection set, train."""
    cfg.validate()
    seed_everything(cfg.seed)
    ready, name = prepare_splits(fs, cfg)
    return fit(method, ready.split("train"), ready.split(name), cfg, name, progress=progress)


def test_concat_learns_well_above_chance():
    fs = _data()
    m = _model("concat", fs)
    res = _fit(m, fs, TrainConfig(epochs=25, lr=3e-3, patience=None, batch_size=64, missing_rate=0.2))
    test = TensorData(fs.split("test"))
    wa = evaluate(m, test, None, "utterance", 256)["WA"]
    assert wa > 0.6, f"4 classes, chance 0.25: got {wa:.3f}"
    assert res.epochs_run == 25 and res.selection_split == "valid" and res.metric == "WA"


def test_regression_trains_and_reports_sentiment_metrics():
    fs = _data(regression=True)
    m = _model("concat", fs)
    res = _fit(m, fs, TrainConfig(epochs=20, lr=3e-3, patience=None, batch_size=64))
    assert res.metric == "Acc2"
    metrics = evaluate(m, TensorData(fs.split("test")), None, "utterance", 256)
    assert {"Acc2", "F1", "MAE", "Corr", "Acc7"} <= set(metrics)
    assert metrics["Acc2"] > 0.75 and metrics["Corr"] > 0.5


def test_two_stage_schedule_and_restore_best():
    fs = _data()
    m = _model("comp", fs)
    res = _fit(m, fs, TrainConfig(epochs=10, lr=3e-3, patience=None, batch_size=8))
    stages = [h["stage"] for h in res.history]
    assert stages == ["unimodal"] * 5 + ["fusion"] * 5
    # The model left behind is the fusion stage's best epoch, not its last.
    ready, name = prepare_splits(fs, TrainConfig())
    assert name == "valid"
    val = ready.split(name)
    from imer.fusion.missing import MaskSchedule

    # Selection ran under the run's protocol (the mixed default), fixed per seed.
    mask = MaskSchedule(TrainConfig().protocol(), 0, val.present).eval_mask(len(val))
    again = evaluate(m, TensorData(val), mask, "dialogue", 8)
    assert again["WA"] == pytest.approx(res.best["fusion"]["metrics"]["WA"])
    assert res.best["fusion"]["metrics"]["WA"] == max(h["valid"]["WA"] for h in res.history if h["stage"] == "fusion")


def test_same_seed_same_run():
    fs = _data()
    runs = []
    for _ in range(2):
        seed_everything(7)  # weight init, as 'imer train --seed' does before building the model
        m = _model("comp", fs)
        runs.append(_fit(m, fs, TrainConfig(epochs=4, lr=3e-3, patience=None, batch_size=8, missing_rate=0.5, seed=7)))
    assert [h["loss"] for h in runs[0].history] == [h["loss"] for h in runs[1].history]


def test_early_stopping_stops_a_stage():
    fs = _data()
    m = _model("concat", fs)
    res = _fit(m, fs, TrainConfig(epochs=50, lr=0.0, patience=3))  # lr 0: nothing improves after epoch 0
    assert res.epochs_run == 4


def test_selection_on_test_is_explicit():
    fs = _data()
    ready, name = prepare_splits(fs, TrainConfig(selection="test"))
    sel = ready.split(name)
    assert name == "test" and set(sel.splits) == {"test"} and len(sel) == fs.splits.count("test")
    assert ready.splits == fs.splits  # selecting on test holds nothing out
    ready, name = prepare_splits(fs, TrainConfig())
    train, sel = ready.split("train"), ready.split(name)
    assert name == "valid" and set(sel.splits) == {"valid"} and "test" not in train.splits
    assert not set(train.dialogues) & set(sel.dialogues)
    assert ready.ids == fs.ids and "valid" not in fs.splits
    assert [s for s in ready.splits if s == "test"] == [s for s in fs.splits if s == "test"]


def test_non_finite_loss_is_a_clear_error():
    fs = _data()
    fs.feats["audio"][fs.present[:, 0]] = 3e38  # absurd scale: activations overflow to inf
    m = _model("concat", fs)
    with pytest.raises(BadInput, match="lower --lr|extreme values"):
        _fit(m, fs, TrainConfig(epochs=2, lr=1.0))


def test_device_errors():
    if not torch.cuda.is_available():
        with pytest.raises(BadInput, match="CUDA is not available"):
            resolve_device("cuda")
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(BadInput, match="auto"):
        resolve_device("gpu0")


def test_bad_train_config():
    with pytest.raises(BadInput):
        TrainConfig(selection="best").validate()
    with pytest.raises(BadInput):
        TrainConfig(missing_rate=1.2).validate()
    with pytest.raises(BadInput):
        TrainConfig(condition="xyz").validate()
    # no training split: refused where splits are made (prepare_splits / run_experiment) ...
    with pytest.raises(BadInput, match="no 'train' split"):
        prepare_splits(_data().split("test"), TrainConfig(epochs=1))
    with pytest.raises(BadInput, match="no 'train' split"):
        run_experiment(_data().split("test"), "concat", TrainConfig(epochs=1), {"hidden": 8}, evaluate=False)
    # ... and fit refuses an empty training set or a selection set without labels
    fs = _data()
    with pytest.raises(BadInput, match="no utterance to train on"):
        fit(_model("concat", fs), fs.split("nothing"), fs.split("test"), TrainConfig(epochs=1))
    unlabelled = fs.split("test")
    unlabelled.labels[:] = -1
    with pytest.raises(BadInput, match="no labelled utterances"):
        fit(_model("concat", fs), fs.split("train"), unlabelled, TrainConfig(epochs=1), "held")


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
    _fit(m, fs, TrainConfig(epochs=2, lr=1e-3, missing_rate=0.5, batch_size=10_000, batch_mode="utterance", patience=None))
    train_batches = [p for p in seen if p.shape[0] > 100]
    assert len(train_batches) >= 2 and not torch.equal(train_batches[0], train_batches[1])
    ready, _ = prepare_splits(fs, TrainConfig())
    train = ready.split("train")
    really_missing = ~torch.from_numpy(train.present)
    # Whatever the protocol drew, really-missing streams stay missing (rows are shuffled: compare counts).
    for p in train_batches:
        assert int((p[:, 0, 1]).sum()) <= int((~really_missing[:, 1]).sum())


@pytest.mark.parametrize("method", ["concat", "comp"])
def test_mixed_precision_path_runs_on_cpu(monkeypatch, method):
    """The GPU's bf16 autocast path, exercised with CPU autocast (CI has no GPU)."""
    import imer.fusion.evaluation as evaluation_mod
    import imer.fusion.trainer as trainer_mod

    bf16 = lambda device, enabled: (torch.autocast("cpu", dtype=torch.bfloat16), torch.bfloat16)  # noqa: E731
    monkeypatch.setattr(trainer_mod, "autocast", bf16)  # training steps
    monkeypatch.setattr(evaluation_mod, "autocast", bf16)  # per-epoch selection
    fs = _data()
    m = _model(method, fs)
    res = _fit(m, fs, TrainConfig(epochs=4, lr=3e-3, patience=None, batch_size=8, missing_rate=0.3))
    assert all(np.isfinite(h["loss"]["total"]) for h in res.history)
    assert all(p.dtype == torch.float32 for p in m.parameters())  # weights stay fp32 under autocast


def test_epochs_fewer_than_stages_is_a_clear_error():
    fs = _data()
    with pytest.raises(BadInput, match="2 stages"):
        _fit(_model("comp", fs), fs, TrainConfig(epochs=1))


def test_normaliser_never_sees_validation_rows():
    fs = _data()
    res = run_experiment(fs, "concat", TrainConfig(epochs=1, seed=3), {"hidden": 8}, evaluate=False)
    held = make_validation_split(fs, 0.1, 3)
    train_only = Normalizer.fit(held.split("train"))
    np.testing.assert_allclose(res.normalizer.mean["audio"], train_only.mean["audio"], rtol=1e-6)
    with_valid = Normalizer.fit(fs.split("train"))
    assert not np.allclose(res.normalizer.mean["audio"], with_valid.mean["audio"])


# ---------------------------------------------------------------------- fit neither splits nor seeds
def _weights(m) -> dict:
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def test_fit_trains_on_exactly_the_rows_given_and_does_not_seed():
    import copy

    fs = _data()
    train, held = fs.split("train"), fs.split("test")  # no 'valid' anywhere: fit must not make one
    assert "valid" not in fs.splits
    base = _model("concat", fs)  # dropout 0.1: the global torch RNG shapes training
    cfg = TrainConfig(epochs=3, lr=3e-3, patience=None, batch_size=16, batch_mode="utterance", seed=0)

    # one run, watching what the model sees
    m = copy.deepcopy(base)
    orig = m.forward
    seen_train, seen_sel = [], []

    def spy(batch):
        (seen_train if m.training else seen_sel).append(batch.index[batch.valid])
        return orig(batch)

    m.forward = spy
    torch.manual_seed(11)
    res = fit(m, train, held, cfg, sel_name="held")
    assert res.selection_split == "held" and res.metric == "WA"
    assert all("held" in h and "valid" not in h for h in res.history)
    assert set(res.best["fusion"]["metrics"]) >= {"WA", "UA", "F1"}
    assert res.best["fusion"]["metrics"]["n"] == int(held.labelled().sum())  # selection on all of 'held'
    rows = torch.cat(seen_train).tolist()
    assert len(rows) == 3 * len(train)  # 3 epochs, every training row once per epoch, nothing held out
    assert sorted(rows) == sorted(list(range(len(train))) * 3)
    sel_rows = torch.cat(seen_sel).tolist()
    assert sorted(sel_rows) == sorted(list(range(len(held))) * 3)  # one selection pass per epoch
    assert train.splits == ["train"] * len(train) and held.splits == ["test"] * len(held)  # inputs untouched

    # the global seed set beforehand decides the run: fit does not reseed
    def run(seed: int) -> dict:
        model = copy.deepcopy(base)
        torch.manual_seed(seed)
        fit(model, train, held, cfg, sel_name="held")
        return _weights(model)

    a, b, c = run(5), run(5), run(6)
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_run_experiment_progress_events_name_the_metric():
    fs = make_featureset(n_dialogues=16, noise=1.0, seed=2)
    events: list = []
    res = run_experiment(
        fs, "concat", TrainConfig(epochs=3, lr=3e-3, patience=None, seed=1), {"hidden": 8},
        rates=(0.0, 0.5), conditions=("a", "tv"), mask_seeds=(0, 1), progress=events.append,
    )
    assert events and all(isinstance(e, ProgressEvent) for e in events)
    training = [e for e in events if e.stage.startswith("stage ")]
    evaluating = [e for e in events if e.stage == "evaluating"]
    assert len(training) + len(evaluating) == len(events)
    assert {e.stage for e in training} == {"stage fusion"}
    epochs = [e for e in training if e.done > 0]
    assert [(e.done, e.total) for e in epochs] == [(1, 3), (2, 3), (3, 3)]
    for e in epochs:
        assert set(e.info) == {"loss", "split", "metric", "value", "best"}
        assert e.info["metric"] == "WA" and e.info["split"] == "valid"
        assert np.isfinite(e.info["loss"]) and 0.0 <= e.info["value"] <= e.info["best"] <= 1.0
    assert epochs[-1].info["best"] == pytest.approx(res.train.best["fusion"]["metrics"]["WA"])
    # evaluation: 2 rates x 2 seeds + 2 conditions (one seed each), counted up to the total
    assert [e.done for e in evaluating] == list(range(1, 7))
    assert all(e.total == 6 for e in evaluating)
    assert evaluating[-1].done == evaluating[-1].total
    assert events.index(evaluating[0]) > events.index(epochs[-1])  # evaluation comes after training
    assert len(res.rows) == 4


def test_regression_progress_names_acc2():
    fs = _data(regression=True)
    events: list = []
    res = _fit(_model("concat", fs), fs, TrainConfig(epochs=2, lr=3e-3, patience=None, batch_size=64), progress=events.append)
    epochs = [e for e in events if e.done > 0]
    assert res.metric == "Acc2" and len(epochs) == 2
    assert all(isinstance(e, ProgressEvent) and e.info["metric"] == "Acc2" for e in epochs)


def test_default_dialogue_batch_holds_at_least_256_utterances():
    """32 dialogues on long-dialogue data; on one-utterance dialogues (RAVDESS-like) 256 of them."""
    from imer.fusion.evaluation import default_batch_size

    assert default_batch_size("utterance") == 256
    assert default_batch_size("dialogue", 49.0) == 32  # IEMOCAP-like: unchanged
    assert default_batch_size("dialogue", 1.0) == 256
    assert default_batch_size("dialogue", 4.0) == 64
    assert default_batch_size("dialogue", 0.0) == 32  # no data: the plain default


def test_trainer_records_the_batch_it_used():
    fs = make_featureset(n_dialogues=60, length=(1, 1), seed=0)
    fs = Normalizer.fit(fs.split("train")).apply(fs)
    m = _model("concat", fs)
    res = _fit(m, fs, TrainConfig(epochs=1, lr=3e-3, patience=None, batch_mode="dialogue"))
    assert (res.batch_mode, res.batch_size) == ("dialogue", 256)
    res = _fit(_model("concat", fs), fs, TrainConfig(epochs=1, lr=3e-3, patience=None, batch_mode="dialogue", batch_size=8))
    assert res.batch_size == 8
