"""``imer extract``: utterances -> cached features -> a feature store that ``imer train`` reads.

Per run: build the three extractors once; for every utterance and modality compute the cache
key (file bytes + segment + decode settings, or the transcript); decode only the streams whose
features are not cached; batch present inputs across files for the extractors; write every
result (feature or missing-with-reason) to the cache as soon as it exists; finally compile all
entries into the store. A killed run loses at most the batch in flight.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from imer.errors import BadInput
from imer.extractors.base import Extractor, Missing, build_extractor, resolve_device
from imer.extractors.cache import CachedMissing, FeatureCache, content_key
from imer.fusion.data import FeatureSet, save_store
from imer.pipeline.manifest import Utterance
from imer.types import MODALITIES, MissingReason, Modality, TaskKind, TaskSpec

OFFLINE_DEFAULTS = {Modality.AUDIO: "egemaps", Modality.TEXT: "minilm", Modality.VIDEO: "faceprint"}


@dataclass
class ExtractConfig:
    """Which backend per modality (None = modality off), their options, decoding, batching."""

    backends: dict[Modality, str | None] = field(default_factory=lambda: dict(OFFLINE_DEFAULTS))
    options: dict[str, dict] = field(default_factory=dict)  # backend name -> options
    decode: Any = None  # imer.pipeline.ingest.DecodeConfig; None = defaults
    device: str = "auto"
    batch_size: int = 16
    decode_workers: int = 2  # threads decoding ahead of the extractors (1 = no overlap)
    force: bool = False
    cache_dir: Path | None = None  # default: <out>/.cache
    holdout: float = 0.2  # share of speakers (or dialogues) put in 'test' when no split is given
    task: str = "auto"  # "auto" | "classification" | "regression" (how labels are read)
    seed: int = 0


@dataclass
class ExtractSummary:
    files: int = 0
    utterances: int = 0
    seconds: float = 0.0
    cache_hits: dict[str, int] = field(default_factory=dict)
    extracted: dict[str, int] = field(default_factory=dict)
    present: dict[str, int] = field(default_factory=dict)
    missing: dict[str, dict[str, int]] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    extractors: dict[str, dict] = field(default_factory=dict)
    splits: dict[str, int] = field(default_factory=dict)
    out: str = ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


ProgressFn = Callable[[str, int, int], None]  # (stage, done, total)


def _decode_settings(decode: Any, modality: Modality) -> dict:
    """The decode settings a modality's features depend on (part of the cache namespace)."""
    d = dataclasses.asdict(decode)
    if modality == Modality.AUDIO:
        return {k: d[k] for k in ("sample_rate", "silence_rms") if k in d}
    if modality == Modality.VIDEO:
        return {k: d[k] for k in ("fps", "max_frames", "max_side", "skip_nonref") if k in d}
    return {}


class _Job:
    """Everything known about one utterance during a run."""

    __slots__ = ("utt", "keys", "results")

    def __init__(self, utt: Utterance):
        self.utt = utt
        self.keys: dict[Modality, str] = {}
        self.results: dict[Modality, np.ndarray | CachedMissing] = {}


def describe_with_decode(ex: Extractor, decode: Any) -> dict:
    """What a store and a model bundle record per modality: the extractor and its decoding."""
    return {**ex.describe(), "decode": _decode_settings(decode, ex.modality)}


