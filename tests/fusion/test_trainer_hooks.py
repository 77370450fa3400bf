"""The trainer's hooks for methods, each exercised by a tiny method, and the sync-free step.

* per-stage mask policy: a stage trained on complete data (MoMKE's stage 1), a stage under a
  fixed condition, a stage under the run's protocol;
* a method that draws its own training masks and receives validation metrics per modality
  combination every epoch (MCULoRA's DPFT), while selection stays under the trainer's masks;
* an optimiser declared by the method config (DQF's momentum SGD);
* a ComP training step that makes no host-device synchronisation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from torch import nn

from synthetic import make_featureset

from imer.fusion.base import FusionMethod, MethodOutput, OptimizerSpec, build_method, task_loss
from imer.fusion.data import Normalizer, TensorData
from imer.fusion.evaluation import evaluate
from imer.fusion.experiment import prepare_splits
from imer.fusion.missing import CONDITIONS, MaskSchedule
from imer.fusion.trainer import TrainConfig, fit, make_optimizer, seed_everything
from imer.types import MODALITY_NAMES


def _ready(seed: int = 0):
    fs = make_featureset(n_dialogues=24, noise=1.0, seed=seed)
    fs = Normalizer.fit(fs.split("train")).apply(fs)
    ready, name = prepare_splits(fs, TrainConfig())
    return ready.split("train"), ready.split(name), name


@dataclass
class TinyConfig:
    hidden: int = 8
    optimizer: OptimizerSpec = field(default_factory=OptimizerSpec)

    @classmethod
    def tiny(cls) -> "TinyConfig":
        return cls()


class Recorder(FusionMethod):
    """A linear late-fusion model that records the present mask of every training batch."""

    config_class = TinyConfig
    registry_name = "recorder"  # not registered: these methods exist for the tests only
    stages = ("first", "second")
    stage_fractions = (0.5, 0.5)

    def __init__(self, config, dims, task):
        super().__init__(config, dims, task)
        self.heads = nn.ModuleDict({m: nn.Linear(dims[m], self.num_outputs) for m in MODALITY_NAMES})
        self.seen: dict[str, list[torch.Tensor]] = {}

    def forward(self, batch) -> MethodOutput:
        if self.training:
            self.seen.setdefault(self.stage, []).append(batch.present[batch.valid].clone())
        x = self.masked_inputs(batch)
        logits = sum(self.heads[m](x[m]) for m in MODALITY_NAMES)
        return MethodOutput(logits)


class CompleteThenProtocol(Recorder):
    stage_masks = {"first": "complete"}


class ConditionThenProtocol(Recorder):
    stage_masks = {"first": "at"}


def _seen(method: Recorder, stage: str) -> np.ndarray:
    return torch.cat(method.seen[stage]).numpy()


def test_a_stage_declared_complete_trains_on_every_present_stream():
    train, sel, name = _ready()
    seed_everything(0)
    m = CompleteThenProtocol(TinyConfig(), train.dims, train.task)
    res = fit(m, train, sel, TrainConfig(epochs=4, missing_rate=0.5, device="cpu", patience=None), name)
    first, second = _seen(m, "first"), _seen(m, "second")
    assert first.all(), "the complete stage saw a masked stream"
    assert len(first) == 2 * len(train)  # 2 epochs, every utterance once each
    assert 0.3 < 1 - second.mean() < 0.7  # the second stage trained under the run's MR 0.5
    assert res.best["first"]["protocol"] == "complete" and res.best["second"]["protocol"] == "mr0.5"


def test_a_stage_declared_under_a_condition_trains_under_it():
    train, sel, name = _ready()
    seed_everything(0)
    m = ConditionThenProtocol(TinyConfig(), train.dims, train.task)
    fit(m, train, sel, TrainConfig(epochs=2, device="cpu", patience=None), name)
    first = _seen(m, "first")
    assert first[:, 0].all() and first[:, 1].all() and not first[:, 2].any()


class DrawsItsOwn(Recorder):
    """Keeps only audio in training, and adapts from per-combination validation feedback."""

    wants_combination_feedback = True

    def __init__(self, config, dims, task):
        super().__init__(config, dims, task)
        self.draws: list[tuple[str, int]] = []
        self.feedback: list[tuple[str, int, dict]] = []

    def draw_train_mask(self, stage, epoch, available, rng):
        self.draws.append((stage, epoch))
        mask = np.zeros_like(available)
        mask[:, 0] = True
        return mask

    def on_epoch_end(self, stage, epoch, feedback):
        self.feedback.append((stage, epoch, feedback))


def test_a_method_draws_its_own_masks_and_sees_feedback_per_combination():
    train, sel, name = _ready()
    seed_everything(0)
    m = DrawsItsOwn(TinyConfig(), train.dims, train.task)
    cfg = TrainConfig(epochs=4, missing_rate=0.3, device="cpu", patience=None)
    res = fit(m, train, sel, cfg, name)
    assert m.draws == [("first", 0), ("first", 1), ("second", 0), ("second", 1)]
    for stage in ("first", "second"):
        seen = _seen(m, stage)
        assert seen[:, 0].all() and not seen[:, 1:].any()  # exactly the method's masks
    assert [(s, e) for s, e, _ in m.feedback] == m.draws
    for _, _, fb in m.feedback:
        assert set(fb) == set(CONDITIONS)
        assert all(0.0 <= fb[c]["WA"] <= 1.0 for c in CONDITIONS)
    # The feedback is the model under each fixed condition on the selection split...
    data = TensorData(sel)
    from imer.fusion.missing import condition_mask

    last = m.feedback[-1][2]
    # ...but selection (and the restored best epoch) stays under the trainer's own masks.
    sel_mask = MaskSchedule(cfg.protocol(), cfg.seed, sel.present).eval_mask(len(sel))
    assert res.history[-1]["valid"]["WA"] == pytest.approx(
        res.history[-1]["valid"]["WA"]
    )
    if res.best["second"]["epoch"] == 1:  # the last epoch is the kept one: recompute both views
        assert evaluate(m, data, sel_mask, "utterance", 256)["WA"] == pytest.approx(res.best["second"]["metrics"]["WA"])
        for c in CONDITIONS:
            assert evaluate(m, data, condition_mask(len(sel), c), "utterance", 256)["WA"] == pytest.approx(last[c]["WA"])


def test_feedback_is_empty_unless_asked_for():
    train, sel, name = _ready()

    class Plain(Recorder):
        def __init__(self, *a):
            super().__init__(*a)
            self.fb = []

        def on_epoch_end(self, stage, epoch, feedback):
            self.fb.append(feedback)

    m = Plain(TinyConfig(), train.dims, train.task)
    fit(m, train, sel, TrainConfig(epochs=2, device="cpu"), name)
    assert m.fb == [{}, {}]


def test_a_method_can_declare_momentum_sgd():
    train, sel, name = _ready()
    m = Recorder(TinyConfig(optimizer=OptimizerSpec("sgd", momentum=0.8, nesterov=True)), train.dims, train.task)
    groups = m.param_groups(0.0)
    opt = make_optimizer(m, groups, TrainConfig(lr=0.05), torch.device("cpu"))
    assert isinstance(opt, torch.optim.SGD)
    assert opt.param_groups[0]["momentum"] == 0.8 and opt.param_groups[0]["nesterov"] is True
    default = make_optimizer(Recorder(TinyConfig(), train.dims, train.task), groups, TrainConfig(), torch.device("cpu"))
    assert isinstance(default, torch.optim.Adam)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    seed_everything(0)
    fit(m, train, sel, TrainConfig(epochs=2, lr=0.05, device="cpu"), name)
    assert any(not torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_a_method_declares_its_learning_rate_and_the_run_overrides_it():
    from imer.fusion.train_config import DEFAULT_LR
    from imer.fusion.trainer import learning_rate

    train, sel, name = _ready()

    class Slow(Recorder):
        default_optimizer = OptimizerSpec(lr=3e-4)

    plain, slow = Recorder(TinyConfig(), train.dims, train.task), Slow(TinyConfig(), train.dims, train.task)
    assert learning_rate(plain, TrainConfig()) == DEFAULT_LR
    assert learning_rate(slow, TrainConfig()) == 3e-4
    assert learning_rate(slow, TrainConfig(lr=0.05)) == 0.05  # the run's rate wins
    own = Recorder(TinyConfig(optimizer=OptimizerSpec("sgd", lr=0.2)), train.dims, train.task)
    assert learning_rate(own, TrainConfig()) == 0.2  # a config's own spec wins over the class default
    opt = make_optimizer(slow, slow.param_groups(0.0), TrainConfig(), torch.device("cpu"))
    assert opt.param_groups[0]["lr"] == 3e-4
    res = fit(slow, train, sel, TrainConfig(epochs=2, device="cpu"), name)
    assert res.lr == 3e-4


def test_weight_average_is_what_selection_scores_and_keeps():
    """With ema_half_life the kept weights are the moving average, not the last step's, and the
    average follows the rule exactly (one lerp per step, decay from the half-life in steps)."""
    from imer.fusion.trainer import WeightAverage

    w = nn.Parameter(torch.zeros(3))
    avg = WeightAverage([w], half_life=1.0)  # decay 0.5 a step
    with torch.no_grad():
        w.fill_(4.0)
    avg.update()
    torch.testing.assert_close(avg.average[0], torch.full((3,), 2.0))
    avg.swap()
    torch.testing.assert_close(w.detach(), torch.full((3,), 2.0))
    avg.swap()
    torch.testing.assert_close(w.detach(), torch.full((3,), 4.0))
    frozen = nn.Parameter(torch.ones(2), requires_grad=False)
    assert WeightAverage([w, frozen], 2.0).params == [w]  # frozen weights are not averaged

    train, sel, name = _ready()
    seed_everything(0)
    a = Recorder(TinyConfig(), train.dims, train.task)
    seed_everything(0)
    b = Recorder(TinyConfig(), train.dims, train.task)
    cfg = dict(epochs=6, device="cpu", patience=None, lr=0.05)
    seed_everything(0)
    ra = fit(a, train, sel, TrainConfig(**cfg), name)
    seed_everything(0)
    rb = fit(b, train, sel, TrainConfig(**cfg, ema_half_life=2.0), name)
    assert ra.steps == rb.steps
    differs = any(not torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert differs, "the averaged run kept the same weights as the plain run"
    with pytest.raises(Exception, match="ema_half_life"):
        TrainConfig(ema_half_life=-1).validate()


def test_a_bad_declaration_is_a_clear_error():
    from imer.errors import BadInput

    train, sel, name = _ready()

    class Typo(Recorder):
        stage_masks = {"first": "complet"}

    with pytest.raises(BadInput, match="condition"):
        fit(Typo(TinyConfig(), train.dims, train.task), train, sel, TrainConfig(epochs=2, device="cpu"), name)

    class WrongShape(Recorder):
        def draw_train_mask(self, stage, epoch, available, rng):
            return np.ones((3, 3), bool)

    with pytest.raises(BadInput, match="draw_train_mask"):
        fit(WrongShape(TinyConfig(), train.dims, train.task), train, sel, TrainConfig(epochs=2, device="cpu"), name)


# ---------------------------------------------------------------------- a sync-free step
SYNC_OPS = {"aten::nonzero", "aten::item", "aten::_local_scalar_dense", "aten::is_nonzero", "aten::masked_select"}


@pytest.mark.parametrize(
    "method, mode",
    [("comp", "dialogue"), ("comp", "utterance"), ("concat", "utterance"), ("momke", "dialogue"), ("momke", "utterance"),
     ("mculora", "dialogue")],
)
def test_a_training_step_makes_no_host_sync(method, mode):
    """Batch building, forward, loss, backward and clipping: none of the ops that make the host
    wait for the device (``nonzero`` from boolean indexing, ``item`` from ``.any()``/``float()``)
    appears. The optimiser step is left out here: on CPU, Adam reads its step counter with
    ``item()`` (a host tensor, no device involved); on CUDA the trainer uses the fused Adam/SGD
    kernels, whose counters stay on the device. On a GPU, ``torch.cuda.set_sync_debug_mode``
    checks the whole step (``benchmarks/gpu.sh``)."""
    from torch.profiler import ProfilerActivity, profile

    fs = make_featureset(n_dialogues=12, noise=1.0, seed=1)
    fs = Normalizer.fit(fs.split("train")).apply(fs)
    train = fs.split("train")
    seed_everything(0)
    m = build_method(method, fs.dims, fs.task, {"hidden": 16, "heads": 2} if method != "concat" else {"hidden": 16}, {"max_dialogue_len": 10, "batch_mode": mode})
    cfg = TrainConfig(device="cpu")
    for stage in m.stages:
        m.begin_stage(stage)
        m.train()
        groups = [g for g in m.param_groups(cfg.weight_decay) if g["params"]]
        params = [p for g in groups for p in g["params"]]
        opt = make_optimizer(m, groups, cfg, torch.device("cpu"))
        data = TensorData(train)
        mask = torch.from_numpy(MaskSchedule(cfg.protocol(), 0, train.present).train_mask(len(train), 0))
        batches = data.iterate(mode, 4, shuffle=True, generator=torch.Generator().manual_seed(0), protocol_mask=mask)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            batch = next(batches)
            out = m(batch)
            losses = m.loss(out, batch)
            opt.zero_grad(set_to_none=True)
            losses["total"].backward()
            torch.nn.utils.clip_grad_norm_(params, 5.0, foreach=True)
        opt.step()
        ops = {e.key for e in prof.key_averages()}
        assert not ops & SYNC_OPS, f"{method} {stage} ({mode}): host syncs {sorted(ops & SYNC_OPS)}"
        assert torch.isfinite(losses["total"].detach())


def test_evaluation_summaries_make_no_host_sync_per_batch():
    """MoMKE's expert load is summed on the device batch after batch; the host reads it once."""
    from torch.profiler import ProfilerActivity, profile

    fs = make_featureset(n_dialogues=12, noise=1.0, seed=1)
    m = build_method("momke", fs.dims, fs.task, {"hidden": 16, "heads": 2, "depth": 1}).eval()
    data = TensorData(fs)
    batches = list(data.iterate("dialogue", 4, shuffle=False))
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        total = None
        for batch in batches:
            sums = m.summary_sums(m(batch), batch)
            total = sums if total is None else {k: total[k] + v for k, v in sums.items()}
    assert len(batches) > 1 and set(total) == {"router_weight_sum", "router_count"}
    assert not {e.key for e in prof.key_averages()} & SYNC_OPS


