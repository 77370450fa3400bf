"""MoMKE (imer/fusion/methods/momke.py): router, masks, stages, ablations, expert load, learning.

Tiny dimensions (hidden 8, 2 heads, 2 layers) so the module runs in seconds on CPU.
"""

from __future__ import annotations

import copy
import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

_TESTS = Path(__file__).resolve().parents[2]
if str(_TESTS) not in sys.path:  # `synthetic` lives in tests/ (conftest normally does this)
    sys.path.insert(0, str(_TESTS))

from synthetic import make_featureset  # noqa: E402

from imer.errors import BadInput  # noqa: E402
from imer.fusion.base import build_method  # noqa: E402
from imer.fusion.data import Batch, Normalizer, TensorData  # noqa: E402
from imer.fusion.evaluation import evaluate, evaluate_table  # noqa: E402
from imer.fusion.experiment import prepare_splits  # noqa: E402
from imer.fusion.methods.momke import Momke  # noqa: E402
from imer.fusion.trainer import TrainConfig, fit, seed_everything, stage_protocol  # noqa: E402
from imer.types import MODALITY_NAMES, TaskKind, TaskSpec  # noqa: E402

DIMS = {"audio": 5, "text": 6, "video": 4}
CLF = TaskSpec(TaskKind.CLASSIFICATION, ("c0", "c1", "c2", "c3"))
TINY = {"hidden": 8, "depth": 2, "heads": 2}


def _model(task: TaskSpec = CLF, seed: int = 0, **opts) -> Momke:
    torch.manual_seed(seed)
    return build_method("momke", DIMS, task, {**TINY, **opts}).eval()


