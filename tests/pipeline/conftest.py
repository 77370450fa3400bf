"""Fixtures: small media files written with PyAV into a session temp folder (well under a second)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from media_factory import write_media  # tests/pipeline/media_factory.py


@pytest.fixture(scope="session")
def make_media():
    return write_media


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory) -> Path:
    """One folder with every synthetic media case (written once per session)."""
    d = tmp_path_factory.mktemp("media")
    write_media(d / "sine.mp4")
    write_media(d / "silent.mp4", audio="zero")
    write_media(d / "noaudio.mp4", audio=None)
    write_media(d / "tone.wav", video=False, acodec="pcm_s16le")
    write_media(d / "tone.flac", video=False, acodec="flac")
    write_media(d / "clip.mkv", vcodec="mpeg4", acodec="aac")
    write_media(d / "clip.webm", vcodec="libvpx", acodec="libopus")
    (d / "empty.mp4").write_bytes(b"")
    (d / "truncated.mp4").write_bytes((d / "sine.mp4").read_bytes()[:300])
    (d / "garbage.mp4").write_bytes(b"this is not a video file at all\n" * 50)
    data = bytearray((d / "sine.mp4").read_bytes())
    rng = np.random.default_rng(0)
    lo, hi = len(data) // 4, 3 * len(data) // 4  # inside mdat: headers intact, payload damaged
    data[lo:hi] = rng.integers(0, 256, hi - lo, dtype=np.uint8).tobytes()
    (d / "damaged.mp4").write_bytes(bytes(data))
    return d
