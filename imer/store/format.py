"""The feature store on disk: a folder that ``imer train --data`` reads.

Layout (no pickle anywhere; the three files are committed as one set)::

    store.json             header: format, version, number of utterances, task, per modality
                           its dim and FeatureSpec (null when the modality is off)
    utterances.jsonl       one JSON object per utterance, in row order: id, label (class index,
                           float, or null), speaker, dialogue, order, split, present, reason, detail
    features.safetensors   one float32 [N, D] tensor per modality, rows in the same order

``store.json`` is removed first and renamed into place last, so a half-written store never looks
valid and a failed write leaves the old store intact.

Versions: 1 (imer 0.1) kept the spec under ``"extractor"`` and had no ``kind``; it still loads.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from imer.errors import BadInput
from imer.fsutil import commit_files, read_json_header
from imer.store.featureset import FeatureSet
from imer.store.spec import spec_from_json, spec_to_json
from imer.types import MODALITY_NAMES, TaskKind, TaskSpec

STORE_FORMAT = "imer-feature-store"
STORE_VERSION = 2
STORE_FILE = "store.json"


def save_store(fs: FeatureSet, out: str | Path) -> Path:
    """Write ``fs`` as a feature store folder (see the module docstring)."""
    from safetensors.numpy import save as st_save

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise BadInput(f"{out}: exists and is not a folder; choose another --out")
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
        "modalities": {m: {"dim": fs.dims[m], "feature": spec_to_json(fs.specs.get(m))} for m in MODALITY_NAMES},
    }
    commit_files(
        {
            out / "features.safetensors": st_save({m: fs.feats[m] for m in MODALITY_NAMES}),
            out / "utterances.jsonl": ("\n".join(rows) + "\n").encode("utf-8"),
            out / STORE_FILE: json.dumps(header, indent=2).encode("utf-8"),
        },
        marker=out / STORE_FILE,
    )
    return out


def is_store(path: str | Path) -> bool:
    return (Path(path) / STORE_FILE).is_file()


def _specs(header: dict) -> dict:
    out = {}
    for m in MODALITY_NAMES:
        entry = header["modalities"][m]
        if header.get("version", 1) >= 2:
            raw = entry.get("feature")
        else:  # version 1: free-form; keys beyond the spec's went with the config
            raw = dict(entry.get("extractor") or {})
            extra = {k: raw.pop(k) for k in list(raw) if k not in ("name", "config", "dim", "decode")}
            if extra and raw.get("name") not in (None, "none"):
                raw["config"] = {**raw.get("config", {}), **extra}
        out[m] = spec_from_json(raw, entry.get("dim"))
    return out


def load_store(path: str | Path) -> FeatureSet:
    """Read a store folder written by :func:`save_store` (any version up to ``STORE_VERSION``)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    head_file = path / STORE_FILE
    if not head_file.is_file():
        raise BadInput(
            f"{path}: not an imer feature store (no {STORE_FILE}). Create one with "
            "'imer extract MEDIA --out DIR' or 'imer import-community ... --out DIR'."
        )
    header = read_json_header(head_file, STORE_FORMAT, STORE_VERSION, "store", "re-create it", BadInput)
    try:
        task = TaskSpec.from_dict(header["task"])
        specs = _specs(header)
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
        specs=specs,
    )
