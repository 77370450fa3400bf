"""ComP (imer/fusion/methods/comp.py): shapes, masks, ablations, gradient modulation, stages, chunking.

Tiny dimensions throughout (hidden 8, 2 heads) so the whole module runs in well under a minute on
CPU; one short training run on the synthetic feature set checks that the method learns at all.
"""

from __future__ import annotations

import copy
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

_TESTS = Path(__file__).resolve().parents[2]
if str(_TESTS) not in sys.path:  # `synthetic` lives in tests/ (conftest normally does this)
    sys.path.insert(0, str(_TESTS))

from synthetic import make_featureset  # noqa: E402

from imer.fusion.base import build_method  # noqa: E402
from imer.fusion.data import Batch, Normalizer, TensorData  # noqa: E402
from imer.fusion.evaluation import evaluate  # noqa: E402
from imer.fusion.experiment import prepare_splits  # noqa: E402
from imer.fusion.methods.comp import (  # noqa: E402
    CompConfig,
    KnowledgePropagationBlock,
    PromptGenerationBlock,
    PrototypeLayer,
    _GradHolder,
    _ModulatedInstanceLinear,
)
from imer.fusion.trainer import TrainConfig, fit, seed_everything  # noqa: E402
from imer.types import MODALITY_NAMES, TaskKind, TaskSpec  # noqa: E402

DIMS = {"audio": 5, "text": 6, "video": 4}
C = 4
CLF = TaskSpec(TaskKind.CLASSIFICATION, tuple(f"c{i}" for i in range(C)))
REG = TaskSpec(TaskKind.REGRESSION, ("sentiment",))
TINY = {
    "hidden": 8,
    "heads": 2,
    "prompt_dim": 4,
    "num_prototypes": 3,
    "num_blocks": 2,
    "attn_layers": 1,
    "dropout": 0.0,
}


# ---------------------------------------------------------------------- helpers
def make_model(max_len: int = 6, task: TaskSpec = CLF, seed: int = 0, **options):
    torch.manual_seed(seed)
    return build_method("comp", DIMS, task, {**TINY, **options}, {"max_dialogue_len": max_len})


def make_batch(
    lengths: list[int],
    width: int | None = None,
    task: TaskSpec = CLF,
    seed: int = 0,
    missing: float = 0.3,
) -> Batch:
    """Random dialogues padded to ``width``; padding is zero features, present False, label -1/nan."""
    g = torch.Generator().manual_seed(seed)
    b = len(lengths)
    width = width or max(lengths)
    valid = torch.zeros(b, width, dtype=torch.bool)
    for i, n in enumerate(lengths):
        valid[i, :n] = True
    feats = {m: torch.randn(b, width, d, generator=g) * valid[..., None] for m, d in DIMS.items()}
    present = (torch.rand(b, width, 3, generator=g) >= missing) & valid[..., None]
    # every real utterance keeps at least one modality
    none = valid & ~present.any(-1)
    present[..., 1] |= none
    if task.kind == TaskKind.CLASSIFICATION:
        y = torch.randint(0, C, (b, width), generator=g)
        y = torch.where(valid, y, torch.full_like(y, -1))
    else:
        y = torch.randn(b, width, generator=g)
        y = torch.where(valid, y, torch.full_like(y, float("nan")))
    index = torch.arange(b * width).view(b, width)
    index = torch.where(valid, index, torch.full_like(index, -1))
    return Batch(feats=feats, present=present, valid=valid, y=y, index=index)


def select(batch: Batch, rows: list[int], width: int | None = None) -> Batch:
    """Some dialogues of a batch, trimmed to ``width`` columns."""
    w = width or batch.valid.shape[1]
    return Batch(
        feats={m: x[rows, :w] for m, x in batch.feats.items()},
        present=batch.present[rows, :w],
        valid=batch.valid[rows, :w],
        y=batch.y[rows, :w],
        index=batch.index[rows, :w],
    )


def columns(batch: Batch, start: int, stop: int) -> Batch:
    return Batch(
        feats={m: x[:, start:stop] for m, x in batch.feats.items()},
        present=batch.present[:, start:stop],
        valid=batch.valid[:, start:stop],
        y=batch.y[:, start:stop],
        index=batch.index[:, start:stop],
    )


def with_feats(batch: Batch, feats: dict) -> Batch:
    return Batch(feats=feats, present=batch.present, valid=batch.valid, y=batch.y, index=batch.index)


def grads(model) -> dict[str, torch.Tensor | None]:
    return {k: (None if p.grad is None else p.grad.clone()) for k, p in model.named_parameters()}


def train_step_grads(model, batch: Batch) -> dict[str, torch.Tensor | None]:
    model.train()
    model.zero_grad(set_to_none=True)
    out = model(batch)
    model.loss(out, batch)["total"].backward()
    return grads(model)


def capture_prototypes(model, batch: Batch) -> dict[str, torch.Tensor]:
    got: dict[str, torch.Tensor] = {}
    hooks = [
        model.proto[m].register_forward_hook(lambda mod, args, out, m=m: got.__setitem__(m, out.detach().clone()))
        for m in MODALITY_NAMES
    ]
    try:
        with torch.no_grad():
            model(batch)
    finally:
        for h in hooks:
            h.remove()
    return got


