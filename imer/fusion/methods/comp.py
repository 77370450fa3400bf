"""ComP — Cross-modal Prompting for Balanced Incomplete Multi-modal Emotion Recognition.

He, Zhu & Zhang, AAAI 2026 (arXiv 2512.11239); official code: github WenjueHE/2026-AAAI-ComP.

What is implemented, top to bottom, with the paper's equation numbers:

* **Stage 1 — "unimodal"** (eq. 1–2): ``X-hat^u = gamma^u * X^u`` (missing slots zeroed);
  ``Z^u = Enc^u(X-hat^u)``; the feature updating function ``f^u`` and ``Classifier^u`` give
  ``Y^u``; loss = sum_u reconstruction ``L_enc(Dec^u(Z^u), X-hat^u)`` + sum_u task loss.
* **Stage 2 — "fusion"**:
    * Prototypes (eq. 6): ``A^u = MLP(Z^u^T)^T`` — a linear layer ``M^u`` over the *instance*
      axis (n -> c), GELU, c -> c linear, dropout. Computed once per forward and shared by every
      block ("frozen among all knowledge propagation blocks within each batch").
    * Progressive prompt generation (eq. 7–9): ``S = softmax(cos(Z_l, A))`` with missing rows
      removed; ``P~ = MLP_p(FFN_1(S A) + FFN_2(Z_l))`` (widths: Departures 12); momentum
      ``P_l^{vu} = lambda * P-bar_{l-1}^{vu} + (1 - lambda) * P~_l^v``.
    * Knowledge propagation blocks (eq. 3–5): ``G_0 = Linear_{d+2p -> d}([Z_l, P^{vu}, P^{wu}])``,
      ``m`` residual masked multi-head self-attention layers (missing instances are masked as
      keys; attention-probability dropout: Departures 11),
      ``[Z-bar, P-bar^{vu}, P-bar^{wu}] = Linear_{d -> d+2p}(G_m)``.
    * Instance-level gradient modulation of ``M^u`` (eq. 10–11), as a custom autograd function
      that scales each instance's contribution to ``grad M^u``.
    * Coordinator (eq. 12–15): ``omega = softmax(MLP([Z-bar^a, Z-bar^t, Z-bar^v]))``,
      ``F = [omega^a Z-bar^a, omega^t Z-bar^t, omega^v Z-bar^v]``, ``Y' = Classifier(F)``
      (optional rescaling and masking of absent modalities: Departures 13).
    * Task loss: CE (eq. 16) or MSE (eq. 17).

Ablation switches follow Table 3: ``use_kp`` (KP), ``use_pg`` (PG), ``use_cr`` (Cr), ``use_gm``
(GM). With ``use_kp=False`` PG and GM have nothing to act on ("when KP is removed, the
subsequent components are disabled"), and with every switch off the model is "the output of the
encoders directly concatenated for classification".

Departures (paper vs. here, and where the official code differs):

1. **What n is.** The paper compresses "the batch size dimension" (eq. 6); the official code
   uses the padded dialogue length (150) and compares each utterance with the prototypes of
   *all* dialogues in the batch, so predictions depend on batch-mates and padding. Here the
   instance axis is the utterances of *one dialogue*, padded to ``max_len`` (default: the
   longest training dialogue), and each dialogue only sees its own prototypes: a prediction
   never depends on batch composition. Padding and missing rows enter the n -> c layer as
   zeros. Dialogues longer than ``max_len`` (seen only at test time) are processed in
   consecutive chunks of ``max_len``; attention context and prototypes are then per chunk.
   In utterance batch mode ``max_len`` defaults to 1 (each utterance is its own sequence);
   dialogue mode is this method's default.
2. **Eq. 7's mask.** Adding a large negative to whole rows does not change a row-wise softmax,
   so as written the mask is a no-op. Here the assignment rows of missing/padding instances are
   set to zero (their ``S A`` term vanishes) and those instances are excluded when prototypes
   are formed (zero rows into ``M^u``). A missing row's fresh prompt is then
   ``MLP_p(FFN_1(0) + FFN_2(Z_l))``: at block 1 (``Z = 0``) a learned "missing" prompt.
3. **Eq. 10 is ill-posed** (0/0 when two modalities have equal summed error, unbounded and
   sign-flipping weights when relative errors nearly cancel) and "gt" is undefined for
   classification. Here ``E^u = 1 - p^u(y)`` for classification (``|y - y^u|`` for
   regression), from the unimodal heads on ``Z-bar^u``, and
   ``W_i^u = 1/2 sum_{v != u} (1 - D_i sign(S) / (sum_j |D_j| + eps))`` with ``D = E^u - E^v``,
   ``S = sum_j D_j``, over labelled instances where both modalities are present (W = 1
   elsewhere). It equals the paper's ``sum_{j != i} D_j / sum_j D_j`` whenever the ``D_j``
   agree in sign, stays in [0, 2] otherwise and is 1 when S = 0. The sums run over all
   instances of the optimiser step's batch (the paper's n), so ``|W - 1|`` is about
   1 / (instances in the batch), as in the paper's formula. Eq. 11's row scaling of
   ``grad M`` becomes a scale per (dialogue, position), applied in fp32 also under bf16
   autocast. (The official code's GM hook never fires: its GM is a no-op.)
4. **Stage-2 objective** is not written in the paper. Here: fused task loss +
   ``unimodal_weight`` x sum_u unimodal task losses (present instances) + ``recon_weight`` x
   sum_u reconstruction (present instances). The official code uses 2x unimodal losses and a
   shared/private disentanglement term, which the paper never mentions and is not used here.
5. **f^u** is not specified. Here f^u is modality u's own stack of KP blocks run with zero
   prompts in stage 1, so the attention layers are pre-trained unimodally and stage 2 adds the
   cross-modal prompts to the same weights. Because the prompt slots get zero gradient in
   stage 1, the KP compress/expand layers skip weight decay there (coupled L2 under Adam would
   otherwise shrink them toward zero before stage 2).
6. **Missing instances** enter KP with ``Z^u = 0`` (the encoder output of a missing slot is
   zeroed, not ``Enc(0)``), so their ``Z-bar^u`` comes from the prompts and attention only —
   the paper's "reconstructed by their cross-modal counterparts".
7. **Eq. 5 and eq. 8** are implemented as written: eq. 5 a single linear layer (the code uses an
   MLP), eq. 8 includes ``MLP_p`` (absent in the code; layer widths: Departures 12). With
   ``use_pg=False`` prompts are a linear projection ``d -> p`` of the block input, with the same
   momentum update.
8. **Eq. 9's superscripts.** It writes ``P~_l^u`` for the prompt delivered *to* u; the prompt
   from v to u must be v's fresh prompt ``P~_l^v`` ("prompts from modalities v and w"), as in
   the official code. Block 1 has no ``P-bar_0``, so it uses the fresh prompts alone.
9. **Stage transition and stage-1 selection**: the trainer restores the best stage-1 weights (by
   validation) before stage 2 (a no-op in the official code). Stage 1 has no fused classifier,
   so its validation prediction is the mean of the present modalities' unimodal heads.
10. **Hyper-parameters** are not in the paper. Model defaults are the official CMU-MOSI command:
    hidden 256, 2 blocks x 2 attention layers, 2 heads, dropout 0.5, attention dropout 0.0,
    lambda 0.3, c = 10, p = 16, Adam lr 1e-4 (imer: 3e-4, Departures 14), L2 1e-5, 32 dialogues per
    batch. Its 150 + 150
    epochs without early stopping is ``imer train --epochs 300 --patience 0``; imer's default is
    100 epochs split 50/50 with early stopping (patience 30) on the validation split.
11. **Attention-probability dropout** (``attn_dropout``, default 0.0: the official command's
    ``--attn_drop_rate=0.0``; the paper names no dropout at all). imer used to pass the model's
    ``dropout`` (0.5) to the softmax probabilities of every KP attention layer as well, which was
    listed nowhere: in training each query then lost about half of its (few) visible utterances
    at random and the kept ones were doubled, a much noisier KP path than the official one.
    ``dropout`` still applies everywhere else, including the residual branch of eq. 4 (the
    official layers drop there too, inside their MLP); ``attn_dropout=0.5`` gives back the
    previous behaviour.
12. **Widths of eq. 8's FFN_1, FFN_2 and MLP_p** (``pg_ffn_hidden``). The paper names the layers
    but gives no sizes. The official code has no separate FFNs and no MLP_p: its fresh prompt is
    ``Mlp(d -> p -> p)(S A) + Linear(d -> p)(Z_l)`` (GELU, dropout; p = 16), i.e. FFN_1 is a
    two-layer network of width p that already outputs the p-dim prompt, and FFN_2 a single
    linear layer d -> p. Here the paper's structure is kept with the official width
    h = ``pg_ffn_hidden`` (0 = p): FFN_1 and FFN_2 are d -> h -> h (GELU, dropout), MLP_p is
    h -> h -> p. FFN_1 is then the official layer exactly; FFN_2 has the official d -> p layer
    plus a p -> p one (the paper calls it an FFN), and MLP_p is the small p -> p -> p projection
    the paper adds. imer used h = d (FFN d -> d -> d, MLP_p d -> d -> p): at d = 256 that was
    about a fifth of all parameters (a quarter with MLP_p) for a path that measures as nearly
    inert (eq. 7's assignments are close to uniform: replacing them by uniform ones changed 0 of
    1,116 predictions). ``pg_ffn_hidden=hidden`` restores those sizes exactly. Default config,
    dims 512/1024/1024, 4 classes, n = 110 (IEMOCAP's longest dialogue): 8,180,191 parameters
    with h = d, 6,237,631 with h = p (-23.7 %; the PG blocks: 1,998,432 -> 55,872).
13. **Coordinator scale and absent modalities** (``cr_scale``, ``cr_mask``). Eq. 13's weights sum
    to 1, so with Cr the classifier sees about a third of its Cr-off input scale, and under Adam
    (updates of fixed size per step) its first layer then moves about three times slower
    relative to that input: at lr 1e-4 that, not the coordinator, made Cr look harmful in imer's
    review (the gap vanished at lr 1e-3). ``cr_scale="paper"`` (default) is eq. 13-14 as written;
    ``"modalities"`` multiplies omega by k, the number of modalities the softmax runs over in that
    utterance (3; the present ones where absent modalities are masked), so the weights sum to k
    and average 1, the Cr-off scale (with uniform omega ``F`` *is* the Cr-off input). The
    rescaling changes optimisation speed, not what the model can express. Eq. 13's softmax runs
    over all of M. With KP on every modality has a ``Z-bar`` (a missing one is rebuilt from the
    prompts, Departures 6), and weighing the rebuilt features is the point of the method, so all
    three are weighed as written. With KP off (outside the paper's model: "when KP is removed,
    the subsequent components are disabled") an absent modality's ``Z-bar`` is the zero vector,
    so its weight multiplies nothing and only takes a learned, mask-dependent share away from the
    present modalities. ``cr_mask="without_kp"`` (default) therefore takes the softmax over the
    present modalities only when KP is off, masking the absent ones' logits as
    ``MaskedSelfAttention`` masks keys (their weight is exactly 0); ``"always"`` masks with KP on
    too (rebuilt modalities then get no weight), ``"never"`` is eq. 13 as written in every case.
14. **Learning rate 3e-4** (the method's declared default; ``imer train --lr 1e-4`` is the official
    command's). Measured on the IEMOCAP-structured stand-in store (seed 0, CPU, selection on its
    leak-free validation split, mixed MR 0.0-0.7 training, 100 epochs, patience 30), WA at MR 0.0 /
    0.7: lr 1e-4 86.1 / 73.7 with stage 1's best epoch its last (under-trained); 3e-4 86.4 / 78.7
    (best epochs 29 of 50 and 1 of 50); 1e-3 85.3 / 77.9, with validation WA swinging by up to
    20 points between neighbouring epochs. On RAVDESS speech with unseen speakers (3 seeds) 1e-3
    gave 40.0 %, 3e-4 42.8 %, 1e-4 44.0 %. In every run stage 2 peaks within its first epochs and
    then declines on validation and test alike: early stopping on a validation split that shares
    nothing with training is what keeps it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from imer.fusion.base import FusionMethod, MethodOutput, OptimizerSpec, masked_mean, register_method, task_loss
from imer.fusion.data import Batch
from imer.fusion.layers import MaskedSelfAttention, mlp
from imer.types import MODALITY_NAMES, TaskKind, TaskSpec


@dataclass
class CompConfig:
    hidden: int = 256  # d; official README command
    prompt_dim: int = 16  # p; hard-coded in the official code
    num_prototypes: int = 10  # c; hard-coded in the official code
    num_blocks: int = 2  # PG/KP blocks (Fig. 2); official command
    attn_layers: int = 2  # m MSA layers per KP block (eq. 4); official command
    heads: int = 2
    dropout: float = 0.5
    attn_dropout: float = 0.0  # on KP attention probabilities; official --attn_drop_rate, Departures 11
    # h of eq. 8 (Departures 12): FFN_1/2 d->h->h, MLP_p h->h->p; 0 = prompt_dim (official width),
    # pg_ffn_hidden = hidden gives the earlier d-wide layers
    pg_ffn_hidden: int = 0
    momentum: float = 0.3  # lambda of eq. 9; official command
    max_len: int = 0  # n of eq. 6: padded dialogue length; 0 = longest training dialogue
    encoder_layers: int = 2
    recon_weight: float = 1.0  # L_enc weight (eq. 2); stage-2 weight: see Departures 4
    unimodal_weight: float = 1.0  # stage-2 unimodal task losses; see Departures 4
    gm_eps: float = 1e-6
    use_kp: bool = True  # knowledge propagation, eq. 3-5 (Table 3 "KP")
    use_pg: bool = True  # prompt generation with prototypes, eq. 6-9 (Table 3 "PG")
    use_cr: bool = True  # coordinator, eq. 12-14 (Table 3 "Cr")
    # eq. 13-14: "paper" = softmax weights (sum 1); "modalities" = x the number of weighed modalities
    cr_scale: Literal["paper", "modalities"] = "paper"
    # which utterances' absent modalities get zero coordinator weight (Departures 13)
    cr_mask: Literal["without_kp", "always", "never"] = "without_kp"
    use_gm: bool = True  # instance-level gradient modulation, eq. 10-11 (Table 3 "GM")

    @classmethod
    def tiny(cls) -> "CompConfig":
        """Small enough for the contract test (d = 8, 2 heads)."""
        return cls(hidden=8, heads=2)


class _GradHolder:
    """Per-instance weights W (``[B, n]``) set during forward, read during backward."""

    def __init__(self) -> None:
        self.weights: torch.Tensor | None = None


class _ModulatedInstanceLinear(torch.autograd.Function):
    """``Zt @ M`` whose gradient w.r.t. ``M`` weights every instance row by ``W`` (eq. 11).

    ``Zt``: ``[B, d, n]``, ``M``: ``[n, c]``. The gradient to ``Zt`` is left untouched: eq. 11
    only changes how fast ``M^u`` learns from each instance.
    """

    @staticmethod
    def forward(ctx, zt: torch.Tensor, weight: torch.Tensor, holder: _GradHolder) -> torch.Tensor:
        # ``weight`` stays in its own (fp32) dtype so that W close to 1 is not rounded away
        # under bf16 autocast; only the product runs in the activations' dtype.
        ctx.save_for_backward(zt, weight)
        ctx.holder = holder
        return zt @ weight.to(zt.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        zt, weight = ctx.saved_tensors
        grad_zt = grad_out @ weight.t().to(grad_out.dtype) if ctx.needs_input_grad[0] else None
        grad_w = None
        if ctx.needs_input_grad[1]:
            acc = torch.promote_types(zt.dtype, torch.float32)
            w = ctx.holder.weights
            scaled = zt.to(acc) if w is None else zt.to(acc) * w[:, None, :].to(acc)
            grad_w = torch.einsum("bdn,bdc->nc", scaled, grad_out.to(acc)).to(weight.dtype)
        return grad_zt, grad_w, None


class PrototypeLayer(nn.Module):
    """Eq. 6: ``A = (MLP(Z^T))^T``, n instances -> c prototypes, with eq. 11's modulated ``M``."""

    def __init__(self, n: int, c: int, dropout: float):
        super().__init__()
        self.n = n
        self.M = nn.Parameter(torch.empty(n, c))
        self.b = nn.Parameter(torch.zeros(c))
        nn.init.kaiming_uniform_(self.M.T, a=5**0.5)  # same init as nn.Linear(n, c)
        self.act = nn.GELU()
        self.mix = nn.Linear(c, c)
        self.drop = nn.Dropout(dropout)
        self.holder = _GradHolder()

    def forward(self, z: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """z ``[B, L, d]`` (L <= n), keep ``[B, L]`` -> prototypes ``[B, c, d]``."""
        b, l, d = z.shape
        z = z * keep[..., None].to(z.dtype)  # missing and padding rows do not shape prototypes
        if l < self.n:
            z = F.pad(z, (0, 0, 0, self.n - l))
        self.holder = _GradHolder()  # one per call: chunked calls must not share weights
        h = _ModulatedInstanceLinear.apply(z.transpose(1, 2), self.M, self.holder) + self.b
        return self.drop(self.mix(self.act(h))).transpose(1, 2)  # [B, c, d]

    def set_instance_weights(self, w: torch.Tensor) -> None:
        """w ``[B, L]`` -> padded to ``[B, n]`` (padding rows are zero in Z anyway)."""
        self.holder.weights = F.pad(w, (0, self.n - w.shape[1]), value=1.0).detach()


class PromptGenerationBlock(nn.Module):
    """Eq. 7-8: prompts from similarity to prototypes plus the block's own features.

    ``width`` is h of Departures 12: FFN_1, FFN_2 ``d -> h -> h``, MLP_p ``h -> h -> p``;
    0 = p (the official width), d = the earlier d-wide layers.
    """

    def __init__(self, d: int, p: int, dropout: float, width: int = 0):
        super().__init__()
        h = width if width > 0 else p
        self.ffn1 = nn.Sequential(nn.Linear(d, h), nn.GELU(), nn.Dropout(dropout), nn.Linear(h, h))
        self.ffn2 = nn.Sequential(nn.Linear(d, h), nn.GELU(), nn.Dropout(dropout), nn.Linear(h, h))
        self.mlp_p = nn.Sequential(nn.Linear(h, h), nn.GELU(), nn.Linear(h, p))

    def forward(self, z: torch.Tensor, protos: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        sim = F.normalize(z, dim=-1) @ F.normalize(protos, dim=-1).transpose(1, 2)  # [B, L, c]
        s = torch.softmax(sim, dim=-1) * keep[..., None].to(z.dtype)  # Departures 2
        return self.mlp_p(self.ffn1(s @ protos) + self.ffn2(z))  # [B, L, p]


class KnowledgePropagationBlock(nn.Module):
    """Eq. 3-5: compress [Z, prompts], masked residual self-attention, expand back.

    ``dropout`` acts on the residual branch, ``attn_dropout`` on the attention probabilities
    (Departures 11).
    """

    def __init__(self, d: int, p: int, layers: int, heads: int, dropout: float, attn_dropout: float = 0.0):
        super().__init__()
        self.p = p
        self.compress = nn.Linear(d + 2 * p, d)  # eq. 3
        self.attn = nn.ModuleList(MaskedSelfAttention(d, heads, attn_dropout) for _ in range(layers))
        self.drop = nn.Dropout(dropout)
        self.expand = nn.Linear(d, d + 2 * p)  # eq. 5

    def forward(
        self, z: torch.Tensor, prompts: tuple[torch.Tensor, torch.Tensor], key_mask: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        g = self.compress(torch.cat([z, prompts[0], prompts[1]], dim=-1))
        for attn in self.attn:
            g = g + self.drop(attn(g, key_mask))  # eq. 4
        out = self.expand(g)
        d = out.shape[-1] - 2 * self.p
        return out[..., :d], (out[..., d : d + self.p], out[..., d + self.p :])


@register_method("comp")
class Comp(FusionMethod):
    """Cross-modal prompting (ComP, AAAI-26): prompts for missing modalities from the present ones."""

    config_class = CompConfig
    description = "ComP (AAAI-26): prototype prompts + cross-modal knowledge propagation + coordinator"
    stages = ("unimodal", "fusion")
    stage_fractions = (0.5, 0.5)  # official: 150 + 150 epochs
    default_batch_mode = "dialogue"
    default_optimizer = OptimizerSpec(lr=3e-4)  # Departures 14

    @classmethod
    def upgrade_config(cls, saved: dict) -> dict:
        """Bundles saved before Departures 11-13 were trained with attention dropout = dropout,
        eq. 8's layers at width d and an unmasked coordinator: keep those for them."""
        out = dict(saved)
        out.setdefault("attn_dropout", saved.get("dropout", 0.5))
        out.setdefault("pg_ffn_hidden", saved.get("hidden", 256))
        out.setdefault("cr_mask", "never")
        return out

    @classmethod
    def resolve_config(cls, config: CompConfig, data_info: dict) -> CompConfig:
        if config.max_len <= 0:
            if data_info.get("batch_mode", cls.default_batch_mode) == "utterance":
                n = 1  # each utterance is its own sequence (Departures 1)
            else:
                n = int(data_info.get("max_dialogue_len", 1))
            config = replace(config, max_len=max(1, n))
        return config

    def param_groups(self, weight_decay: float) -> list[dict]:
        """In stage 1 the prompt slots of the KP layers get exactly zero gradient (prompts are 0);
        coupled L2 under Adam would still shrink them by ~lr per step, weakening the prompt path
        before stage 2 starts. So the KP compress/expand layers skip weight decay in stage 1."""
        if self.stage != "unimodal":
            return super().param_groups(weight_decay)
        kp_io = {id(p) for blocks in self.kp.values() for b in blocks for p in (*b.compress.parameters(), *b.expand.parameters())}
        trainable = [p for p in self.parameters() if p.requires_grad]
        return [
            {"params": [p for p in trainable if id(p) not in kp_io], "weight_decay": weight_decay},
            {"params": [p for p in trainable if id(p) in kp_io], "weight_decay": 0.0},
        ]

    def __init__(self, config: CompConfig, dims: dict[str, int], task: TaskSpec):
        super().__init__(config, dims, task)
        if config.max_len <= 0:
            config = self.config = replace(config, max_len=1)
        if config.pg_ffn_hidden <= 0:  # recorded explicitly, so a saved bundle keeps its sizes
            config = self.config = replace(config, pg_ffn_hidden=config.prompt_dim)
        d, p, c, drop = config.hidden, config.prompt_dim, config.num_prototypes, config.dropout
        k = self.num_outputs
        mods = MODALITY_NAMES
        self.enc = nn.ModuleDict({m: mlp(dims[m], d, d, drop, config.encoder_layers) for m in mods})
        self.dec = nn.ModuleDict({m: mlp(d, d, dims[m], drop, 2) for m in mods})
        self.kp = nn.ModuleDict(
            {
                m: nn.ModuleList(
                    KnowledgePropagationBlock(d, p, config.attn_layers, config.heads, drop, config.attn_dropout)
                    for _ in range(config.num_blocks)
                )
                for m in mods
            }
        )
        self.uni_head = nn.ModuleDict({m: nn.Linear(d, k) for m in mods})
        self.proto = nn.ModuleDict({m: PrototypeLayer(config.max_len, c, drop) for m in mods})
        self.pg = nn.ModuleDict(
            {
                m: nn.ModuleList(
                    PromptGenerationBlock(d, p, drop, config.pg_ffn_hidden) for _ in range(config.num_blocks)
                )
                for m in mods
            }
        )
        self.prompt_proj = nn.ModuleDict(  # prompts without PG (ablation)
            {m: nn.ModuleList(nn.Linear(d, p) for _ in range(config.num_blocks)) for m in mods}
        )
        self.coordinator = mlp(3 * d, d, 3, drop, 2)  # eq. 12
        self.classifier = mlp(3 * d, d, k, drop, 2)  # eq. 15

    # ------------------------------------------------------------------ stages
    def begin_stage(self, name: str) -> None:
        super().begin_stage(name)
        fusion_only = [self.proto, self.pg, self.prompt_proj, self.coordinator, self.classifier]
        for p in self.parameters():
            p.requires_grad_(True)
        if name == "unimodal":
            for mod in fusion_only:
                for p in mod.parameters():
                    p.requires_grad_(False)

    # ------------------------------------------------------------------ forward
    def forward(self, batch: Batch) -> MethodOutput:
        n = self.config.max_len
        length = batch.valid.shape[1]
        uses_prototypes = self.stage == "fusion" and self.config.use_kp and self.config.use_pg
        if length <= n or not uses_prototypes:
            return self._forward(batch)
        # Longer than the prototype layer's n (Departures 1): consecutive chunks of n.
        outs = [self._forward(_slice(batch, s, s + n)) for s in range(0, length, n)]
        aux = {key: _cat([o.aux[key] for o in outs]) for key in outs[0].aux}
        return MethodOutput(torch.cat([o.logits for o in outs], dim=1), aux)

    def _forward(self, batch: Batch) -> MethodOutput:
        cfg = self.config
        x = self.masked_inputs(batch)
        present = batch.present & batch.valid[..., None]  # [B, L, 3]
        keep = {m: present[..., j] for j, m in enumerate(MODALITY_NAMES)}
        # Z^u = Enc^u(X-hat^u); a missing slot is zero (Departures 6).
        z = {m: self.enc[m](x[m]) * keep[m][..., None].to(x[m].dtype) for m in MODALITY_NAMES}

        if self.stage == "unimodal":
            zbar = {m: self._unimodal_update(m, z[m], keep[m]) for m in MODALITY_NAMES}
        elif cfg.use_kp:
            zbar = self._propagate(z, keep)
        else:
            zbar = z
        uni = {m: self.uni_head[m](zbar[m]) for m in MODALITY_NAMES}

        aux = {"z": z, "x_hat": x, "uni_logits": uni}  # decoders run in loss(): inference skips them
        if self.stage == "unimodal":
            # Prediction for model selection in stage 1: mean of the present modalities' heads.
            w = present.to(uni["audio"].dtype)
            stacked = torch.stack([uni[m] for m in MODALITY_NAMES], dim=2)  # [B, L, 3, K]
            logits = (stacked * w[..., None]).sum(2) / w.sum(-1, keepdim=True).clamp_min(1.0)
            return MethodOutput(logits, aux)

        zcat = torch.cat([zbar[m] for m in MODALITY_NAMES], dim=-1)
        if cfg.use_cr:
            omega, weights = self._coordinate(self.coordinator(zcat), present)  # eq. 12-13, [B, L, 3]
            fused = torch.cat([weights[..., j : j + 1] * zbar[m] for j, m in enumerate(MODALITY_NAMES)], dim=-1)
            aux["omega"] = omega
            aux["fusion_weights"] = weights
        else:
            fused = zcat
        logits = self.classifier(fused)  # eq. 14-15

        if self.training and cfg.use_kp and cfg.use_pg and cfg.use_gm:
            self._set_gradient_modulation(uni, batch, present)
        return MethodOutput(logits, aux)

    def _coordinate(self, scores: torch.Tensor, present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 13 (masked per ``cr_mask``) and the weights of eq. 14 (scaled per ``cr_scale``).

        scores ``[B, L, 3]`` from eq. 12's MLP, present bool ``[B, L, 3]`` -> (omega, weights).
        Sync-free: masks and sums only (Departures 13).
        """
        cfg = self.config
        masked = cfg.cr_mask == "always" or (cfg.cr_mask == "without_kp" and not cfg.use_kp)
        if masked:  # as MaskedSelfAttention masks keys: absent modalities get exactly 0
            scores = scores.masked_fill(~present, torch.finfo(scores.dtype).min)
            omega = torch.softmax(scores, dim=-1) * present.to(scores.dtype)  # padding rows: all 0
        else:
            omega = torch.softmax(scores, dim=-1)
        if cfg.cr_scale == "paper":
            return omega, omega
        if not masked:  # every modality has a Z-bar (rebuilt when missing) and is weighed
            return omega, omega * omega.shape[-1]
        return omega, omega * present.sum(-1, keepdim=True).to(omega.dtype)

    def _unimodal_update(self, m: str, z: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """f^u in stage 1: the modality's own KP blocks with zero prompts (Departures 5)."""
        if not self.config.use_kp:
            return z
        zero = z.new_zeros(*z.shape[:-1], self.config.prompt_dim)
        for block in self.kp[m]:
            z, _ = block(z, (zero, zero), keep)
        return z

    def _propagate(self, z: dict[str, torch.Tensor], keep: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """PG blocks feed KP blocks, block by block (Fig. 3)."""
        cfg = self.config
        mods = MODALITY_NAMES
        others = {u: [v for v in mods if v != u] for u in mods}
        protos = {m: self.proto[m](z[m], keep[m]) for m in mods} if cfg.use_pg else {}
        renewed: dict[str, dict[str, torch.Tensor]] = {u: {} for u in mods}  # P-bar^{vu} from u's block
        zl = dict(z)
        for l in range(cfg.num_blocks):
            if cfg.use_pg:
                fresh = {v: self.pg[v][l](zl[v], protos[v], keep[v]) for v in mods}  # P~_l^v, eq. 7-8
            else:
                fresh = {v: self.prompt_proj[v][l](zl[v]) for v in mods}
            new_z = {}
            for u in mods:
                prompts = []
                for v in others[u]:
                    if l == 0:
                        prompts.append(fresh[v])
                    else:  # eq. 9
                        prompts.append(cfg.momentum * renewed[u][v] + (1 - cfg.momentum) * fresh[v])
                new_z[u], (pv, pw) = self.kp[u][l](zl[u], (prompts[0], prompts[1]), keep[u])
                renewed[u] = {others[u][0]: pv, others[u][1]: pw}
            zl = new_z
        return zl

    @torch.no_grad()
    def _set_gradient_modulation(self, uni: dict[str, torch.Tensor], batch: Batch, present: torch.Tensor) -> None:
        """Eq. 10 (guarded form, Departures 3) -> per-instance weights on grad M^u (eq. 11)."""
        eps = self.config.gm_eps
        labelled = batch.labelled
        err = {}
        for m in MODALITY_NAMES:
            out = uni[m].float()
            if self.task.kind == TaskKind.CLASSIFICATION:
                y = batch.y.clamp_min(0)
                err[m] = 1.0 - torch.softmax(out, -1).gather(-1, y[..., None]).squeeze(-1)
            else:
                err[m] = (out.squeeze(-1) - torch.nan_to_num(batch.y.float())).abs()
        for j, u in enumerate(MODALITY_NAMES):
            terms = []
            for k, v in enumerate(MODALITY_NAMES):
                if v == u:
                    continue
                ok = labelled & present[..., j] & present[..., k]
                diff = torch.where(ok, err[u] - err[v], torch.zeros_like(err[u]))
                # (S - D_i) / S = 1 - D_i / S, with |S| replaced by sum |D_j| (same value when
                # the D_j agree in sign; bounded to [0, 2] otherwise; 1 when S = 0).
                denom = diff.abs().sum() + eps
                terms.append(torch.where(ok, 1.0 - diff * torch.sign(diff.sum()) / denom, torch.ones_like(diff)))
            self.proto[u].set_instance_weights(0.5 * (terms[0] + terms[1]))

    # ------------------------------------------------------------------ loss
    def loss(self, out: MethodOutput, batch: Batch) -> dict[str, torch.Tensor]:
        cfg = self.config
        terms: dict[str, torch.Tensor] = {}
        present = batch.present & batch.valid[..., None]
        rec = []
        for j, m in enumerate(MODALITY_NAMES):  # eq. 2's L_enc, over present slots only (sync-free)
            recon = self.dec[m](out.aux["z"][m])
            per = (recon.float() - out.aux["x_hat"][m].float()).square().mean(-1)  # [B, L]
            rec.append(masked_mean(per, present[..., j]))
        terms["recon"] = torch.stack(rec).sum()
        uni = [task_loss(out.aux["uni_logits"][m], batch, self.task, present[..., j]) for j, m in enumerate(MODALITY_NAMES)]
        terms["unimodal"] = torch.stack(uni).sum()
        if self.stage == "unimodal":  # eq. 2
            terms["total"] = cfg.recon_weight * terms["recon"] + terms["unimodal"]
        else:
            terms["task"] = task_loss(out.logits, batch, self.task)
            terms["total"] = terms["task"] + cfg.unimodal_weight * terms["unimodal"] + cfg.recon_weight * terms["recon"]
        return terms


def _slice(batch: Batch, start: int, stop: int) -> Batch:
    return Batch(
        feats={m: x[:, start:stop] for m, x in batch.feats.items()},
        present=batch.present[:, start:stop],
        valid=batch.valid[:, start:stop],
        y=batch.y[:, start:stop],
        index=batch.index[:, start:stop],
    )


def _cat(parts: list):
    if isinstance(parts[0], dict):
        return {k: _cat([p[k] for p in parts]) for k in parts[0]}
    return torch.cat(parts, dim=1)
