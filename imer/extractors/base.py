"""The extractor contract and registry: one file per backend, registered by name.

An extractor turns *decoded* inputs of one modality into one vector per utterance:

* audio: ``np.ndarray`` float32, mono, 16 kHz, in [-1, 1];
* text: ``str`` (non-empty; empty transcripts never reach an extractor);
* video: ``list[np.ndarray]`` of RGB uint8 ``[H, W, 3]`` frames sampled from the utterance.

``extract`` returns, per input, either a float32 vector of length ``dim`` or ``Missing(reason)``
(e.g. no face in any frame). The config dataclass is frozen; its stable hash keys the cache, so
changing any field (model id, layer, pooling, fps, ...) re-extracts. Heavy libraries are imported
in ``load()``, never at module import.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import numpy as np

from imer.devices import resolve_device  # noqa: F401  (backends import it from here)
from imer.errors import BadInput, MissingDependency
from imer.registry import Registry
from imer.types import Modality, MissingReason

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
    so a description compares equal to itself read back from a store or bundle header."""
    d = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if not f.metadata.get(_RUNTIME)}
    return json.loads(json.dumps(d, default=str))


@dataclass(frozen=True)
class Missing:
    """An input the extractor could not turn into a feature (with the reason)."""

    reason: MissingReason
    detail: str = ""


class Extractor:
    """Base class. Subclasses set ``modality``, ``config_class``, ``description`` and implement
    ``load``, ``dim`` and ``extract``."""

    modality: ClassVar[Modality]
    config_class: ClassVar[type]
    description: ClassVar[str] = ""
    offline: ClassVar[bool] = False  # True: works with no model hub at all

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

    def extract(self, inputs: Sequence[Any]) -> list[np.ndarray | Missing]:  # pragma: no cover
        raise NotImplementedError

    # -- shared -----------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.registry_name  # set by the registry decorator

    def describe(self) -> dict:
        """What bundles and stores record: enough to rebuild exactly this extractor."""
        return {"name": self.name, "config": identity_config(self.config), "dim": self.dim}

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
    cls = EXTRACTORS.get(name)
    opts = dict(options or {})
    fields = {f.name for f in dataclasses.fields(cls.config_class)}
    unknown = sorted(set(opts) - fields)
    if unknown:
        raise BadInput(f"extractor {name!r}: unknown option(s) {unknown}; valid: {sorted(fields)}")
    return cls(cls.config_class(**opts), device=device)


def require(module: str, package: str, purpose: str, extra: str | None = None):
    """Import an optional dependency or raise MissingDependency with the pip command."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependency(package, purpose, extra) from None