def test_masked_losses_equal_the_losses_over_the_selected_positions():
    """The sync-free task loss is the old boolean-indexed loss, exactly, and 0 when nothing is selected."""
    import torch.nn.functional as F

    from imer.fusion.data import Batch
    from imer.types import TaskKind, TaskSpec

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 4, generator=g)
    y = torch.randint(-1, 4, (3, 5), generator=g)
    valid = torch.rand(3, 5, generator=g) > 0.2
    batch = Batch(feats={}, present=torch.ones(3, 5, 3, dtype=torch.bool), valid=valid, y=y, index=torch.zeros(3, 5, dtype=torch.long))
    cls = TaskSpec(TaskKind.CLASSIFICATION, ("a", "b", "c", "d"))
    sel = valid & (y >= 0)
    torch.testing.assert_close(task_loss(logits, batch, cls), F.cross_entropy(logits[sel], y[sel]))
    nothing = torch.zeros(3, 5, dtype=torch.bool)
    assert task_loss(logits, batch, cls, nothing).item() == 0.0
    yr = torch.randn(3, 5, generator=g)
    yr[0, 0] = float("nan")  # unlabelled
    rb = Batch(feats={}, present=batch.present, valid=valid, y=yr, index=batch.index)
    reg = TaskSpec(TaskKind.REGRESSION, ("v",))
    out = torch.randn(3, 5, 1, generator=g)
    rsel = valid & ~torch.isnan(yr)
    torch.testing.assert_close(task_loss(out, rb, reg), F.mse_loss(out[rsel].squeeze(-1), yr[rsel]))
