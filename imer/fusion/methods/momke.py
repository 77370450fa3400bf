"""MoMKE — Mixture of Modality Knowledge Experts for incomplete multimodal emotion recognition.

Xu, Jiang & Liang, "Leveraging Knowledge of Modality Experts for Incomplete Multimodal
Learning", ACM MM 2024; official code: github wxxv/MoMKE (read at ``2dceb57``; the project's
methods notes, §2, map it line by line).

What is implemented, with the paper's equation numbers:

* **Projection** (eq. 12): ``Z^m = X^m W^m`` per modality, then dropout (official).
  ``block="paper"`` adds the utterance position of eq. 13 (Departures 3).
* **Experts** (eq. 13-15): expert ``e^k`` is a stack of ``depth`` transformer layers over the
  utterances of a dialogue; keys are the utterances where the *input* modality is present.
* **Stage 1 "unimodal"** (eq. 15-17): ``Y^m' = FC^m(e^m(Z^m))``, loss = sum over modalities of
  the task loss (CE or MSE) over the utterances where m is present. Trained on complete data
  (the trainer's per-stage mask policy ``"complete"``: every stream that really exists).
  Routers and the fusion head get no gradient (frozen).
* **Stage 2 "mixing"** (eq. 18-22): every available modality m goes through every expert k
  (``R_k^m = e^k(Z^m)``, eq. 18); a soft router ``S^m = MLP(Z^m)`` (eq. 19, input: Departures 4)
  gives ``w^m = softmax(S^m)`` over the experts (eq. 20, K = N: no top-k); ``R^m = sum_k w_k^m
  R_k^m`` (eq. 21); ``R^m`` of an absent modality is exactly zero (Fig. 2); the three ``R^m``
  are concatenated and classified (eq. 22; head: Departures 5). Loss: the fused task loss
  only (eq. 11); the projections, experts, routers and fusion head all train (§3.5 "the Soft
  Router and all the experts are trainable"); the unimodal heads are not part of this model and
  are frozen (they would get no gradient anyway).
* **Outputs**: ``aux["router_weights"]`` ``[B, L, 3, 3]`` (input modality, expert; zero rows for
  absent modalities and padding) and, summed over a split without a host sync per batch, the
  expert load per input modality in ``imer evaluate --json`` (the paper's Fig. 3).

Ablation switches (Tables 3-4): ``pretrain_experts=False`` (no unimodal expert training: one
stage, experts from random init), ``mixing=False`` (no experts mixing training: one stage, each
modality through its own expert and head, the prediction is the mean of the present
modalities' heads; Departures 11), ``router="uniform"`` (equal weights over the experts),
``experts="at"`` (the experts taking part in mixing; the router then scores only those). The
one-stage ablations get the run's whole epoch budget (the full model splits it 50/50): rows are
compared at equal total budget, each with early stopping.

Departures (paper vs. here, and where the official code differs):

1. **Block** (``block``). The released code, which produced the published numbers, has no
   LayerNorm, no position embedding, no attention output projection, an FFN of width d
   (``ffn_ratio=1``) with dropout after the activation and after its second linear, and the
   residual form ``x + A(x) + FFN(A(x))`` (the FFN reads the attention output, not
   ``x + A(x)``). That is ``block="official"``, the default. ``block="paper"`` is eq. 13-14:
   pre-LN, ``H' = MSA(LN(H)) + H``, ``H = FFN(LN(H')) + H'``, with an output projection in MSA
   and the position embedding of eq. 13.
2. **Stage-2 training masks.** The paper does not say what stage 2 trains on; the official
   script trains it on the *test condition itself*, one model per column of Table 2. Here stage 2
   trains under the run's protocol (imer's mixed missing rates by default); Table 2's protocol
   is ``imer train --condition a`` (... ``atv``), one model per condition. Stage 1 trains on
   complete data as in both paper and code (``unimodal_masks="protocol"`` trains it under the
   run's protocol, each head on the utterances where its modality is present).
3. **Position embedding** (``block="paper"`` only). Eq. 13 adds ``Z^pos`` without saying what
   it is. Here it is the fixed sinusoidal table of the utterance's position in its dialogue:
   no parameter, no maximum dialogue length, and no dependence on batch-mates (a learned table
   would need a length fixed at training time, and test dialogues can be longer).
4. **Router input** (``router_input``). Eq. 19 routes on ``X^m``; the code routes on the
   projected, dropped-out ``Z^m`` (d wide, the same width for every modality). Default
   ``"projected"`` (the code); ``"raw"`` is eq. 19 literally (an MLP from ``d_m``). The router is
   ``Linear(d -> d * ffn_ratio) - GELU - Dropout - Linear(-> experts) - Dropout`` as in the code:
   the second dropout acts on the routing *logits* (``router_dropout``, default 0.5 = the code's
   ``drop_rate``; 0 removes it).
5. **Fusion head.** Eq. 22 writes one FC; the code's head is ``h = x + Dropout(ReLU(Linear_{3d ->
   3d}(x)))`` then ``Linear_{3d -> C}``, kept here.
6. **Stage transition and selection.** The official code's "best stage-1 expert" restore is a
   no-op and its reported epoch is chosen on the test set. Here the trainer restores the best
   stage-1 weights by validation before stage 2 (stage-1 validation prediction: mean of the
   present modalities' unimodal heads) and selects on validation (``--selection test``
   reproduces the code's choice). The code uses one Adam for both stages (the router and fusion
   head start stage 2 with zero moments, the experts with stage-1 moments); imer starts a fresh
   Adam per stage.
7. **Missing modalities** are zero at the input (``masked_inputs``), masked as attention keys,
   and their mixed representation is set to exactly zero after the experts, as in the code. The
   router weights of an absent (utterance, modality) are reported as zero.
8. **Batch-mates.** In stage 2 the three input modalities run through each expert as one
   stacked batch (3 expert passes instead of 9; the same result, attention never crosses
   dialogues or modalities). Router weights and the mixture are computed in fp32 also under
   bf16 autocast; the attention scores follow autocast (the code computes them in fp32).
9. **Hyper-parameters**: the official IEMOCAP command (d = 256, 4 layers, 2 heads, FFN ratio 1,
   dropout 0.5, attention dropout 0, Adam lr 1e-4, L2 1e-5, 16 dialogues per batch, 100 + 100
   epochs without early stopping). imer's run defaults apply unless given: epochs split 50/50,
   early stopping on validation (patience 30), 32 dialogues per batch (the data-sized default),
   gradient clipping at norm 5, length-bucketed dialogue batches. ``imer train --epochs 200
   --patience 0 --batch-size 16`` is the official run length and batch.
10. **Learning rate**: the official 1e-4 is the declared default. On the IEMOCAP-structured
   stand-in store (CPU, seed 0, mixed MR 0.0-0.7 training, selection on validation) it
   converges inside imer's default budget: best epochs 34 of 50 (stage 1) and 6 of 50 (stage 2),
   WA 84.3 / 71.7 at MR 0.0 / 0.7. At 3e-4: best epochs 44 and 3, WA 86.1 / 71.4 (one seed:
   no clear gain, and stage 1 then peaks nearer its end). Stage 2 peaks within a few epochs at
   either rate and declines on validation afterwards; early stopping keeps the peak.
11. **No-mixing ablation**: its single stage (the unimodal experts and heads *are* the model)
   trains and selects under the run's protocol, as every other Table-3 row does; a head learns
   from the utterances where its modality is present. (Table 4's single-expert cells equal
   Table 3's no-mixing {a}/{t}/{v} cells, so the authors may have reported a one-expert mixing
   run there instead; ``experts="a"`` is that reading.)
12. **Utterance batches** (``--batch-mode utterance``): each dialogue is one utterance, so an
   expert's attention has one key and the expert is a per-utterance MLP stack; allowed, but it
   is not MoMKE's contextual model. The default is dialogue batches.
13. **Data.** The official IEMOCAP loader feeds a speaker with no face track as an all-zero
   video vector flagged present; imer's store records such a stream as missing, with a reason,
   so stage 1's "complete" data are the streams that really exist.
14. **Not provided**: an auxiliary weight for the unimodal heads in stage 2 (the paper and code
   use none) and a learned position table (Departures 3).
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
from imer.fusion.base import FusionMethod, MethodOutput, OptimizerSpec, register_method, task_loss
from imer.fusion.data import Batch
from imer.fusion.layers import MaskedSelfAttention
from imer.types import MODALITY_NAMES, TaskSpec

_SHORT = {"a": "audio", "t": "text", "v": "video"}


@dataclass
class MomkeConfig:
    hidden: int = 256  # d (official IEMOCAP/MOSEI command; the paper gives 128 for MOSI)
    depth: int = 4  # Q transformer layers per expert
    heads: int = 2
    ffn_ratio: float = 1.0  # FFN width = ratio x d (official mlp_ratio=1); also the router's hidden width
    dropout: float = 0.5  # input projection, FFN, fusion head (official drop_rate)
    attn_dropout: float = 0.0  # on attention probabilities (official attn_drop_rate)
    router_dropout: float = 0.5  # router hidden layer and logits (official: drop_rate); Departures 4
    router_input: Literal["projected", "raw"] = "projected"  # Departures 4
    block: Literal["official", "paper"] = "official"  # Departures 1
    unimodal_masks: Literal["complete", "protocol"] = "complete"  # stage-1 training data; Departures 2
    # Table 3-4 ablations
    pretrain_experts: bool = True  # stage 1 "unimodal expert training"
    mixing: bool = True  # stage 2 "experts mixing training"
    router: Literal["soft", "uniform"] = "soft"
    experts: str = "atv"  # experts taking part in mixing (Table 4)

    @classmethod
    def tiny(cls) -> "MomkeConfig":
        """Small enough for the contract test."""
        return cls(hidden=8, depth=2, heads=2)


def _sinusoid(length: int, dim: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The fixed sinusoidal position table ``[length, dim]`` (Departures 3)."""
    pos = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim, device=device)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return table.to(dtype)


