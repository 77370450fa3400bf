"""Silence means no speech or sound in the clip, not "quiet on average" (streams.audio_status).

Real cases: five clearly spoken RAVDESS sentences (../shared/data/ravdess-speech, Actor 09) whose
long leading and trailing pauses put their whole-clip RMS under the old 1e-3 threshold.
Generated cases: digital silence, hiss from near-silent to -41 dBFS, a quiet voice-like signal
between long pauses, loud steady sounds, a click, one word in a minute of hiss.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from imer.errors import BadInput

from imer.extractors.base import decode_settings
from imer.pipeline.decode import DecodeConfig
from imer.pipeline.ingest import load_inputs
from imer.pipeline.manifest import Utterance
from imer.pipeline.media import decode_audio
from imer.pipeline.streams import (
    ACTIVITY_DB,
    BACKGROUND_DBFS,
    SILENCE_RMS,
    audio_levels,
    audio_status,
)
from imer.types import MissingReason, Modality

SR = 16000
A = Modality.AUDIO
OLD_SILENCE_RMS = 1e-3  # the rule before: whole-clip RMS below this was silent

# The RAVDESS speech clips (of 1,080) whose whole-clip RMS is below 1e-3; measured
# (whole-clip RMS, loudest 100 ms in dBFS): all have a digital-silence floor (< -95 dBFS).
QUIET_RAVDESS = {
    "Actor_09/03-01-04-01-01-01-09.flac": (6.50e-4, -53.9),
    "Actor_09/03-01-04-01-02-02-09.flac": (6.65e-4, -55.7),
    "Actor_09/03-01-04-01-01-02-09.flac": (7.86e-4, -53.2),
    "Actor_09/03-01-02-02-01-01-09.flac": (8.19e-4, -53.6),
    "Actor_09/03-01-06-01-01-01-09.flac": (8.34e-4, -53.4),
}


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def amp(dbfs: float) -> float:
    return 10.0 ** (dbfs / 20)


def hiss(dbfs: float, seconds: float, seed: int = 0) -> np.ndarray:
    return (amp(dbfs) * np.random.default_rng(seed).standard_normal(int(seconds * SR))).astype(np.float32)


def quiet_voice(
    peak_dbfs: float = -45.0, floor_dbfs: float | None = -70.0, seconds: float = 2.0, pad: float = 1.0
) -> np.ndarray:
    """A voice-like signal: 10 harmonics of a gliding 120 Hz pitch, syllables at 4 Hz, its loudest
    25 ms at ``peak_dbfs``; ``pad`` seconds of silence before and after; white noise at
    ``floor_dbfs`` (None: digital zeros) under everything."""
    t = np.arange(int(seconds * SR)) / SR
    phase = 2 * np.pi * np.cumsum(120 + 20 * np.sin(2 * np.pi * 0.7 * t)) / SR
    v = sum(np.sin(h * phase) / h for h in range(1, 11)) * np.clip(np.sin(2 * np.pi * 4 * t), 0, None) ** 2
    v *= amp(peak_dbfs) / np.sqrt(np.max(np.convolve(v**2, np.ones(400) / 400, "same")))
    z = np.zeros(int(pad * SR))
    x = np.concatenate([z, v, z])
    if floor_dbfs is not None:
        x = x + hiss(floor_dbfs, len(x) / SR, seed=1)
    return x.astype(np.float32)


def tone(dbfs_rms: float, seconds: float = 3.0, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (amp(dbfs_rms) * np.sqrt(2) * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def silent_detail(x: np.ndarray, **kw) -> str:
    s = audio_status(x, True, **kw)
    assert (s.present, s.reason) == (False, MissingReason.SILENT_AUDIO), s
    return s.detail


def assert_present(x: np.ndarray, **kw) -> None:
    s = audio_status(x, True, **kw)
    assert (s.present, s.reason) == (True, MissingReason.PRESENT), s.detail


# ------------------------------------------------------------------------- real speech


@pytest.fixture(scope="module")
def ravdess_speech(shared_data) -> Path:
    d = shared_data / "ravdess-speech"
    if not d.is_dir():
        pytest.skip(f"{d} not found: the RAVDESS speech clips are needed for this test")
    return d


@pytest.mark.parametrize("name", sorted(QUIET_RAVDESS))
def test_quiet_real_speech_is_present(ravdess_speech, name):
    """The issue's case: whole-clip RMS under 1e-3 (the old rule said silent), loudest 100 ms
    at -56 to -53 dBFS, 40+ dB over the clip's floor -> present."""
    x = decode_audio(ravdess_speech / name)
    old_rms, loud = QUIET_RAVDESS[name]
    assert rms(x) == pytest.approx(old_rms, rel=0.01)
    assert rms(x) < OLD_SILENCE_RMS  # reproduces the report
    lv = audio_levels(x, SR)
    assert lv.loud_dbfs == pytest.approx(loud, abs=0.1)
    assert lv.floor_dbfs < -95 and lv.loud_dbfs - lv.floor_dbfs > 39
    assert lv.loud_dbfs > 20 * np.log10(SILENCE_RMS) + 10  # 10 dB of headroom over the silence level
    assert_present(x)


