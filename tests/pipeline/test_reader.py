"""``MediaReader``: one open file serving many segments, equal to decoding each segment alone.

A long recording cut into utterances (IEMOCAP sessions, meetings) is read through one reader in
order of start: audio in one forward pass, video from an open container. These tests pin that
the shared reader returns what the one-call functions return, in order, out of order and
across gaps, and that the file is opened once.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("av")

from media_factory import frame_index, write_media  # noqa: E402  (tests/pipeline/media_factory.py)

import imer.pipeline.media as media  # noqa: E402
from imer.pipeline.ingest import load_inputs  # noqa: E402
from imer.pipeline.manifest import Utterance  # noqa: E402
from imer.pipeline.media import MediaReader, UnreadableMedia, decode_audio, sample_frames  # noqa: E402
from imer.types import Modality  # noqa: E402


def _segments(total: float, n: int, length: float) -> list[tuple[float, float]]:
    starts = np.linspace(0.0, total - length, n)
    return [(round(float(s), 3), round(float(s) + length, 3)) for s in starts]


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory):
    """12 s of video (25 fps, GOP 12) and AAC audio: long enough for gaps and backward reads."""
    return write_media(tmp_path_factory.mktemp("reader") / "long.mp4", seconds=12.0)


@pytest.fixture(scope="module")
def noise_flac(tmp_path_factory):
    """40 s of white noise at 44.1 kHz: every sample differs, so any misalignment shows."""
    sf = pytest.importorskip("soundfile")
    x = (0.3 * np.random.default_rng(3).standard_normal(44100 * 40)).astype(np.float32)
    path = tmp_path_factory.mktemp("reader") / "noise.flac"
    sf.write(path, x, 44100, subtype="PCM_24")
    return path


@pytest.mark.parametrize("order", ["sorted", "overlapping"])
def test_forward_reads_are_slices_of_the_whole_file(noise_flac, order):
    """Reads in order of start continue one decode: exactly the samples of the whole-file decode
    (FLAC 44.1 kHz -> 16 kHz; white noise, so a sub-sample misalignment would show)."""
    full = decode_audio(noise_flac)
    segs = _segments(40.0, 25, 1.7)
    if order == "overlapping":
        segs = [(s, e + 2.0) for s, e in segs[:-2]]
    with MediaReader(noise_flac) as r:
        for s, e in segs:
            got = r.audio(s, e)
            first = round(s * 16000)
            assert len(got) == round((e - s) * 16000)
            np.testing.assert_array_equal(got, full[first : first + len(got)])


def test_backward_reads_seek_like_one_call_decoding(noise_flac):
    """A read before the buffer seeks, exactly as a one-segment decode does."""
    segs = _segments(40.0, 10, 1.7)[::-1]
    with MediaReader(noise_flac) as r:
        for s, e in segs:
            np.testing.assert_array_equal(r.audio(s, e), decode_audio(noise_flac, s, e))


def test_aac_segments_past_the_end_and_back(long_clip):
    full = decode_audio(long_clip)
    segs = _segments(12.0, 30, 0.8)
    with MediaReader(long_clip) as r:
        for s, e in segs:
            got = r.audio(s, e)
            first = round(s * 16000)
            np.testing.assert_array_equal(got, full[first : first + len(got)])
        tail = r.audio(11.5, 13.0)  # the file ends first
        back = r.audio(0.0, 0.5)  # backwards: a seek to the start
    assert len(tail) == len(full) - round(11.5 * 16000)
    # After a seek the AAC decoder restarts cold: its first frame (1024 input samples, 372 at
    # 16 kHz) may come out as silence, exactly as in a one-call decode from a seek point.
    np.testing.assert_allclose(back[400:], full[400:8000], atol=1e-6)


def test_whole_file_and_gaps(noise_flac):
    """A read to the end, reads after a gap larger than the seek threshold, a read of nothing."""
    with MediaReader(noise_flac) as r:
        a = r.audio(1.0, 2.0)
        b = r.audio(1.0 + media._AUDIO_SEEK_GAP + 5.0, 1.0 + media._AUDIO_SEEK_GAP + 6.0)  # seeks
        c = r.audio(35.0, None)
        d = r.audio(30.0, 30.0)
    np.testing.assert_array_equal(a, decode_audio(noise_flac, 1.0, 2.0))
    np.testing.assert_array_equal(b, decode_audio(noise_flac, 16.0, 17.0))
    assert len(c) == 5 * 16000 and d.size == 0


def test_memory_stays_one_segment(noise_flac):
    """The buffer never holds more than the current segment plus the read-ahead."""
    with MediaReader(noise_flac) as r:
        for s, e in _segments(40.0, 80, 0.5):
            r.audio(s, e)
            cursor = r._audio[16000]
            assert cursor.buffered <= round((0.5 + 2 * media._AUDIO_TAIL + 0.2) * 16000)


def test_frames_equal_one_call_sampling(long_clip):
    segs = _segments(12.0, 12, 0.9) + [(2.0, 3.0), (0.0, 0.6)]
    with MediaReader(long_clip) as r:
        shared = [r.frames(s, e, fps=4.0, max_frames=4, max_side=80) for s, e in segs]
    for (s, e), (frames, times) in zip(segs, shared):
        alone_frames, alone_times = sample_frames(long_clip, s, e, fps=4.0, max_frames=4, max_side=80)
        assert times == alone_times
        assert [frame_index(f) for f in frames] == [frame_index(f) for f in alone_frames]
        assert all(s <= t < e for t in times)


def test_the_file_is_opened_once_for_many_utterances(long_clip, monkeypatch):
    opened: list[str] = []
    real_open = media._open

    def counting_open(path):
        opened.append(str(path))
        return real_open(path)

    monkeypatch.setattr(media, "_open", counting_open)
    utts = [Utterance(f"u{k}", long_clip, start=s, end=e, transcript="hi") for k, (s, e) in enumerate(_segments(12.0, 40, 0.5))]
    want = {Modality.AUDIO, Modality.VIDEO, Modality.TEXT}
    with MediaReader(long_clip) as r:
        shared = [load_inputs(u, want, reader=r) for u in utts]
    assert len(opened) == 2  # one container for probing and audio, one for video
    opened.clear()
    alone = [load_inputs(u, want) for u in utts[:3]]
    assert len(opened) == 2 * 3
    full = decode_audio(long_clip)
    for u, a, b in zip(utts, shared, alone):
        assert a.status == b.status
        first = round(u.start * 16000)
        np.testing.assert_array_equal(a.audio, full[first : first + len(a.audio)])
        assert len(a.audio) == len(b.audio)
        assert a.frame_times == b.frame_times


def test_reader_errors(tmp_path, long_clip):
    bad = tmp_path / "garbage.mp4"
    bad.write_bytes(b"not a video" * 100)
    with MediaReader(bad) as r, pytest.raises(UnreadableMedia, match="cannot open"):
        r.info  # noqa: B018 - the property raises
    audio_only = write_media(tmp_path / "a.mp4", seconds=1.0, video=False)
    with MediaReader(audio_only) as r:
        assert r.info.has_audio and not r.info.has_video
        with pytest.raises(UnreadableMedia, match="no video track"):
            r.frames(0.0, 0.5)
        assert len(r.audio(0.0, 0.5)) == 8000  # the audio container is unaffected
    with MediaReader(long_clip) as r, pytest.raises(ValueError, match="reader is open on"):
        load_inputs(Utterance("u", audio_only, transcript="x"), {Modality.AUDIO}, reader=r)
