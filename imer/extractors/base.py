"""The extractor contract and registry: one file per backend, registered by name.

An extractor turns *decoded* inputs of one modality into one vector per utterance:

* audio: ``np.ndarray`` float32, mono, 16 kHz, in [-1, 1];
* text: ``str`` (non-empty; empty transcripts never reach an extractor);
* video: ``list[np.ndarray]`` of RGB uint8 ``[H, W, 3]`` frames sampled from the utterance.

``extract`` returns, per input, either a float32 vector of length ``dim`` or a missing
:class:`StreamStatus` (e.g. no face in any frame). The config dataclass is frozen; its stable hash
keys the cache, so changing any field (model id, layer, pooling, fps, ...) re-extracts. Heavy
libraries are imported in ``load()``, never at module import.

``spec()`` and ``from_spec()`` sit next to each other: a :class:`FeatureSpec` recorded in a store
or bundle rebuilds exactly the extractor that made those features.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import numpy as np

from imer.devices import resolve_device  # noqa: F401  (backends import it from here)
from imer.errors import BadInput, IncompatibleBundle, MissingDependency
from imer.registry import Registry
from imer.store.spec import FeatureKind, FeatureSpec
from imer.types import Modality, StreamStatus

# Bump when an extractor's output changes for the same config (invalidates every cache entry).
FEATURE_VERSION = 1


def _load_backends() -> None:
    import imer.extractors.backends  # noqa: F401  (importing the package registers every backend)


EXTRACTORS: Registry[type["Extractor"]] = Registry("extractor", loader=_load_backends)
register_extractor = EXTRACTORS.register


_RUNTIME = "runtime"


def runtime_field(default: Any) -> Any:
    """A config field that changes speed only (batch sizes): kept out of ``key()``/``describe()``,
    so changing it neither re-extracts nor makes a bundle reject its own features."""
    return dataclasses.field(default=default, metadata={_RUNTIME: True})


def identity_config(config: Any) -> dict:
    """The config fields that determine output values, JSON-normalised (tuples become lists),
    so a spec compares equal to itself read back from a store or bundle header."""
    d = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if not f.metadata.get(_RUNTIME)}
    return json.loads(json.dumps(d, default=str))


def decode_settings(decode: Any, modality: Modality) -> dict:
    """The decode settings a modality's features depend on (part of its spec and cache namespace)."""
    d = dataclasses.asdict(decode)
    if modality == Modality.AUDIO:
        return {k: d[k] for k in ("sample_rate", "silence_rms", "silence_rule") if k in d}
    if modality == Modality.VIDEO:
        return {k: d[k] for k in ("fps", "max_frames", "max_side", "skip_nonref") if k in d}
    return {}


class Extractor:
    """Base class. Subclasses set ``modality``, ``config_class``, ``description`` and implement
    ``load``, ``dim`` and ``extract``."""

    modality: ClassVar[Modality]
    config_class: ClassVar[type]
    description: ClassVar[str] = ""
    offline: ClassVar[bool] = False  # True: works with no model hub at all
    kind: ClassVar[FeatureKind] = "utterance"  # "frame": a [T, D] sequence per utterance

    def __init__(self, config: Any | None = None, device: str = "cpu"):
        self.config = config if config is not None else self.config_class()
        self.device = device
        self._loaded = False

    # -- to implement -----------------------------------------------------------
    def load(self) -> None:
        """Load models once per run (idempotent)."""
        self._loaded = True

    @property
    def dim(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def extract(self, inputs: Sequence[Any]) -> list[np.ndarray | StreamStatus]:  # pragma: no cover
        """One result per input, in order: a float32 ``[dim]`` vector, or ``StreamStatus.missing(...)``."""
        raise NotImplementedError

    # -- shared -----------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.registry_name  # set by the registry decorator

    def spec(self, decode: Any = None) -> FeatureSpec:
        """What stores, bundles and the cache record: enough to rebuild exactly this extractor.

        ``decode``: the pipeline's ``DecodeConfig`` (its settings for this modality are recorded).
        """
        settings = decode_settings(decode, self.modality) if decode is not None else {}
        return FeatureSpec(name=self.name, dim=self.dim, config=identity_config(self.config), decode=settings, kind=self.kind)

    @staticmethod
    def from_spec(spec: FeatureSpec, device: str = "cpu") -> "Extractor":
        """The extractor a spec names, with exactly its config; refuses what imer cannot rebuild."""
        from imer.config import from_dict

        if spec.name not in EXTRACTORS:
            raise IncompatibleBundle(
                f"features from {spec.name!r} cannot be computed from media by imer "
                f"(known extractors: {', '.join(EXTRACTORS.names())})"
            )
        cls = EXTRACTORS.get(spec.name)
        try:
            ex = cls(from_dict(cls.config_class, spec.config, f"extractor {spec.name!r}"), device=device)
        except BadInput as e:
            raise IncompatibleBundle(f"{spec.name!r} config does not match this imer version ({e})") from None
        if ex.dim != spec.dim:
            raise IncompatibleBundle(f"{spec.name!r} with this config gives {ex.dim}-d features, the spec says {spec.dim}-d")
        return ex

    def key(self) -> str:
        """Stable hash of name + value-determining config + FEATURE_VERSION: the cache namespace."""
        blob = json.dumps(
            {"name": self.name, "config": identity_config(self.config), "v": FEATURE_VERSION},
            sort_keys=True,
            default=str,
        )
        return hashlib.blake2b(blob.encode(), digest_size=10).hexdigest()

    def ensure_loaded(self) -> None:
        if not self._loaded:
            self.load()
            self._loaded = True


def build_extractor(name: str, options: dict | None = None, device: str = "cpu") -> Extractor:
    """Registry name + options (plain data, checked by :func:`imer.config.from_dict`) -> extractor."""
    from imer.config import from_dict

    cls = EXTRACTORS.get(name)
    return cls(from_dict(cls.config_class, options, f"extractor {name!r}"), device=device)


def backends_for(modality: Modality) -> list[str]:
    """Registered backend names of one modality, sorted."""
    return [n for n in EXTRACTORS.names() if EXTRACTORS.get(n).modality == modality]


def require(module: str, package: str, purpose: str, extra: str | None = None):
    """Import an optional dependency or raise MissingDependency with the pip command."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependency(package, purpose, extra) from None