def extract_features(
    utterances: list[Utterance],
    out: str | Path,
    cfg: ExtractConfig,
    progress: ProgressFn | None = None,
    extractors: dict[Modality, Extractor] | None = None,
) -> tuple[FeatureSet, ExtractSummary]:
    """Run extraction for ``utterances`` and write the store to ``out``.

    ``extractors`` lets a long-lived caller (``Predictor``) pass already-loaded backends, so
    models load once per process; otherwise they are built from ``cfg.backends``.
    """
    from imer.pipeline.ingest import DecodeConfig, file_hash

    if not utterances:
        raise BadInput("no utterances to extract (no media found and no manifest rows)")
    out = Path(out)
    decode = cfg.decode or DecodeConfig()
    device = resolve_device(cfg.device)
    t_start = time.perf_counter()
    summary = ExtractSummary(out=str(out))
    cache_root = Path(cfg.cache_dir) if cfg.cache_dir else out / ".cache"

    if extractors is None:
        extractors = {}
        for m in MODALITIES:
            name = cfg.backends.get(m)
            if not name:
                continue
            ex = build_extractor(name, cfg.options.get(name), device=device)
            if ex.modality != m:
                raise BadInput(f"extractor {name!r} is for {ex.modality.value}, not {m.value}")
            extractors[m] = ex
    caches: dict[Modality, FeatureCache] = {}
    for m, ex in extractors.items():
        desc = describe_with_decode(ex, decode)
        caches[m] = FeatureCache(cache_root, m.value, ex.name, content_key(ex.key(), desc["decode"])[:16], desc)
        summary.extractors[m.value] = desc

    # 1. cache keys (hash every media file once) and cache lookups
    t0 = time.perf_counter()
    jobs = [_Job(u) for u in utterances]
    sources = sorted({str(u.source) for u in utterances if u.source is not None})
    summary.files = len(sources)
    hashes: dict[str, str | None] = {}
    # Media bytes key only audio/video entries: a text-only run never reads the media files.
    needs_hash = sources if (Modality.AUDIO in extractors or Modality.VIDEO in extractors) else []
    for i, src in enumerate(needs_hash):
        try:
            hashes[src] = file_hash(Path(src))
        except OSError:
            hashes[src] = None  # unreadable: decided (and recorded) by load_inputs below
        if progress:
            progress("hashing", i + 1, len(needs_hash))
    hits: Counter = Counter()
    for job in jobs:
        u = job.utt
        for m, ex in extractors.items():
            if m == Modality.TEXT:
                key = content_key("text", u.transcript is None, u.transcript or "")
            else:
                h = hashes.get(str(u.source)) if u.source is not None else "none"
                if h is None:
                    continue  # unreadable file: never cached, re-checked every run
                key = content_key(h, u.start, u.end)
            job.keys[m] = key
            if cfg.force:
                continue
            got = caches[m].get(key)
            if got is not None:
                job.results[m] = got
                hits[m.value] += 1
    summary.stage_seconds["hash+lookup"] = round(time.perf_counter() - t0, 3)

    # 2. decode what is not cached, batch present inputs across files, extract, cache
    t0 = time.perf_counter()
    queues: dict[Modality, list[tuple[_Job, Any]]] = defaultdict(list)
    extracted: Counter = Counter()

    def flush(m: Modality) -> None:
        batch = queues[m]
        if not batch:
            return
        ex = extractors[m]
        ex.ensure_loaded()  # the model loads once per run, on first use
        outputs = ex.extract([inp for _, inp in batch])
        if len(outputs) != len(batch):
            raise BadInput(f"{ex.name} returned {len(outputs)} results for {len(batch)} inputs: a backend bug")
        for (job, _), res in zip(batch, outputs):
            value = CachedMissing(res.reason, res.detail) if isinstance(res, Missing) else np.asarray(res, np.float32)
            if not isinstance(value, CachedMissing) and value.shape != (ex.dim,):
                raise BadInput(f"{ex.name} returned shape {value.shape}, expected ({ex.dim},): a backend bug")
            job.results[m] = value
            if m in job.keys:
                caches[m].put(job.keys[m], value)
            extracted[m.value] += 1
        queues[m] = []

    todo = [j for j in jobs if any(m not in j.results for m in extractors)]
    wants = [{m for m in extractors if m not in j.results} for j in todo]
    for i, (job, want, inputs) in enumerate(_decode_ahead(todo, wants, decode, cfg.decode_workers, 2 * cfg.batch_size)):
        for m in want:
            status = inputs.status[m]
            if not status.present:
                value = CachedMissing(status.reason, status.detail)
                job.results[m] = value
                if m in job.keys and status.reason != MissingReason.UNREADABLE:
                    caches[m].put(job.keys[m], value)
                continue
            payload = {Modality.AUDIO: inputs.audio, Modality.TEXT: inputs.text, Modality.VIDEO: inputs.frames}[m]
            queues[m].append((job, payload))
            if len(queues[m]) >= cfg.batch_size:
                flush(m)
        if progress:
            progress("extracting", i + 1, len(todo))
    for m in extractors:
        flush(m)
    summary.stage_seconds["decode+extract"] = round(time.perf_counter() - t0, 3)
    summary.cache_hits = dict(hits)
    summary.extracted = dict(extracted)

    # 3. compile the store
    t0 = time.perf_counter()
    fs = _compile(jobs, extractors, summary, cfg, decode)
    save_store(fs, out)
    summary.stage_seconds["compile"] = round(time.perf_counter() - t0, 3)
    summary.utterances = len(fs)
    summary.splits = dict(Counter(fs.splits))
    summary.seconds = round(time.perf_counter() - t_start, 3)
    return fs, summary


def _decode_ahead(todo: list[_Job], wants: list[set[Modality]], decode: Any, workers: int, window: int):
    """Yield (job, want, inputs) in order while up to ``window`` later utterances decode in threads.

    PyAV releases the GIL while decoding, so decoding the next files overlaps with the
    extractors working on the current batch (the GPU is otherwise idle during decode).
    """
    from concurrent.futures import ThreadPoolExecutor

    from imer.pipeline.ingest import load_inputs

    if workers <= 1:
        for job, want in zip(todo, wants):
            yield job, want, load_inputs(job.utt, want, decode)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="imer-decode") as pool:
        pending = []
        for job, want in zip(todo, wants):
            pending.append((job, want, pool.submit(load_inputs, job.utt, want, decode)))
            if len(pending) > window:
                j, w, fut = pending.pop(0)
                yield j, w, fut.result()
        for j, w, fut in pending:
            yield j, w, fut.result()