# ---------------------------------------------------------------------- component shapes
@pytest.mark.parametrize("length", [2, 6])  # L < n (padded to n) and L == n
def test_prototype_layer_shape(length):
    torch.manual_seed(0)
    layer = PrototypeLayer(n=6, c=3, dropout=0.0)
    z = torch.randn(2, length, 8)
    keep = torch.ones(2, length, dtype=torch.bool)
    keep[0, -1] = False
    a = layer(z, keep)
    assert a.shape == (2, 3, 8)
    assert torch.isfinite(a).all()


def test_prompt_generation_block_shape():
    torch.manual_seed(0)
    pg = PromptGenerationBlock(d=8, p=4, dropout=0.0)
    keep = torch.tensor([[True, False, True, True, False], [True] * 5])
    out = pg(torch.randn(2, 5, 8), torch.randn(2, 3, 8), keep)
    assert out.shape == (2, 5, 4)


def test_knowledge_propagation_block_shape():
    torch.manual_seed(0)
    kp = KnowledgePropagationBlock(d=8, p=4, layers=2, heads=2, dropout=0.0)
    key_mask = torch.tensor([[True, False, True, True, False], [False] * 5])  # 2nd: no visible key at all
    z, (pv, pw) = kp(torch.randn(2, 5, 8), (torch.randn(2, 5, 4), torch.randn(2, 5, 4)), key_mask)
    assert z.shape == (2, 5, 8)
    assert pv.shape == (2, 5, 4) and pw.shape == (2, 5, 4)
    assert torch.isfinite(z).all()


def test_knowledge_propagation_masks_missing_keys():
    """Eq. 4: a masked (missing) instance influences no other instance's output."""
    torch.manual_seed(0)
    kp = KnowledgePropagationBlock(d=8, p=4, layers=2, heads=2, dropout=0.0).eval()
    z, pa, pb = torch.randn(1, 5, 8), torch.randn(1, 5, 4), torch.randn(1, 5, 4)
    key_mask = torch.tensor([[True, True, False, True, True]])
    out, (qa, qb) = kp(z, (pa, pb), key_mask)
    z2, pa2 = z.clone(), pa.clone()
    z2[0, 2] += 5.0
    pa2[0, 2] -= 5.0
    out2, (qa2, qb2) = kp(z2, (pa2, pb), key_mask)
    others = key_mask[0]
    torch.testing.assert_close(out2[0, others], out[0, others])
    torch.testing.assert_close(qa2[0, others], qa[0, others])
    assert not torch.allclose(out2[0, 2], out[0, 2])  # the missing query itself still gets an output
    z3 = z.clone()
    z3[0, 3] += 5.0  # a present key does reach the others
    out3, _ = kp(z3, (pa, pb), key_mask)
    assert not torch.allclose(out3[0, 0], out[0, 0])


def test_prompt_flow_direction_eq9():
    """P^{vu} (delivered to u's KP block) mixes u's renewed prompt slot for v with v's fresh PG prompt."""
    lam = 0.3
    model = make_model(max_len=6, momentum=lam).eval()
    batch = make_batch([6, 4], seed=11)
    pg_out: dict[tuple[str, int], torch.Tensor] = {}
    kp_in: dict[tuple[str, int], tuple] = {}
    kp_out: dict[tuple[str, int], tuple] = {}
    hooks = []

    def on_kp(key):
        def hook(mod, args, out):
            kp_in[key], kp_out[key] = args[1], out[1]  # the prompts in, the renewed prompts out

        return hook

    for m in MODALITY_NAMES:
        for l in range(2):
            hooks.append(model.pg[m][l].register_forward_hook(lambda mod, a, o, k=(m, l): pg_out.__setitem__(k, o)))
            hooks.append(model.kp[m][l].register_forward_hook(on_kp((m, l))))
    with torch.no_grad():
        model(batch)
    for h in hooks:
        h.remove()
    for u in MODALITY_NAMES:
        others = [v for v in MODALITY_NAMES if v != u]
        for slot, v in enumerate(others):
            torch.testing.assert_close(kp_in[(u, 0)][slot], pg_out[(v, 0)])  # block 1: fresh prompts of v
            expected = lam * kp_out[(u, 0)][slot] + (1 - lam) * pg_out[(v, 1)]
            torch.testing.assert_close(kp_in[(u, 1)][slot], expected)


def test_missing_modality_is_rebuilt_from_the_others():
    """Utterance mode, audio missing: audio's propagated feature depends on text (via prompts)."""
    model = make_model(max_len=1).eval()
    batch = make_batch([1, 1], missing=0.0, seed=12)
    batch.present[:, :, 0] = False
    with torch.no_grad():
        a = model(batch).aux["uni_logits"]["audio"]
        feats = {m: x.clone() for m, x in batch.feats.items()}
        feats["text"] += 1.0
        b = model(with_feats(batch, feats)).aux["uni_logits"]["audio"]
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("stage", ["unimodal", "fusion"])
@pytest.mark.parametrize("task", [CLF, REG], ids=["clf", "reg"])
@pytest.mark.parametrize("lengths,max_len", [([5, 3], 6), ([1, 1, 1], 6), ([1, 1], 1)], ids=["dialogue", "utt-n6", "utt-n1"])
def test_model_shapes_and_omega(stage, task, lengths, max_len):
    model = make_model(max_len=max_len, task=task)
    model.begin_stage(stage)
    batch = make_batch(lengths, task=task)
    model.train()
    out = model(batch)
    k = C if task.kind == TaskKind.CLASSIFICATION else 1
    assert out.logits.shape == (len(lengths), max(lengths), k)
    losses = model.loss(out, batch)
    assert torch.isfinite(losses["total"])
    losses["total"].backward()
    model.eval()
    with torch.no_grad():
        out = model(batch)
    assert out.logits.shape == (len(lengths), max(lengths), k)
    assert torch.isfinite(out.logits[batch.valid]).all()
    for m in MODALITY_NAMES:
        assert out.aux["uni_logits"][m].shape == (len(lengths), max(lengths), k)
    if stage == "fusion":
        omega = out.aux["omega"]
        assert omega.shape == (len(lengths), max(lengths), 3)
        torch.testing.assert_close(omega.sum(-1), torch.ones(omega.shape[:-1]))
        assert (omega >= 0).all()
    else:
        assert "omega" not in out.aux


