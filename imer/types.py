"""Vocabulary shared by every stage: modalities, missing reasons and stream status, task specs."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum


class Modality(str, Enum):
    """The three streams, in the one fixed order used by every mask: (a, t, v)."""

    AUDIO = "audio"
    TEXT = "text"
    VIDEO = "video"

    @property
    def letter(self) -> str:
        return self.value[0]


MODALITIES: tuple[Modality, ...] = (Modality.AUDIO, Modality.TEXT, Modality.VIDEO)
MODALITY_NAMES: tuple[str, ...] = tuple(m.value for m in MODALITIES)


class MissingReason(str, Enum):
    """Why a stream is absent. Decided once, carried through store, dataset and predictions."""

    PRESENT = "present"
    NO_AUDIO_TRACK = "no_audio_track"
    SILENT_AUDIO = "silent_audio"
    NO_VIDEO_TRACK = "no_video_track"
    NO_FACE = "no_face"
    NO_TRANSCRIPT = "no_transcript"
    EMPTY_TRANSCRIPT = "empty_transcript"
    UNREADABLE = "unreadable"
    OUT_OF_RANGE = "out_of_range"
    INVALID_SEGMENT = "invalid_segment"  # the manifest row's own start/end are unusable (end before start, ...)
    DISABLED = "disabled"  # switched off by the user (--no-audio, ...)
    NO_FEATURE = "no_feature"  # imported data had no feature file for this utterance
    EXTRACTOR_FAILED = "extractor_failed"


@dataclass(frozen=True)
class StreamStatus:
    """Whether one modality of one utterance is usable, and if not, why.

    The one record for "present, or missing with a reason" from decoding to the cache, the
    store, the dataset and ``predict``'s output. Decided in :mod:`imer.pipeline.streams` (media)
    and by extractors (e.g. no face in any frame).
    """

    present: bool
    reason: MissingReason = MissingReason.PRESENT
    detail: str = ""

    @classmethod
    def ok(cls, detail: str = "") -> "StreamStatus":
        return cls(True, MissingReason.PRESENT, detail)

    @classmethod
    def missing(cls, reason: MissingReason | str, detail: str = "") -> "StreamStatus":
        reason = MissingReason(reason)
        if reason == MissingReason.PRESENT:
            raise ValueError("a missing stream needs a reason other than PRESENT")
        return cls(False, reason, detail)

    def to_dict(self) -> dict:
        return {"present": self.present, "reason": self.reason.value, "detail": self.detail}

    @classmethod
    def from_dict(cls, d: dict) -> "StreamStatus":
        reason = MissingReason(d.get("reason", MissingReason.PRESENT.value))
        return cls(bool(d.get("present", reason == MissingReason.PRESENT)), reason, str(d.get("detail", "")))


class TaskKind(str, Enum):
    CLASSIFICATION = "classification"
    REGRESSION = "regression"


@dataclass(frozen=True)
class TaskSpec:
    """What the labels mean: class names for classification, a value range for regression."""

    kind: TaskKind
    label_names: tuple[str, ...] = field(default_factory=tuple)

    @property
    def num_outputs(self) -> int:
        return len(self.label_names) if self.kind == TaskKind.CLASSIFICATION else 1

    def to_dict(self) -> dict:
        d = asdict(self)
        d["kind"] = self.kind.value
        d["label_names"] = list(self.label_names)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TaskSpec":
        return cls(kind=TaskKind(d["kind"]), label_names=tuple(d.get("label_names", ())))


def parse_modalities(spec: str) -> tuple[bool, bool, bool]:
    """'at' -> (True, True, False). Accepts letters in any order; used by --condition."""
    spec = spec.strip().lower()
    letters = {m.letter for m in MODALITIES}
    bad = set(spec) - letters
    if not spec or bad:
        from imer.errors import BadInput

        raise BadInput(
            f"condition {spec!r}: use letters from 'a' (audio), 't' (text), 'v' (video), e.g. 'at'"
        )
    return tuple(m.letter in spec for m in MODALITIES)  # type: ignore[return-value]