def _batch(b: int = 3, l: int = 5, missing: float = 0.4, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    present = torch.rand(b, l, 3, generator=g) > missing
    present[0, 0] = torch.tensor([True, False, False])  # an audio-only utterance
    valid = torch.ones(b, l, dtype=torch.bool)
    valid[-1, 3:] = False
    return Batch(
        feats={m: torch.randn(b, l, d, generator=g) for m, d in DIMS.items()},
        present=present,
        valid=valid,
        y=torch.randint(0, 4, (b, l), generator=g),
        index=torch.arange(b * l).view(b, l),
    )


def _fuse_input(model: Momke, batch: Batch) -> torch.Tensor:
    """The concatenated mixed representations [R^a, R^t, R^v] that enter the fusion head."""
    seen = {}
    handle = model.fuse.register_forward_hook(lambda mod, inp, out: seen.setdefault("x", inp[0]))
    model(batch)
    handle.remove()
    return seen["x"]


# ---------------------------------------------------------------------- router and masks
def test_router_weights_sum_to_one_where_present_and_zero_where_absent():
    m, batch = _model(), _batch()
    w = m(batch).aux["router_weights"]  # [B, L, input, expert]
    assert w.shape == (3, 5, 3, 3)
    here = batch.present & batch.valid[..., None]
    torch.testing.assert_close(w.sum(-1)[here], torch.ones(int(here.sum())))
    assert (w[~here] == 0).all()
    assert (w >= 0).all()


def test_missing_modalities_contribute_exact_zeros():
    m, batch = _model(), _batch()
    joint = _fuse_input(m, batch)  # [B, L, 3d]
    d = TINY["hidden"]
    for j in range(3):
        absent = ~(batch.present[..., j] & batch.valid)
        assert (joint[..., j * d : (j + 1) * d][absent] == 0).all()
        assert (joint[..., j * d : (j + 1) * d][~absent].abs().sum(-1) > 0).all()


def test_uniform_router_equals_the_plain_mean_of_the_experts():
    soft = _model()
    uni = _model(router="uniform")
    uni.load_state_dict(soft.state_dict())  # same experts, projections and head
    batch = _batch()
    d = TINY["hidden"]
    # The plain mean, computed by hand from the experts.
    z = {k: soft.proj[k](soft.masked_inputs(batch)[k]) for k in MODALITY_NAMES}
    want = []
    for j, k in enumerate(MODALITY_NAMES):
        keep = batch.present[..., j] & batch.valid
        mean = torch.stack([soft.experts[e](z[k], keep) for e in MODALITY_NAMES]).mean(0)
        want.append(mean * keep[..., None])
    torch.testing.assert_close(_fuse_input(uni, batch), torch.cat(want, -1))
    assert _fuse_input(uni, batch).shape[-1] == 3 * d
    w = uni(batch).aux["router_weights"]
    here = batch.present & batch.valid[..., None]
    torch.testing.assert_close(w[here], torch.full_like(w[here], 1 / 3))
    # The soft router with zero logits is the same model.
    for p in soft.router.parameters():
        torch.nn.init.zeros_(p)
    torch.testing.assert_close(soft(batch).logits, uni(batch).logits)


def test_router_reads_projected_features_by_default_and_raw_ones_on_request():
    assert _model().router["audio"][0].in_features == TINY["hidden"]
    raw = _model(router_input="raw")
    assert {m: raw.router[m][0].in_features for m in MODALITY_NAMES} == DIMS
    w = raw(_batch()).aux["router_weights"]
    assert torch.isfinite(w).all()


# ---------------------------------------------------------------------- stages
def test_stage_one_gives_no_gradient_to_routers_or_the_fusion_head():
    m, batch = _model(), _batch(missing=0.0)
    m.train()
    m.begin_stage("unimodal")
    out = m(batch)
    m.loss(out, batch)["total"].backward()
    for mod in (m.router, m.fuse, m.head):
        assert all(p.grad is None and not p.requires_grad for p in mod.parameters())
    for k in MODALITY_NAMES:
        assert m.experts[k].layers[0].attn.qkv.weight.grad.abs().sum() > 0
        assert m.uni_head[k].weight.grad.abs().sum() > 0
    assert stage_protocol(m, "unimodal", TrainConfig(missing_rate=0.5)) is None  # complete data
    assert stage_protocol(m, "mixing", TrainConfig(missing_rate=0.5)).missing_rate == 0.5


def test_stage_one_trains_each_expert_on_its_own_modality_only():
    m, batch = _model(), _batch(missing=0.0)
    m.begin_stage("unimodal")
    out = m(batch)
    other = dataclasses.replace(batch, feats={**batch.feats, "text": batch.feats["text"] + 5.0})
    out2 = m(other)
    torch.testing.assert_close(out.aux["uni_logits"]["audio"], out2.aux["uni_logits"]["audio"])
    assert not torch.allclose(out.aux["uni_logits"]["text"], out2.aux["uni_logits"]["text"])


def test_stage_two_trains_everything_but_the_unimodal_heads():
    m, batch = _model(), _batch()
    m.train()
    m.begin_stage("mixing")
    m.loss(m(batch), batch)["total"].backward()
    for name, p in m.named_parameters():
        if name.startswith("uni_head"):
            assert p.grad is None
        else:
            assert p.grad is not None, name


def test_unimodal_masks_option_trains_stage_one_under_the_protocol():
    m = _model(unimodal_masks="protocol")
    assert stage_protocol(m, "unimodal", TrainConfig(missing_rate=0.5)).missing_rate == 0.5


def test_official_layer_is_x_plus_attention_plus_ffn_of_attention():
    """The released layer, written out: A = softmax(q k^T / sqrt(d_h), keys of the input
    modality) v, no output projection, and x + A + FFN(A)."""
    m = _model()
    layer = m.experts["audio"].layers[0]
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 5, 8, generator=g)
    keys = torch.tensor([[True, True, False, True, True], [False, True, True, True, False]])
    qkv = layer.attn.qkv(x).view(2, 5, 3, 2, 4)  # heads 2 x 4
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # [B, H, L, 4]
    scores = (q @ k.transpose(-1, -2)) / 2.0
    scores = scores.masked_fill(~keys[:, None, None, :], float("-inf"))
    a = (torch.softmax(scores, -1) @ v).transpose(1, 2).reshape(2, 5, 8)
    torch.testing.assert_close(layer(x, keys), x + a + layer.ffn(a))


def test_keys_are_the_input_modality_present_utterances():
    """Hiding text from one utterance changes neither the audio expert's view nor R^a."""
    m = _model()
    batch = _batch(missing=0.0)
    fewer = dataclasses.replace(batch, present=batch.present.clone())
    fewer.present[1, 2, 1] = False
    m.begin_stage("unimodal")
    a, b = m(batch).aux["uni_logits"], m(fewer).aux["uni_logits"]
    torch.testing.assert_close(a["audio"], b["audio"])
    assert not torch.allclose(a["text"][1], b["text"][1])  # text's other utterances lost a key
    torch.testing.assert_close(a["text"][0], b["text"][0])  # other dialogues untouched
    m.begin_stage("mixing")
    d = TINY["hidden"]
    ja, jb = _fuse_input(m, batch), _fuse_input(m, fewer)
    torch.testing.assert_close(ja[..., :d], jb[..., :d])
    torch.testing.assert_close(ja[..., 2 * d :], jb[..., 2 * d :])
    assert (jb[1, 2, d : 2 * d] == 0).all()