# ---------------------------------------------------------------------- ablations
def _eval_logits(model, batch):
    model.eval()
    with torch.no_grad():
        return model(batch).logits


@pytest.mark.parametrize("switch", ["use_kp", "use_pg", "use_cr"])
def test_ablation_switch_changes_outputs(switch):
    ref = make_model()
    off = make_model(**{switch: False})
    off.load_state_dict(ref.state_dict())
    batch = make_batch([5, 4])
    a, b = _eval_logits(ref, batch), _eval_logits(off, batch)
    sel = batch.valid
    assert not torch.allclose(a[sel], b[sel], atol=1e-6)
    if switch == "use_cr":
        assert "omega" not in off(batch).aux
        assert "omega" in ref(batch).aux


def test_use_gm_changes_only_prototype_gradients():
    ref = make_model()
    off = make_model(use_gm=False)
    off.load_state_dict(ref.state_dict())
    batch = make_batch([5, 4, 6])
    # same outputs (GM acts on gradients only)
    torch.testing.assert_close(_eval_logits(ref, batch), _eval_logits(off, batch), rtol=0, atol=0)
    g_on, g_off = train_step_grads(ref, batch), train_step_grads(off, batch)
    for m in MODALITY_NAMES:
        key = f"proto.{m}.M"
        assert g_on[key] is not None and g_off[key] is not None
        assert not torch.allclose(g_on[key], g_off[key], rtol=0, atol=1e-9), key
    for key, g in g_on.items():
        if key.endswith(".M") and key.startswith("proto."):
            continue
        if g is None:
            assert g_off[key] is None, key
        else:
            torch.testing.assert_close(g, g_off[key], rtol=1e-6, atol=1e-8, msg=key)


@pytest.mark.parametrize("switch", ["use_kp", "use_pg"])
def test_disabled_prototypes_get_no_gradient(switch):
    model = make_model(**{switch: False})
    model.begin_stage("fusion")
    g = train_step_grads(model, make_batch([5, 4]))
    for key, grad in g.items():
        if key.startswith(("proto.", "pg.")):
            assert grad is None or not grad.any(), key
    if switch == "use_kp":  # "the subsequent components are disabled": KP blocks unused too
        assert all(g[k] is None or not g[k].any() for k in g if k.startswith(("kp.", "prompt_proj.")))
    else:  # prompts then come from the linear projection
        assert any(g[k] is not None and g[k].any() for k in g if k.startswith("prompt_proj."))


def test_everything_off_is_concatenated_encoders():
    model = make_model(use_kp=False, use_pg=False, use_cr=False, use_gm=False)
    batch = make_batch([4, 2])
    model.eval()
    with torch.no_grad():
        x = model.masked_inputs(batch)
        keep = batch.present & batch.valid[..., None]
        z = [model.enc[m](x[m]) * keep[..., j : j + 1] for j, m in enumerate(MODALITY_NAMES)]
        expected = model.classifier(torch.cat(z, -1))
        torch.testing.assert_close(model(batch).logits, expected)


# ---------------------------------------------------------------------- masks & independence
@pytest.mark.parametrize("stage", ["unimodal", "fusion"])
def test_missing_slot_values_do_not_matter(stage):
    model = make_model()
    model.begin_stage(stage)
    batch = make_batch([6, 4, 5], missing=0.4, seed=3)
    assert (~batch.present & batch.valid[..., None]).any()
    g = torch.Generator().manual_seed(9)
    junk = {}
    for j, m in enumerate(MODALITY_NAMES):
        noise = torch.randn(batch.feats[m].shape, generator=g) * 100.0
        absent = ~batch.present[..., j : j + 1]
        junk[m] = torch.where(absent, noise, batch.feats[m])  # also garbage in padding slots
    a = _eval_logits(model, batch)
    b = _eval_logits(model, with_feats(batch, junk))
    torch.testing.assert_close(a[batch.valid], b[batch.valid], rtol=0, atol=0)


def test_padding_marked_present_is_still_ignored():
    model = make_model()
    batch = make_batch([6, 3], seed=4)
    tricked = Batch(
        feats={m: torch.where(batch.valid[..., None], x, torch.full_like(x, 7.0)) for m, x in batch.feats.items()},
        present=batch.present | ~batch.valid[..., None],
        valid=batch.valid,
        y=batch.y,
        index=batch.index,
    )
    a, b = _eval_logits(model, batch), _eval_logits(model, tricked)
    torch.testing.assert_close(a[batch.valid], b[batch.valid], rtol=0, atol=0)


@pytest.mark.parametrize("stage", ["unimodal", "fusion"])
def test_batch_independence_in_eval(stage):
    model = make_model(max_len=6)
    model.begin_stage(stage)
    lengths = [5, 3, 6]
    batch = make_batch(lengths, seed=5)
    together = _eval_logits(model, batch)
    for i, n in enumerate(lengths):
        alone = _eval_logits(model, select(batch, [i], width=n))
        torch.testing.assert_close(together[i, :n], alone[0, :n], rtol=1e-5, atol=1e-6)
    # and padding the batch wider than needed changes nothing either
    wide = make_batch(lengths, width=6, seed=5)
    torch.testing.assert_close(_eval_logits(model, wide)[batch.valid[:, :6]], together[batch.valid], rtol=1e-5, atol=1e-6)


