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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from imer.errors import BadInput, ImerError, IncompatibleBundle
from imer.types import MODALITIES, MODALITY_NAMES, MissingReason, Modality, StreamStatus, TaskKind

NO_USABLE_STREAM = "no usable stream"


@dataclass
class Prediction:
    """One utterance's result.

    ``label`` (classification) or ``value`` (regression) is None, and ``probabilities`` empty,
    when nothing was observed: ``abstained`` then says why (``"no usable stream"``), and
    ``streams`` says what happened to each one.
    """

    id: str
    source: str | None
    start: float | None
    end: float | None
    label: str | None
    probabilities: dict[str, float] = field(default_factory=dict)
    value: float | None = None
    streams: dict[str, StreamStatus] = field(default_factory=dict)
    abstained: str | None = None

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["streams"] = {m: s.to_dict() for m, s in self.streams.items()}
        return d


class Predictor:
    """A model bundle plus its extractors, loaded once, applied to any number of clips.

    Each clip (or ``--start/--end`` segment) is predicted on its own, as a one-utterance
    sequence: a dialogue-level model such as ComP then has no conversational context, which
    it had in training on dialogues. Results never depend on which other clips are in the call.

    The path is the training path: extract -> compile (in memory, the bundle's task, no labels)
    -> the bundle's normaliser -> :func:`imer.fusion.evaluation.predict_outputs`.
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
        from imer.config import from_dict
        from imer.devices import resolve_device
        from imer.extractors.base import Extractor
        from imer.fusion.bundle import load_bundle
        from imer.pipeline.ingest import DecodeConfig

        self.device = str(resolve_device(device))
        loaded = load_bundle(model_dir, self.device)
        self.model, self.normalizer, self.spec = loaded.method, loaded.normalizer, loaded.spec
        self.model_dir = Path(model_dir)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.label_names = self.spec.label_names
        self.extractors = {}
        decode_kw: dict = {}
        for m in MODALITIES:
            fspec = self.spec.features.get(m.value)
            if fspec is None:
                continue  # trained without this modality: it is always missing
            try:
                ex = Extractor.from_spec(fspec, device=self.device)
            except IncompatibleBundle as e:
                raise IncompatibleBundle(
                    f"{model_dir}: its {m.value} features: {e}. Train on a store made by 'imer extract' to predict from media."
                ) from None
            if ex.dim != int(self.spec.dims[m.value]):
                raise IncompatibleBundle(f"{model_dir}: {m.value} extractor {fspec.name!r} gives {ex.dim}-d features, the model expects {self.spec.dims[m.value]}")
            self.extractors[m] = ex
            decode_kw.update(fspec.decode)
            if m.value in set(disable):
                continue
            try:
                ex.ensure_loaded()  # fail now, before any media is decoded
            except ImerError as e:
                raise IncompatibleBundle(f"{model_dir}: the {m.value} extractor {fspec.name!r} this model was trained with is not available here: {e}") from None
        try:
            self.decode = from_dict(DecodeConfig, decode_kw, "decode settings")
        except BadInput as e:
            raise IncompatibleBundle(f"{model_dir}: {e}") from None
    # ------------------------------------------------------------------ inputs
    def utterances(
        self,
        paths: Sequence[str | Path],
        text: str | None = None,
        transcript: str | Path | None = None,
        start: float | None = None,
        end: float | None = None,
        warnings: list[str] | None = None,
    ):
        """Paths (files or folders) -> utterances; one per media file unless start/end cut it.

        ``warnings`` receives what discovery noticed on the way (sidecar cues skipped for
        malformed times, symlinks whose target does not exist)."""
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
            for u in discover(Path(p), cues_as_utterances=False, warnings=warnings):  # says why a path is unusable
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
        warnings: list[str] | None = None,
    ) -> list[Prediction]:
        """Predict every utterance found in ``paths`` (or ``text`` alone); ``disable`` ⊆ {audio, text, video}.

        ``warnings`` (a list to fill) receives discovery's warnings: see :meth:`utterances`."""
        from imer.extractors.run import ExtractConfig, extract_features
        from imer.fusion.data import TensorData
        from imer.fusion.evaluation import default_batch_size, predict_outputs
        from imer.store.compile import compile_features

        valid = {m.value for m in MODALITIES}
        bad = sorted(set(disable) - valid)
        if bad:
            raise BadInput(f"cannot switch off {bad}: streams are {sorted(valid)}")
        off = {Modality(d) for d in disable}
        utts = self.utterances(paths, text, transcript, start, end, warnings)
        active = {m: ex for m, ex in self.extractors.items() if m not in off}
        cfg = ExtractConfig(
            backends={m: (ex.name if m in active else None) for m, ex in self.extractors.items()},
            decode=self.decode,
            device=self.device,
            cache_dir=self.cache_dir,
        )
        extraction = extract_features(utts, cfg, progress=progress, extractors=active)
        results = []
        for res in extraction.results:
            res = dict(res)
            for m in MODALITIES:
                if m in off:
                    res[m] = StreamStatus.missing(MissingReason.DISABLED, "switched off")
                elif m not in self.extractors:
                    res[m] = StreamStatus.missing(MissingReason.DISABLED, "the model was trained without this modality")
            results.append(res)
        specs = {m: self.spec.features.get(m.value) for m in MODALITIES}
        fs, _ = compile_features(utts, results, specs, task=self.spec.task, splits=False)
        data = TensorData(self.normalizer.apply(fs), self.device)
        outputs = predict_outputs(self.model, data, None, "utterance", default_batch_size("utterance"))
        observed = fs.present.any(axis=1)
        preds = []
        for i, u in enumerate(utts):
            streams = {
                m: StreamStatus(bool(fs.present[i, j]), MissingReason(fs.reasons[i, j]), str(fs.details[i, j]))
                for j, m in enumerate(MODALITY_NAMES)
            }
            where = dict(id=u.id, source=str(u.source) if u.source else None, start=u.start, end=u.end, streams=streams)
            if not observed[i]:  # nothing observed: a label would be the model's prior, not a prediction
                preds.append(Prediction(label=None, abstained=NO_USABLE_STREAM, **where))
            elif self.model.task.kind == TaskKind.CLASSIFICATION:
                probs = outputs[i]
                k = int(np.argmax(probs))
                preds.append(Prediction(label=self.label_names[k], probabilities={n: float(p) for n, p in zip(self.label_names, probs)}, **where))
            else:
                preds.append(Prediction(label=None, value=float(outputs[i]), **where))
        return preds


def predict(paths: Sequence[str | Path], model: str | Path, **kwargs) -> list[Prediction]:
    """One-call API: ``imer.predict.predict(["clip.mp4"], model="runs/model", disable={"audio"})``."""
    device = kwargs.pop("device", "auto")
    return Predictor(model, device=device).predict(paths, **kwargs)
