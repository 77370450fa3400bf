"""Small media files written with PyAV into a session temp folder (a few hundred ms in all)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

W, H = 160, 120
FPS = 25
AUDIO_RATE = 44100


def _video_frame(i: int) -> np.ndarray:
    """A frame whose mean brightness encodes its index (checks which frame came back)."""
    img = np.zeros((H, W, 3), dtype=np.uint8)
    img[..., 0] = (i * 5) % 256
    img[..., 1] = 128
    img[: H // 2, : W // 2, 2] = 255
    return img


def write_media(
    path: Path,
    seconds: float = 2.0,
    video: bool = True,
    audio: str | None = "sine",  # "sine", "zero" or None
    vcodec: str = "libx264",
    acodec: str = "aac",
    freq: float = 440.0,
    gop: int = 12,
) -> Path:
    """Write a test clip: ``video`` frames 160x120 at 25 fps, ``audio`` a sine or zeros."""
    with av.open(str(path), mode="w") as out:
        vs = as_ = None
        if video:
            vs = out.add_stream(vcodec, rate=FPS)
            vs.width, vs.height = W, H
            vs.pix_fmt = "yuv420p"
            vs.codec_context.gop_size = gop
            if vcodec == "libx264":
                vs.options = {"preset": "ultrafast", "bf": "0"}
        if audio is not None:
            rate = 48000 if acodec == "libopus" else AUDIO_RATE
            as_ = out.add_stream(acodec, rate=rate)
            as_.layout = "stereo"
        if vs is not None:
            for i in range(int(round(seconds * FPS))):
                frame = av.VideoFrame.from_ndarray(_video_frame(i), format="rgb24")
                frame.pts = i
                frame.time_base = Fraction(1, FPS)
                for packet in vs.encode(frame):
                    out.mux(packet)
            for packet in vs.encode(None):
                out.mux(packet)
        if as_ is not None:
            rate = as_.rate
            n = int(round(seconds * rate))
            t = np.arange(n) / rate
            x = 0.5 * np.sin(2 * np.pi * freq * t) if audio == "sine" else np.zeros(n)
            x = np.stack([x, x]).astype(np.float32)
            fmt = as_.codec_context.codec.audio_formats[0].name if as_.codec_context.codec.audio_formats else "fltp"
            chunk = 1024
            for k in range(0, n, chunk):
                piece = x[:, k : k + chunk]
                if fmt in ("s16", "s16p"):
                    arr = (piece * 32767).astype(np.int16)
                    arr = arr.T.reshape(1, -1).copy() if fmt == "s16" else arr
                elif fmt == "flt":
                    arr = piece.T.reshape(1, -1).copy()
                else:
                    arr = np.ascontiguousarray(piece)
                frame = av.AudioFrame.from_ndarray(arr, format=fmt, layout="stereo")
                frame.sample_rate = rate
                frame.pts = k
                frame.time_base = Fraction(1, rate)
                for packet in as_.encode(frame):
                    out.mux(packet)
            for packet in as_.encode(None):
                out.mux(packet)
    return path


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
    return d
