"""The offline audio default: openSMILE functionals (imer/extractors/backends/egemaps.py).

The signals are generated (a speech-like harmonic tone with vibrato and amplitude modulation);
openSMILE runs in-process in a few tens of milliseconds per second of audio.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("opensmile")

from imer.errors import BadInput  # noqa: E402
from imer.extractors.base import EXTRACTORS, build_extractor  # noqa: E402
from imer.extractors.backends.egemaps import _DIMS, _MIN_SECONDS, EgemapsConfig, EgemapsExtractor  # noqa: E402
from imer.extractors.run import ExtractConfig, extract_features  # noqa: E402
from imer.pipeline.decode import DecodeConfig  # noqa: E402
from imer.pipeline.manifest import Utterance  # noqa: E402
from imer.store.spec import FeatureSpec  # noqa: E402
from imer.types import MissingReason, Modality, StreamStatus  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SR = 16000


def voiced(seconds: float, f0: float = 140.0, seed: int = 0) -> np.ndarray:
    """A harmonic tone with vibrato, a 4 Hz syllable envelope and a little noise, in [-1, 1]."""
    t = np.arange(int(round(seconds * SR))) / SR
    f = f0 * (1 + 0.03 * np.sin(2 * np.pi * 5 * t))
    phase = 2 * np.pi * np.cumsum(f) / SR
    x = sum(np.sin(k * phase) / k for k in range(1, 6))
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2
    noise = np.random.default_rng(seed).normal(0, 0.01, t.size)
    x = 0.3 * env * x / np.abs(x).max() + noise
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def egemaps() -> EgemapsExtractor:
    ex = build_extractor("egemaps")
    ex.ensure_loaded()
    return ex


# ---------------------------------------------------------------------- registration, dims
def test_registered_as_offline_audio_backend():
    assert "egemaps" in EXTRACTORS
    cls = EXTRACTORS.get("egemaps")
    assert cls is EgemapsExtractor
    assert cls.modality == Modality.AUDIO and cls.offline


def test_egemaps_dim_88_matches_output(egemaps):
    assert egemaps.dim == 88
    out = egemaps.extract([voiced(1.0), voiced(1.5, f0=220.0, seed=1)])
    assert len(out) == 2
    for v in out:
        assert isinstance(v, np.ndarray) and v.dtype == np.float32
        assert v.shape == (egemaps.dim,)
        assert np.isfinite(v).all() and np.abs(v).sum() > 0
    # different voices -> different functionals (it is not a constant)
    assert not np.allclose(out[0], out[1])
    assert egemaps.spec() == FeatureSpec(name="egemaps", dim=88, config={"feature_set": "eGeMAPSv02", "sample_rate": 16000})
    # with the pipeline's decode settings, the audio ones are recorded too
    decode = DecodeConfig()
    assert egemaps.spec(decode) == FeatureSpec(
        name="egemaps", dim=88, config={"feature_set": "eGeMAPSv02", "sample_rate": 16000},
        decode={"sample_rate": decode.sample_rate, "silence_rms": decode.silence_rms, "silence_rule": decode.silence_rule},
    )


def test_egemaps_is_deterministic(egemaps):
    x = voiced(1.0)
    a, b = egemaps.extract([x])[0], egemaps.extract([x.copy()])[0]
    np.testing.assert_array_equal(a, b)


def test_compare_2016_dim_6373():
    ex = build_extractor("egemaps", {"feature_set": "ComParE_2016"})
    assert ex.dim == 6373
    (v,) = ex.extract([voiced(1.0)])  # one call on 1 s of audio
    assert isinstance(v, np.ndarray) and v.shape == (6373,) and v.dtype == np.float32
    assert np.isfinite(v).all()


def test_accepts_int_like_and_2d_inputs(egemaps):
    """Inputs are flattened and cast to float32 (a [1, T] array is the same signal as [T])."""
    x = voiced(1.0)
    a = egemaps.extract([x])[0]
    b = egemaps.extract([x[None, :].astype(np.float64)])[0]
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------- too short -> missing
@pytest.mark.parametrize("n", [0, 1, 160, int(_MIN_SECONDS * SR) - 1])
def test_too_short_audio_is_missing_silent(egemaps, n):
    out = egemaps.extract([voiced(1.0)[:n] if n else np.zeros(0, np.float32)])
    assert len(out) == 1 and isinstance(out[0], StreamStatus) and not out[0].present
    assert out[0].reason == MissingReason.SILENT_AUDIO
    assert "s of audio" in out[0].detail


def test_short_input_does_not_disturb_the_batch(egemaps):
    x = voiced(1.0)
    out = egemaps.extract([x, x[:100], x])
    assert isinstance(out[1], StreamStatus) and not out[1].present and out[1].reason == MissingReason.SILENT_AUDIO
    assert out[0].shape == (88,)
    np.testing.assert_array_equal(out[0], out[2])


def test_exactly_the_minimum_length_is_a_feature(egemaps):
    (v,) = egemaps.extract([voiced(1.0)[: int(_MIN_SECONDS * SR)]])
    assert isinstance(v, np.ndarray) and v.shape == (88,) and np.isfinite(v).all()


# ---------------------------------------------------------------------- bad config
def test_bad_feature_set_is_badinput_when_configured():
    # Validated in the config itself: before any model loads or any media is decoded.
    with pytest.raises(BadInput, match="feature_set") as e:
        build_extractor("egemaps", {"feature_set": "eGeMAPS_v99"})
    assert "eGeMAPSv02" in str(e.value)  # lists the valid choices


def test_bad_feature_set_is_badinput_before_load():
    """spec() runs before load() in extract_features (to name the cache); a typo must still be BadInput."""
    with pytest.raises(BadInput, match="feature_set"):
        ex = build_extractor("egemaps", {"feature_set": "nope"})
        ex.spec()
    cfg = ExtractConfig(
        backends={Modality.AUDIO: "egemaps", Modality.TEXT: None, Modality.VIDEO: None},
        options={"egemaps": {"feature_set": "nope"}},
    )
    with pytest.raises(BadInput, match="feature_set"):
        extract_features([Utterance("u", transcript="hi")], cfg)


def test_unknown_option_is_badinput():
    with pytest.raises(BadInput, match="unknown option"):
        build_extractor("egemaps", {"featureset": "ComParE_2016"})


# ---------------------------------------------------------------------- cache key
def test_key_is_stable_and_changes_with_config():
    base = build_extractor("egemaps").key()
    assert base == build_extractor("egemaps", {}).key() == EgemapsExtractor(EgemapsConfig()).key()
    assert base == build_extractor("egemaps", {"feature_set": "eGeMAPSv02", "sample_rate": 16000}).key()
    others = {
        build_extractor("egemaps", {"feature_set": fs}).key() for fs in _DIMS if fs != "eGeMAPSv02"
    }
    assert len(others) == len(_DIMS) - 1 and base not in others
    assert build_extractor("egemaps", {"sample_rate": 8000}).key() != base


def test_key_is_stable_across_processes():
    code = "from imer.extractors.base import build_extractor; print(build_extractor('egemaps').key())"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == build_extractor("egemaps").key()


# ---------------------------------------------------------------------- lazy import
def test_importing_the_backend_does_not_import_opensmile():
    code = textwrap.dedent(
        """
        import sys
        import imer.extractors.backends.egemaps as m
        from imer.extractors.base import build_extractor
        ex = build_extractor("egemaps")
        assert ex.dim == 88 and ex.spec().name == "egemaps" and ex.key()
        print("opensmile" in sys.modules, "audinterface" in sys.modules)
        ex.ensure_loaded()
        print("opensmile" in sys.modules)
        """
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.split("\n")
    assert lines[0] == "False False", res.stdout  # import, build, dim, spec, key: no opensmile
    assert lines[1] == "True"  # load() is where it comes in