@pytest.mark.parametrize(
    "opts, stage",
    [({}, "unimodal"), ({"block": "paper"}, "mixing"), ({"block": "paper"}, "unimodal"),
     ({"router_input": "raw"}, "mixing"), ({"experts": "tv", "router": "uniform"}, "mixing")],
)
def test_a_dialogue_does_not_depend_on_its_batch_mates(opts, stage):
    m = _model(**opts)
    m.begin_stage(stage)
    batch = _batch(b=3, l=6)
    together = m(batch).logits
    for i in range(3):
        n = int(batch.valid[i].sum())
        one = Batch({k: v[i : i + 1, :n] for k, v in batch.feats.items()}, batch.present[i : i + 1, :n],
                    batch.valid[i : i + 1, :n], batch.y[i : i + 1, :n], batch.index[i : i + 1, :n])
        torch.testing.assert_close(m(one).logits[0], together[i, :n], rtol=1e-4, atol=1e-5)


def test_mixture_and_expert_load_stay_exact_under_bf16():
    """Weights are mixed in fp32 (1/3, not bf16's 0.334) and utterances counted in fp32 (bf16
    cannot count past 256)."""
    m = _model(router="uniform")
    batch = _batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(batch)
    here = batch.present & batch.valid[..., None]
    w = out.aux["router_weights"]
    assert w.dtype == torch.float32
    torch.testing.assert_close(w[here], torch.full_like(w[here], 1 / 3))
    big = torch.full((1, 300, 3, 3), 1 / 3, dtype=torch.bfloat16)
    long = Batch({k: torch.zeros(1, 300, d) for k, d in DIMS.items()}, torch.ones(1, 300, 3, dtype=torch.bool),
                 torch.ones(1, 300, dtype=torch.bool), torch.zeros(1, 300, dtype=torch.long), torch.arange(300)[None])
    sums = m.summary_sums(type(out)(out.logits, {"router_weights": big}), long)
    assert sums["router_count"].tolist() == [300.0, 300.0, 300.0]


# ---------------------------------------------------------------------- block variants
def test_official_block_has_no_layernorm_or_output_projection_and_paper_block_has_both():
    off, pap = _model(), _model(block="paper")
    names_off = {n for n, _ in off.named_parameters()}
    names_pap = {n for n, _ in pap.named_parameters()}
    assert not any("norm" in n or ".attn.out." in n for n in names_off)
    assert any("norm1" in n for n in names_pap) and any(".attn.out." in n for n in names_pap)
    assert off.experts["audio"].layers[0].ffn[0].out_features == TINY["hidden"]  # FFN ratio 1


