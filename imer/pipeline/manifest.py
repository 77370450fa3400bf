"""Utterance records: one per manifest row, subtitle cue, or whole media file."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Utterance:
    """One unit to recognise.

    ``start``/``end`` are seconds within ``source`` (None = whole file). ``transcript`` is None
    when there is none at all and "" when one exists but is empty (two different reasons).
    """

    id: str
    source: Path | None = None
    start: float | None = None
    end: float | None = None
    transcript: str | None = None
    transcript_source: str | None = None  # "manifest", "sidecar:clip.srt", "cli", ...
    label: str | float | None = None
    speaker: str | None = None
    dialogue: str | None = None
    order: int = 0
    split: str | None = None
    extra: dict = field(default_factory=dict)
    # Why the row's segment cannot be used ("m.csv: line 7: end (2) must be after start (5)"), or
    # None. Its audio and video are then missing with reason ``invalid_segment``; never cached.
    invalid: str | None = None
