"""Predict emotions for new media with a trained model bundle.

The bundle names the exact extractors (and decode settings) its features came from; the
:class:`Predictor` rebuilds exactly those, loads them once, and refuses a bundle whose
extractors it cannot rebuild (features imported from elsewhere, a stand-in, a model that is not
available offline) instead of silently using different ones.

    >>> from imer.predict import Predictor
    >>> p = Predictor("runs/model")
    >>> [r.label for r in p.predict(["clip.mp4"], disable={"audio"})]
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from imer.errors import BadInput, ImerError, IncompatibleBundle
from imer.types import MODALITIES, MODALITY_NAMES, MissingReason, Modality, TaskKind


@dataclass
class StreamUse:
    used: bool
    reason: str = MissingReason.PRESENT.value
    detail: str = ""


@dataclass
class Prediction:
    """One utterance's result. ``probabilities`` is empty for regression (see ``value``)."""

    id: str
    source: str | None
    start: float | None
    end: float | None
    label: str | None
    probabilities: dict[str, float] = field(default_factory=dict)
    value: float | None = None
    streams: dict[str, StreamUse] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _config_from_json(cls: type, cfg: dict) -> dict:
    """JSON turned tuples into lists; give the config dataclass back its tuples."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    out = {}
    for k, v in cfg.items():
        if k in fields and isinstance(v, list):
            v = tuple(v)
        out[k] = v
    return out


class Predictor:
    """A model bundle plus its extractors, loaded once, applied to any number of clips.

    Each clip (or ``--start/--end`` segment) is predicted on its own, as a one-utterance
    sequence: a dialogue-level model such as ComP then has no conversational context, which
    it had in training on dialogues. Results never depend on which other clips are in the call.
    """

    def __init__(
        self,
        model_dir: str | Path,
        device: str = "auto",
        cache_dir: str | Path | None = None,
        disable: Iterable[str] = (),
    ):
        """``disable``: streams this predictor will never use; their models are not loaded
        (their configs are still checked against the bundle)."""
        from imer.extractors.base import EXTRACTORS, resolve_device
        from imer.fusion.bundle import load_bundle
        from imer.pipeline.ingest import DecodeConfig

        self.device = resolve_device(device)
        self.model, self.standardizer, self.config = load_bundle(model_dir, self.device)
        self.model_dir = Path(model_dir)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.label_names = list(self.config["task"].get("label_names", []))
        self.extractors = {}
        decode_kw: dict = {}
        for m in MODALITIES:
            spec = self.config["extractors"].get(m.value, {})
            name = spec.get("name", "unknown")
            if name == "none":
                continue  # trained without this modality: it is always missing
            if name not in EXTRACTORS:
                raise IncompatibleBundle(
                    f"{model_dir}: its {m.value} features came from {name!r}, which imer cannot compute from media "
                    f"(known extractors: {', '.join(EXTRACTORS.names())}). Train on a store made by 'imer extract' to predict from media."
                )
            cls = EXTRACTORS.get(name)
            try:
                ex = cls(cls.config_class(**_config_from_json(cls.config_class, spec.get("config", {}))), device=self.device)
            except TypeError as e:
                raise IncompatibleBundle(f"{model_dir}: {m.value} extractor {name!r} config does not match this imer version ({e})") from None
            if int(spec.get("dim", ex.dim)) != ex.dim or ex.dim != int(self.config["dims"][m.value]):
                raise IncompatibleBundle(f"{model_dir}: {m.value} extractor {name!r} gives {ex.dim}-d features, the model expects {self.config['dims'][m.value]}")
            self.extractors[m] = ex
            decode_kw.update(spec.get("decode", {}))
            if m.value in set(disable):
                continue
            try:
                ex.ensure_loaded()  # fail now, before any media is decoded
            except ImerError as e:
                raise IncompatibleBundle(f"{model_dir}: the {m.value} extractor {name!r} this model was trained with is not available here: {e}") from None
        fields = {f.name for f in dataclasses.fields(DecodeConfig)}
        self.decode = DecodeConfig(**{k: v for k, v in decode_kw.items() if k in fields})

    # ------------------------------------------------------------------ inputs
    def utterances(
        self,
        paths: Sequence[str | Path],
        text: str | None = None,
        transcript: str | Path | None = None,
        start: float | None = None,
        end: float | None = None,
    ):
        """Paths (files or folders) -> utterances; one per media file unless start/end cut it."""
        from imer.pipeline.ingest import discover
        from imer.pipeline.manifest import Utterance

        if transcript is not None and text is not None:
            raise BadInput("give --text or --transcript, not both")
        if transcript is not None:
            tp = Path(transcript)
            if not tp.is_file():
                raise BadInput(f"{tp}: transcript file not found")
            from imer.pipeline.transcripts import read_sidecar

            text = read_sidecar(tp).text or ""
        if start is not None and start < 0:
            raise BadInput(f"--start {start}: must be >= 0 seconds")
        if start is not None and end is not None and end <= start:
            raise BadInput(f"--end {end} must be after --start {start}")
        utts = []
        seen: dict[str, int] = {}
        for p in paths or []:
            p = Path(p)
            if not p.exists():
                raise BadInput(f"{p}: no such file or folder")
            for u in discover(p, cues_as_utterances=False):
                # Ids are relative to each given path: the same name under two paths gets a suffix.
                k = seen.get(u.id, 0)
                seen[u.id] = k + 1
                if k:
                    u.id = f"{u.id}~{k}"
                utts.append(u)
        if not utts:
            if text is None:
                raise BadInput("nothing to predict: give media paths and/or --text")
            utts = [Utterance(id="text", transcript=text, transcript_source="cli")]
        for u in utts:
            if text is not None:
                u.transcript, u.transcript_source = text, "cli"
            if start is not None or end is not None:
                u.start, u.end = start, end
            u.label = None
            u.split = "test"
        return utts

    # ------------------------------------------------------------------ predict
    def predict(
        self,
        paths: Sequence[str | Path] = (),
        disable: Iterable[str] = (),
        text: str | None = None,
        transcript: str | Path | None = None,
        start: float | None = None,
        end: float | None = None,
        progress=None,
    ) -> list[Prediction]:
        """Predict every utterance found in ``paths`` (or ``text`` alone); ``disable`` ⊆ {audio, text, video}."""
        import torch

        from imer.extractors.run import ExtractConfig, extract_features
        from imer.fusion.data import Batch

        valid = {m.value for m in MODALITIES}
        bad = sorted(set(disable) - valid)
        if bad:
            raise BadInput(f"cannot switch off {bad}: streams are {sorted(valid)}")
        off = {Modality(d) for d in disable}
        utts = self.utterances(paths, text, transcript, start, end)
        active = {m: ex for m, ex in self.extractors.items() if m not in off}
        with tempfile.TemporaryDirectory(prefix="imer-predict-") as tmp:
            cfg = ExtractConfig(
                backends={m: (ex.name if m in active else None) for m, ex in self.extractors.items()},
                decode=self.decode,
                device=self.device,
                cache_dir=self.cache_dir or Path(tmp) / "cache",
                holdout=0.0,
            )
            fs, _ = extract_features(utts, Path(tmp) / "store", cfg, progress=progress, extractors=active)
        reasons, details = fs.reasons.copy(), fs.details.copy()
        for j, m in enumerate(MODALITIES):
            if m in off:
                reasons[:, j], details[:, j] = MissingReason.DISABLED.value, "switched off"
            elif m not in self.extractors:
                reasons[:, j], details[:, j] = MissingReason.DISABLED.value, "the model was trained without this modality"
        dims = self.config["dims"]
        feats = {}
        for j, m in enumerate(MODALITY_NAMES):
            x = fs.feats[m] if fs.feats[m].shape[1] == dims[m] else np.zeros((len(fs), dims[m]), np.float32)
            x = self.standardizer.transform(m, x)
            x[~fs.present[:, j]] = 0.0
            feats[m] = torch.from_numpy(x).to(self.device)[:, None, :]
        present = torch.from_numpy(fs.present).to(self.device)[:, None, :]
        n = len(fs)
        batch = Batch(
            feats=feats,
            present=present,
            valid=torch.ones(n, 1, dtype=torch.bool, device=self.device),
            y=torch.full((n, 1), -1, dtype=torch.long, device=self.device),
            index=torch.arange(n, device=self.device)[:, None],
        )
        self.model.eval()
        with torch.no_grad():
            logits = self.model(batch).logits[:, 0].float()
        results = []
        for i, u in enumerate(utts):
            streams = {
                m: StreamUse(bool(fs.present[i, j]), str(reasons[i, j]), str(details[i, j])) for j, m in enumerate(MODALITY_NAMES)
            }
            if self.model.task.kind == TaskKind.CLASSIFICATION:
                probs = torch.softmax(logits[i], -1).cpu().numpy()
                k = int(probs.argmax())
                results.append(Prediction(u.id, str(u.source) if u.source else None, u.start, u.end,
                                          self.label_names[k], {n_: float(p) for n_, p in zip(self.label_names, probs)},
                                          None, streams))
            else:
                results.append(Prediction(u.id, str(u.source) if u.source else None, u.start, u.end,
                                          None, {}, float(logits[i, 0]), streams))
        return results


def predict(paths: Sequence[str | Path], model: str | Path, **kwargs) -> list[Prediction]:
    """One-call API: ``imer.predict.predict(["clip.mp4"], model="runs/model", disable={"audio"})``."""
    device = kwargs.pop("device", "auto")
    return Predictor(model, device=device).predict(paths, **kwargs)
