"""Model bundles: a folder that holds everything needed to use a trained model again.

Layout::

    model.safetensors       the method's weights (no pickle, loads without running code)
    normalizer.safetensors  per-modality mean/std fitted on the training split (:class:`Normalizer`)
    config.json             a :class:`BundleSpec`: method name + config, task, feature dims, the
                            FeatureSpec of every modality, train config, stage, metrics, imer version

Loading never imports code named by a file: the method comes from imer's registry by name.
Version 1 bundles (imer 0.1, specs under ``"extractors"``) still load and predict.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from imer import __version__
from imer.errors import BadInput, IncompatibleBundle
from imer.fsutil import commit_files, read_json_header
from imer.fusion.base import FusionMethod, build_method
from imer.fusion.data import Normalizer
from imer.store.spec import FeatureSpec, spec_from_json, spec_to_json
from imer.types import MODALITY_NAMES, TaskSpec

BUNDLE_FORMAT = "imer-model-bundle"
BUNDLE_VERSION = 2
CONFIG_FILE = "config.json"


@dataclass
class BundleSpec:
    """What ``config.json`` says: enough to rebuild the model and its exact feature extractors."""

    method: str
    method_config: dict[str, Any]
    task: TaskSpec
    dims: dict[str, int]
    features: dict[str, FeatureSpec | None]
    stage: str
    train_config: dict[str, Any] = field(default_factory=dict)
    imer_version: str = __version__
    data: str | None = None
    fold: str | None = None
    train_result: dict[str, Any] | None = None
    test: list[dict] | None = None

    @property
    def label_names(self) -> list[str]:
        return list(self.task.label_names)

    def to_json(self) -> str:
        d = {
            "format": BUNDLE_FORMAT,
            "version": BUNDLE_VERSION,
            "imer_version": self.imer_version,
            "method": self.method,
            "method_config": self.method_config,
            "task": self.task.to_dict(),
            "dims": {m: int(self.dims[m]) for m in MODALITY_NAMES},
            "features": {m: spec_to_json(self.features.get(m)) for m in MODALITY_NAMES},
            "stage": self.stage,
            "train_config": self.train_config,
            "data": self.data,
            "fold": self.fold,
            "train_result": self.train_result,
            "test": self.test,
        }
        return json.dumps(d, indent=2, default=_json_default, allow_nan=True)

    @classmethod
    def from_json(cls, header: dict, where: str = "bundle") -> "BundleSpec":
        """From a parsed ``config.json`` (version 1 or 2)."""
        from imer.config import from_dict

        try:
            d = {k: v for k, v in header.items() if k not in ("format", "version", "label_names")}
            dims = {m: int(d["dims"][m]) for m in MODALITY_NAMES}
            raw = d.pop("features") if header.get("version", 1) >= 2 else d.pop("extractors", {})
            d["features"] = {m: spec_to_json(spec_from_json((raw or {}).get(m), dims[m])) for m in MODALITY_NAMES}
            if header.get("version", 1) < 2:  # version 1 kept free-form extras beside the spec
                known = {f.name for f in dataclasses.fields(cls)}
                d = {k: v for k, v in d.items() if k in known}
            return from_dict(cls, d, f"{where}: config.json")
        except (KeyError, TypeError, ValueError, AttributeError, BadInput) as e:
            raise IncompatibleBundle(
                f"{where}: config.json is incomplete or damaged ({type(e).__name__}: {e}); train the model again"
            ) from None

    def check_compatible(self, dims: Mapping[str, int], specs: Mapping[str, FeatureSpec | None]) -> None:
        """Refuse data whose feature dims or extractors differ from what the model was trained on."""
        for m in MODALITY_NAMES:
            want, have = self.features.get(m), specs.get(m)
            if int(self.dims[m]) != int(dims[m]):
                raise IncompatibleBundle(
                    f"{m}: the model expects {self.dims[m]}-d features, the data has {dims[m]}-d "
                    f"(model trained on {_name(want)}, data made by {_name(have)})"
                )
            if want is None and have is None:
                continue
            if want is None or not want.same_features(have):
                raise IncompatibleBundle(
                    f"{m}: the model was trained on features from {_describe(want)}, "
                    f"but the data comes from {_describe(have)}; extract the data with the model's extractors"
                )


def _name(spec: FeatureSpec | None) -> str:
    return repr(spec.name) if spec is not None else "none"


def _describe(spec: FeatureSpec | None) -> str:
    return "no extractor (modality off)" if spec is None else f"{spec.name!r} {spec.config} (decode {spec.decode})"


def _json_default(o):
    import numpy as np

    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if hasattr(o, "to_dict"):
        return o.to_dict()
    if hasattr(o, "__dataclass_fields__"):
        from dataclasses import asdict

        return asdict(o)
    return str(o)


@dataclass
class LoadedBundle:
    """A bundle read back: the method (eval mode, on the device), its normaliser and its spec."""

    method: FusionMethod
    normalizer: Normalizer
    spec: BundleSpec


def save_bundle(out: str | Path, method: FusionMethod, normalizer: Normalizer, spec: BundleSpec) -> Path:
    """Write weights, normaliser and ``config.json`` as one set (config.json last)."""
    from safetensors.numpy import save as st_save_np
    from safetensors.torch import save as st_save_torch

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in method.state_dict().items()}
    commit_files(
        {
            out / "model.safetensors": st_save_torch(state),
            out / "normalizer.safetensors": st_save_np(normalizer.tensors()),
            out / CONFIG_FILE: spec.to_json().encode("utf-8"),
        },
        marker=out / CONFIG_FILE,
    )
    return out


def bundle_spec(
    method: FusionMethod,
    features: Mapping[str, FeatureSpec | None],
    train_config: dict | None = None,
    **extra: Any,
) -> BundleSpec:
    """The spec of ``method`` as it is now (its current stage: a stage-1 bundle predicts as stage 1)."""
    return BundleSpec(
        method=method.registry_name,
        method_config=method.export_config(),
        task=method.task,
        dims=dict(method.dims),
        features={m: features.get(m) for m in MODALITY_NAMES},
        stage=method.stage,
        train_config=dict(train_config or {}),
        **extra,
    )


def read_bundle_spec(path: str | Path) -> BundleSpec:
    path = Path(path)
    f = path / CONFIG_FILE
    if not f.is_file():
        raise BadInput(f"{path}: not a model bundle (no {CONFIG_FILE}); train one with 'imer train ... --model {path}'")
    header = read_json_header(f, BUNDLE_FORMAT, BUNDLE_VERSION, "bundle", "train it again", IncompatibleBundle)
    return BundleSpec.from_json(header, str(path))


def load_bundle(path: str | Path, device: Any = "cpu") -> LoadedBundle:
    """Read a bundle folder: method in eval mode on ``device``, normaliser, spec."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    path = Path(path)
    spec = read_bundle_spec(path)
    try:
        from imer.fusion.base import METHODS

        options = METHODS.get(spec.method).upgrade_config(spec.method_config)
        method = build_method(spec.method, spec.dims, spec.task, options)
        state = load_file(str(path / "model.safetensors"), device="cpu")
    except (KeyError, OSError, ValueError, TypeError, SafetensorError) as e:
        raise IncompatibleBundle(f"{path}: incomplete or damaged bundle ({type(e).__name__}: {e}); train it again") from None
    except BadInput as e:
        raise IncompatibleBundle(f"{path}: {e}; the bundle was made by another imer version, train it again") from None
    try:
        missing, unexpected = method.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches: config.json and the weights disagree
        first = str(e).strip().splitlines()[-1].strip()
        raise IncompatibleBundle(
            f"{path}: the weights do not fit the model described by config.json ({first}); the bundle is damaged or was edited"
        ) from None
    if missing or unexpected:
        raise IncompatibleBundle(
            f"{path}: weights do not match method {spec.method!r} "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]}); the bundle was made by another imer version"
        )
    try:
        with safe_open(str(path / "normalizer.safetensors"), framework="numpy") as f:
            normalizer = Normalizer.from_tensors({k: f.get_tensor(k) for k in f.keys()})
    except (KeyError, OSError, ValueError, SafetensorError) as e:
        raise IncompatibleBundle(f"{path}: normalizer.safetensors is missing or damaged ({e}); train it again") from None
    method.begin_stage(spec.stage or method.stages[-1])
    method.to(device).eval()
    return LoadedBundle(method, normalizer, spec)
