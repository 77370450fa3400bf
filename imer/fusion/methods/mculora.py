"""MCULoRA — modality-combination-aware LoRA with dynamic training-data sampling.

Zhao, Shu, ..., Wu, ACM MM 2025 (``../shared/seeds/mculora-paper.txt``); official code: github
gdace829/MCULoRA, read at the April revision ``b5d07be`` (the project's methods notes, §3: the
latest revision's private adapters get exactly zero gradient and its folds 2-5 crash).

What is implemented, with the paper's equation numbers:

* **Backbone** (the code's, MoMKE's stage-1 architecture): per-modality projection, one
  transformer expert per modality over the utterances of a dialogue (attention without output
  projection, ``x + A(x) + FFN(A(x))``), the representations concatenated, a residual ReLU
  layer and a linear head. Every Linear of the projections, the FFNs, the fusion layer and the
  head is a LoRA linear (eq. 1), as in the code; attention's q/k/v are not.
* **Decoupled adapters** (eq. 1-2): each LoRA linear holds one shared (common) adapter
  ``B_com A_com`` and one private adapter ``B_i A_i`` per non-empty modality combination i (7).
  The network runs twice: the *common* pass ``W x + s B_com A_com x`` gives ``R_com`` and
  ``y_com``; the *private* pass ``W x + s B_i A_i x`` gives ``R_prt`` and ``y_hat``. The
  private adapter is chosen **per utterance** from its present mask (Departures 2).
* **Prediction** (eq. 4): ``y = (1 - w) y_com + w y_hat`` with ``w = sigmoid(MLP(R_prt))`` per
  utterance (``mix="learned"``); ``mix="sum"`` is the code's ``y_com + y_hat``.
* **Soft orthogonality** (eq. 3): per present (utterance, modality),
  ``cos^2(R_com^m, R_prt^m) - cos(R_com^m, R^m)`` with ``R^m`` the adapter-free (pre-trained)
  representation, averaged, weight ``ort_weight`` (beta = 0.001, eq. 7). ``ort="paper"`` uses the
  raw cosine in the first term (Departures 4).
* **Stages**: "pretrain" (the base model, adapters off, under the run's missing protocol) then
  "adapt" (adapters and the mixing MLP train, the base is frozen: eq. 1 "freeze the weights of
  the pre-trained model"). ``joint=True`` is the code's single stage: everything trains from
  scratch with the adapters on. ``freeze_base=False`` lets the base train in "adapt" too.
* **DPFT** (eq. 8-10), through the trainer's hooks: in the last stage every training utterance
  gets a modality combination drawn from probabilities q over the 7 non-empty combinations
  (among those its really present streams allow). After each epoch the trainer evaluates the
  **validation** split under each combination; the method's summary gives the decoupling degree
  ``S_i`` = mean Jensen-Shannon divergence between ``softmax(R_prt^m)`` and ``softmax(R_com^m)``
  over present (utterance, modality) pairs under combination i. ``dS = S_t - S_{t-1}``
  (``S_0 = 0``); combinations ranked by dS ascending (least progress = hardest first); the three
  hardest get ``+q_base * lambda * sigmoid(dS)``, the three easiest ``-...``, the middle one
  nothing; q is then projected onto {q_min <= q <= q_max, sum 1}. ``use_dpft=False`` keeps q
  uniform. The probabilities over epochs are kept in ``dpft_history``.

Ablations (the paper's ablation table): ``use_mcla=False`` (the base model alone: one stage;
DPFT then ranks the combinations by their validation accuracy gain, Departures 7),
``use_dpft=False``; ``rank`` 1-8 (Fig. 3).

Departures (paper vs. here, and where the official code differs):

1. **Adapter semantics.** Eq. 2 writes the private and common representations as pure low-rank
   maps of the input; the code runs a private "stream" through the FFN adapters only. Here both
   are LoRA in eq. 1's sense (the frozen W plus the adapter) through the whole network, two
   passes (a third, adapter-free pass without gradient for eq. 3's ``R^m``). The layers of
   modality m hold private adapters only for the 4 combinations that contain m (the code gives
   every layer 8, the empty combination's included): the others could never receive a gradient.
2. **Routing per utterance.** The code takes the combination index of the first utterance of the
   batch for all of it (on IEMOCAP host and guest masks are drawn separately, so about half the
   utterances of a batch meet the wrong adapter). Here each utterance uses the adapter of its
   own present mask; a valid utterance with nothing present uses the all-modality adapter.
3. **Mixing weight.** No released version has eq. 4's w (the code sums); ``mix="learned"`` is the
   paper, ``mix="sum"`` the code. w's MLP reads the concatenated private representations
   (3d -> d -> 1).
4. **Eq. 3.** No released version has L_ort. Minimising a raw cosine drives the two vectors to
   opposite directions, not orthogonal ones; the default squares it (``ort="square"``).
   The sums over combinations and modalities of eq. 3 are means here (independent of batch size).
   ``ort_weight=0`` is the code.
5. **DPFT statistics come from validation.** The paper ("recorded in the test set") and both code
   versions steer training with the test split. Here the statistics come from the validation
   split in every selection mode; with ``--selection test`` a validation split is still carved
   from training for them. The JS divergence is the true one (with the 1/2 factors; eq. 8 omits
   them) per utterance; the code's reversed, batch-size-scaled KL and its comparison with epoch 0
   forever are not reproduced.
6. **DPFT values.** The paper gives none. Defaults: q starts uniform (1/7), ``q_base`` = 1/7 (the
   uniform probability), ``dpft_lambda`` 0.05 (a step of 0.004-0.007 per epoch, the size of the
   code's 0.003), ``q_min`` 0.5/7, ``q_max`` 2/7 (no combination is drawn less than half or more
   than twice as often as under uniform sampling). The code changes per-modality keep
   probabilities in [0.4, 0.6] and may draw batches with no modality at all (1/8 of them); here
   only non-empty combinations are drawn, per utterance (the trainer's mask hook is per
   utterance, so the code's one-combination-per-batch sampling is not offered).
7. **DPFT without MCLA.** With no adapters there is no decoupling degree; the ablation row
   "without MCLA, with DPFT" ranks the combinations by the change of their validation accuracy
   (the code's later revision steers by accuracy too, on test).
8. **Missing modalities.** The code lets a constant "missing" vector (projection bias through
   attention with no keys) enter the fusion; here the representation of an absent modality is
   zero, as in MoMKE.
9. **Not provided**: the cross-attention fusion of §3.2 (the code concatenates; so does this),
   the code's FFN-only private stream, and one-combination-per-batch sampling.
10. **Hyper-parameters**: the official IEMOCAP command (d = 256, 4 layers, 2 heads, FFN ratio 1,
    dropout 0.5, LoRA rank 4 in projections, fusion layer and head and 8 in the FFNs, LoRA
    dropout 0.1, scale 1, Adam lr 1e-4, L2 1e-5, beta 0.001). imer's run defaults apply (epochs
    split 50/50 between the stages, early stopping on validation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from imer.errors import BadInput
from imer.fusion.base import FusionMethod, MethodOutput, OptimizerSpec, masked_mean, register_method, task_loss
from imer.fusion.data import Batch
from imer.fusion.layers import MaskedSelfAttention
from imer.fusion.missing import CONDITIONS
from imer.fusion.metrics import primary_metric
from imer.types import MODALITY_NAMES, TaskSpec

# The 7 non-empty combinations, in the protocol's order ("a", "t", "v", "at", "av", "tv", "atv").
COMBINATIONS: tuple[str, ...] = tuple(CONDITIONS)
_BITS = np.array([[c in combo for c in "atv"] for combo in COMBINATIONS])  # [7, 3]


def _combination_lookup() -> torch.Tensor:
    """present bits (a + 2t + 4v, 0..7) -> combination index; nothing present -> "atv"."""
    table = torch.full((8,), COMBINATIONS.index("atv"), dtype=torch.long)
    for i, bits in enumerate(_BITS):
        table[int(bits[0]) + 2 * int(bits[1]) + 4 * int(bits[2])] = i
    return table


@dataclass
class MculoraConfig:
    hidden: int = 256  # d
    depth: int = 4  # layers per modality expert
    heads: int = 2
    ffn_ratio: float = 1.0
    dropout: float = 0.5
    attn_dropout: float = 0.0
    rank: int = 4  # LoRA rank of the projections, fusion layer and head (paper: 4; Fig. 3 sweeps 1-8)
    ffn_rank: int = 0  # LoRA rank of the FFNs; 0 = 2 x rank (the code: 8)
    lora_dropout: float = 0.1  # on the adapters' input
    lora_scale: float = 1.0  # alpha of eq. 1
    use_mcla: bool = True  # the combination-aware adapters (ablation: off = the base model)
    use_dpft: bool = True  # dynamic combination sampling (ablation: off = uniform)
    mix: Literal["learned", "sum"] = "learned"  # eq. 4 / the code; Departures 3
    ort: Literal["square", "paper"] = "square"  # Departures 4
    ort_weight: float = 0.001  # beta of eq. 7
    freeze_base: bool = True  # eq. 1: the pre-trained weights stay frozen in "adapt"
    joint: bool = False  # the code: one stage, everything trains from scratch
    q_base: float = 1 / 7  # Departures 6
    dpft_lambda: float = 0.05
    q_min: float = 0.5 / 7
    q_max: float = 2 / 7

    @classmethod
    def tiny(cls) -> "MculoraConfig":
        """Small enough for the contract test."""
        return cls(hidden=8, depth=1, heads=2, rank=2)


class LoraLinear(nn.Module):
    """``W x + b`` plus one shared and one private low-rank adapter per combination (eq. 1-2).

    ``combos``: the combinations (indices into :data:`COMBINATIONS`) this layer holds a private
    adapter for: all 7 in the fusion layer and head, the 4 that contain modality m in m's
    projection and expert (an adapter for a combination without m would only ever see m's zero
    input, or feed a representation that is zeroed: it could never learn).
    ``route``: None = the base alone; ``"common"`` = base + shared adapter; a float one-hot
    ``[..., 7]`` = base + each position's private adapter (all of the layer's adapters computed
    and selected with the one-hot: static shapes, no host sync; the low-rank work is tiny).
    """

    def __init__(self, d_in: int, d_out: int, rank: int, combos: "tuple[int, ...] | int", dropout: float, scale: float):
        super().__init__()
        combos = tuple(range(combos)) if isinstance(combos, int) else tuple(combos)
        self.base = nn.Linear(d_in, d_out)
        self.scale = scale
        self.register_buffer("cols", torch.tensor(combos, dtype=torch.long), persistent=False)
        self.a_com = nn.Parameter(torch.empty(rank, d_in))
        self.b_com = nn.Parameter(torch.zeros(d_out, rank))
        self.a_prt = nn.Parameter(torch.empty(len(combos), rank, d_in))
        self.b_prt = nn.Parameter(torch.zeros(len(combos), d_out, rank))
        for a in (self.a_com, *self.a_prt):  # as nn.Linear's weight; B starts at zero (LoRA)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, route: "torch.Tensor | str | None" = None) -> torch.Tensor:
        y = self.base(x)
        if route is None:
            return y
        h = self.drop(x)
        if isinstance(route, str):
            return y + self.scale * F.linear(F.linear(h, self.a_com), self.b_com)
        if route.shape[-1] != self.a_prt.shape[0]:
            route = route.index_select(-1, self.cols)  # this layer's combinations (the rest add nothing)
        low = torch.einsum("...d,krd->...kr", h, self.a_prt) * route[..., None].to(h.dtype)
        return y + self.scale * torch.einsum("...kr,kor->...o", low, self.b_prt)


class _Layer(nn.Module):
    """The code's expert layer: ``x + A(x) + FFN(A(x))``, FFN linears with adapters."""

    def __init__(self, cfg: MculoraConfig, combos: tuple[int, ...]):
        super().__init__()
        d, width = cfg.hidden, max(1, int(cfg.hidden * cfg.ffn_ratio))
        r = cfg.ffn_rank if cfg.ffn_rank > 0 else 2 * cfg.rank
        self.attn = MaskedSelfAttention(d, cfg.heads, cfg.attn_dropout, out_proj=False)
        self.fc1 = LoraLinear(d, width, r, combos, cfg.lora_dropout, cfg.lora_scale)
        self.fc2 = LoraLinear(width, d, r, combos, cfg.lora_dropout, cfg.lora_scale)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, keys: torch.Tensor, route) -> torch.Tensor:
        a = self.attn(x, keys)
        f = self.drop(self.fc2(self.drop(F.gelu(self.fc1(a, route))), route))
        return x + a + f