def test_eq7_mask_prototype_layer():
    """Missing rows do not shape prototypes; present rows do."""
    torch.manual_seed(0)
    layer = PrototypeLayer(n=6, c=3, dropout=0.0).eval()
    z = torch.randn(2, 5, 8)
    keep = torch.tensor([[True, False, True, True, True], [True, True, False, True, False]])
    a = layer(z, keep)
    z2 = z.clone()
    z2[0, 1] = torch.randn(8) * 50
    z2[1, 4] = torch.randn(8) * 50
    torch.testing.assert_close(layer(z2, keep), a, rtol=0, atol=0)
    z3 = z.clone()
    z3[0, 2] += 1.0
    a3 = layer(z3, keep)
    assert not torch.allclose(a3[0], a[0])
    torch.testing.assert_close(a3[1], a[1], rtol=0, atol=0)  # the other dialogue is untouched


def test_eq7_mask_prompt_generation():
    """A missing row's similarity assignments are removed (its S A term is zero); others unaffected."""
    torch.manual_seed(0)
    pg = PromptGenerationBlock(d=8, p=4, dropout=0.0).eval()
    z, protos = torch.randn(1, 5, 8), torch.randn(1, 3, 8)
    keep = torch.tensor([[True, True, False, True, True]])
    out = pg(z, protos, keep)
    z2 = z.clone()
    z2[0, 2] = torch.randn(8) * 10
    out2 = pg(z2, protos, keep)
    present = keep[0]
    torch.testing.assert_close(out2[0, present], out[0, present], rtol=0, atol=0)
    with torch.no_grad():
        zero_term = pg.mlp_p(pg.ffn1(torch.zeros(8)) + pg.ffn2(z2[0, 2]))
    torch.testing.assert_close(out2[0, 2], zero_term)


def test_eq7_mask_in_model_prototypes():
    """Through the whole model: features of a missing instance never reach the prototypes."""
    model = make_model(max_len=6).eval()
    batch = make_batch([6, 5], missing=0.0, seed=6)
    batch.present[0, 2, 0] = False  # audio of utterance 2 missing
    base = capture_prototypes(model, batch)
    feats = {m: x.clone() for m, x in batch.feats.items()}
    feats["audio"][0, 2] = torch.randn(DIMS["audio"]) * 30
    same = capture_prototypes(model, with_feats(batch, feats))
    for m in MODALITY_NAMES:
        torch.testing.assert_close(same[m], base[m], rtol=0, atol=0)
    feats["audio"][0, 3] += 1.0  # a present instance
    changed = capture_prototypes(model, with_feats(batch, feats))
    assert not torch.allclose(changed["audio"][0], base["audio"][0])
    torch.testing.assert_close(changed["audio"][1], base["audio"][1], rtol=0, atol=0)


# ---------------------------------------------------------------------- gradient modulation
@pytest.mark.parametrize("weights", ["none", "random"])
def test_modulated_instance_linear_gradients(weights):
    torch.manual_seed(0)
    b, d, n, c = 3, 5, 4, 2
    zt = torch.randn(b, d, n, requires_grad=True)
    m = torch.randn(n, c, requires_grad=True)
    g_out = torch.randn(b, d, c)
    holder = _GradHolder()
    w = torch.rand(b, n) * 2
    out = _ModulatedInstanceLinear.apply(zt, m, holder)
    if weights == "random":
        holder.weights = w
    (out * g_out).sum().backward()

    zt_ref = zt.detach().clone().requires_grad_(True)
    m_ref = m.detach().clone().requires_grad_(True)
    out_ref = zt_ref @ m_ref
    torch.testing.assert_close(out, out_ref)
    (out_ref * g_out).sum().backward()
    torch.testing.assert_close(zt.grad, zt_ref.grad)  # grad Z is never modulated
    if weights == "none":
        torch.testing.assert_close(m.grad, m_ref.grad)
    else:
        expected = torch.einsum("bdn,bdc->nc", zt.detach() * w[:, None, :], g_out)
        torch.testing.assert_close(m.grad, expected)
        assert not torch.allclose(m.grad, m_ref.grad)


def test_grad_holder_is_per_call_when_chunked():
    """Two forward calls (chunks) before one backward: each call's gradient uses its own weights."""
    torch.manual_seed(0)
    layer = PrototypeLayer(n=4, c=3, dropout=0.0)
    z1, z2 = torch.randn(2, 4, 8), torch.randn(2, 3, 8)
    k1, k2 = torch.ones(2, 4, dtype=torch.bool), torch.ones(2, 3, dtype=torch.bool)
    w1, w2 = torch.rand(2, 4) * 2, torch.rand(2, 3) * 2

    def objective(a):
        return (a * torch.linspace(-1, 1, a.numel()).view_as(a)).sum() + (a**2).sum()

    a1 = layer(z1, k1)
    layer.set_instance_weights(w1)
    a2 = layer(z2, k2)
    layer.set_instance_weights(w2)
    (objective(a1) + objective(a2)).backward()

    la, lb = copy.deepcopy(layer), copy.deepcopy(layer)
    la.zero_grad(set_to_none=True)
    lb.zero_grad(set_to_none=True)
    oa = la(z1, k1)
    la.set_instance_weights(w1)
    ob = lb(z2, k2)
    lb.set_instance_weights(w2)
    (objective(oa) + objective(ob)).backward()
    torch.testing.assert_close(layer.M.grad, la.M.grad + lb.M.grad)


