"""PyAV edge: probe, audio decoding (length, rate, exact trimming), frame sampling, bad files."""

from __future__ import annotations

import math

import numpy as np
import pytest
from media_factory import FPS, H, W, frame_index  # tests/pipeline/media_factory.py

from imer.errors import BadInput
from imer.pipeline import media
from imer.pipeline.media import UnreadableMedia, decode_audio, frame_targets, probe, sample_frames

# -- probe ------------------------------------------------------------------------------------


def test_probe_audio_video(media_dir):
    info = probe(media_dir / "sine.mp4")
    assert info.has_audio and info.has_video
    assert info.duration == pytest.approx(2.0, abs=0.05)
    assert (info.audio_rate, info.audio_channels) == (44100, 2)
    assert info.video_fps == pytest.approx(FPS)
    assert (info.width, info.height) == (W, H)


@pytest.mark.parametrize("name", ["tone.wav", "tone.flac"])
def test_probe_audio_only(media_dir, name):
    info = probe(media_dir / name)
    assert info.has_audio and not info.has_video
    assert info.width is None and info.video_fps is None
    assert info.duration == pytest.approx(2.0, abs=0.01)


def test_probe_video_only(media_dir):
    info = probe(media_dir / "noaudio.mp4")
    assert info.has_video and not info.has_audio
    assert info.audio_rate is None


@pytest.mark.parametrize("name", ["clip.mkv", "clip.webm"])
def test_probe_other_containers(media_dir, name):
    info = probe(media_dir / name)
    assert info.has_audio and info.has_video and (info.width, info.height) == (W, H)
    assert info.duration == pytest.approx(2.0, abs=0.1)


@pytest.mark.parametrize(
    "name, reason",
    [
        ("missing.mp4", "file not found"),
        ("empty.mp4", "empty file"),
        ("truncated.mp4", "cannot open"),
        ("garbage.mp4", "cannot open"),
    ],
)
def test_probe_unreadable(media_dir, name, reason):
    with pytest.raises(UnreadableMedia, match=reason) as exc:
        probe(media_dir / name)
    assert isinstance(exc.value, BadInput)
    assert name in str(exc.value)


# -- audio ------------------------------------------------------------------------------------


def test_decode_audio_full_file(media_dir):
    x = decode_audio(media_dir / "sine.mp4")
    assert x.dtype == np.float32 and x.ndim == 1
    # AAC adds up to ~2 frames of padding: allow 3 % over.
    assert 32000 <= len(x) <= 33000
    assert np.abs(x).max() <= 1.0
    # Both channels carry a 0.5 sine: the channel mean keeps its level (RMS 0.5/sqrt 2).
    mid = x[2000:30000]
    assert np.sqrt(np.mean(mid**2)) == pytest.approx(0.5 / math.sqrt(2), rel=0.03)
    spectrum = np.abs(np.fft.rfft(mid))
    assert np.fft.rfftfreq(len(mid), 1 / 16000)[spectrum.argmax()] == pytest.approx(440, abs=2)


@pytest.mark.parametrize("name", ["sine.mp4", "tone.wav", "tone.flac", "clip.mkv", "clip.webm"])
def test_decode_audio_segment_exact_length(media_dir, name):
    x = decode_audio(media_dir / name, 0.5, 1.25)
    assert len(x) == 12000
    assert np.sqrt(np.mean(x**2)) > 0.3


def test_decode_audio_other_rate_and_edges(media_dir):
    assert len(decode_audio(media_dir / "tone.wav", 0.0, 1.0, sample_rate=8000)) == 8000
    # Past the end: what is there, no padding.
    assert len(decode_audio(media_dir / "tone.wav", 1.5, 3.0)) == 8000
    assert len(decode_audio(media_dir / "tone.wav", 5.0, 6.0)) == 0
    assert len(decode_audio(media_dir / "tone.wav", 1.0, 1.0)) == 0


@pytest.mark.parametrize("fmt", ["wav", "flac"])
def test_decode_audio_trim_is_sample_exact(tmp_path, fmt):
    """A click at 1.0 s, 48 kHz -> 16 kHz: it lands at sample (1.0 - start) * 16000 of any segment."""
    sf = pytest.importorskip("soundfile")
    x = np.zeros(48000 * 3, np.float32)
    x[48000] = 0.9
    path = tmp_path / f"click.{fmt}"
    sf.write(path, x, 48000)
    for start, end in [(0.9, 1.1), (0.0, 1.5), (0.37, 2.0), (1.0, 3.0)]:
        seg = decode_audio(path, start, end)
        assert len(seg) == round((end - start) * 16000)
        assert int(np.argmax(np.abs(seg))) == round((1.0 - start) * 16000)


def test_decode_audio_matches_soundfile_at_native_rate(tmp_path):
    sf = pytest.importorskip("soundfile")
    rng = np.random.default_rng(1)
    x = (0.3 * rng.standard_normal(16000)).astype(np.float32)
    sf.write(tmp_path / "n.flac", x, 16000, subtype="PCM_24")
    ref, _ = sf.read(tmp_path / "n.flac", dtype="float32")
    np.testing.assert_allclose(decode_audio(tmp_path / "n.flac"), ref, atol=1e-6)
    np.testing.assert_allclose(decode_audio(tmp_path / "n.flac", 0.25, 0.5), ref[4000:8000], atol=1e-6)


