"""Stream status: present, or missing with a reason. Decided here and nowhere else."""

from __future__ import annotations

import numpy as np

from imer.types import MissingReason, StreamStatus  # noqa: F401  (StreamStatus re-exported for the pipeline)

# RMS (of float samples in [-1, 1]) below which an audio track counts as silent: about -60 dBFS.
# The RAVDESS video-only releases carry an all-zero AAC track (RMS 0); room tone in real
# recordings sits around -50 to -40 dBFS, speech far above.
SILENCE_RMS = 1e-3


def audio_status(samples: np.ndarray | None, has_track: bool, threshold: float = SILENCE_RMS) -> StreamStatus:
    """No track -> NO_AUDIO_TRACK; empty or RMS below ``threshold`` -> SILENT_AUDIO."""
    if not has_track:
        return StreamStatus.missing(MissingReason.NO_AUDIO_TRACK)
    if samples is None or samples.size == 0:
        return StreamStatus.missing(MissingReason.SILENT_AUDIO, "no samples in the segment")
    rms = float(np.sqrt(np.mean(np.square(samples.astype(np.float64)))))
    if rms < threshold:
        return StreamStatus.missing(MissingReason.SILENT_AUDIO, f"RMS {rms:.2e} < {threshold:.0e}")
    return StreamStatus.ok()


def text_status(text: str | None) -> StreamStatus:
    if text is None:
        return StreamStatus.missing(MissingReason.NO_TRANSCRIPT)
    if not text.strip():
        return StreamStatus.missing(MissingReason.EMPTY_TRANSCRIPT)
    return StreamStatus.ok()
