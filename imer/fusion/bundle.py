"""Model bundles: a folder that holds everything needed to use a trained model again.

Layout::

    model.safetensors       the method's weights (no pickle, loads without running code)
    normalizer.safetensors  per-modality mean/std fitted on the training split
    config.json             method name + config, train config, task (label names), feature dims,
                            the exact extractor configs per modality, metrics, imer version

Loading never imports code named by a file: the method comes from imer's registry by name.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from imer import __version__
from imer.errors import BadInput, IncompatibleBundle
from imer.fusion.base import FusionMethod, build_method
from imer.fsutil import commit_files, read_json_header
from imer.fusion.data import Standardizer
from imer.types import MODALITY_NAMES, TaskSpec

BUNDLE_FORMAT = "imer-model-bundle"
BUNDLE_VERSION = 1


def save_bundle(
    out: str | Path,
    method: FusionMethod,
    standardizer: Standardizer,
    extractors: dict[str, dict],
    train_config: dict | None = None,
    extra: dict | None = None,
) -> Path:
    """Write (atomically, file by file; config.json last) a bundle folder."""
    from safetensors.torch import save as st_save_torch
    from safetensors.numpy import save as st_save_np

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in method.state_dict().items()}
    config = {
        "format": BUNDLE_FORMAT,
        "version": BUNDLE_VERSION,
        "imer_version": __version__,
        "method": method.registry_name,
        "method_config": method.export_config(),
        "task": method.task.to_dict(),
        "dims": method.dims,
        "extractors": {m: extractors.get(m, {"name": "unknown"}) for m in MODALITY_NAMES},
        "train_config": train_config or {},
        "stage": method.stage,  # a bundle saved after stage 1 predicts as stage 1 (not with untrained layers)
        **(extra or {}),
    }
    # One set: weights, normaliser and config are never mixed from two runs.
    commit_files(
        {
            out / "model.safetensors": st_save_torch(state),
            out / "normalizer.safetensors": st_save_np(standardizer.tensors()),
            out / "config.json": json.dumps(config, indent=2, default=_json_default).encode("utf-8"),
        },
        marker=out / "config.json",
    )
    return out


def _json_default(o):
    import numpy as np

    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if hasattr(o, "__dataclass_fields__"):
        return asdict(o)
    return str(o)


def read_bundle_config(path: str | Path) -> dict:
    path = Path(path)
    f = path / "config.json"
    if not f.is_file():
        raise BadInput(f"{path}: not a model bundle (no config.json); train one with 'imer train ... --out {path}'")
    return read_json_header(f, BUNDLE_FORMAT, BUNDLE_VERSION, "bundle", "train it again", IncompatibleBundle)


def load_bundle(path: str | Path, device: str = "cpu") -> tuple[FusionMethod, Standardizer, dict]:
    """(method in eval mode, standardizer, config dict)."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    path = Path(path)
    cfg = read_bundle_config(path)
    try:
        method = build_method(cfg["method"], cfg["dims"], TaskSpec.from_dict(cfg["task"]), cfg["method_config"])
        state = load_file(str(path / "model.safetensors"), device="cpu")
    except (KeyError, OSError, ValueError, TypeError, SafetensorError) as e:
        raise IncompatibleBundle(f"{path}: incomplete or damaged bundle ({type(e).__name__}: {e}); train it again") from None
    try:
        missing, unexpected = method.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches: config.json and the weights disagree
        first = str(e).strip().splitlines()[-1].strip()
        raise IncompatibleBundle(
            f"{path}: the weights do not fit the model described by config.json ({first}); the bundle is damaged or was edited"
        ) from None
    if missing or unexpected:
        raise IncompatibleBundle(
            f"{path}: weights do not match method {cfg['method']!r} "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]}); the bundle was made by another imer version"
        )
    try:
        with safe_open(str(path / "normalizer.safetensors"), framework="numpy") as f:
            std = Standardizer.from_tensors({k: f.get_tensor(k) for k in f.keys()})
    except (KeyError, OSError, ValueError, SafetensorError) as e:
        raise IncompatibleBundle(f"{path}: normalizer.safetensors is missing or damaged ({e}); train it again") from None
    method.begin_stage(cfg.get("stage", method.stages[-1]))
    method.to(device).eval()
    return method, std, cfg


def check_compatible(cfg: dict, dims: dict[str, int], extractors: dict[str, dict]) -> None:
    """Refuse data whose feature dims or extractors differ from what the model was trained on."""
    for m in MODALITY_NAMES:
        if int(cfg["dims"][m]) != int(dims[m]):
            raise IncompatibleBundle(
                f"{m}: the model expects {cfg['dims'][m]}-d features, the data has {dims[m]}-d "
                f"(model trained on extractor {cfg['extractors'][m].get('name')!r}, data made by {extractors.get(m, {}).get('name')!r})"
            )
        want, have = cfg["extractors"].get(m, {}), extractors.get(m, {})
        same = all(want.get(k) == have.get(k) for k in ("name", "config", "decode"))
        if not same:
            raise IncompatibleBundle(
                f"{m}: the model was trained on features from {want.get('name')!r} {want.get('config', {})}, "
                f"but the data comes from {have.get('name')!r} {have.get('config', {})}; "
                "extract the data with the model's extractors"
            )
