"""Flows that cross packages, each one call for one CLI command.

``imer extract`` = discover -> extract -> compile -> save (:func:`extract_store`).
``imer predict`` is :class:`imer.predict.Predictor`; ``imer train`` is
:func:`imer.fusion.experiment.run_experiment` / ``run_cv``; ``imer evaluate`` is
:func:`imer.fusion.evaluation.evaluate_bundle`.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from imer.errors import BadInput
from imer.extractors.run import ExtractConfig, ExtractSummary, extract_features
from imer.pipeline.manifest import Utterance
from imer.progress import Progress
from imer.store.compile import CompileConfig, check_labels, compile_features
from imer.store.featureset import FeatureSet
from imer.store.format import save_store


def find_utterances(path: Path | None, manifest: Path | None = None, cues: bool = True) -> list[Utterance]:
    """A manifest, a folder's own ``manifest.csv``/``manifest.json``, or the media under ``path``."""
    from imer.pipeline.ingest import discover, read_manifest

    if path is None and manifest is None:
        raise BadInput("give a media file or folder, or --manifest FILE")
    if manifest is None and path is not None and path.is_dir():
        found = [path / n for n in ("manifest.csv", "manifest.json") if (path / n).is_file()]
        manifest = found[0] if found else None
    if manifest is not None:
        return read_manifest(manifest)
    assert path is not None
    if not path.exists():
        raise BadInput(f"{path}: no such file or folder")
    return discover(path, cues_as_utterances=cues)


def extract_store(
    utterances: list[Utterance],
    out: str | Path,
    cfg: ExtractConfig,
    compile_cfg: CompileConfig | None = None,
    progress: Progress | None = None,
    extractors: dict | None = None,
) -> tuple[FeatureSet, ExtractSummary]:
    """Extract ``utterances`` (cache in ``cfg.cache_dir``, default ``out/.cache``), compile, save to ``out``.

    ``extractors``: already-built backends per modality (a long-lived caller's), else built from ``cfg``.
    """
    from dataclasses import replace

    out = Path(out)
    if cfg.cache_dir is None:
        cfg = replace(cfg, cache_dir=out / ".cache")
    label_issues = check_labels(utterances, compile_cfg)  # a label outside --labels fails here, before extraction
    extraction = extract_features(utterances, cfg, progress=progress, extractors=extractors)
    t0 = time.perf_counter()
    fs, counts = compile_features(extraction.utterances, extraction.results, extraction.specs, compile_cfg)
    save_store(fs, out)
    summary = extraction.summary
    summary.stage_seconds["compile"] = round(time.perf_counter() - t0, 3)
    summary.present = counts["present"]
    summary.missing = counts["missing"]
    summary.utterances = len(fs)
    summary.splits = dict(Counter(fs.splits))
    summary.out = str(out)
    summary.seconds = round(summary.seconds + summary.stage_seconds["compile"], 3)
    summary.label_issues = [i.to_dict() for i in label_issues]
    summary.warnings += [i.message for i in label_issues if i.severity == "warning"]
    return fs, summary