def test_quiet_real_speech_is_present_through_the_pipeline(ravdess_speech):
    """load_inputs with default decoding keeps the samples and reports the stream present."""
    for name in sorted(QUIET_RAVDESS):
        x = load_inputs(Utterance(name, ravdess_speech / name), {A}, DecodeConfig())
        assert x.status[A].present, (name, x.status[A].detail)
        assert x.audio is not None and rms(x.audio) < OLD_SILENCE_RMS


def test_silence_rms_applies_to_the_loudest_frames(ravdess_speech):
    """The threshold compares with the loudest 100 ms, not the average: -50 dBFS silences the
    quietest clip (loud -53.9 dBFS), -58 dBFS does not although its whole-clip RMS is -64."""
    path = ravdess_speech / "Actor_09/03-01-04-01-01-01-09.flac"
    silent = load_inputs(Utterance("u", path), {A}, DecodeConfig(silence_rms=amp(-50)))
    assert silent.status[A].reason == MissingReason.SILENT_AUDIO and silent.audio is None
    assert "loudest 100 ms at -53.9 dBFS" in silent.status[A].detail
    assert "below the silence level -50.0 dBFS" in silent.status[A].detail
    assert load_inputs(Utterance("u", path), {A}, DecodeConfig(silence_rms=amp(-58))).status[A].present


def test_no_ravdess_speech_clip_is_silent(ravdess_speech):
    """The clips are all spoken sentences: none is silent. Checked here on all 60 clips of the
    quiet Actor 09 and every 4th of the others (~300 of 1,080, about 2 s; all 1,080 take ~6 s to
    decode and were checked once by hand: none silent, the quietest loud level -55.7 dBFS)."""
    paths = sorted(ravdess_speech.glob("Actor_*/*.flac"))
    assert len(paths) == 1080
    sample = [p for i, p in enumerate(paths) if p.parent.name == "Actor_09" or i % 4 == 0]
    silent, quietest = [], 0.0
    for p in sample:
        x = decode_audio(p)
        s = audio_status(x, True)
        if not s.present:
            silent.append((p.name, s.detail))
        lv = audio_levels(x, SR)
        quietest = min(quietest, lv.loud_dbfs)
        assert lv.loud_dbfs - lv.floor_dbfs > 30, p.name
    assert silent == []
    assert -56.0 < quietest < -55.0  # Actor 09: the margin SILENCE_RMS (-66 dBFS) leaves


# ---------------------------------------------------------------------- generated silence


@pytest.mark.parametrize("seconds", [0.01, 0.05, 1.0, 3.0, 60.0])
def test_digital_silence_is_silent(seconds):
    detail = silent_detail(np.zeros(int(seconds * SR), np.float32))
    assert "-120.0 dBFS" in detail and "below the silence level -66.0 dBFS" in detail


def test_no_samples_is_silent():
    assert silent_detail(np.zeros(0, np.float32)) == "no samples in the segment"


@pytest.mark.parametrize("dbfs", [-90.0, -80.0, -70.0])
@pytest.mark.parametrize("seconds", [0.5, 3.0])
def test_near_silent_hiss_is_silent_at_any_length(dbfs, seconds):
    """Under -66 dBFS nothing is sound, however short the clip (the steadiness test needs 1 s)."""
    detail = silent_detail(hiss(dbfs, seconds))
    assert "below the silence level" in detail


@pytest.mark.parametrize("dbfs", [-65.0, -60.0, -50.0, -45.0, -41.0])
def test_steady_hiss_below_minus_40_dbfs_is_silent(dbfs):
    """Hiss louder than the silence level but with no event above it: a background, silent."""
    x = hiss(dbfs, 3.0)
    lv = audio_levels(x, SR)
    assert lv.loud_dbfs - lv.floor_dbfs < 2.0  # white noise: ~1 dB between loud and floor
    detail = silent_detail(x)
    assert f"steady background below {BACKGROUND_DBFS:.0f} dBFS" in detail
    assert f"noise floor {lv.floor_dbfs:.1f} dBFS" in detail and f"at {lv.loud_dbfs:.1f} dBFS" in detail


def test_a_click_in_silence_is_silent():
    """A few milliseconds at full scale cover 3 frames, not the 100 ms that count as loud."""
    x = hiss(-80.0, 3.0)
    x[SR : SR + 16] = 0.9
    assert "below the silence level" in silent_detail(x)


def test_the_digital_silence_of_an_all_zero_aac_track(media_dir):
    """Like the RAVDESS video-only releases: an AAC track of zeros, through the pipeline."""
    x = load_inputs(Utterance("u", media_dir / "silent.mp4"), {A}, DecodeConfig())
    assert x.status[A].reason == MissingReason.SILENT_AUDIO and x.audio is None
    assert "loudest 100 ms at -120.0 dBFS" in x.status[A].detail