def _uni_logits(p_true: list[float]) -> torch.Tensor:
    """[1, L, C] logits whose softmax gives probability p to class 0 (the label)."""
    p = torch.tensor(p_true, dtype=torch.float64)
    rest = ((1 - p) / (C - 1)).unsqueeze(-1).expand(-1, C - 1)
    return torch.log(torch.cat([p.unsqueeze(-1), rest], -1)).float().unsqueeze(0)


def _gm_weights(p: dict[str, list[float]]) -> dict[str, torch.Tensor]:
    model = make_model(max_len=3)
    length = len(p["audio"])
    batch = make_batch([length], missing=0.0)
    batch.y.zero_()
    uni = {m: _uni_logits(p[m]) for m in MODALITY_NAMES}
    present = batch.present & batch.valid[..., None]
    for m in MODALITY_NAMES:
        model.proto[m].holder = _GradHolder()
    model._set_gradient_modulation(uni, batch, present)
    return {m: model.proto[m].holder.weights[0, :length] for m in MODALITY_NAMES}


def _paper_eq10(p: dict[str, list[float]], u: str) -> torch.Tensor:
    err = {m: 1 - torch.tensor(v, dtype=torch.float64) for m, v in p.items()}
    terms = []
    for v in MODALITY_NAMES:
        if v == u:
            continue
        d = err[u] - err[v]
        terms.append((d.sum() - d) / d.sum())  # sum_{j != i} D_j / sum_j D_j
    return (0.5 * sum(terms)).float()


# audio best everywhere, video worst everywhere: every D^{video,*} > 0, every D^{audio,*} < 0
PROBS = {"audio": [0.9, 0.8, 0.7], "text": [0.5, 0.4, 0.2], "video": [0.3, 0.3, 0.1]}


def test_eq10_matches_paper_when_relative_errors_positive():
    w = _gm_weights(PROBS)
    torch.testing.assert_close(w["video"], _paper_eq10(PROBS, "video"), rtol=1e-4, atol=1e-5)
    assert (w["video"] <= 1).all()  # the modality that needs help learns slower


def test_eq10_matches_paper_when_relative_errors_negative():
    w = _gm_weights(PROBS)
    torch.testing.assert_close(w["audio"], _paper_eq10(PROBS, "audio"), rtol=1e-4, atol=1e-5)


def test_eq10_weights_are_bounded_and_guarded():
    equal = {m: [0.5, 0.5, 0.5] for m in MODALITY_NAMES}  # eq. 10 is 0/0 here
    for w in _gm_weights(equal).values():
        torch.testing.assert_close(w, torch.ones(3))
    mixed = {"audio": [0.9, 0.1, 0.5], "text": [0.1, 0.9, 0.5001], "video": [0.5, 0.5, 0.5]}
    for w in _gm_weights(mixed).values():
        assert torch.isfinite(w).all() and (w >= 0).all() and (w <= 2).all()


def test_gradient_modulation_survives_bf16_autocast():
    torch.manual_seed(0)
    layer = PrototypeLayer(n=6, c=3, dropout=0.0)
    z = torch.randn(2, 5, 8).bfloat16()
    keep = torch.ones(2, 5, dtype=torch.bool)
    delta = 2e-3  # typical |W - 1| with ~500 labelled instances per batch

    def grad_m(w):
        layer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            a = layer(z, keep)
            if w is not None:
                layer.set_instance_weights(w)
        (a.float() ** 2).sum().backward()
        return layer.M.grad.clone()

    plain = grad_m(None)
    scaled = grad_m(torch.full((2, 5), 1 + delta))
    # grad M is linear in W: uniform W = 1 + delta must scale it by exactly 1 + delta
    torch.testing.assert_close(scaled, plain * (1 + delta), rtol=2e-4, atol=1e-7)


def test_bf16_autocast_forward_backward_is_finite():
    model = make_model(max_len=6)
    for lengths, width in (([6, 2, 4], None), ([1, 1, 1, 1], None)):
        batch = make_batch(lengths, width=width, missing=0.5, seed=7)
        model.train()
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(batch)
            loss = model.loss(out, batch)["total"]
        assert torch.isfinite(loss)
        loss.backward()
        for k, p in model.named_parameters():
            if p.grad is not None:
                assert torch.isfinite(p.grad).all(), k
        model.eval()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(batch).logits
        assert torch.isfinite(logits[batch.valid].float()).all()


def test_regression_training_step_with_gm():
    model = make_model(task=REG)
    g = train_step_grads(model, make_batch([5, 3], task=REG))
    assert g["proto.audio.M"] is not None and torch.isfinite(g["proto.audio.M"]).all()


# ---------------------------------------------------------------------- stages
FUSION_ONLY = ("coordinator.", "classifier.", "proto.", "pg.", "prompt_proj.")


def test_stage_unimodal_freezes_fusion_parts():
    model = make_model()
    model.begin_stage("unimodal")
    for k, p in model.named_parameters():
        assert p.requires_grad == (not k.startswith(FUSION_ONLY)), k
    batch = make_batch([5, 4])
    model.train()
    out = model(batch)
    losses = model.loss(out, batch)
    assert "task" not in losses
    assert set(losses) == {"recon", "unimodal", "total"}
    torch.testing.assert_close(losses["total"], model.config.recon_weight * losses["recon"] + losses["unimodal"])
    losses["total"].backward()
    for k, p in model.named_parameters():
        if k.startswith(FUSION_ONLY):
            assert p.grad is None, k
    assert model.enc["audio"][0].weight.grad is not None
    assert model.kp["text"][0].compress.weight.grad is not None


