"""The feature store: the one contract every stage after extraction talks through.

* :mod:`imer.store.spec` — :class:`FeatureSpec`, what made one modality's features.
* :mod:`imer.store.featureset` — :class:`FeatureSet`, the compiled dataset (numpy, host side).
* :mod:`imer.store.compile` — extraction results -> FeatureSet: labels, task, splits.
* :mod:`imer.store.splits` — every split rule (manifest aliases, speaker hold-out, validation
  hold-out, IEMOCAP session folds).
* :mod:`imer.store.format` — the folder on disk (versioned header; old versions still load).
* :mod:`imer.store.community` — the GCNet/MoMKE/ComP layout, in (import) and out (export).

This package sits below both extraction and fusion: it imports neither.
"""

from imer.store.compile import CompileConfig, compile_features
from imer.store.featureset import SPLITS, FeatureSet
from imer.store.format import STORE_VERSION, is_store, load_store, save_store
from imer.store.spec import FeatureSpec

__all__ = [
    "SPLITS",
    "STORE_VERSION",
    "CompileConfig",
    "FeatureSet",
    "FeatureSpec",
    "compile_features",
    "is_store",
    "load_store",
    "save_store",
]
