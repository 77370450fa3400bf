"""MCULoRA (imer/fusion/methods/mculora.py): adapters, routing, stages, L_ort, DPFT.

Tiny dimensions (hidden 8, 1-2 layers) so the module runs in seconds on CPU.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

_TESTS = Path(__file__).resolve().parents[2]
if str(_TESTS) not in sys.path:
    sys.path.insert(0, str(_TESTS))

from synthetic import make_featureset  # noqa: E402

from imer.errors import BadInput  # noqa: E402
from imer.fusion.base import build_method  # noqa: E402
from imer.fusion.data import Batch  # noqa: E402
from imer.fusion.experiment import run_experiment  # noqa: E402
from imer.fusion.methods.mculora import (  # noqa: E402
    COMBINATIONS,
    LoraLinear,
    Mculora,
    dpft_update,
    project_box_simplex,
    sample_combinations,
)
from imer.fusion.trainer import TrainConfig  # noqa: E402
from imer.types import MODALITY_NAMES, TaskKind, TaskSpec  # noqa: E402

DIMS = {"audio": 5, "text": 6, "video": 4}
CLF = TaskSpec(TaskKind.CLASSIFICATION, ("c0", "c1", "c2", "c3"))
TINY = {"hidden": 8, "depth": 2, "heads": 2, "rank": 2, "dropout": 0.0, "lora_dropout": 0.0}


def _model(seed: int = 0, **opts) -> Mculora:
    torch.manual_seed(seed)
    return build_method("mculora", DIMS, CLF, {**TINY, **opts}).eval()


def _batch(present: torch.Tensor, seed: int = 0) -> Batch:
    b, l = present.shape[:2]
    g = torch.Generator().manual_seed(seed)
    return Batch(
        feats={m: torch.randn(b, l, d, generator=g) for m, d in DIMS.items()},
        present=present,
        valid=torch.ones(b, l, dtype=torch.bool),
        y=torch.randint(0, 4, (b, l), generator=g),
        index=torch.arange(b * l).view(b, l),
    )


def _every_combination() -> torch.Tensor:
    """[2, 7, 3]: each dialogue holds all 7 non-empty combinations, in another order."""
    bits = torch.tensor([[c in combo for c in "atv"] for combo in COMBINATIONS])
    return torch.stack([bits, bits.flip(0)])


def _randomise_adapters(m: Mculora, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m._adapter_params():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


# ---------------------------------------------------------------------- adapters
def test_every_private_adapter_trains_after_one_step():
    """Unlike the official latest revision (dead private adapters), every private A and B of
    every LoRA linear gets a gradient once B has moved off zero."""
    m = _model()
    m.train()
    m.begin_stage("adapt")
    batch = _batch(_every_combination())
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        opt.zero_grad()
        m.loss(m(batch), batch)["total"].backward()
        opt.step()
    lora = [mod for mod in m.modules() if isinstance(mod, LoraLinear)]
    assert len(lora) == 3 + 3 * 2 * 2 + 2  # projections, 2 FFN linears x 2 layers x 3 experts, fusion, head
    for mod in lora:
        for name in ("a_prt", "b_prt"):
            g = getattr(mod, name).grad
            assert g is not None and (g.flatten(1).abs().sum(1) > 0).all(), (mod, name)


def test_lora_linear_routes_each_position_to_its_own_adapter():
    torch.manual_seed(0)
    lin = LoraLinear(5, 3, rank=2, combos=7, dropout=0.0, scale=1.5)
    with torch.no_grad():
        lin.b_prt.normal_()
        lin.b_com.normal_()
    x = torch.randn(2, 4, 5)
    idx = torch.tensor([[0, 3, 6, 2], [1, 1, 5, 4]])
    out = lin(x, torch.nn.functional.one_hot(idx, 7).float())
    for b in range(2):
        for l in range(4):
            i = idx[b, l]
            want = lin.base(x[b, l]) + 1.5 * lin.b_prt[i] @ (lin.a_prt[i] @ x[b, l])
            torch.testing.assert_close(out[b, l], want)
    torch.testing.assert_close(lin(x, "common"), lin.base(x) + 1.5 * (x @ lin.a_com.T) @ lin.b_com.T)
    torch.testing.assert_close(lin(x, None), lin.base(x))


def test_per_utterance_routing_equals_per_batch_routing_on_a_homogeneous_batch():
    m = _model()
    _randomise_adapters(m)
    m.begin_stage("adapt")
    batch = _batch(torch.tensor([True, True, False]).expand(3, 4, 3).clone())  # every utterance {a, t}
    per_utterance = m(batch).logits
    original = m._route

    def per_batch(present):  # the code: the first utterance's combination for the whole batch
        return original(present)[0, 0].expand(*present.shape[:2], -1)

    m._route = per_batch
    try:
        torch.testing.assert_close(m(batch).logits, per_utterance)
        mixed = _batch(_every_combination())
        by_batch = m(mixed).logits
    finally:
        m._route = original
    assert not torch.allclose(m(mixed).logits, by_batch)  # a mixed batch: routing per utterance matters


def test_nothing_present_uses_the_all_modality_adapter():
    m = _model()
    route = m._route(torch.tensor([[[False, False, False], [True, True, True], [False, True, False]]]))
    assert route.argmax(-1).tolist() == [[COMBINATIONS.index("atv"), COMBINATIONS.index("atv"), COMBINATIONS.index("t")]]


# ---------------------------------------------------------------------- stages and ablations
def test_without_mcla_is_the_base_model():
    full, base = _model(), _model(use_mcla=False)
    assert base.stages == ("pretrain",) and full.stages == ("pretrain", "adapt")
    base.load_state_dict(full.state_dict())
    _randomise_adapters(full)
    batch = _batch(_every_combination())
    full.begin_stage("pretrain")
    torch.testing.assert_close(base(batch).logits, full(batch).logits)
    # Entering "adapt" with untrained adapters (B = 0) keeps the pre-trained model's predictions.
    fresh = _model()
    fresh.begin_stage("pretrain")
    before = fresh(batch).logits
    fresh.begin_stage("adapt")
    torch.testing.assert_close(fresh(batch).logits, before)


def test_pretrain_trains_the_base_and_adapt_only_the_adapters():
    m = _model()
    m.train()
    batch = _batch(_every_combination())
    adapters = {id(p) for p in m._adapter_params()} | {id(p) for p in m.mix_mlp.parameters()}
    m.begin_stage("pretrain")
    m.loss(m(batch), batch)["total"].backward()
    for p in m.parameters():
        assert (p.grad is None) == (id(p) in adapters)
    m.zero_grad(set_to_none=True)
    m.begin_stage("adapt")
    m.loss(m(batch), batch)["total"].backward()
    for p in m.parameters():
        assert (p.grad is not None) == (id(p) in adapters)
    joint = _model(joint=True)
    assert joint.stages == ("adapt",)
    joint.train()
    joint.begin_stage("adapt")
    assert all(p.requires_grad for p in joint.parameters())


def test_sum_mix_is_the_codes_plain_sum():
    m = _model(mix="sum")
    _randomise_adapters(m)
    m.begin_stage("adapt")
    batch = _batch(_every_combination())
    x = m.masked_inputs(batch)
    keep = {k: batch.present[..., j] for j, k in enumerate(MODALITY_NAMES)}
    y_com = m._network(x, keep, "common")[0]
    y_prt = m._network(x, keep, m._route(batch.present))[0]
    torch.testing.assert_close(m(batch).logits, y_com + y_prt)


def test_orthogonality_term_square_and_paper():
    batch = _batch(_every_combination())
    terms = {}
    for form in ("square", "paper"):
        m = _model(ort=form)
        _randomise_adapters(m)
        m.train()
        m.begin_stage("adapt")
        out = m(batch)
        losses = {k: float(v.detach()) for k, v in m.loss(out, batch).items()}
        terms[form] = losses["ort"]
        assert losses["total"] == pytest.approx(losses["task"] + 0.001 * losses["ort"], rel=1e-6)
    assert terms["square"] != terms["paper"]
    m0 = _model(ort_weight=0.0)
    m0.train()
    m0.begin_stage("adapt")
    assert "ort" not in m0.loss(m0(batch), batch)


def test_bad_settings_are_clear_errors():
    with pytest.raises(BadInput, match="q_min"):
        _model(q_min=0.2)
    with pytest.raises(BadInput, match="rank"):
        _model(rank=0)


# ---------------------------------------------------------------------- DPFT
def test_dpft_probabilities_stay_in_bounds_and_sum_to_one():
    rng = np.random.default_rng(0)
    q = np.full(7, 1 / 7)
    lo, hi = 0.5 / 7, 2 / 7
    for _ in range(300):
        q = dpft_update(q, rng.normal(size=7) * 3, q_base=1 / 7, lam=0.5, q_min=lo, q_max=hi)
        assert q.sum() == pytest.approx(1.0, abs=1e-12)
        assert (q >= lo - 1e-12).all() and (q <= hi + 1e-12).all()
    assert not np.allclose(q, 1 / 7)


def test_dpft_favours_the_combinations_that_progress_least():
    q = dpft_update(np.full(7, 1 / 7), np.array([0.0, 5, 5, 5, -5, 1, 2]), q_base=1 / 7, lam=0.05, q_min=0.01, q_max=0.5)
    order = np.argsort([0.0, 5, 5, 5, -5, 1, 2], kind="stable")
    assert q[order[0]] > 1 / 7 and q[order[-1]] < 1 / 7
    assert q[order[3]] == pytest.approx(1 / 7, abs=2e-3)  # the middle rank only moves by the projection


def test_projection_is_exact_where_clipping_and_renormalising_would_leave_the_box():
    v = np.array([0.9, 0.05, 0.05])
    out = project_box_simplex(v, 0.1, 0.5)
    assert out.sum() == pytest.approx(1.0) and out.max() <= 0.5 + 1e-12 and out.min() >= 0.1 - 1e-12
    with pytest.raises(BadInput, match="sum to 1"):
        project_box_simplex(v, 0.4, 0.5)


def test_sampling_draws_only_non_empty_available_combinations_with_q():
    rng = np.random.default_rng(0)
    available = np.ones((20000, 3), bool)
    available[:5000, 2] = False  # no video
    available[5000:5100] = False  # nothing at all
    q = np.array([0.3, 0.1, 0.1, 0.1, 0.1, 0.1, 0.2])
    mask = sample_combinations(q, available, rng)
    assert not (mask & ~available).any()
    assert not mask[5000:5100].any()
    assert mask[:5000].any(1).all() and mask[5100:].any(1).all()
    full = mask[5100:]
    freq = np.array([(full == np.array([c in combo for c in "atv"])).all(1).mean() for combo in COMBINATIONS])
    np.testing.assert_allclose(freq, q, atol=0.015)


@pytest.mark.parametrize("selection", ["valid", "test"])
def test_dpft_reads_validation_data_only(selection):
    """A test split of 1e30s (NaN and inf once through the network; the store refuses NaN
    itself) would poison every statistic that read it; DPFT's stay finite and move, in both
    selection modes."""
    fs = make_featureset(n_dialogues=24, dims=DIMS, length=(3, 6), seed=4)
    test = np.array([s == "test" for s in fs.splits])
    fs = dataclasses.replace(fs, feats={m: np.where(test[:, None], 1e30, x).astype(np.float32) for m, x in fs.feats.items()})
    seen: list[dict] = []
    original = Mculora.on_epoch_end

    def spy(self, stage, epoch, feedback):
        seen.append(feedback)
        original(self, stage, epoch, feedback)

    Mculora.on_epoch_end = spy
    try:
        res = run_experiment(fs, "mculora", TrainConfig(epochs=4, lr=3e-3, patience=None, batch_size=4, selection=selection),
                             {**TINY, "q_base": 1.0, "dpft_lambda": 0.5}, evaluate=False)
    finally:
        Mculora.on_epoch_end = original
    assert len(seen) == 4 and all(set(f) == set(COMBINATIONS) for f in seen)
    assert all(np.isfinite(v["decoupling"]) for f in seen[2:] for v in f.values())
    model = res.model
    assert len(model.dpft_history) == 2  # the adapt stage's epochs
    q = np.array(list(model.dpft_history[-1]["probs"].values()))
    assert np.isfinite(q).all() and q.sum() == pytest.approx(1.0, abs=1e-5) and not np.allclose(q, 1 / 7)


def test_without_dpft_sampling_stays_uniform_and_asks_no_feedback():
    m = _model(use_dpft=False)
    assert m.wants_combination_feedback is False
    m.on_epoch_end("adapt", 0, {c: {"decoupling": 1.0} for c in COMBINATIONS})
    np.testing.assert_allclose(m.combo_probs.numpy(), 1 / 7)
    assert m.draw_train_mask("pretrain", 0, np.ones((4, 3), bool), np.random.default_rng(0)) is None
    assert m.draw_train_mask("adapt", 0, np.ones((4, 3), bool), np.random.default_rng(0)).any(1).all()