def _compile(
    jobs: list[_Job], extractors: dict[Modality, Extractor], summary: ExtractSummary, cfg: ExtractConfig, decode: Any
) -> FeatureSet:
    n = len(jobs)
    feats: dict[str, np.ndarray] = {}
    present = np.zeros((n, 3), dtype=bool)
    reasons = np.full((n, 3), MissingReason.DISABLED.value, dtype=object)
    details = np.full((n, 3), "", dtype=object)
    for j, m in enumerate(MODALITIES):
        ex = extractors.get(m)
        if ex is None:
            feats[m.value] = np.zeros((n, 1), np.float32)
            summary.missing[m.value] = {MissingReason.DISABLED.value: n}
            summary.present[m.value] = 0
            continue
        arr = np.zeros((n, ex.dim), np.float32)
        counts: Counter = Counter()
        for i, job in enumerate(jobs):
            r = job.results.get(m)
            if r is None:
                r = CachedMissing(MissingReason.UNREADABLE, "file could not be read")
            if isinstance(r, CachedMissing):
                reasons[i, j] = r.reason.value
                details[i, j] = r.detail
                counts[r.reason.value] += 1
            else:
                arr[i] = r
                present[i, j] = True
                reasons[i, j] = MissingReason.PRESENT.value
        feats[m.value] = arr
        summary.present[m.value] = int(present[:, j].sum())
        summary.missing[m.value] = dict(counts)
    utts = [job.utt for job in jobs]
    task, labels = _labels(utts, cfg.task)
    dialogues = [u.dialogue or u.id for u in utts]
    speakers = [u.speaker or "" for u in utts]
    splits = _splits(utts, speakers, dialogues, cfg.holdout, cfg.seed)
    return FeatureSet(
        ids=[u.id for u in utts],
        feats=feats,
        present=present,
        reasons=reasons,
        details=details,
        labels=labels,
        task=task,
        speakers=speakers,
        dialogues=dialogues,
        order=np.array([u.order for u in utts], dtype=np.int64),
        splits=splits,
        extractors={m.value: describe_with_decode(extractors[m], decode) if m in extractors else {"name": "none"} for m in MODALITIES},
    )


def _labels(utts: list[Utterance], task: str = "auto") -> tuple[TaskSpec, np.ndarray]:
    """Labels -> a task. ``auto``: numbers with a fractional part -> regression; anything else ->
    classes, sorted numerically when all are numbers (so -3 < -1 < 0 < 2 < 10), else by name.
    ``task`` = "classification" or "regression" forces the choice."""
    raw = [u.label for u in utts]
    given = [x for x in raw if x is not None and str(x).strip() != ""]

    def as_float(x: Any) -> float | None:
        try:
            return float(x)
        except (TypeError, ValueError):
            return None

    numeric = bool(given) and all(as_float(x) is not None for x in given)
    if task == "regression" or (task == "auto" and numeric and any(not float(x).is_integer() for x in given)):
        if not numeric:
            bad = next(x for x in given if as_float(x) is None)
            raise BadInput(f"--task regression needs numeric labels; found {bad!r}")
        values = np.array([np.nan if as_float(x) is None else as_float(x) for x in raw], dtype=np.float32)
        return TaskSpec(TaskKind.REGRESSION, ("sentiment",)), values
    names = sorted({str(x).strip() for x in given}, key=(lambda n: (float(n), n)) if numeric else None)
    index = {name: i for i, name in enumerate(names)}
    labels = np.array([index.get(str(x).strip(), -1) if x is not None else -1 for x in raw], dtype=np.int64)
    return TaskSpec(TaskKind.CLASSIFICATION, tuple(names)), labels


_SPLIT_ALIASES = {
    "train": "train", "training": "train",
    "valid": "valid", "val": "valid", "validation": "valid", "dev": "valid",
    "test": "test", "eval": "test", "evaluation": "test",
}


def _splits(utts: list[Utterance], speakers: list[str], dialogues: list[str], holdout: float, seed: int) -> list[str]:
    """Keep given splits (train/valid/test, common aliases mapped); otherwise hold out whole
    speakers (or dialogues) as 'test'. Splits must be given for every row or for none."""
    given = [(u.split or "").strip().lower() for u in utts]
    if any(given):
        for u, s in zip(utts, given):
            if s not in _SPLIT_ALIASES:
                what = "no split" if not s else f"split {u.split!r}"
                raise BadInput(
                    f"utterance {u.id!r} has {what}: give every row one of train, valid, test "
                    f"(aliases: {', '.join(k for k in _SPLIT_ALIASES if k not in ('train', 'valid', 'test'))}), "
                    "or leave the split column empty everywhere to hold out speakers automatically"
                )
        return [_SPLIT_ALIASES[s] for s in given]
    groups = speakers if len({s for s in speakers if s}) >= 2 else dialogues
    uniq = sorted(set(groups))
    if len(uniq) < 2 or holdout <= 0:
        return ["train"] * len(utts)
    rng = np.random.default_rng(seed)
    k = min(len(uniq) - 1, max(1, int(round(holdout * len(uniq)))))
    test = set(rng.choice(uniq, size=k, replace=False).tolist())
    return ["test" if g in test else "train" for g in groups]

