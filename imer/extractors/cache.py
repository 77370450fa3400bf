"""Content-addressed feature cache: the resumable unit of extraction.

One folder per (modality, extractor, extractor-config key, decode settings)::

    <cache>/<modality>-<name>-<key>/
        extractor.json            the FeatureSpec of these entries (name, config, dim, decode settings)
        <content_key>.npy         a present feature (float32 [dim])
        <content_key>.json        a missing entry: {"reason": ..., "detail": ...}

``content_key`` hashes what the feature depends on: the media file's *bytes* (blake2b, so a
renamed or copied file is still a hit and an edited file is a miss), the segment bounds and,
for text, the transcript itself. Every entry is written to a temp file and renamed, so a run
killed at any point leaves only whole entries: the next run resumes from them.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np

from imer.fsutil import atomic_write_bytes
from imer.store.spec import FeatureSpec
from imer.types import StreamStatus


def content_key(*parts: object) -> str:
    blob = json.dumps([str(p) for p in parts], ensure_ascii=False)
    return hashlib.blake2b(blob.encode("utf-8"), digest_size=16).hexdigest()


class FeatureCache:
    """One namespace of the cache (see module docstring)."""

    def __init__(self, root: str | Path, modality: str, name: str, key: str, spec: FeatureSpec):
        self.dir = Path(root) / f"{modality}-{name}-{key}"
        self.dir.mkdir(parents=True, exist_ok=True)
        meta = self.dir / "extractor.json"
        if not meta.exists():
            atomic_write_bytes(meta, json.dumps(spec.to_dict(), indent=2, default=str).encode())

    def get(self, key: str) -> np.ndarray | StreamStatus | None:
        """The cached feature, a missing StreamStatus, or None when not cached (or unreadable)."""
        f = self.dir / f"{key}.npy"
        if f.exists():
            try:
                return np.load(f, allow_pickle=False)
            except (ValueError, OSError, EOFError):
                return None  # a damaged entry counts as absent and is rewritten
        j = self.dir / f"{key}.json"
        if j.exists():
            try:
                d = json.loads(j.read_text())
                return StreamStatus.missing(d["reason"], d.get("detail", ""))
            except (ValueError, KeyError, TypeError, OSError):
                return None
        return None

    def put(self, key: str, value: np.ndarray | StreamStatus) -> None:
        if isinstance(value, StreamStatus):
            (self.dir / f"{key}.npy").unlink(missing_ok=True)
            atomic_write_bytes(self.dir / f"{key}.json", json.dumps({"reason": value.reason.value, "detail": value.detail}).encode())
            return
        buf = io.BytesIO()
        np.save(buf, np.asarray(value, dtype=np.float32), allow_pickle=False)
        atomic_write_bytes(self.dir / f"{key}.npy", buf.getvalue())
        (self.dir / f"{key}.json").unlink(missing_ok=True)

    def drop(self, key: str) -> None:
        (self.dir / f"{key}.npy").unlink(missing_ok=True)
        (self.dir / f"{key}.json").unlink(missing_ok=True)
