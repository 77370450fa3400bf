"""FeatureSpec: what made one modality's features, recorded wherever features cross the disk.

A store header, a model bundle and the extraction cache all carry it, and ``predict`` rebuilds
exactly the extractor it names (``Extractor.from_spec``). Two feature sets can be mixed (a
model evaluated on a store, a cache reused) only when their specs say the same thing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from imer.errors import BadInput

FeatureKind = Literal["utterance", "frame"]


@dataclass(frozen=True)
class FeatureSpec:
    """One modality's features.

    Attributes:
        name: the extractor's registry name, or ``community:<folder>`` for imported features
            (which imer cannot recompute from media).
        config: the extractor config fields that determine the values (runtime-only fields such
            as batch sizes are left out), JSON-normalised.
        dim: feature size D.
        decode: the decode settings the values depend on (sample rate, fps, ...).
        kind: ``utterance`` (one ``[D]`` vector per utterance) or ``frame`` (a ``[T, D]``
            sequence per utterance; stored ragged).
    """

    name: str
    dim: int
    config: dict[str, Any] = field(default_factory=dict)
    decode: dict[str, Any] = field(default_factory=dict)
    kind: FeatureKind = "utterance"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise BadInput(f"feature spec: name must be a non-empty string, got {self.name!r}")
        if isinstance(self.dim, bool) or not isinstance(self.dim, int) or self.dim < 1:
            raise BadInput(f"feature spec {self.name!r}: dim must be a positive integer, got {self.dim!r}")
        if self.kind not in ("utterance", "frame"):
            raise BadInput(f"feature spec {self.name!r}: kind must be 'utterance' or 'frame', got {self.kind!r}")
        # JSON-normalise once, so a spec equals itself read back from a header.
        object.__setattr__(self, "config", json.loads(json.dumps(dict(self.config), default=str)))
        object.__setattr__(self, "decode", json.loads(json.dumps(dict(self.decode), default=str)))

    @property
    def imported(self) -> bool:
        """Features imported from elsewhere: no extractor in imer makes them."""
        return self.name.startswith("community:")

    def same_features(self, other: "FeatureSpec | None") -> bool:
        """Would both produce the same values for the same media?"""
        return other is not None and (self.name, self.dim, self.config, self.decode, self.kind) == (
            other.name, other.dim, other.config, other.decode, other.kind
        )

    def describe(self) -> str:
        cfg = ", ".join(f"{k}={v}" for k, v in self.config.items())
        return f"{self.name}({cfg}) {self.dim}-d" if cfg else f"{self.name} {self.dim}-d"

    def to_dict(self) -> dict:
        return {"name": self.name, "dim": self.dim, "config": dict(self.config), "decode": dict(self.decode), "kind": self.kind}

    @classmethod
    def from_dict(cls, d: dict, dim: int | None = None) -> "FeatureSpec":
        """Read a spec; ``dim`` fills it in for version-1 headers that kept it beside the spec."""
        from imer.config import from_dict

        d = dict(d)
        if "dim" not in d and dim is not None:
            d["dim"] = int(dim)
        return from_dict(cls, d, f"feature spec {d.get('name', '?')!r}")


def spec_from_json(d: dict | None, dim: int | None = None) -> FeatureSpec | None:
    """A spec from a header entry; ``None`` or ``{"name": "none"}`` mean the modality is off."""
    if not d or d.get("name") in (None, "none"):
        return None
    return FeatureSpec.from_dict(d, dim)


def spec_to_json(spec: FeatureSpec | None) -> dict | None:
    return None if spec is None else spec.to_dict()