def test_stage_fusion_trains_everything():
    model = make_model(unimodal_weight=0.5, recon_weight=0.25)
    model.begin_stage("unimodal")
    model.begin_stage("fusion")
    assert all(p.requires_grad for p in model.parameters())
    batch = make_batch([5, 4])
    model.train()
    out = model(batch)
    losses = model.loss(out, batch)
    assert set(losses) == {"task", "unimodal", "recon", "total"}
    torch.testing.assert_close(losses["total"], losses["task"] + 0.5 * losses["unimodal"] + 0.25 * losses["recon"])
    losses["total"].backward()
    for prefix in ("coordinator.", "classifier.", "proto.", "pg.", "enc.", "kp.", "uni_head.", "dec."):
        assert any(p.grad is not None and p.grad.any() for k, p in model.named_parameters() if k.startswith(prefix)), prefix


def test_default_stage_is_fusion():
    model = make_model()
    assert model.stage == "fusion"
    assert model.stages == ("unimodal", "fusion")


# ---------------------------------------------------------------------- chunking
def test_long_dialogue_is_processed_in_chunks():
    n = 4
    model = make_model(max_len=n).eval()
    batch = make_batch([10], seed=8)
    with torch.no_grad():
        out = model(batch)
        assert out.logits.shape == (1, 10, C)
        parts = [model(columns(batch, s, min(s + n, 10))).logits for s in range(0, 10, n)]
    torch.testing.assert_close(out.logits, torch.cat(parts, dim=1), rtol=0, atol=0)
    assert out.aux["omega"].shape == (1, 10, 3)
    for m in MODALITY_NAMES:
        assert out.aux["uni_logits"][m].shape == (1, 10, C)


def test_chunking_keeps_batch_independence():
    model = make_model(max_len=4).eval()
    batch = make_batch([10, 3, 7], seed=9)
    together = _eval_logits(model, batch)
    for i, length in enumerate([10, 3, 7]):
        alone = _eval_logits(model, select(batch, [i], width=length))
        torch.testing.assert_close(together[i, :length], alone[0], rtol=1e-5, atol=1e-6)


def test_chunked_training_step_is_finite():
    model = make_model(max_len=3)
    g = train_step_grads(model, make_batch([8, 5], seed=10))
    for m in MODALITY_NAMES:
        assert torch.isfinite(g[f"proto.{m}.M"]).all()


# ---------------------------------------------------------------------- review options (Departures 11-13)
def _train_logits(model, batch):
    model.train()
    return model(batch).logits.detach()


def test_attn_dropout_is_its_own_option():
    """Departures 11: attention probabilities use ``attn_dropout`` (official 0.0), the rest ``dropout``."""
    assert CompConfig().attn_dropout == 0.0 and CompConfig().dropout == 0.5
    model = make_model(dropout=0.5)
    for blocks in model.kp.values():
        for block in blocks:
            assert block.drop.p == 0.5  # the residual branch keeps the model's dropout
            assert all(layer.drop.p == 0.0 for layer in block.attn)
    model = make_model(dropout=0.5, attn_dropout=0.25)
    assert all(layer.drop.p == 0.25 for blocks in model.kp.values() for b in blocks for layer in b.attn)


@pytest.mark.parametrize("stage", ["unimodal", "fusion"])
def test_attn_dropout_zero_makes_train_mode_attention_deterministic(stage):
    batch = make_batch([6, 4], seed=13)
    model = make_model(dropout=0.0, attn_dropout=0.0)
    model.begin_stage(stage)
    torch.testing.assert_close(_train_logits(model, batch), _train_logits(model, batch), rtol=0, atol=0)
    noisy = make_model(dropout=0.0, attn_dropout=0.5)
    noisy.begin_stage(stage)
    torch.manual_seed(1)
    a = _train_logits(noisy, batch)
    b = _train_logits(noisy, batch)
    assert not torch.allclose(a[batch.valid], b[batch.valid])
    # and in eval mode attention dropout is off: the two models agree
    noisy.load_state_dict(model.state_dict())
    torch.testing.assert_close(_eval_logits(noisy, batch), _eval_logits(model, batch), rtol=0, atol=0)


def _pg_block_params(d: int, h: int, p: int) -> int:
    """FFN_1, FFN_2: d -> h -> h; MLP_p: h -> h -> p (Departures 12)."""
    ffn = d * h + h + h * h + h
    return 2 * ffn + (h * h + h) + (h * p + p)


def test_pg_ffn_width_sets_the_parameter_count():
    d, p, blocks = TINY["hidden"], TINY["prompt_dim"], TINY["num_blocks"]
    official = make_model()  # pg_ffn_hidden = 0 -> p
    wide = make_model(pg_ffn_hidden=d)  # the earlier d -> d -> d FFNs
    assert official.export_config()["pg_ffn_hidden"] == p  # recorded explicitly for bundles
    pg = official.pg["audio"][0]
    assert pg.ffn1[0].weight.shape == (p, d) and pg.ffn1[-1].weight.shape == (p, p)
    assert pg.ffn2[0].weight.shape == (p, d) and pg.mlp_p[-1].weight.shape == (p, p)
    wpg = wide.pg["audio"][0]
    assert wpg.ffn1[-1].weight.shape == (d, d) and wpg.mlp_p[0].weight.shape == (d, d)
    for model, h in ((official, p), (wide, d)):
        assert sum(q.numel() for q in model.pg.parameters()) == 3 * blocks * _pg_block_params(d, h, p)
    n_off = sum(q.numel() for q in official.parameters())
    n_wide = sum(q.numel() for q in wide.parameters())
    assert n_wide - n_off == 3 * blocks * (_pg_block_params(d, d, p) - _pg_block_params(d, p, p))


