"""Acoustic functionals with openSMILE: the offline audio default (no model hub, no weights).

eGeMAPSv02 functionals (88-d; Eyben et al. 2016, the Geneva minimalistic acoustic parameter set
built for affective computing) per utterance, or ComParE 2016 (6373-d) with
``feature_set="ComParE_2016"``. The ``opensmile`` wheel carries the SMILExtract binary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from imer.extractors.base import Extractor, register_extractor, require
from imer.types import MissingReason, Modality, StreamStatus

_DIMS = {"eGeMAPSv02": 88, "eGeMAPSv01b": 88, "GeMAPSv01b": 62, "ComParE_2016": 6373, "emobase": 988}
# openSMILE's functionals need some signal to summarise; below this they are all zero/NaN.
_MIN_SECONDS = 0.1


@dataclass(frozen=True)
class EgemapsConfig:
    feature_set: str = "eGeMAPSv02"  # or "ComParE_2016" (6373-d)
    sample_rate: int = 16000  # inputs arrive as 16 kHz mono from the pipeline

    def __post_init__(self) -> None:
        if self.feature_set not in _DIMS:
            from imer.errors import BadInput

            raise BadInput(f"egemaps: feature_set {self.feature_set!r}; choose one of {sorted(_DIMS)}")


@register_extractor("egemaps")
class EgemapsExtractor(Extractor):
    """openSMILE functionals (eGeMAPSv02 by default), one vector per utterance."""

    modality = Modality.AUDIO
    config_class = EgemapsConfig
    description = "openSMILE eGeMAPSv02 functionals (88-d; offline, no weights); ComParE_2016 optional"
    offline = True

    def load(self) -> None:
        opensmile = require("opensmile", "opensmile", "the egemaps audio backend", "offline")
        self._smile = opensmile.Smile(
            feature_set=getattr(opensmile.FeatureSet, self.config.feature_set),
            feature_level=opensmile.FeatureLevel.Functionals,
        )
        self._loaded = True

    @property
    def dim(self) -> int:
        return _DIMS[self.config.feature_set]

    def extract(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray | StreamStatus]:
        if not inputs:  # nothing to do: do not load a model for it
            return []
        self.ensure_loaded()
        out: list[np.ndarray | StreamStatus] = []
        sr = self.config.sample_rate
        for x in inputs:
            x = np.asarray(x, dtype=np.float32).reshape(-1)
            if x.size < _MIN_SECONDS * sr:
                out.append(StreamStatus.missing(MissingReason.SILENT_AUDIO, f"only {x.size / sr:.3f} s of audio"))
                continue
            v = self._smile.process_signal(x, sr).to_numpy(dtype=np.float32).reshape(-1)
            if not np.isfinite(v).all():
                v = np.nan_to_num(v, nan=0.0, posinf=0.0, neginf=0.0)
            out.append(v)
        return out