def test_decode_audio_errors(media_dir):
    with pytest.raises(UnreadableMedia, match="no audio track"):
        decode_audio(media_dir / "noaudio.mp4")
    with pytest.raises(UnreadableMedia, match="empty file"):
        decode_audio(media_dir / "empty.mp4")


# -- frames -----------------------------------------------------------------------------------


def test_frame_targets():
    assert frame_targets(0.0, 2.0, 2.0, 16) == [0.25, 0.75, 1.25, 1.75]
    assert len(frame_targets(0.0, 100.0, 2.0, 16)) == 16
    assert frame_targets(1.0, 1.1, 2.0, 16) == [pytest.approx(1.05)]


def test_sample_frames_whole_clip(media_dir):
    frames, times = sample_frames(media_dir / "sine.mp4", fps=2.0)
    assert len(frames) == len(times) == 4
    for img, t in zip(frames, times):
        assert img.shape == (H, W, 3) and img.dtype == np.uint8
        assert frame_index(img) == round(t * FPS)  # the time belongs to that very frame
    assert times == sorted(times)
    for t, target in zip(times, [0.25, 0.75, 1.25, 1.75]):
        assert abs(t - target) <= 0.5 / FPS + 1e-9


def test_sample_frames_segment_and_resize(media_dir):
    frames, times = sample_frames(media_dir / "sine.mp4", 0.4, 1.9, fps=4.0, max_frames=3, max_side=80)
    assert len(frames) == 3
    assert all(f.shape == (60, 80, 3) for f in frames)
    assert all(0.4 <= t < 1.9 for t in times)


def test_sample_frames_tiny_and_outside_segments(media_dir):
    # No frame starts inside [0.50, 0.51): the frame on screen then (0.48 s) is returned.
    frames, times = sample_frames(media_dir / "sine.mp4", 0.50, 0.51)
    assert len(frames) == 1 and times[0] == pytest.approx(0.48)
    assert sample_frames(media_dir / "sine.mp4", 5.0, 6.0) == ([], [])


def test_sample_frames_dense_request_is_capped_and_unique(media_dir):
    frames, times = sample_frames(media_dir / "sine.mp4", fps=100, max_frames=100)
    assert 40 <= len(frames) <= 50  # at most one per video frame
    assert len(set(times)) == len(times)


@pytest.mark.parametrize("name, tol", [("clip.mkv", 0), ("clip.webm", 1)])
def test_sample_frames_other_containers(media_dir, name, tol):
    frames, times = sample_frames(media_dir / name, fps=2.0)
    assert len(frames) in (4, 5)  # the container may report a few ms over 2 s
    assert all(abs(frame_index(f) - round(t * FPS)) <= tol for f, t in zip(frames, times))


def test_sample_frames_audio_only_raises(media_dir):
    with pytest.raises(UnreadableMedia, match="no video track"):
        sample_frames(media_dir / "tone.wav")


def test_sparse_sampling_seeks_instead_of_decoding_everything(tmp_path, make_media, monkeypatch):
    path = make_media(tmp_path / "long.mp4", seconds=20, audio=None, gop=25)  # 500 frames, 1 s GOP
    decoded = []
    real = media._decode

    def counting(container, stream, errors):
        for frame in real(container, stream, errors):
            decoded.append(1)
            yield frame

    monkeypatch.setattr(media, "_decode", counting)
    frames, times = sample_frames(path, fps=0.2)  # targets 2.5, 7.5, 12.5, 17.5
    assert [round(t, 2) for t in times] == [2.48, 7.48, 12.48, 17.48]
    assert [frame_index(f) for f in frames] == [62, 187, 312, 437]
    assert len(decoded) < 120  # seeking: about one GOP per target, not 440 frames
    decoded.clear()
    frames, times = sample_frames(path, 3.3, 17.9, fps=0.3)
    assert all(3.3 <= t < 17.9 for t in times)
    assert [frame_index(f) for f in frames] == [round(t * FPS) for t in times]
    decoded.clear()
    sample_frames(path, 0.0, 4.0, fps=2.0)  # dense: one forward pass
    assert len(decoded) <= 100


def test_skip_nonref_with_b_frames(tmp_path, make_media):
    path = make_media(tmp_path / "bf.mp4", seconds=4, audio=None, gop=50, bframes=3)
    fast, t_fast = sample_frames(path, fps=2.0)
    exact, t_exact = sample_frames(path, fps=2.0, skip_nonref=False)
    assert len(fast) == len(exact) == 8
    targets = frame_targets(0.0, 4.0, 2.0, 16)
    assert all(abs(t - g) <= 0.5 / FPS + 1e-9 for t, g in zip(t_exact, targets))
    assert all(abs(t - g) <= 4 / FPS for t, g in zip(t_fast, targets))  # at most one B-group away
    assert [frame_index(f) for f in fast] == [round(t * FPS) for t in t_fast]
