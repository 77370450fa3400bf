"""Extraction: utterances -> per (utterance, modality) a feature vector or a missing status.

Per run: build the three extractors once; for every utterance and modality compute the cache
key (file bytes + segment + decode settings, or the transcript); decode only the streams whose
features are not cached; batch present inputs across files for the extractors; write every
result (feature or missing-with-reason) to the cache as soon as it exists. A killed run loses at
most the batch in flight.

Extraction decides nothing about labels, tasks or splits: :mod:`imer.store.compile` does, and
:mod:`imer.workflows` chains the two for ``imer extract``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imer.errors import BadInput
from imer.extractors.base import Extractor, build_extractor, resolve_device
from imer.extractors.cache import FeatureCache, content_key
from imer.pipeline.manifest import Utterance
from imer.progress import Progress, report
from imer.store.spec import FeatureSpec
from imer.types import MODALITIES, MissingReason, Modality, StreamStatus

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
    cache_dir: Path | None = None  # None: no cache (results live in memory only)


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
    extractors: dict[str, dict] = field(default_factory=dict)  # modality -> FeatureSpec as JSON
    splits: dict[str, int] = field(default_factory=dict)
    out: str = ""
    reused: dict[str, int] = field(default_factory=dict)  # copied from identical work in this run
    warnings: list[str] = field(default_factory=list)  # one line each, for people
    invalid_rows: list[str] = field(default_factory=list)  # manifest rows whose segment is invalid, each "m.csv: line 7: why"
    label_issues: list[dict] = field(default_factory=list)  # imer.store.labels.LabelIssue.to_dict(): labels that look wrong

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


Result = np.ndarray | StreamStatus


@dataclass
class Extraction:
    """What extraction hands to the store compiler: per utterance, modality -> feature or status."""

    utterances: list[Utterance]
    results: list[dict[Modality, Result]]
    specs: dict[Modality, FeatureSpec | None]
    summary: ExtractSummary


class _Job:
    """Everything known about one utterance during a run."""

    __slots__ = ("utt", "keys", "results")

    def __init__(self, utt: Utterance):
        self.utt = utt
        self.keys: dict[Modality, str] = {}
        self.results: dict[Modality, Result] = {}


def build_extractors(cfg: ExtractConfig) -> dict[Modality, Extractor]:
    """The configured backend of each modality (not loaded yet)."""
    device = str(resolve_device(cfg.device))
    extractors = {}
    for m in MODALITIES:
        name = cfg.backends.get(m)
        if not name:
            continue
        ex = build_extractor(name, cfg.options.get(name), device=device)
        if ex.modality != m:
            raise BadInput(f"extractor {name!r} is for {ex.modality.value}, not {m.value}")
        extractors[m] = ex
    return extractors


def extract_features(
    utterances: list[Utterance],
    cfg: ExtractConfig,
    progress: Progress | None = None,
    extractors: dict[Modality, Extractor] | None = None,
) -> Extraction:
    """Extract every modality of ``utterances``; results cached under ``cfg.cache_dir`` if given.

    ``extractors`` lets a long-lived caller (``Predictor``) pass already-loaded backends, so
    models load once per process; otherwise they are built from ``cfg.backends``.
    """
    from imer.pipeline.ingest import DecodeConfig, file_hash

    if not utterances:
        raise BadInput("no utterances to extract (no media found and no manifest rows)")
    decode = cfg.decode or DecodeConfig()
    t_start = time.perf_counter()
    summary = ExtractSummary()

    if extractors is None:
        extractors = build_extractors(cfg)
    specs: dict[Modality, FeatureSpec | None] = {m: None for m in MODALITIES}
    caches: dict[Modality, FeatureCache] = {}
    for m, ex in extractors.items():
        spec = ex.spec(decode)
        specs[m] = spec
        if cfg.cache_dir is not None:
            caches[m] = FeatureCache(cfg.cache_dir, m.value, ex.name, content_key(ex.key(), spec.decode)[:16], spec)
        summary.extractors[m.value] = spec.to_dict()

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
        report(progress, "hashing", i + 1, len(needs_hash))
    hits: Counter = Counter()
    for job in jobs:
        u = job.utt
        for m, ex in extractors.items():
            if m == Modality.TEXT:
                key = content_key("text", u.transcript is None, u.transcript or "")
            else:
                h = hashes.get(str(u.source)) if u.source is not None else "none"
                if h is None or u.invalid:
                    continue  # unreadable file, or a row whose segment is invalid: never cached, re-checked every run
                key = content_key(h, u.start, u.end)
            job.keys[m] = key
            if cfg.force or m not in caches:
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
            if isinstance(res, StreamStatus):
                if res.present:
                    raise BadInput(f"{ex.name} returned a present status without a feature: a backend bug")
                value: Result = res
            else:
                value = np.asarray(res, np.float32)
                if value.shape != (ex.dim,):
                    raise BadInput(f"{ex.name} returned shape {value.shape}, expected ({ex.dim},): a backend bug")
            job.results[m] = value
            if m in job.keys and m in caches:
                caches[m].put(job.keys[m], value)
            extracted[m.value] += 1
        queues[m] = []

    # Identical work is done once: a (modality, key) pair already taken by an earlier job makes
    # this job a follower, which gets the leader's result. Media jobs without a key (the file
    # could not be hashed) share by (file, segment) instead.
    leaders: dict[tuple[Modality, Any], _Job] = {}
    followers: list[tuple[_Job, Modality, _Job]] = []
    todo: list[_Job] = []
    wants: list[set[Modality]] = []
    for job in jobs:
        want = set()
        for m in extractors:
            if m in job.results:
                continue
            u = job.utt
            ident = job.keys.get(m) or (str(u.source), u.start, u.end, u.transcript if m == Modality.TEXT else None, u.invalid)
            leader = leaders.setdefault((m, ident), job)
            if leader is job:
                want.add(m)
            else:
                followers.append((job, m, leader))
        if want:
            todo.append(job)
            wants.append(want)
    # Progress counts utterances: a job that only copies results is counted with the leader of
    # its first copied modality.
    first_leader: dict[int, _Job] = {}
    for job, _, leader in followers:
        first_leader.setdefault(id(job), leader)
    decoded = {id(j) for j in todo}
    riders = Counter(id(leader) for jid, leader in first_leader.items() if jid not in decoded)
    total = len(todo) + sum(riders.values())
    done = 0
    ahead = _decode_ahead(todo, wants, decode, cfg.decode_workers, 2 * cfg.batch_size)
    with contextlib.closing(ahead):  # a failing extractor stops the decoding threads at once
        for job, want, inputs in ahead:
            for m in want:
                status = inputs.status[m]
                if not status.present:
                    job.results[m] = status
                    if m in job.keys and m in caches and status.reason != MissingReason.UNREADABLE:
                        caches[m].put(job.keys[m], status)
                    continue
                payload = {Modality.AUDIO: inputs.audio, Modality.TEXT: inputs.text, Modality.VIDEO: inputs.frames}[m]
                queues[m].append((job, payload))
                if len(queues[m]) >= cfg.batch_size:
                    flush(m)
            done += 1 + riders[id(job)]
            report(progress, "extracting", done, total)
    for m in extractors:
        flush(m)
    reused: Counter = Counter()
    for job, m, leader in followers:
        if m in leader.results:
            job.results[m] = leader.results[m]
            reused[m.value] += 1
    summary.reused = dict(reused)
    summary.stage_seconds["decode+extract"] = round(time.perf_counter() - t0, 3)
    summary.cache_hits = dict(hits)
    summary.extracted = dict(extracted)

    summary.utterances = len(jobs)
    summary.seconds = round(time.perf_counter() - t_start, 3)
    results = []
    for job in jobs:
        res = dict(job.results)
        for m in extractors:
            if m not in res:  # no cache key and never decoded: the file could not be read
                res[m] = StreamStatus.missing(MissingReason.UNREADABLE, "file could not be read")
        results.append(res)
    return Extraction([j.utt for j in jobs], results, specs, summary)


def _decode_ahead(todo: list[_Job], wants: list[set[Modality]], decode: Any, workers: int, window: int):
    """Yield (job, want, inputs) for every job, while later ones decode in threads.

    Jobs are grouped by media file, and a file's jobs are decoded in order of start through one
    :class:`~imer.pipeline.media.MediaReader`: a recording cut into a thousand segments is opened
    and decoded once. Up to ``workers`` files decode at a time, and at most ``window`` decoded
    utterances wait for the extractors, so memory stays flat however long the run. PyAV releases
    the GIL while decoding, so decoding overlaps with the extractors' work.
    """
    import queue
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from imer.pipeline.ingest import load_inputs
    from imer.pipeline.media import MediaReader

    groups: dict[Any, list[tuple[_Job, set[Modality]]]] = {}
    for job, want in zip(todo, wants):
        media = bool(want & {Modality.AUDIO, Modality.VIDEO}) and job.utt.source is not None
        groups.setdefault(str(job.utt.source) if media else None, []).append((job, want))

    def decode_group(source: str | None, items: list[tuple[_Job, set[Modality]]]):
        if source is None:  # text only, or no media file: nothing to open
            for job, want in items:
                yield job, want, load_inputs(job.utt, want, decode)
            return
        items = sorted(items, key=lambda it: (it[0].utt.start or 0.0, it[0].utt.end or float("inf")))
        with MediaReader(items[0][0].utt.source) as reader:
            for job, want in items:
                yield job, want, load_inputs(job.utt, want, decode, reader=reader)

    if workers <= 1:
        for source, items in groups.items():
            yield from decode_group(source, items)
        return

    results: queue.Queue = queue.Queue(maxsize=max(1, window))
    stop = threading.Event()
    _END = object()

    def put(item: tuple) -> bool:
        """Hand ``item`` to the consumer; False once it has stopped listening."""
        while not stop.is_set():
            try:
                results.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run_group(source: str | None, items: list[tuple[_Job, set[Modality]]]) -> None:
        if stop.is_set():  # the consumer has stopped: files not started are not decoded
            return
        error = None
        try:
            for item in decode_group(source, items):
                if not put(item):
                    return
        except BaseException as e:  # noqa: BLE001 - re-raised in the consuming thread
            error = e
        put((_END, error, None))

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="imer-decode") as pool:
        for source, items in groups.items():
            pool.submit(run_group, source, items)
        try:
            finished = 0
            while finished < len(groups):
                item = results.get()
                if item[0] is _END:
                    finished += 1
                    if item[1] is not None:
                        raise item[1]
                    continue
                yield item
        finally:
            stop.set()  # unblock producers if the consumer stopped early
            pool.shutdown(wait=True, cancel_futures=True)