class ExpertLayer(nn.Module):
    """One transformer layer of an expert (eq. 14 or the released code's form, Departures 1)."""

    def __init__(self, d: int, heads: int, ffn_ratio: float, dropout: float, attn_dropout: float, block: str):
        super().__init__()
        self.paper = block == "paper"
        width = max(1, int(d * ffn_ratio))
        self.attn = MaskedSelfAttention(d, heads, attn_dropout, out_proj=self.paper)
        self.ffn = nn.Sequential(
            nn.Linear(d, width), nn.GELU(), nn.Dropout(dropout), nn.Linear(width, d), nn.Dropout(dropout)
        )
        if self.paper:
            self.norm1 = nn.LayerNorm(d)
            self.norm2 = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        if self.paper:  # eq. 14, pre-LN
            x = x + self.attn(self.norm1(x), key_mask)
            return x + self.ffn(self.norm2(x))
        a = self.attn(x, key_mask)  # official: x + A(x) + FFN(A(x))
        return x + a + self.ffn(a)


class Expert(nn.Module):
    """``e^k``: ``depth`` layers over the utterances of a dialogue (eq. 15)."""

    def __init__(self, cfg: MomkeConfig):
        super().__init__()
        self.layers = nn.ModuleList(
            ExpertLayer(cfg.hidden, cfg.heads, cfg.ffn_ratio, cfg.dropout, cfg.attn_dropout, cfg.block)
            for _ in range(cfg.depth)
        )

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, key_mask)
        return x


