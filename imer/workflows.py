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


def find_utterances(
    path: Path | None,
    manifest: Path | None = None,
    cues: bool = True,
    strict: bool = False,
    warnings: list[str] | None = None,
) -> list[Utterance]:
    """A manifest, a folder's own ``manifest.csv``/``manifest.json``, or the media under ``path``.

    ``strict``: a manifest row with an invalid segment raises instead of becoming an utterance
    with ``invalid`` set. ``warnings`` collects what reading found odd (cues skipped, symlinks
    that lead nowhere), one line each.
    """
    from imer.pipeline.ingest import discover, read_manifest

    if path is None and manifest is None:
        raise BadInput("give a media file or folder, or --manifest FILE")
    if manifest is None and path is not None and path.is_dir():
        found = [path / n for n in ("manifest.csv", "manifest.json") if (path / n).is_file()]
        manifest = found[0] if found else None
    if manifest is not None:
        return read_manifest(manifest, strict=strict, warnings=warnings)
    assert path is not None
    return discover(path, cues_as_utterances=cues, warnings=warnings)  # a missing path is BadInput there


INVALID_ROWS_SHOWN = 5


def invalid_rows_warning(rows: list[str]) -> str:
    """One summary line for the manifest rows whose segment is invalid (the first few named)."""
    n = len(rows)
    more = f"; and {n - INVALID_ROWS_SHOWN} more (all in --json: invalid_rows)" if n > INVALID_ROWS_SHOWN else ""
    return (
        f"{n} manifest row{'s have an' if n != 1 else ' has an'} invalid segment; audio and video recorded as "
        f"missing (invalid_segment), --strict stops instead: {'; '.join(rows[:INVALID_ROWS_SHOWN])}{more}"
    )


def extract_store(
    utterances: list[Utterance],
    out: str | Path,
    cfg: ExtractConfig,
    compile_cfg: CompileConfig | None = None,
    progress: Progress | None = None,
    extractors: dict | None = None,
    warnings: list[str] | None = None,
) -> tuple[FeatureSet, ExtractSummary]:
    """Extract ``utterances`` (cache in ``cfg.cache_dir``, default ``out/.cache``), compile, save to ``out``.

    ``extractors``: already-built backends per modality (a long-lived caller's), else built from ``cfg``.
    ``warnings``: what finding the utterances reported (:func:`find_utterances`); they open the
    summary's warnings, then one line for the rows whose segment is invalid, then label warnings.
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
    summary.invalid_rows = [u.invalid for u in utterances if u.invalid]
    summary.warnings = [
        *(warnings or []),
        *([invalid_rows_warning(summary.invalid_rows)] if summary.invalid_rows else []),
        *summary.warnings,
        *(i.message for i in label_issues if i.severity == "warning"),
    ]
    return fs, summary
