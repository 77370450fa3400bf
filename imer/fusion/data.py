"""Feature datasets: utterance vectors + present masks + labels + dialogue order.

Two layers:

* :class:`FeatureSet` — numpy, host-side, the compiled dataset. It reads and writes imer's
  on-disk *feature store* (see :func:`save_store` for the format) and is what the community
  importer (:mod:`imer.fusion.community`) and ``imer extract`` produce.
* :class:`TensorData` — the same data as torch tensors on the training device, with a
  dialogue index matrix, so that both dialogue-sequence batches (``[B, L, D]``) and
  single-utterance batches (``[B, 1, D]``) are a gather, not a Python loop.

Missing entries are zero rows *and* ``present == False`` with a reason: the mask, never the
zeros, is what says a stream is absent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from imer.errors import BadInput
from imer.fsutil import commit_files, read_json_header
from imer.types import MODALITY_NAMES, TaskKind, TaskSpec

STORE_FORMAT = "imer-feature-store"
STORE_VERSION = 1
SPLITS = ("train", "valid", "test")


@dataclass
class FeatureSet:
    """One row per utterance; rows of the same dialogue are ordered by ``order``.

    Attributes:
        ids: unique utterance ids.
        feats: modality name -> float32 ``[N, D]``; rows where the modality is missing are zero.
        present: bool ``[N, 3]`` in (audio, text, video) order.
        reasons: str ``[N, 3]``: :class:`MissingReason` values (``"present"`` where present).
        labels: int64 class index (``-1`` = unlabelled) or float32 value (``nan`` = unlabelled).
        task: what the labels mean.
        speakers, dialogues, splits: per-utterance strings (split in train/valid/test or "").
        order: int64 position of the utterance inside its dialogue.
        details: optional str ``[N, 3]``: a human-readable detail per missing entry
            (e.g. "RMS 2.1e-05 < 1e-03"); empty strings where there is none.
        extractors: modality -> description of the extractor that made the features
            (``{"name": ..., "config": {...}}``); carried into model bundles so that
            ``predict`` can rebuild exactly the same extractors.
    """

    ids: list[str]
    feats: dict[str, np.ndarray]
    present: np.ndarray
    reasons: np.ndarray
    labels: np.ndarray
    task: TaskSpec
    speakers: list[str]
    dialogues: list[str]
    order: np.ndarray
    splits: list[str]
    extractors: dict[str, dict] = field(default_factory=dict)
    details: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.ids)
        if len(set(self.ids)) != n:
            dup = next(i for i in self.ids if self.ids.count(i) > 1)
            raise BadInput(f"utterance id {dup!r} appears more than once")
        if set(self.feats) != set(MODALITY_NAMES):
            raise BadInput(f"features must cover {MODALITY_NAMES}, got {sorted(self.feats)}")
        self.present = np.asarray(self.present, dtype=bool)
        if self.present.shape != (n, 3):
            raise BadInput(f"present mask has shape {self.present.shape}; expected [{n}, 3]")
        for j, m in enumerate(MODALITY_NAMES):
            x = np.asarray(self.feats[m])
            if x.ndim != 2 or x.shape[0] != n:
                raise BadInput(f"{m} features have shape {x.shape}; expected [{n}, D]")
            # Our own copy, so zeroing missing slots never writes into the caller's array;
            # a missing slot holds zeros whatever the producer left there (NaN included).
            x = np.array(x, dtype=np.float32, copy=True)
            x[~self.present[:, j]] = 0.0
            if not np.isfinite(x).all():
                raise BadInput(f"{m} features contain NaN or inf values in present entries")
            self.feats[m] = x
        self.reasons = np.asarray(self.reasons, dtype=object)
        if self.reasons.shape != (n, 3):
            raise BadInput(f"reasons table has shape {self.reasons.shape}; expected [{n}, 3]")
        if self.details is None:
            self.details = np.full((n, 3), "", dtype=object)
        self.details = np.asarray(self.details, dtype=object)
        if self.details.shape != (n, 3):
            raise BadInput(f"details table has shape {self.details.shape}; expected [{n}, 3]")
        self.order = np.asarray(self.order, dtype=np.int64)
        if self.order.shape != (n,):
            raise BadInput(f"order has shape {self.order.shape}; expected [{n}]")
        if np.shape(self.labels) != (n,):
            raise BadInput(f"labels have shape {np.shape(self.labels)}; expected [{n}]")
        for name in ("speakers", "dialogues", "splits"):
            if len(getattr(self, name)) != n:
                raise BadInput(f"{name} has {len(getattr(self, name))} entries for {n} utterances")
        if self.task.kind == TaskKind.CLASSIFICATION:
            self.labels = np.asarray(self.labels, dtype=np.int64)
            k = len(self.task.label_names)
            bad = (self.labels >= k) | (self.labels < -1)
            if bad.any():
                raise BadInput(f"label {self.labels[bad][0]} outside 0..{k - 1} (-1 = unlabelled)")
        else:
            self.labels = np.asarray(self.labels, dtype=np.float32)

    # ------------------------------------------------------------------ views
    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dims(self) -> dict[str, int]:
        return {m: int(x.shape[1]) for m, x in self.feats.items()}

    def subset(self, index: Sequence[int] | np.ndarray) -> "FeatureSet":
        idx = np.asarray(index, dtype=np.int64)
        pick = lambda seq: [seq[i] for i in idx]  # noqa: E731
        return FeatureSet(
            ids=pick(self.ids),
            feats={m: x[idx] for m, x in self.feats.items()},
            present=self.present[idx],
            reasons=self.reasons[idx],
            details=self.details[idx],
            labels=self.labels[idx],
            task=self.task,
            speakers=pick(self.speakers),
            dialogues=pick(self.dialogues),
            order=self.order[idx],
            splits=pick(self.splits),
            extractors=dict(self.extractors),
        )

    def split(self, name: str) -> "FeatureSet":
        return self.subset([i for i, s in enumerate(self.splits) if s == name])

    def labelled(self) -> np.ndarray:
        if self.task.kind == TaskKind.CLASSIFICATION:
            return self.labels >= 0
        return ~np.isnan(self.labels)

    def dialogue_groups(self) -> list[np.ndarray]:
        """Row indices per dialogue, each sorted by ``order``, dialogues in first-seen order."""
        groups: dict[str, list[int]] = {}
        for i, d in enumerate(self.dialogues):
            groups.setdefault(d, []).append(i)
        return [np.asarray(sorted(g, key=lambda i: self.order[i]), dtype=np.int64) for g in groups.values()]

    def summary(self) -> dict:
        return {
            "utterances": len(self),
            "dialogues": len(set(self.dialogues)),
            "splits": {s: self.splits.count(s) for s in sorted(set(self.splits))},
            "dims": self.dims,
            "present": {m: int(self.present[:, j].sum()) for j, m in enumerate(MODALITY_NAMES)},
            "task": self.task.to_dict(),
        }


# ---------------------------------------------------------------------- standardisation
@dataclass
class Standardizer:
    """Per-dimension z-scoring fitted on the training split's *present* rows only.

    Feature sets differ wildly in scale (eGeMAPS reaches |x| ~ 5000, MiniLM is unit norm);
    unscaled input sends attention models to NaN. Missing rows stay exactly zero.
    """

    mean: dict[str, np.ndarray]
    std: dict[str, np.ndarray]

    @classmethod
    def fit(cls, fs: FeatureSet, eps: float = 1e-6) -> "Standardizer":
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
    def from_tensors(cls, d: dict[str, np.ndarray]) -> "Standardizer":
        return cls(
            {m: np.asarray(d[f"{m}.mean"]) for m in MODALITY_NAMES},
            {m: np.asarray(d[f"{m}.std"]) for m in MODALITY_NAMES},
        )


# ---------------------------------------------------------------------- on-disk store
def save_store(fs: FeatureSet, out: str | Path) -> Path:
    """Write ``fs`` as an imer feature store folder.

    Layout (no pickle anywhere; every file is written to a temp name and renamed):

    * ``store.json`` — header: format, version, task, per modality ``dim`` and ``extractor``.
    * ``utterances.jsonl`` — one JSON object per utterance, in row order: ``id``, ``label``
      (class index, float, or null), ``speaker``, ``dialogue``, ``order``, ``split``,
      ``present`` (``{"audio": bool, ...}``) and ``reason`` (``{"audio": "silent_audio", ...}``).
    * ``features.safetensors`` — one float32 ``[N, D]`` tensor per modality, rows in the same
      order; memory-mappable, loads without executing code.

    All three files are written to temp names first; ``store.json`` is removed before and renamed
    last, so a half-written store never looks valid and a failed write leaves the old store intact.
    """
    from safetensors.numpy import save as st_save

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, uid in enumerate(fs.ids):
        if fs.task.kind == TaskKind.CLASSIFICATION:
            label = int(fs.labels[i]) if fs.labels[i] >= 0 else None
        else:
            label = None if np.isnan(fs.labels[i]) else float(fs.labels[i])
        rows.append(
            json.dumps(
                {
                    "id": uid,
                    "label": label,
                    "speaker": fs.speakers[i],
                    "dialogue": fs.dialogues[i],
                    "order": int(fs.order[i]),
                    "split": fs.splits[i],
                    "present": {m: bool(fs.present[i, j]) for j, m in enumerate(MODALITY_NAMES)},
                    "reason": {m: str(fs.reasons[i, j]) for j, m in enumerate(MODALITY_NAMES)},
                    "detail": {m: str(fs.details[i, j]) for j, m in enumerate(MODALITY_NAMES) if fs.details[i, j]},
                },
                ensure_ascii=False,
            )
        )
    header = {
        "format": STORE_FORMAT,
        "version": STORE_VERSION,
        "num_utterances": len(fs),
        "task": fs.task.to_dict(),
        "modalities": {m: {"dim": fs.dims[m], "extractor": fs.extractors.get(m, {"name": "unknown"})} for m in MODALITY_NAMES},
    }
    commit_files(
        {
            out / "features.safetensors": st_save({m: fs.feats[m] for m in MODALITY_NAMES}),
            out / "utterances.jsonl": ("\n".join(rows) + "\n").encode("utf-8"),
            out / "store.json": json.dumps(header, indent=2).encode("utf-8"),
        },
        marker=out / "store.json",
    )
    return out


def is_store(path: str | Path) -> bool:
    return (Path(path) / "store.json").is_file()


def load_store(path: str | Path) -> FeatureSet:
    """Read a folder written by :func:`save_store` (or by ``imer extract``)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    head_file = path / "store.json"
    if not head_file.is_file():
        raise BadInput(
            f"{path}: not an imer feature store (no store.json). Create one with "
            "'imer extract MEDIA --out DIR' or 'imer import-community ... --out DIR'."
        )
    header = read_json_header(head_file, STORE_FORMAT, STORE_VERSION, "store", "re-create it", BadInput)
    try:
        task = TaskSpec.from_dict(header["task"])
        rows = [json.loads(line) for line in (path / "utterances.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
        n = len(rows)
        expected = int(header["num_utterances"])
        feats = {}
        with safe_open(str(path / "features.safetensors"), framework="numpy") as f:
            for m in MODALITY_NAMES:
                feats[m] = f.get_tensor(m)
    except (KeyError, ValueError, OSError, TypeError, SafetensorError) as e:
        raise BadInput(f"{path}: incomplete or damaged feature store ({type(e).__name__}: {e}); re-create it") from None
    if n != expected:
        raise BadInput(f"{path}: utterances.jsonl has {n} rows, store.json says {expected}; the store is incomplete, re-create it")
    if task.kind == TaskKind.CLASSIFICATION:
        labels = np.array([-1 if r["label"] is None else int(r["label"]) for r in rows], dtype=np.int64)
    else:
        labels = np.array([np.nan if r["label"] is None else float(r["label"]) for r in rows], dtype=np.float32)
    return FeatureSet(
        ids=[r["id"] for r in rows],
        feats=feats,
        present=np.array([[r["present"][m] for m in MODALITY_NAMES] for r in rows], dtype=bool).reshape(n, 3),
        reasons=np.array([[r["reason"][m] for m in MODALITY_NAMES] for r in rows], dtype=object).reshape(n, 3),
        details=np.array([[r.get("detail", {}).get(m, "") for m in MODALITY_NAMES] for r in rows], dtype=object).reshape(n, 3),
        labels=labels,
        task=task,
        speakers=[r.get("speaker", "") or "" for r in rows],
        dialogues=[r.get("dialogue") or r["id"] for r in rows],
        order=np.array([r.get("order", 0) for r in rows], dtype=np.int64),
        splits=[r.get("split", "") or "" for r in rows],
        extractors={m: header["modalities"][m].get("extractor", {}) for m in MODALITY_NAMES},
    )


def make_validation_split(fs: FeatureSet, fraction: float, seed: int) -> FeatureSet:
    """Move a random ``fraction`` of training *dialogues* to 'valid' (whole dialogues, so no leakage).

    Used when the data has no validation split: model selection then never looks at test.
    """
    if "valid" in fs.splits:
        return fs
    train_dialogues = sorted({d for d, s in zip(fs.dialogues, fs.splits) if s == "train"})
    if len(train_dialogues) < 2:
        raise BadInput("need at least 2 training dialogues to hold one out for validation")
    rng = np.random.default_rng(seed)
    k = min(len(train_dialogues) - 1, max(1, int(round(fraction * len(train_dialogues)))))
    held = set(rng.choice(train_dialogues, size=k, replace=False).tolist())
    out = fs.subset(np.arange(len(fs)))
    out.splits = ["valid" if (s == "train" and d in held) else s for d, s in zip(fs.dialogues, fs.splits)]
    return out


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
        self.dialogue_index = torch.from_numpy(mat).to(self.device)

    def padded_mask(self, protocol_mask) -> "object":
        """Move a bool ``[N, 3]`` protocol mask to the device once, with the padding row appended."""
        import torch

        pm = torch.as_tensor(protocol_mask, dtype=torch.bool).to(self.device)
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
            units = self.dialogue_index
        elif mode == "utterance":
            units = torch.arange(self.n, device=self.device).unsqueeze(1)
        else:
            raise BadInput(f"batch mode {mode!r}: use 'dialogue' or 'utterance'")
        order = (
            torch.randperm(len(units), generator=generator).to(self.device)
            if shuffle
            else torch.arange(len(units), device=self.device)
        )
        pm = None if protocol_mask is None else self.padded_mask(protocol_mask)
        lengths = (units >= 0).sum(1).cpu() if mode == "dialogue" else None
        starts = list(range(0, len(units), batch_size))
        if bucket and shuffle and lengths is not None:
            # Stable sort of the shuffled order by length: ties stay in random order.
            order = order[torch.sort(lengths[order.cpu()], stable=True).indices.to(self.device)]
            starts = [starts[i] for i in torch.randperm(len(starts), generator=generator).tolist()]
        for start in starts:
            sel = order[start : start + batch_size]
            idx = units[sel]
            if lengths is not None:  # trim padding columns this batch does not need
                width = int(lengths[sel.cpu()].max())
                idx = idx[:, : max(width, 1)]
            yield self.batch(idx, pm, padded=True)

    def num_batches(self, mode: str, batch_size: int) -> int:
        units = len(self.dialogue_index) if mode == "dialogue" else self.n
        return (units + batch_size - 1) // batch_size