@register_method("momke")
class Momke(FusionMethod):
    """Mixture of modality knowledge experts (MoMKE, ACM MM 2024): unimodal experts, then a soft
    router mixing every expert's view of each available modality."""

    config_class = MomkeConfig
    description = "MoMKE (MM-24): per-modality transformer experts pre-trained alone, mixed by a soft router"
    stages = ("unimodal", "mixing")
    stage_fractions = (0.5, 0.5)  # official: 100 + 100 epochs (IEMOCAP)
    default_batch_mode = "dialogue"
    default_optimizer = OptimizerSpec(lr=1e-4)  # official Adam lr; Departures 9-10
    stage_masks = {"unimodal": "complete"}

    def __init__(self, config: MomkeConfig, dims: dict[str, int], task: TaskSpec):
        super().__init__(config, dims, task)
        cfg = config
        used = cfg.experts.lower()
        if not used or set(used) - set("atv") or len(set(used)) != len(used):
            raise BadInput(f"momke: experts={cfg.experts!r}: give a subset of 'atv' such as 'at'")
        if not cfg.mixing and not cfg.pretrain_experts:
            raise BadInput("momke: mixing=False keeps only unimodal expert training; it needs pretrain_experts=True")
        # The experts taking part in mixing, in the canonical a, t, v order.
        self.mix_experts = [_SHORT[c] for c in "atv" if c in used]
        # The ablations change which stages exist (instance attributes shadow the class's).
        if not cfg.mixing:
            self.stages, self.stage_fractions = ("unimodal",), (1.0,)
        elif not cfg.pretrain_experts:
            self.stages, self.stage_fractions = ("mixing",), (1.0,)
        self.stage = self.stages[-1]
        d, k = cfg.hidden, self.num_outputs
        mods = MODALITY_NAMES
        self.proj = nn.ModuleDict({m: nn.Linear(dims[m], d) for m in mods})  # eq. 12
        self.proj_drop = nn.Dropout(cfg.dropout)
        self.experts = nn.ModuleDict({m: Expert(cfg) for m in mods})
        self.uni_head = nn.ModuleDict({m: nn.Linear(d, k) for m in mods})  # eq. 15's FC^m
        width = max(1, int(d * cfg.ffn_ratio))
        self.router = nn.ModuleDict(  # eq. 19
            {
                m: nn.Sequential(
                    nn.Linear(dims[m] if cfg.router_input == "raw" else d, width), nn.GELU(),
                    nn.Dropout(cfg.router_dropout), nn.Linear(width, len(self.mix_experts)),
                    nn.Dropout(cfg.router_dropout),
                )
                for m in mods
            }
        )
        self.fuse = nn.Linear(3 * d, 3 * d)  # Departures 5
        self.head = nn.Linear(3 * d, k)  # eq. 22

    # ------------------------------------------------------------------ stages
    def mask_policy(self, stage: str) -> str:
        if stage == "unimodal":
            # mixing=False: the unimodal stage *is* the model, trained and selected under the run's
            # protocol like every other row of Table 3 (Departures 11).
            return self.config.unimodal_masks if self.config.mixing else "protocol"
        return super().mask_policy(stage)

    def begin_stage(self, name: str) -> None:
        super().begin_stage(name)
        for p in self.parameters():
            p.requires_grad_(True)
        if name == "unimodal":  # routers and the fusion head have nothing to learn from yet
            for mod in (self.router, self.fuse, self.head):
                for p in mod.parameters():
                    p.requires_grad_(False)
        else:  # the unimodal heads are not part of the mixed model (eq. 22)
            for p in self.uni_head.parameters():
                p.requires_grad_(False)

    # ------------------------------------------------------------------ forward
    def forward(self, batch: Batch) -> MethodOutput:
        x = self.masked_inputs(batch)
        present = batch.present & batch.valid[..., None]  # [B, L, 3]
        keep = {m: present[..., j] for j, m in enumerate(MODALITY_NAMES)}
        z = {m: self.proj_drop(self.proj[m](x[m])) for m in MODALITY_NAMES}  # eq. 12
        route = x if self.config.router_input == "raw" else z  # the router never sees positions
        if self.config.block == "paper":  # eq. 13
            length = batch.valid.shape[1]
            pos = _sinusoid(length, self.config.hidden, batch.valid.device, z["audio"].dtype)
            z = {m: v + pos for m, v in z.items()}
        if self.stage == "unimodal":
            return self._unimodal(z, keep, present)
        return self._mixing(route, z, keep, present)

    def _unimodal(self, z: dict[str, torch.Tensor], keep: dict[str, torch.Tensor], present: torch.Tensor) -> MethodOutput:
        """Eq. 15: each modality through its own expert and head; prediction for selection (and
        the ``mixing=False`` ablation): the mean of the present modalities' heads."""
        uni = {m: self.uni_head[m](self.experts[m](z[m], keep[m])) for m in MODALITY_NAMES}
        w = present.to(uni["audio"].dtype)
        stacked = torch.stack([uni[m] for m in MODALITY_NAMES], dim=2)  # [B, L, 3, K]
        logits = (stacked * w[..., None]).sum(2) / w.sum(-1, keepdim=True).clamp_min(1.0)
        return MethodOutput(logits, {"uni_logits": uni})

    def _mixing(
        self, route: dict[str, torch.Tensor], z: dict[str, torch.Tensor], keep: dict[str, torch.Tensor], present: torch.Tensor
    ) -> MethodOutput:
        cfg = self.config
        b, l = present.shape[:2]
        mods = MODALITY_NAMES
        # Eq. 18: the three input modalities stacked along the batch, once through each expert.
        zs = torch.cat([z[m] for m in mods], dim=0)  # [3B, L, d]
        ks = torch.cat([keep[m] for m in mods], dim=0)  # [3B, L]
        reps = torch.stack([self.experts[e](zs, ks) for e in self.mix_experts], dim=-2)  # [3B, L, E, d]
        reps = reps.view(3, b, l, len(self.mix_experts), -1)
        keep3 = present.permute(2, 0, 1)[..., None]  # [3, B, L, 1]
        # Weights and the mixture in fp32 (under bf16 autocast 1/3 would be 0.334).
        if cfg.router == "uniform":
            w = torch.full((3, b, l, len(self.mix_experts)), 1.0 / len(self.mix_experts), device=reps.device)
        else:  # eq. 19-20
            w = torch.stack([torch.softmax(self.router[m](route[m]).float(), dim=-1) for m in mods])
        w = torch.where(keep3, w, torch.zeros_like(w))  # absent (utterance, modality): no weights, Departures 7
        mixed = (w[..., None] * reps.float()).sum(-2)  # eq. 21, [3, B, L, d]
        mixed = torch.where(keep3, mixed, torch.zeros_like(mixed))  # exactly 0 where absent, whatever reps held
        joint = torch.cat(list(mixed.unbind(0)), dim=-1).to(reps.dtype)  # [B, L, 3d]
        hidden = joint + F.dropout(F.relu(self.fuse(joint)), cfg.dropout, self.training)  # Departures 5
        logits = self.head(hidden)  # eq. 22
        cols = {e: w[..., i] for i, e in enumerate(self.mix_experts)}  # experts not mixed: weight 0
        full = torch.stack([cols[e] if e in cols else torch.zeros_like(w[..., 0]) for e in mods], dim=-1)
        return MethodOutput(logits, {"router_weights": full.permute(1, 2, 0, 3)})  # [B, L, input, expert]

    # ------------------------------------------------------------------ loss
    def loss(self, out: MethodOutput, batch: Batch) -> dict[str, torch.Tensor]:
        if self.stage == "unimodal":  # eq. 16/17 per modality, over the utterances where it is present
            present = batch.present & batch.valid[..., None]
            uni = [task_loss(out.aux["uni_logits"][m], batch, self.task, present[..., j]) for j, m in enumerate(MODALITY_NAMES)]
            total = torch.stack(uni).sum()
            return {"total": total, "unimodal": total}
        t = task_loss(out.logits, batch, self.task)  # eq. 11
        return {"total": t, "task": t}

    # ------------------------------------------------------------------ expert load (Fig. 3)
    def summary_sums(self, out: MethodOutput, batch: Batch) -> dict[str, torch.Tensor]:
        w = out.aux.get("router_weights")
        if w is None:
            return {}
        present = (batch.present & batch.valid[..., None]).float()  # [B, L, 3]; fp32: bf16 cannot count past 256
        return {"router_weight_sum": w.float().sum((0, 1)), "router_count": present.sum((0, 1))}

    def summarize(self, sums: dict[str, np.ndarray]) -> dict:
        """Mean router weight per input modality and expert over the present utterances: the
        paper's "expert load" (Fig. 3)."""
        if "router_weight_sum" not in sums:
            return {}
        total, count = sums["router_weight_sum"], sums["router_count"]
        load = {
            m: {e: round(float(total[i, j] / count[i]), 4) for j, e in enumerate(MODALITY_NAMES)}
            for i, m in enumerate(MODALITY_NAMES)
            if count[i] > 0
        }
        return {"expert_load": load, "utterances": {m: int(count[i]) for i, m in enumerate(MODALITY_NAMES)}}