# ------------------------------------------------------------------------ generated sound


@pytest.mark.parametrize(
    "peak, floor, old_silent",
    [(-45.0, -70.0, False), (-45.0, -60.0, False), (-55.0, -80.0, True), (-55.0, None, True), (-60.0, -90.0, True)],
)
def test_quiet_voice_between_long_pauses_is_present(peak, floor, old_silent):
    """Syllables at ``peak`` dBFS, 1 s of background (hiss at ``floor`` or zeros) each side:
    the voice stands 14+ dB over its floor. ``old_silent``: the whole-clip RMS is under the old
    1e-3 (at -55 and -60 dBFS peaks; -45 dBFS syllables average about -55 dBFS)."""
    x = quiet_voice(peak, floor)
    assert (rms(x) < OLD_SILENCE_RMS) == old_silent
    lv = audio_levels(x, SR)
    assert lv.loud_dbfs == pytest.approx(peak, abs=1.5)
    assert lv.floor_dbfs == pytest.approx(-120.0 if floor is None else floor, abs=1.0)
    assert lv.loud_dbfs - lv.floor_dbfs > 2 * ACTIVITY_DB
    assert_present(x)


def test_quiet_voice_over_hiss_of_its_own_level_stays_present():
    """-45 dBFS syllables over -52 dBFS hiss (7 dB over it): present; the same hiss alone: silent."""
    x = quiet_voice(-45.0, -52.0)
    assert_present(x)
    silent_detail(hiss(-52.0, len(x) / SR, seed=1))


def test_one_word_in_a_minute_of_hiss_is_present():
    """150 ms of voice anywhere in 60 s of -60 dBFS hiss is enough (the loud level needs 100 ms)."""
    x = hiss(-60.0, 60.0)
    word = quiet_voice(-40.0, None, seconds=0.15, pad=0.0)
    x[30 * SR : 30 * SR + len(word)] += word
    assert_present(x)
    silent_detail(hiss(-60.0, 60.0))


def test_short_cuts_of_quiet_speech_are_present():
    """0.3 s of steady quiet voice (no pause to compare with): judged by the silence level only."""
    x = quiet_voice(-55.0, -80.0, seconds=0.3, pad=0.0)
    assert_present(x)


@pytest.mark.parametrize("kind, dbfs", [("tone", -9.0), ("tone", -35.0), ("hiss", -35.0), ("hiss", -20.0)])
def test_steady_sound_above_minus_40_dbfs_is_present(kind, dbfs):
    """Documented choice: a steady tone or noise louder than -40 dBFS is recorded sound."""
    assert_present(tone(dbfs) if kind == "tone" else hiss(dbfs, 3.0))


def test_a_steady_quiet_hum_is_background():
    """Documented limit: energy alone does not tell a held -50 dBFS hum from hiss; both silent."""
    assert "steady background" in silent_detail(tone(-50.0, freq=50.0))


# ------------------------------------------------------------------------ levels, speed, key


def test_levels_do_not_depend_on_the_sample_rate():
    rng = np.random.default_rng(2)
    for sr in (8000, 16000, 22050, 48000):
        x = (amp(-50) * rng.standard_normal(3 * sr)).astype(np.float32)
        lv = audio_levels(x, sr)
        assert lv.floor_dbfs == pytest.approx(-50.0, abs=1.0) and lv.loud_dbfs == pytest.approx(-50.0, abs=1.5)
        assert lv.loud_ms == 100 and lv.seconds == pytest.approx(3.0)
        assert not audio_status(x, True, sample_rate=sr).present
        assert audio_status(quiet_voice(), True, sample_rate=SR).present


def test_an_hour_takes_under_a_second():
    one_second = hiss(-60.0, 1.0)
    x = np.tile(one_second, 3600)
    x[1800 * SR : 1800 * SR + SR // 2] += quiet_voice(-45.0, None, seconds=0.5, pad=0.0)
    t0 = time.perf_counter()
    s = audio_status(x, True)
    assert time.perf_counter() - t0 < 1.0
    assert s.present


def test_the_new_rule_has_a_new_cache_key():
    """The rule's name is part of the audio settings in every audio cache key: entries decided by
    the old rule (whole-clip RMS) are never reused, whatever threshold a caller passes, and a
    bundle trained before (decode settings without the rule) gets the current rule."""
    assert DecodeConfig().silence_rms == SILENCE_RMS == 5e-4
    new = decode_settings(DecodeConfig(), Modality.AUDIO)
    assert new == {"sample_rate": SR, "silence_rms": 5e-4, "silence_rule": "loudest-100ms"}
    old_bundle = decode_settings(DecodeConfig(silence_rms=OLD_SILENCE_RMS), Modality.AUDIO)
    assert old_bundle["silence_rule"] == "loudest-100ms"
    assert old_bundle != {"sample_rate": SR, "silence_rms": OLD_SILENCE_RMS}  # the old key
    with pytest.raises(BadInput, match="silence rule"):
        DecodeConfig(silence_rule="whole-clip-rms")