@register_method("mculora")
class Mculora(FusionMethod):
    """MCULoRA (MM-25): shared and per-combination LoRA adapters on a MoMKE-style backbone, with
    combination sampling steered by how far each combination's adapters have decoupled."""

    config_class = MculoraConfig
    description = "MCULoRA (MM-25): shared + per-combination LoRA adapters, DPFT combination sampling"
    stages = ("pretrain", "adapt")
    stage_fractions = (0.5, 0.5)  # "the same maximum number of epochs" in both phases
    default_batch_mode = "dialogue"
    default_optimizer = OptimizerSpec(lr=1e-4)  # official Adam lr
    wants_combination_feedback = True

    def __init__(self, config: MculoraConfig, dims: dict[str, int], task: TaskSpec):
        super().__init__(config, dims, task)
        cfg = config
        if cfg.rank < 1 or cfg.ffn_rank < 0:
            raise BadInput(f"mculora: rank {cfg.rank} / ffn_rank {cfg.ffn_rank}: ranks are positive (ffn_rank 0 = 2 x rank)")
        k = len(COMBINATIONS)
        if not (0 < cfg.q_min <= 1 / k <= cfg.q_max <= 1):
            raise BadInput(f"mculora: need 0 < q_min <= 1/7 <= q_max <= 1 (got q_min {cfg.q_min}, q_max {cfg.q_max})")
        if not cfg.use_mcla:
            self.stages, self.stage_fractions = ("pretrain",), (1.0,)
        elif cfg.joint:
            self.stages, self.stage_fractions = ("adapt",), (1.0,)
        self.stage = self.stages[-1]
        self.wants_combination_feedback = cfg.use_dpft
        d, mods = cfg.hidden, MODALITY_NAMES

        def lora(d_in: int, d_out: int, combos: tuple[int, ...]) -> LoraLinear:
            return LoraLinear(d_in, d_out, cfg.rank, combos, cfg.lora_dropout, cfg.lora_scale)

        every = tuple(range(k))
        having = {m: tuple(i for i, c in enumerate(COMBINATIONS) if m[0] in c) for m in mods}
        self.proj = nn.ModuleDict({m: lora(dims[m], d, having[m]) for m in mods})
        self.experts = nn.ModuleDict({m: nn.ModuleList(_Layer(cfg, having[m]) for _ in range(cfg.depth)) for m in mods})
        self.fuse = lora(3 * d, 3 * d, every)
        self.head = lora(3 * d, self.num_outputs, every)
        self.mix_mlp = nn.Sequential(nn.Linear(3 * d, d), nn.GELU(), nn.Linear(d, 1))  # eq. 4's w
        self.drop = nn.Dropout(cfg.dropout)
        # present bits (a + 2t + 4v) -> the one-hot of its combination (a lookup: F.one_hot checks
        # its input's range with a host sync)
        self.register_buffer("route_table", F.one_hot(_combination_lookup(), k).float(), persistent=False)
        # DPFT state, kept in the bundle: sampling probabilities and the last decoupling degrees.
        self.register_buffer("combo_probs", torch.full((k,), 1.0 / k, dtype=torch.float64))
        self.register_buffer("last_signal", torch.zeros(k, dtype=torch.float64))
        self.dpft_history: list[dict] = []

    # ------------------------------------------------------------------ parameters and stages
    def _adapter_params(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if n.rsplit(".", 1)[-1] in ("a_com", "b_com", "a_prt", "b_prt")]

    def begin_stage(self, name: str) -> None:
        super().begin_stage(name)
        adapters = {id(p) for p in self._adapter_params()} | {id(p) for p in self.mix_mlp.parameters()}
        for p in self.parameters():
            if name == "pretrain":  # the base model alone
                p.requires_grad_(id(p) not in adapters)
            elif self.config.freeze_base and not self.config.joint:  # adapt: eq. 1, W frozen
                p.requires_grad_(id(p) in adapters)
            else:
                p.requires_grad_(True)

    @property
    def _adapting(self) -> bool:
        return self.config.use_mcla and self.stage == "adapt"

    # ------------------------------------------------------------------ forward
    def _route(self, present: torch.Tensor) -> torch.Tensor:
        """Each position's combination as a one-hot ``[B, L, 7]`` from its present mask."""
        bits = present.long()
        return F.embedding(bits[..., 0] + 2 * bits[..., 1] + 4 * bits[..., 2], self.route_table)

    def _network(self, x: dict[str, torch.Tensor], keep: dict[str, torch.Tensor], route) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """One pass: (logits, concatenated representation, per-modality representations)."""
        reps = {}
        for m in MODALITY_NAMES:
            h = self.drop(self.proj[m](x[m], route))
            for layer in self.experts[m]:
                h = layer(h, keep[m], route)
            reps[m] = torch.where(keep[m][..., None], h, torch.zeros_like(h))  # Departures 8
        joint = torch.cat([reps[m] for m in MODALITY_NAMES], dim=-1)
        hidden = joint + self.drop(F.relu(self.fuse(joint, route)))
        return self.head(hidden, route), joint, reps

    def forward(self, batch: Batch) -> MethodOutput:
        x = self.masked_inputs(batch)
        present = batch.present & batch.valid[..., None]
        keep = {m: present[..., j] for j, m in enumerate(MODALITY_NAMES)}
        if not self._adapting:
            logits, _, reps = self._network(x, keep, None)
            return MethodOutput(logits, {"reps": reps})
        y_com, _, com = self._network(x, keep, "common")
        y_prt, joint_prt, prt = self._network(x, keep, self._route(present))
        aux = {"reps_com": com, "reps_prt": prt}
        if self.config.mix == "sum":  # the code
            logits = y_com + y_prt
        else:  # eq. 4
            w = torch.sigmoid(self.mix_mlp(joint_prt))
            logits = (1 - w) * y_com + w * y_prt
            aux["mix_weight"] = w.squeeze(-1)
        if self.training and self.config.ort_weight > 0:
            with torch.no_grad():  # eq. 3's R^m: the pre-trained (adapter-free) representation
                _, _, aux["reps_base"] = self._network(x, keep, None)
        return MethodOutput(logits, aux)

    # ------------------------------------------------------------------ loss
    def loss(self, out: MethodOutput, batch: Batch) -> dict[str, torch.Tensor]:
        t = task_loss(out.logits, batch, self.task)
        terms = {"task": t}
        total = t
        if self._adapting and self.training and self.config.ort_weight > 0:
            present = batch.present & batch.valid[..., None]
            per = []
            for j, m in enumerate(MODALITY_NAMES):
                com, prt, base = (out.aux[k][m].float() for k in ("reps_com", "reps_prt", "reps_base"))
                first = F.cosine_similarity(com, prt, dim=-1)
                first = first.square() if self.config.ort == "square" else first
                per.append(torch.where(present[..., j], first - F.cosine_similarity(com, base, dim=-1), torch.zeros_like(first)))
            terms["ort"] = masked_mean(torch.stack(per, -1), present)
            total = total + self.config.ort_weight * terms["ort"]
        terms["total"] = total
        return terms

    # ------------------------------------------------------------------ DPFT (eq. 8-10)
    def summary_sums(self, out: MethodOutput, batch: Batch) -> dict[str, torch.Tensor]:
        """Sum of the JS divergence between softmax(R_prt^m) and softmax(R_com^m) over present
        (utterance, modality) pairs, and their count (eq. 8's decoupling degree)."""
        if "reps_prt" not in out.aux:
            return {}
        present = (batch.present & batch.valid[..., None]).float()
        total = torch.zeros((), device=present.device)
        for j, m in enumerate(MODALITY_NAMES):
            js = _js_divergence(out.aux["reps_prt"][m].float(), out.aux["reps_com"][m].float())
            total = total + (js * present[..., j]).sum()
        return {"js_sum": total, "js_count": present.sum()}

    def summarize(self, sums: dict[str, np.ndarray]) -> dict:
        if "js_sum" not in sums:
            return {}
        return {"decoupling": float(sums["js_sum"] / max(float(sums["js_count"]), 1.0))}

    def draw_train_mask(self, stage: str, epoch: int, available: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
        """In the last stage: one combination per utterance drawn from q, among the combinations
        its really present streams allow (never an empty one)."""
        if stage != self.stages[-1]:
            return None  # pretraining under the run's protocol
        q = self.combo_probs.detach().cpu().numpy()
        return sample_combinations(q, np.asarray(available, dtype=bool), rng)

    def on_epoch_end(self, stage: str, epoch: int, feedback: dict[str, dict[str, float]]) -> None:
        if not (self.config.use_dpft and stage == self.stages[-1] and feedback):
            return
        key = "decoupling" if self.config.use_mcla else primary_metric(self.task)  # Departures 7
        signal = np.array([feedback[c].get(key, np.nan) for c in COMBINATIONS], dtype=float)
        if not np.isfinite(signal).all():
            return  # a combination the validation split cannot form: leave q as it is
        cfg = self.config
        q = dpft_update(self.combo_probs.cpu().numpy(), signal - self.last_signal.cpu().numpy(),
                        cfg.q_base, cfg.dpft_lambda, cfg.q_min, cfg.q_max)
        self.combo_probs.copy_(torch.from_numpy(q))
        self.last_signal.copy_(torch.from_numpy(signal))
        self.dpft_history.append({"epoch": epoch, "signal": dict(zip(COMBINATIONS, signal.round(6).tolist())),
                                  "probs": dict(zip(COMBINATIONS, q.round(6).tolist()))})


def _js_divergence(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence (natural log, with the 1/2 factors) of softmax(a) and softmax(b)
    along the last axis."""
    la, lb = torch.log_softmax(a, -1), torch.log_softmax(b, -1)
    lm = torch.logaddexp(la, lb) - math.log(2.0)
    return 0.5 * ((la.exp() * (la - lm)).sum(-1) + (lb.exp() * (lb - lm)).sum(-1))


def sample_combinations(q: np.ndarray, available: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Bool ``[N, 3]``: per utterance a combination drawn with probabilities ``q`` (over the 7
    non-empty combinations) restricted to those within its available streams; all False where
    nothing is available."""
    allowed = (~_BITS[None, :, :] | available[:, None, :]).all(-1)  # [N, 7]: combination within available
    p = allowed * np.asarray(q, dtype=float)[None, :]
    total = p.sum(1, keepdims=True)
    ok = total[:, 0] > 0
    p = np.where(ok[:, None], p / np.where(total > 0, total, 1.0), 0.0)
    choice = (rng.random((len(p), 1)) > np.cumsum(p, 1)).sum(1).clip(0, len(q) - 1)
    mask = _BITS[choice].copy()
    mask[~ok] = False
    return mask


def dpft_update(q: np.ndarray, delta: np.ndarray, q_base: float, lam: float, q_min: float, q_max: float) -> np.ndarray:
    """Eq. 10: rank combinations by their change ``delta`` (ascending: least progress first); the
    first half gains ``q_base * lam * sigmoid(delta)``, the last half loses it, the middle one
    is unchanged; then q is projected onto {q_min <= q <= q_max, sum 1}."""
    k = len(q)
    order = np.argsort(delta, kind="stable")
    step = q_base * lam / (1.0 + np.exp(-delta))  # |q_base * lambda * z(delta)|
    new = np.asarray(q, dtype=float).copy()
    half = k // 2
    for rank, i in enumerate(order):
        if rank < half:
            new[i] += step[i]
        elif rank >= k - half:
            new[i] -= step[i]
    return project_box_simplex(new, q_min, q_max)


def project_box_simplex(v: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """The closest point to ``v`` with ``lo <= x <= hi`` and ``sum(x) = 1`` (a shift found by
    bisection, then clipped): clipping and renormalising instead could leave the box."""
    if not (lo * len(v) <= 1.0 <= hi * len(v)):
        raise BadInput(f"no probabilities in [{lo}, {hi}] over {len(v)} combinations sum to 1")
    a, b = lo - float(v.max()), hi - float(v.min())
    for _ in range(100):
        mid = 0.5 * (a + b)
        if np.clip(v + mid, lo, hi).sum() > 1.0:
            b = mid
        else:
            a = mid
    out = np.clip(v + 0.5 * (a + b), lo, hi)
    return out / out.sum()  # removes the bisection's last ~1e-16
