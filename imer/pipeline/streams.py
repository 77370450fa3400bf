"""Stream status: present, or missing with a reason. Decided here and nowhere else."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from imer.types import MissingReason, StreamStatus  # noqa: F401  (StreamStatus re-exported for the pipeline)

# -- silence ---------------------------------------------------------------------------------
# "Silent" means no speech or other sound in the clip, not "quiet on average": a clearly spoken
# RAVDESS sentence with long pauses can have a whole-clip RMS of 6.5e-4 (-64 dBFS) while its
# loudest 100 ms sit at -54 dBFS. So the rule looks at short-time energy (25 ms frames, 10 ms
# hop) and compares the clip's loud level with its own noise floor; see :func:`audio_status`.

# RMS (float samples in [-1, 1]) of the loudest 100 ms below which a clip is silent whatever
# its shape: 5e-4 = -66 dBFS. Digital silence (the all-zero AAC track of the RAVDESS video-only
# releases) and near-silent hiss fall below it; the quietest real speech measured (RAVDESS
# Actor 09) reaches -55.7 dBFS, 10 dB above. (Until this rule the threshold was 1e-3 on the
# whole-clip RMS; the new value also changes the cache key of every audio feature.)
SILENCE_RMS = 5e-4
# The name of the rule in audio_status: part of the audio cache key, so entries decided by an
# earlier rule (whole-clip RMS) are never reused under this one.
SILENCE_RULE = "loudest-100ms"
FRAME_SECONDS = 0.025
HOP_SECONDS = 0.010
# The loud level is the level reached by the loudest frames covering this much time (10 frames
# at a 10 ms hop): one word in an hour counts, a click of a few milliseconds does not.
LOUD_SECONDS = 0.1
# The noise floor is this percentile of the frame levels (the pauses, room tone, hiss).
FLOOR_PERCENTILE = 10.0
# A clip whose loud level is within this many dB of its noise floor holds no event above its
# background. White noise spreads about 1-2 dB at these frame sizes; the RAVDESS speech clips
# span 40 dB or more; 1 s cuts from the middle of RAVDESS speech at least 6.8 dB.
ACTIVITY_DB = 6.0
# ... but only a background quieter than this counts as silence: room tone and hiss sit at
# -50 to -40 dBFS, while a steady sound louder than -40 dBFS (a test tone, a loud fan, music
# held on one level) is recorded sound and stays present.
BACKGROUND_DBFS = -40.0
# Steadiness is judged only on clips at least this long: over a few hundred milliseconds a
# held vowel is as steady as hiss (0.3 s cuts of RAVDESS speech spread as little as 1 dB), so
# shorter clips are silent only under the absolute floor.
BACKGROUND_MIN_SECONDS = 1.0
_DB_MIN = -120.0  # levels are clamped here (digital silence); also the floor of the reports


class AudioLevels(NamedTuple):
    """Short-time levels of a clip, in dBFS (0 dBFS = a full-scale square wave)."""

    loud_dbfs: float  # level reached by the loudest LOUD_SECONDS of frames
    floor_dbfs: float  # FLOOR_PERCENTILE-th percentile of the frame levels
    loud_ms: int  # the time those loudest frames cover (less for clips shorter than LOUD_SECONDS)
    seconds: float  # clip length


def audio_levels(samples: np.ndarray, sample_rate: int = 16000) -> AudioLevels:
    """Loud level and noise floor of float samples in [-1, 1] (mono; anything else is flattened).

    Energy is summed per 5 ms block (vectorised, in chunks: an hour at 16 kHz takes well under a
    second), then per 25 ms frame = 5 blocks, every 2 blocks (10 ms). A clip shorter than one
    frame is one frame.
    """
    x = np.ascontiguousarray(samples, dtype=np.float32).ravel()
    seconds = x.size / sample_rate
    block = max(1, round(sample_rate * HOP_SECONDS / 2))
    per_frame = max(1, round(FRAME_SECONDS / HOP_SECONDS * 2))  # blocks per frame (5)
    n_blocks = x.size // block
    if n_blocks < per_frame:
        energy = np.array([float(np.mean(np.square(x, dtype=np.float64)))]) if x.size else np.zeros(1)
    else:
        blocks = x[: n_blocks * block].reshape(n_blocks, block)
        be = np.empty(n_blocks, dtype=np.float64)
        step = 1 << 16
        for i in range(0, n_blocks, step):
            b = blocks[i : i + step]
            be[i : i + step] = np.einsum("ij,ij->i", b, b)  # float32 sums of `block` squares
        cum = np.concatenate(([0.0], np.cumsum(be)))
        starts = np.arange(0, n_blocks - per_frame + 1, 2)
        energy = (cum[starts + per_frame] - cum[starts]) / (per_frame * block)
    db = 10.0 * np.log10(np.maximum(energy, 10.0 ** (_DB_MIN / 10)))
    k = min(len(db), max(1, round(LOUD_SECONDS / HOP_SECONDS)))
    loud = float(np.partition(db, len(db) - k)[len(db) - k])
    floor = float(np.percentile(db, FLOOR_PERCENTILE))
    return AudioLevels(loud, floor, round(k * HOP_SECONDS * 1000), seconds)


def audio_status(
    samples: np.ndarray | None,
    has_track: bool,
    threshold: float = SILENCE_RMS,
    sample_rate: int = 16000,
) -> StreamStatus:
    """No track -> NO_AUDIO_TRACK; no speech or sound in the samples -> SILENT_AUDIO.

    Silent when either

    1. the loudest 100 ms (:data:`LOUD_SECONDS`) of 25 ms frames are below ``threshold`` (an RMS,
       default :data:`SILENCE_RMS` = -66 dBFS): digital silence, near-silent hiss, any clip; or
    2. the clip lasts at least :data:`BACKGROUND_MIN_SECONDS`, its loud level is below
       :data:`BACKGROUND_DBFS` (-40 dBFS) and within :data:`ACTIVITY_DB` (6 dB) of its own noise
       floor (the 10th percentile of frame levels): a steady background such as hiss or room
       tone with nothing louder in it.

    Anything else is present, however low its average: a quiet voice between long pauses rises
    far above its floor. A steady sound above -40 dBFS (a test tone, loud stationary noise) is
    present too. Why not the whole-clip RMS: pauses dilute it, so quiet speech read as silent.
    Why not a voice-activity model: this runs at decode time for every clip, numpy only, and an
    energy rule relative to the clip's floor already separates the cases above; it does not
    tell a held quiet hum from hiss (both steady, both silent under -40 dBFS).
    """
    if not has_track:
        return StreamStatus.missing(MissingReason.NO_AUDIO_TRACK)
    if samples is None or samples.size == 0:
        return StreamStatus.missing(MissingReason.SILENT_AUDIO, "no samples in the segment")
    lv = audio_levels(samples, sample_rate)
    levels = f"loudest {lv.loud_ms} ms at {lv.loud_dbfs:.1f} dBFS, noise floor {lv.floor_dbfs:.1f} dBFS"
    limit = 20.0 * np.log10(threshold) if threshold > 0 else -np.inf
    if lv.loud_dbfs < limit:
        return StreamStatus.missing(
            MissingReason.SILENT_AUDIO, f"{levels}: below the silence level {limit:.1f} dBFS (RMS {threshold:.1e})"
        )
    if (
        lv.seconds >= BACKGROUND_MIN_SECONDS
        and lv.loud_dbfs < BACKGROUND_DBFS
        and lv.loud_dbfs - lv.floor_dbfs < ACTIVITY_DB
    ):
        return StreamStatus.missing(
            MissingReason.SILENT_AUDIO,
            f"{levels}: a steady background below {BACKGROUND_DBFS:.0f} dBFS with nothing "
            f"{ACTIVITY_DB:.0f} dB above it",
        )
    return StreamStatus.ok()


def text_status(text: str | None) -> StreamStatus:
    if text is None:
        return StreamStatus.missing(MissingReason.NO_TRANSCRIPT)
    if not text.strip():
        return StreamStatus.missing(MissingReason.EMPTY_TRANSCRIPT)
    return StreamStatus.ok()