def test_paper_block_uses_utterance_position():
    m = _model(block="paper")
    batch = dataclasses.replace(_batch(b=1, l=4, missing=0.0), valid=torch.ones(1, 4, dtype=torch.bool))
    base = m(batch).logits[0]
    rev = torch.arange(3, -1, -1)
    flipped = Batch({k: v[:, rev] for k, v in batch.feats.items()}, batch.present[:, rev], batch.valid, batch.y[:, rev], batch.index)
    # Same set of utterances in another order: with positions the outputs are not a permutation.
    assert not torch.allclose(m(flipped).logits[0][rev], base, atol=1e-5)
    official = _model()
    torch.testing.assert_close(official(flipped).logits[0][rev], official(batch).logits[0], rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------- ablations
def test_no_pretraining_keeps_the_model_and_drops_stage_one():
    full, nopre = _model(), _model(pretrain_experts=False)
    assert full.stages == ("unimodal", "mixing") and nopre.stages == ("mixing",)
    assert {n: p.shape for n, p in full.state_dict().items()} == {n: p.shape for n, p in nopre.state_dict().items()}
    nopre.load_state_dict(full.state_dict())
    batch = _batch()
    torch.testing.assert_close(nopre(batch).logits, full(batch).logits)


def test_uniform_router_parameters_get_no_gradient():
    m = _model(router="uniform")
    m.train()
    m.begin_stage("mixing")
    batch = _batch()
    m.loss(m(batch), batch)["total"].backward()
    assert all(p.grad is None for p in m.router.parameters())
    assert m.experts["text"].layers[0].attn.qkv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("opts, stage", [({"pretrain_experts": False}, "mixing"), ({"mixing": False}, "unimodal")])
def test_one_stage_ablations_get_the_whole_budget_under_the_protocol(opts, stage):
    fs = make_featureset(n_dialogues=16, dims=DIMS, seed=2)
    fs = Normalizer.fit(fs.split("train")).apply(fs)
    cfg = TrainConfig(epochs=3, lr=1e-3, patience=None, batch_size=4, missing_rate=0.5)
    seed_everything(0)
    ready, sel = prepare_splits(fs, cfg)
    m = _model(**opts)
    res = fit(m, ready.split("train"), ready.split(sel), cfg, sel)
    assert list(res.best) == [stage] and res.epochs_run == 3
    assert stage_protocol(m, stage, cfg).missing_rate == 0.5


def test_no_mixing_predicts_the_mean_of_the_present_experts_heads():
    m = _model(mixing=False)
    assert m.stages == ("unimodal",) and m.stage == "unimodal"
    batch = _batch()
    out = m(batch)
    here = (batch.present & batch.valid[..., None]).float()
    heads = torch.stack([out.aux["uni_logits"][k] for k in MODALITY_NAMES], 2)
    want = (heads * here[..., None]).sum(2) / here.sum(-1, keepdim=True).clamp_min(1)
    torch.testing.assert_close(out.logits, want)
    # An audio-only utterance is the audio expert and its head alone.
    torch.testing.assert_close(out.logits[0, 0], out.aux["uni_logits"]["audio"][0, 0])
    with pytest.raises(BadInput, match="pretrain_experts"):
        _model(mixing=False, pretrain_experts=False)


def test_expert_subset_mixes_only_those_experts():
    full, sub = _model(), _model(experts="ta")
    assert sub.mix_experts == ["audio", "text"] and sub.router["audio"][3].out_features == 2
    w = sub(_batch()).aux["router_weights"]
    assert (w[..., 2] == 0).all()  # the video expert takes no part
    # Everything but the routers' last layers is the same model.
    diff = {n for n, p in full.state_dict().items() if sub.state_dict()[n].shape != p.shape}
    assert diff == {f"router.{m}.3.{k}" for m in MODALITY_NAMES for k in ("weight", "bias")}
    # The video expert's weights play no part in the output.
    batch = _batch()
    ref = sub(batch).logits
    with torch.no_grad():
        for p in sub.experts["video"].parameters():
            p.add_(1.0)
    torch.testing.assert_close(sub(batch).logits, ref)
    one = _model(experts="v")
    torch.testing.assert_close(one(_batch()).aux["router_weights"][..., 2].sum(), (_batch().present & _batch().valid[..., None]).sum().float())
    with pytest.raises(BadInput, match="subset of 'atv'"):
        _model(experts="ax")
    with pytest.raises(BadInput, match="subset of 'atv'"):
        _model(experts="")


# ---------------------------------------------------------------------- expert load
def test_expert_load_in_the_evaluation_table():
    fs = make_featureset(n_dialogues=12, dims=DIMS, seed=1)
    m = _model()
    rows = evaluate_table(m, fs, rates=(0.5,), conditions=("a", "atv"), mask_seeds=(0, 1))
    by = {r["protocol"]: r for r in rows}
    load = by["cond-a"]["summary"]["expert_load"]
    assert set(load) == {"audio"}  # only audio is present under {a}
    assert sum(load["audio"].values()) == pytest.approx(1.0, abs=1e-3)
    assert set(by["cond-atv"]["summary"]["expert_load"]) == set(MODALITY_NAMES)
    assert by["cond-atv"]["summary"]["utterances"]["text"] == len(fs)
    concat = build_method("concat", DIMS, CLF, {"hidden": 8})
    assert all("summary" not in r for r in evaluate_table(concat, fs, rates=(0.0,), conditions=(), mask_seeds=(0,)))


# ---------------------------------------------------------------------- learning
def test_mixed_model_beats_every_stage_one_expert_alone():
    """Each modality alone is a weak cue; the mixed model must beat the best single expert."""
    fs = make_featureset(n_dialogues=60, length=(4, 8), dims=DIMS, noise=2.2, seed=3)
    fs = Normalizer.fit(fs.split("train")).apply(fs)
    cfg = TrainConfig(epochs=40, lr=3e-3, patience=None, batch_size=8, missing_rate=0.0, seed=0)
    seed_everything(cfg.seed)
    ready, sel = prepare_splits(fs, cfg)
    torch.manual_seed(0)
    m = build_method("momke", DIMS, fs.task, {**TINY, "hidden": 16, "dropout": 0.1, "router_dropout": 0.1})
    stage_one: dict = {}
    fit(m, ready.split("train"), ready.split(sel), cfg, sel,
        on_stage_end=lambda stage, model, res: stage_one.setdefault(stage, copy.deepcopy(model)))
    test = TensorData(ready.split("test"))
    n = test.n
    experts = {}
    for j, k in enumerate(MODALITY_NAMES):
        only = np.zeros((n, 3), bool)
        only[:, j] = True
        experts[k] = evaluate(stage_one["unimodal"], test, only, "dialogue", 8)["WA"]
    m.begin_stage("mixing")
    mixed = evaluate(m, test, None, "dialogue", 8)["WA"]
    assert mixed > max(experts.values()) + 0.03, (mixed, experts)
    assert min(experts.values()) > 0.3  # each expert learned something (chance is 0.25)
