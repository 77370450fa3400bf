"""Writes small test media with PyAV (milliseconds per file): the helpers behind conftest's fixtures.

Each video frame encodes its own index in flat colour blocks, so a test can check which frame
came back: index = round(G / 16) * 32 + round(R / 8) on the top-left block (index < 512).
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

W, H = 160, 120
FPS = 25
AUDIO_RATE = 44100


def frame_image(i: int) -> np.ndarray:
    img = np.zeros((H, W, 3), dtype=np.uint8)
    img[: H // 2, : W // 2, 0] = (i % 32) * 8
    img[: H // 2, : W // 2, 1] = (i // 32) * 16
    img[H // 2 :, W // 2 :, 2] = 200
    return img


def frame_index(rgb: np.ndarray) -> int:
    """Inverse of :func:`frame_image` on a (possibly downscaled) decoded frame."""
    h, w = rgb.shape[:2]
    block = rgb[h // 8 : h // 2 - h // 8, w // 8 : w // 2 - w // 8].reshape(-1, 3).mean(axis=0)
    return round(float(block[1]) / 16) * 32 + round(float(block[0]) / 8)


def write_media(
    path: Path,
    seconds: float = 2.0,
    video: bool = True,
    audio: str | None = "sine",  # "sine", "zero" or None
    vcodec: str = "libx264",
    acodec: str = "aac",
    freq: float = 440.0,
    gop: int = 12,
    bframes: int = 0,
) -> Path:
    """A clip with 160x120 video at 25 fps and/or stereo audio (a 0.5-amplitude sine, or zeros)."""
    with av.open(str(path), mode="w") as out:
        vs = as_ = None
        if video:
            vs = out.add_stream(vcodec, rate=FPS)
            vs.width, vs.height = W, H
            vs.pix_fmt = "yuv420p"
            vs.codec_context.gop_size = gop
            if vcodec == "libx264":
                vs.options = {
                    "preset": "ultrafast" if not bframes else "fast",
                    "bf": str(bframes),
                    "crf": "10",
                }
            elif vcodec == "libvpx":
                vs.options = {"deadline": "realtime", "cpu-used": "8", "crf": "10", "b": "2M"}
            else:
                vs.codec_context.bit_rate = 2_000_000
        if audio is not None:
            rate = 48000 if acodec == "libopus" else AUDIO_RATE
            as_ = out.add_stream(acodec, rate=rate)
            as_.layout = "stereo"
        if vs is not None:
            for i in range(round(seconds * FPS)):
                frame = av.VideoFrame.from_ndarray(frame_image(i), format="rgb24")
                frame.pts = i
                frame.time_base = Fraction(1, FPS)
                for packet in vs.encode(frame):
                    out.mux(packet)
            for packet in vs.encode(None):
                out.mux(packet)
        if as_ is not None:
            rate = as_.rate
            n = round(seconds * rate)
            t = np.arange(n) / rate
            x = 0.5 * np.sin(2 * np.pi * freq * t) if audio == "sine" else np.zeros(n)
            x = np.stack([x, x]).astype(np.float32)
            formats = as_.codec_context.codec.audio_formats
            fmt = formats[0].name if formats else "fltp"
            chunk = 960 if acodec == "libopus" else 1024
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
