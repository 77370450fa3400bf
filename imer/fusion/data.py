"""From a :class:`~imer.store.FeatureSet` to what a model sees.

* :class:`Normalizer` — per-dimension z-scoring fitted on the training split (saved in bundles
  as ``normalizer.safetensors``).
* :class:`TensorData` — a FeatureSet as torch tensors on the training device, with a dialogue
  index matrix, so that both dialogue-sequence batches (``[B, L, D]``) and single-utterance
  batches (``[B, 1, D]``) are a gather, not a Python loop.
* :class:`Batch` — what a fusion method's ``forward`` receives.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from imer.errors import BadInput
from imer.store.featureset import FeatureSet
from imer.types import MODALITY_NAMES, TaskKind


# ---------------------------------------------------------------------- normalisation
@dataclass
class Normalizer:
    """Per-dimension z-scoring fitted on the training split's *present* rows only.

    Feature sets differ wildly in scale (eGeMAPS reaches |x| ~ 5000, MiniLM is unit norm);
    unscaled input sends attention models to NaN. Missing rows stay exactly zero.
    """

    mean: dict[str, np.ndarray]
    std: dict[str, np.ndarray]

    @classmethod
    def fit(cls, fs: FeatureSet, eps: float = 1e-6) -> "Normalizer":
        mean, std = {}, {}
        for j, m in enumerate(MODALITY_NAMES):
            x = fs.feats[m][fs.present[:, j]]
            if len(x) == 0:
                mean[m] = np.zeros(fs.dims[m], np.float32)
                std[m] = np.ones(fs.dims[m], np.float32)
                continue
            mean[m] = x.mean(0).astype(np.float32)
            s = x.std(0).astype(np.float32)
            std[m] = np.where(s < eps, 1.0, s).astype(np.float32)
        return cls(mean, std)

    def apply(self, fs: FeatureSet) -> FeatureSet:
        out = fs.subset(np.arange(len(fs)))
        for j, m in enumerate(MODALITY_NAMES):
            out.feats[m] = ((out.feats[m] - self.mean[m]) / self.std[m]).astype(np.float32)
            out.feats[m][~out.present[:, j]] = 0.0
        return out

    def transform(self, modality: str, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean[modality]) / self.std[modality]).astype(np.float32)

    def tensors(self) -> dict[str, np.ndarray]:
        d = {f"{m}.mean": v for m, v in self.mean.items()}
        d.update({f"{m}.std": v for m, v in self.std.items()})
        return d

    @classmethod
    def from_tensors(cls, d: dict[str, np.ndarray]) -> "Normalizer":
        return cls(
            {m: np.asarray(d[f"{m}.mean"]) for m in MODALITY_NAMES},
            {m: np.asarray(d[f"{m}.std"]) for m in MODALITY_NAMES},
        )


# ---------------------------------------------------------------------- tensors & batches
@dataclass
class Batch:
    """What a fusion method sees. ``L`` = 1 in utterance mode.

    Attributes:
        feats: modality -> ``[B, L, D]`` float; values in missing slots are unspecified
            (methods zero them with ``present``).
        present: ``[B, L, 3]`` bool: the data's own mask AND the protocol's mask.
        valid: ``[B, L]`` bool: False on padding.
        y: ``[B, L]`` labels (long for classification, float for regression).
        index: ``[B, L]`` row numbers in the source :class:`FeatureSet` (-1 on padding).
    """

    feats: dict
    present: "object"
    valid: "object"
    y: "object"
    index: "object"

    @property
    def labelled(self):
        import torch

        if self.y.dtype == torch.long:
            return self.valid & (self.y >= 0)
        return self.valid & ~torch.isnan(self.y)


class TensorData:
    """A :class:`FeatureSet` moved once to a device, batched by index gathers."""

    def __init__(self, fs: FeatureSet, device: "object" = "cpu"):
        import torch

        self.fs = fs
        self.device = torch.device(device)
        n = len(fs)
        self.n = n
        # One extra all-zero row at index n serves every padding position.
        self.feats = {
            m: torch.from_numpy(np.concatenate([x, np.zeros((1, x.shape[1]), np.float32)])).to(self.device)
            for m, x in fs.feats.items()
        }
        self.present = torch.from_numpy(np.concatenate([fs.present, np.zeros((1, 3), bool)])).to(self.device)
        if fs.task.kind == TaskKind.CLASSIFICATION:
            y = np.concatenate([fs.labels, [-1]]).astype(np.int64)
        else:
            y = np.concatenate([fs.labels, [np.nan]]).astype(np.float32)
        self.y = torch.from_numpy(y).to(self.device)
        groups = fs.dialogue_groups()
        self.max_dialogue_len = max((len(g) for g in groups), default=1)
        mat = np.full((len(groups), self.max_dialogue_len), -1, dtype=np.int64)
        for i, g in enumerate(groups):
            mat[i, : len(g)] = g
        # Batch order and widths are decided on the host (these copies), so building a batch never
        # waits for the device; only the finished index goes over, asynchronously.
        self._dialogue_index_host = mat
        self._dialogue_lengths_host = (mat >= 0).sum(1)
        self.mean_dialogue_len = float(self._dialogue_lengths_host.mean()) if len(groups) else 0.0
        self.dialogue_index = torch.from_numpy(mat).to(self.device)

    def padded_mask(self, protocol_mask) -> "object":
        """Move a bool ``[N, 3]`` protocol mask to the device once, with the padding row appended."""
        import torch

        pm = torch.as_tensor(protocol_mask, dtype=torch.bool)
        # Once per pass; pinned and asynchronous on CUDA, so it does not wait for queued work.
        pm = pm.pin_memory().to(self.device, non_blocking=True) if self.device.type == "cuda" and pm.device.type == "cpu" else pm.to(self.device)
        if pm.shape != (self.n, 3):
            raise BadInput(f"protocol mask has shape {tuple(pm.shape)}; expected [{self.n}, 3]")
        return torch.cat([pm, torch.zeros(1, 3, dtype=torch.bool, device=self.device)])

    def batch(self, index, protocol_mask=None, padded: bool = False) -> Batch:
        """``index``: LongTensor ``[B, L]`` of rows (-1 = padding); mask: bool ``[N, 3]`` or None
        (or already passed through :meth:`padded_mask` when ``padded``)."""
        import torch

        valid = index >= 0
        rows = torch.where(valid, index, torch.full_like(index, self.n))
        present = self.present[rows]
        if protocol_mask is not None:
            pm = protocol_mask if padded else self.padded_mask(protocol_mask)
            present = present & pm[rows]
        return Batch(
            feats={m: x[rows] for m, x in self.feats.items()},
            present=present,
            valid=valid,
            y=self.y[rows],
            index=index,
        )

    def batches_per_epoch(self, mode: str, batch_size: int) -> int:
        """How many batches :meth:`iterate` yields (whole dialogues or single utterances)."""
        units = len(self._dialogue_index_host) if mode == "dialogue" else self.n
        return max(1, -(-units // batch_size))

    def iterate(
        self,
        mode: str,
        batch_size: int,
        shuffle: bool = False,
        generator=None,
        protocol_mask=None,
        bucket: bool = False,
    ) -> Iterator[Batch]:
        """Yield batches of whole dialogues (``mode='dialogue'``) or single utterances.

        ``bucket`` (dialogue mode, with ``shuffle``): batches are formed from dialogues of
        similar length (sorted by length with random tie-breaks, then the batch order shuffled),
        so far less padding is computed; the batches of an epoch still cover every dialogue once.
        """
        import torch

        if mode == "dialogue":
            units, lengths = self._dialogue_index_host, self._dialogue_lengths_host
        elif mode == "utterance":
            units, lengths = np.arange(self.n, dtype=np.int64)[:, None], None
        else:
            raise BadInput(f"batch mode {mode!r}: use 'dialogue' or 'utterance'")
        # The permutation comes from torch's generator (the same order as always), the rest is numpy.
        order = (torch.randperm(len(units), generator=generator) if shuffle else torch.arange(len(units))).numpy()
        pm = None if protocol_mask is None else self.padded_mask(protocol_mask)
        starts = list(range(0, len(units), batch_size))
        if bucket and shuffle and lengths is not None:
            # Stable sort of the shuffled order by length: ties stay in random order.
            order = order[np.argsort(lengths[order], kind="stable")]
            starts = [starts[i] for i in torch.randperm(len(starts), generator=generator).tolist()]
        pin = self.device.type == "cuda"
        for start in starts:
            sel = order[start : start + batch_size]
            idx = units[sel]
            if lengths is not None:  # trim padding columns this batch does not need
                idx = idx[:, : max(int(lengths[sel].max()), 1)]
            idx = torch.from_numpy(np.ascontiguousarray(idx))
            idx = idx.pin_memory().to(self.device, non_blocking=True) if pin else idx.to(self.device)
            yield self.batch(idx, pm, padded=True)

    def num_batches(self, mode: str, batch_size: int) -> int:
        units = len(self.dialogue_index) if mode == "dialogue" else self.n
        return (units + batch_size - 1) // batch_size