def test_pg_ffn_width_parameter_counts_as_documented():
    """The counts in Departures 12: default config, IEMOCAP community dims, 4 classes, n = 110."""
    dims = {"audio": 512, "text": 1024, "video": 1024}
    task = TaskSpec(TaskKind.CLASSIFICATION, ("hap", "sad", "neu", "ang"))
    counts = {}
    for h in (0, 256):
        model = build_method("comp", dims, task, {"pg_ffn_hidden": h}, {"max_dialogue_len": 110})
        counts[h] = (sum(q.numel() for q in model.parameters()), sum(q.numel() for q in model.pg.parameters()))
        del model
    assert counts[256] == (8_180_191, 1_998_432)
    assert counts[0] == (6_237_631, 55_872)


def _classifier_input(model, batch):
    got = {}
    hook = model.classifier.register_forward_pre_hook(lambda mod, args: got.__setitem__("F", args[0].detach().clone()))
    try:
        model.eval()
        with torch.no_grad():
            out = model(batch)
    finally:
        hook.remove()
    return got["F"], out.aux


@pytest.mark.parametrize("use_kp", [True, False], ids=["kp", "no-kp"])
def test_cr_scale_modalities_is_omega_times_k(use_kp):
    """weights = omega * k exactly, k = modalities weighed (3 with KP; present ones without)."""
    batch = make_batch([6, 4, 5], missing=0.4, seed=14)
    model = make_model(use_kp=use_kp, cr_scale="modalities")
    fused, aux = _classifier_input(model, batch)
    omega, w = aux["omega"], aux["fusion_weights"]
    present = (batch.present & batch.valid[..., None]).float()
    k = torch.full_like(present[..., :1], 3.0) if use_kp else present.sum(-1, keepdim=True)
    torch.testing.assert_close(w, omega * k, rtol=0, atol=0)
    valid = batch.valid
    torch.testing.assert_close(w.sum(-1)[valid], k.squeeze(-1)[valid])  # mean weight 1: the Cr-off scale
    paper = make_model(use_kp=use_kp)  # same seed: same weights, cr_scale="paper"
    fused_p, aux_p = _classifier_input(paper, batch)
    torch.testing.assert_close(aux_p["fusion_weights"], aux_p["omega"], rtol=0, atol=0)
    torch.testing.assert_close(aux_p["omega"], omega, rtol=0, atol=0)
    blocks = (*fused.shape[:-1], 3, -1)  # F = [w^a Z-bar^a, w^t Z-bar^t, w^v Z-bar^v]
    torch.testing.assert_close(fused.view(blocks)[valid], (fused_p.view(blocks) * k[..., None])[valid])


@pytest.mark.parametrize("use_kp", [True, False], ids=["kp", "no-kp"])
def test_cr_scale_modalities_matches_cr_off_with_uniform_omega(use_kp):
    """With a uniform coordinator, "modalities" feeds the classifier exactly the Cr-off input
    (KP off: absent modalities are zero either way), "paper" about 1/3 of it."""
    batch = make_batch([6, 4, 5], missing=0.4, seed=15)
    off = make_model(use_kp=use_kp, use_cr=False)
    ref, _ = _classifier_input(off, batch)
    for scale in ("modalities", "paper"):
        model = make_model(use_kp=use_kp, cr_scale=scale)
        model.load_state_dict(off.state_dict())
        with torch.no_grad():
            model.coordinator[-1].weight.zero_()
            model.coordinator[-1].bias.zero_()
        fused, aux = _classifier_input(model, batch)
        valid = batch.valid
        if scale == "modalities":
            torch.testing.assert_close(fused[valid], ref[valid], rtol=1e-6, atol=1e-7)
        else:
            k = 3.0 if use_kp else (batch.present & valid[..., None]).sum(-1, keepdim=True).float()
            torch.testing.assert_close(fused[valid], (ref / k)[valid])


@pytest.mark.parametrize(
    "use_kp,cr_mask,masked",
    [
        (False, "without_kp", True),
        (True, "without_kp", False),
        (True, "always", True),
        (False, "never", False),
        (True, "never", False),
    ],
)
def test_coordinator_masks_absent_modalities(use_kp, cr_mask, masked):
    """Departures 13: masked -> absent modalities get exactly zero weight and the softmax runs
    over the present ones (weights sum to 1); unmasked -> eq. 13 over all three."""
    assert CompConfig().cr_mask == "without_kp" and CompConfig().cr_scale == "paper"
    batch = make_batch([6, 4, 5], missing=0.4, seed=16)
    model = make_model(use_kp=use_kp, cr_mask=cr_mask)
    _, aux = _classifier_input(model, batch)
    omega = aux["omega"]
    valid = batch.valid
    absent = ~batch.present & valid[..., None]
    assert absent.any() and (batch.present & valid[..., None]).any()
    torch.testing.assert_close(omega.sum(-1)[valid], torch.ones_like(omega[..., 0])[valid])
    if masked:
        assert (omega[absent] == 0).all()
        assert (omega[batch.present & valid[..., None]] > 0).all()
        assert (omega[~valid] == 0).all()  # padding: no modality, no weight, no NaN
        # an absent modality's coordinator score cannot matter: change it, weights stay put
        with torch.no_grad():
            model.coordinator[-1].bias[0] += 50.0  # audio's score
        _, aux2 = _classifier_input(model, batch)
        only_absent_audio = valid & ~batch.present[..., 0]
        torch.testing.assert_close(aux2["omega"][only_absent_audio], omega[only_absent_audio], rtol=0, atol=0)
    else:
        assert (omega[absent] > 0).all()


