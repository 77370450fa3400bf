"""Decode settings: how media becomes arrays (torch- and FFmpeg-free, so the CLI reads defaults cheaply)."""

from __future__ import annotations

from dataclasses import dataclass

from imer.errors import BadInput
from imer.pipeline.streams import SILENCE_RMS, SILENCE_RULE


@dataclass(frozen=True)
class DecodeConfig:
    """How media is turned into arrays. Part of every cache key: changing a field re-extracts."""

    sample_rate: int = 16000
    fps: float = 2.0
    max_frames: int = 16
    max_side: int = 640
    # RMS of the loudest 100 ms below which audio is silent (streams.audio_status, which also
    # calls a steady background under -40 dBFS silent). Was 1e-3 on the whole-clip RMS before
    # that rule (bundles trained then still carry 1e-3, now applied to the loudest 100 ms).
    silence_rms: float = SILENCE_RMS
    # Which rule decided silence: in the audio cache key, so a new rule never reuses entries
    # decided by an old one. Only the current rule runs; bundles without the field get it.
    silence_rule: str = SILENCE_RULE
    skip_nonref: bool = True  # see media.sample_frames

    def __post_init__(self) -> None:
        # Caught here, not per file: a bad setting is the user's, not a broken video's.
        if self.fps <= 0:
            raise BadInput(f"--fps {self.fps}: must be > 0")
        if self.max_frames < 1:
            raise BadInput(f"--max-frames {self.max_frames}: must be at least 1")
        if self.silence_rule != SILENCE_RULE:
            raise BadInput(f"silence rule {self.silence_rule!r}: this version of imer decides silence by {SILENCE_RULE!r} only")
        if self.sample_rate < 1000 or self.max_side < 16:
            raise BadInput(f"decode settings out of range: sample_rate {self.sample_rate}, max_side {self.max_side}")