def test_masked_scaled_coordinator_step_makes_no_host_sync():
    """The masking/scaling path of Departures 13 stays sync-free (cf. test_trainer_hooks)."""
    from torch.profiler import ProfilerActivity, profile

    sync_ops = {"aten::nonzero", "aten::item", "aten::_local_scalar_dense", "aten::is_nonzero", "aten::masked_select"}
    batch = make_batch([6, 4, 5], missing=0.4, seed=17)
    for options in ({"use_kp": False, "cr_scale": "modalities"}, {"cr_mask": "always", "cr_scale": "modalities"}):
        model = make_model(**options)
        model.train()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            out = model(batch)
            model.loss(out, batch)["total"].backward()
        ops = {e.key for e in prof.key_averages()}
        assert not ops & sync_ops, (options, sorted(ops & sync_ops))


def test_cr_options_in_bf16_autocast_are_finite():
    batch = make_batch([6, 2, 4], missing=0.5, seed=18)
    for options in ({"use_kp": False, "cr_scale": "modalities"}, {"cr_mask": "always", "cr_scale": "modalities"}):
        model = make_model(**options)
        model.train()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(batch)
            loss = model.loss(out, batch)["total"]
        loss.backward()
        assert torch.isfinite(loss)
        assert torch.isfinite(out.aux["fusion_weights"].float()).all()
        absent = ~batch.present & batch.valid[..., None]
        assert (out.aux["fusion_weights"][absent] == 0).all()


# ---------------------------------------------------------------------- learns
def test_short_training_run_beats_chance():
    fs = make_featureset(seed=0)
    std = Normalizer.fit(fs.split("train"))
    fs = std.apply(fs)
    max_len = max(len(g) for g in fs.split("train").dialogue_groups())
    torch.manual_seed(0)
    model = build_method("comp", fs.dims, fs.task, {"hidden": 32, "dropout": 0.1}, {"max_dialogue_len": max_len})
    cfg = TrainConfig(epochs=30, lr=3e-3, batch_size=8, patience=None, device="cpu", amp=False, seed=0)
    seed_everything(cfg.seed)  # what fit did before run_experiment took seeding over
    ready, sel_name = prepare_splits(fs, cfg)
    result = fit(model, ready.split("train"), ready.split(sel_name), cfg, sel_name)
    assert set(result.best) == {"unimodal", "fusion"}
    test = TensorData(fs.split("test"))
    metrics = evaluate(model, test, None, "dialogue", 8)
    assert metrics["WA"] > 0.5, metrics  # chance is 0.25
    # and under a missing condition (text only) it still beats chance
    only_text = np.zeros((test.n, 3), bool)
    only_text[:, 1] = True
    assert evaluate(model, test, only_text, "dialogue", 8)["WA"] > 0.4
    assert math.isfinite(result.seconds)


def test_a_bundle_saved_before_the_new_options_keeps_its_behaviour(tmp_path):
    """Bundles from before attn_dropout / pg_ffn_hidden / cr_mask existed were trained with
    attention dropout = dropout, eq. 8 at width d and an unmasked coordinator: they load with
    exactly those (a new default must not change, or refuse, an old model)."""
    import json

    from imer.fusion.bundle import bundle_spec, load_bundle, save_bundle

    dims = {"audio": 5, "text": 7, "video": 3}
    task = TaskSpec(TaskKind.CLASSIFICATION, ("a", "b", "c", "d"))
    old = {"hidden": 32, "heads": 2, "dropout": 0.3, "use_kp": False}
    torch.manual_seed(0)
    m = build_method("comp", dims, task, {**old, "attn_dropout": 0.3, "pg_ffn_hidden": 32, "cr_mask": "never"}, {"max_dialogue_len": 4})
    norm = Normalizer({k: np.zeros(d, np.float32) for k, d in dims.items()}, {k: np.ones(d, np.float32) for k, d in dims.items()})
    save_bundle(tmp_path, m, norm, bundle_spec(m, {}))
    cfg = json.loads((tmp_path / "config.json").read_text())
    for k in ("attn_dropout", "pg_ffn_hidden", "cr_mask", "cr_scale"):
        cfg["method_config"].pop(k)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    loaded = load_bundle(tmp_path).method
    assert (loaded.config.attn_dropout, loaded.config.pg_ffn_hidden, loaded.config.cr_mask) == (0.3, 32, "never")
    g = torch.Generator().manual_seed(1)
    present = torch.rand(2, 4, 3, generator=g) > 0.4
    batch = Batch(feats={k: torch.randn(2, 4, d, generator=g) for k, d in dims.items()}, present=present,
                  valid=torch.ones(2, 4, dtype=torch.bool), y=torch.zeros(2, 4, dtype=torch.long), index=torch.zeros(2, 4, dtype=torch.long))
    m.eval()
    torch.testing.assert_close(loaded(batch).logits, m(batch).logits)
