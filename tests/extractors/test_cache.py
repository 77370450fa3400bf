"""The content-addressed feature cache (imer/extractors/cache.py) and its atomic writes (imer/fsutil.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import imer.fsutil
from imer.extractors.cache import FeatureCache, content_key
from imer.store.spec import FeatureSpec
from imer.types import MissingReason, StreamStatus

REPO = Path(__file__).resolve().parents[2]
SPEC = FeatureSpec(name="egemaps", dim=4, config={"feature_set": "eGeMAPSv02"}, decode={"sample_rate": 16000})
DESC = {"name": "egemaps", "dim": 4, "config": {"feature_set": "eGeMAPSv02"}, "decode": {"sample_rate": 16000}, "kind": "utterance"}
OTHER = FeatureSpec(name="other", dim=1)


@pytest.fixture()
def cache(tmp_path) -> FeatureCache:
    return FeatureCache(tmp_path / "cache", "audio", "egemaps", "0123456789abcdef", SPEC)


def entries(c: FeatureCache) -> list[str]:
    """Every file in the namespace but extractor.json (hidden temp files included)."""
    return sorted(p.name for p in c.dir.iterdir() if p.name != "extractor.json")


def temps(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp")]


# ---------------------------------------------------------------------- layout
def test_namespace_folder_and_description(tmp_path, cache):
    assert cache.dir == tmp_path / "cache" / "audio-egemaps-0123456789abcdef"
    assert cache.dir.is_dir()
    assert json.loads((cache.dir / "extractor.json").read_text()) == DESC
    assert FeatureSpec.from_dict(DESC) == SPEC  # the recorded spec reads back as the same spec
    assert entries(cache) == []


def test_reopening_keeps_entries_and_first_description(tmp_path, cache):
    cache.put("k", np.arange(4, dtype=np.float32))
    again = FeatureCache(tmp_path / "cache", "audio", "egemaps", "0123456789abcdef", OTHER)
    np.testing.assert_array_equal(again.get("k"), np.arange(4, dtype=np.float32))
    assert json.loads((again.dir / "extractor.json").read_text()) == DESC


def test_namespaces_are_separate(tmp_path):
    a = FeatureCache(tmp_path, "audio", "egemaps", "aaaa", SPEC)
    b = FeatureCache(tmp_path, "audio", "egemaps", "bbbb", SPEC)
    v = FeatureCache(tmp_path, "video", "egemaps", "aaaa", SPEC)
    a.put("k", np.ones(4, np.float32))
    assert b.get("k") is None and v.get("k") is None


# ---------------------------------------------------------------------- round trips
def test_get_unknown_key_is_none(cache):
    assert cache.get("nothing-here") is None


@pytest.mark.parametrize(
    "value",
    [
        np.array([0.0, -1.5, 3.25, 1e30], dtype=np.float32),
        np.zeros(88, dtype=np.float32),
        np.random.default_rng(0).normal(size=6373).astype(np.float32),
    ],
    ids=["small", "zeros", "compare"],
)
def test_array_round_trip(cache, value):
    cache.put("k", value)
    got = cache.get("k")
    assert isinstance(got, np.ndarray) and got.dtype == np.float32 and got.shape == value.shape
    np.testing.assert_array_equal(got, value)
    assert entries(cache) == ["k.npy"]


def test_array_is_stored_as_float32(cache):
    cache.put("k", np.array([1.0, 2.0, 1 / 3], dtype=np.float64))
    got = cache.get("k")
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, np.array([1.0, 2.0, 1 / 3], dtype=np.float32))


@pytest.mark.parametrize("reason", [r for r in MissingReason if r != MissingReason.PRESENT])
def test_missing_round_trip(cache, reason):
    value = StreamStatus.missing(reason, f"why: {reason.value} — ünïcode")
    cache.put("k", value)
    got = cache.get("k")
    assert got == value and isinstance(got, StreamStatus) and not got.present and isinstance(got.reason, MissingReason)
    assert entries(cache) == ["k.json"]


def test_missing_without_detail(cache):
    cache.put("k", StreamStatus.missing(MissingReason.NO_FACE))
    assert cache.get("k") == StreamStatus.missing(MissingReason.NO_FACE, "")


def test_overwrite_array_to_missing_and_back(cache):
    a = np.arange(4, dtype=np.float32)
    cache.put("k", a)
    cache.put("k", StreamStatus.missing(MissingReason.SILENT_AUDIO, "RMS 0"))
    assert cache.get("k") == StreamStatus.missing(MissingReason.SILENT_AUDIO, "RMS 0")
    assert entries(cache) == ["k.json"]
    b = a + 10
    cache.put("k", b)
    np.testing.assert_array_equal(cache.get("k"), b)
    assert entries(cache) == ["k.npy"]
    cache.put("k", a)  # array over array
    np.testing.assert_array_equal(cache.get("k"), a)
    cache.put("k", StreamStatus.missing(MissingReason.NO_FACE))
    cache.put("k", StreamStatus.missing(MissingReason.UNREADABLE, "x"))  # missing over missing
    assert cache.get("k") == StreamStatus.missing(MissingReason.UNREADABLE, "x")
    assert entries(cache) == ["k.json"]


def test_drop(cache):
    cache.put("a", np.ones(4, np.float32))
    cache.put("b", StreamStatus.missing(MissingReason.NO_FACE))
    cache.drop("a")
    cache.drop("b")
    cache.drop("never-there")
    assert cache.get("a") is None and cache.get("b") is None and entries(cache) == []


def test_many_keys_are_independent(cache):
    rng = np.random.default_rng(1)
    values = {f"k{i}": rng.normal(size=4).astype(np.float32) for i in range(20)}
    values["k7"] = StreamStatus.missing(MissingReason.NO_TRANSCRIPT)
    for k, v in values.items():
        cache.put(k, v)
    for k, v in values.items():
        got = cache.get(k)
        if isinstance(v, StreamStatus):
            assert got == v
        else:
            np.testing.assert_array_equal(got, v)


# ---------------------------------------------------------------------- damaged entries
def _full_npy_bytes(cache: FeatureCache) -> bytes:
    cache.put("k", np.arange(32, dtype=np.float32))
    return (cache.dir / "k.npy").read_bytes()


@pytest.mark.parametrize("keep", [0, 3, 6, 20, 100, -4, -1])
def test_truncated_npy_reads_as_absent(cache, keep):
    data = _full_npy_bytes(cache)
    (cache.dir / "k.npy").write_bytes(data[:keep])
    assert cache.get("k") is None


def test_garbage_npy_reads_as_absent(cache):
    (cache.dir / "k.npy").write_bytes(b"\x00" * 64)
    assert cache.get("k") is None
    (cache.dir / "k.npy").write_bytes(b"not numpy at all, a stray text file\n")
    assert cache.get("k") is None


def test_damaged_entry_is_rewritten_by_put(cache):
    data = _full_npy_bytes(cache)
    (cache.dir / "k.npy").write_bytes(data[: len(data) // 2])
    assert cache.get("k") is None
    cache.put("k", np.ones(32, np.float32))
    np.testing.assert_array_equal(cache.get("k"), np.ones(32, np.float32))


@pytest.mark.parametrize(
    "text",
    ["", "{", '{"detail": "x"}',
     '{"reason": "not-a-reason"}', '{"reason": 3}', '{"reason": "present"}',
     "[]", "null"],
    ids=repr,
)
def test_damaged_missing_json_reads_as_absent(cache, text):
    (cache.dir / "k.json").write_text(text)
    assert cache.get("k") is None


def test_missing_json_with_invalid_utf8_reads_as_absent(cache):
    (cache.dir / "k.json").write_bytes(b'\xff\xfe{"reason": "no_face"}')
    assert cache.get("k") is None


# ---------------------------------------------------------------------- atomicity
def test_no_tmp_files_after_puts(tmp_path, cache):
    for i in range(10):
        cache.put(f"k{i}", np.full(4, i, np.float32))
        cache.put(f"m{i}", StreamStatus.missing(MissingReason.NO_FACE, str(i)))
    cache.put("k0", StreamStatus.missing(MissingReason.SILENT_AUDIO))
    cache.put("m0", np.zeros(4, np.float32))
    assert temps(tmp_path) == []
    assert not any(name.startswith(".") for name in entries(cache))
    assert len(entries(cache)) == 20


def _failing_replace(exc: BaseException):
    calls = []

    def replace(src, dst):
        calls.append((src, dst))
        raise exc

    return replace, calls


@pytest.mark.parametrize("exc", [OSError("disk full"), KeyboardInterrupt()], ids=["oserror", "kill"])
@pytest.mark.parametrize(
    "value", [np.arange(4, dtype=np.float32), StreamStatus.missing(MissingReason.NO_FACE, "x")], ids=["array", "missing"]
)
def test_interrupted_put_leaves_no_entry_and_no_tmp(tmp_path, cache, monkeypatch, exc, value):
    replace, calls = _failing_replace(exc)
    monkeypatch.setattr(imer.fsutil.os, "replace", replace)
    with pytest.raises(type(exc)):
        cache.put("k", value)
    monkeypatch.undo()
    assert calls, "put did not go through os.replace"
    assert cache.get("k") is None
    assert entries(cache) == []
    assert temps(tmp_path) == []
    cache.put("k", value)  # and the next run writes it normally
    got = cache.get("k")
    assert got == value if isinstance(value, StreamStatus) else np.array_equal(got, value)


def test_interrupted_overwrite_keeps_the_old_array(tmp_path, cache, monkeypatch):
    old = np.arange(4, dtype=np.float32)
    cache.put("k", old)
    replace, _ = _failing_replace(KeyboardInterrupt())
    monkeypatch.setattr(imer.fsutil.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        cache.put("k", old + 1)
    monkeypatch.undo()
    np.testing.assert_array_equal(cache.get("k"), old)
    assert temps(tmp_path) == [] and entries(cache) == ["k.npy"]


def test_interrupted_overwrite_with_missing_never_leaves_a_wrong_value(tmp_path, cache, monkeypatch):
    """array -> missing killed in the rename: the entry is the old array or absent, never damaged."""
    old = np.arange(4, dtype=np.float32)
    cache.put("k", old)
    replace, _ = _failing_replace(KeyboardInterrupt())
    monkeypatch.setattr(imer.fsutil.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        cache.put("k", StreamStatus.missing(MissingReason.NO_FACE))
    monkeypatch.undo()
    got = cache.get("k")
    assert got is None or np.array_equal(got, old)
    assert temps(tmp_path) == []


def test_interrupted_write_of_the_description(tmp_path, monkeypatch):
    replace, _ = _failing_replace(KeyboardInterrupt())
    monkeypatch.setattr(imer.fsutil.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        FeatureCache(tmp_path, "audio", "egemaps", "k", SPEC)
    monkeypatch.undo()
    assert temps(tmp_path) == []
    c = FeatureCache(tmp_path, "audio", "egemaps", "k", SPEC)
    assert json.loads((c.dir / "extractor.json").read_text()) == DESC


def test_stray_tmp_from_a_killed_process_is_not_an_entry(cache):
    """A SIGKILL between mkstemp and rename leaves a hidden temp file: it never reads as an entry."""
    (cache.dir / ".k.npy.abc123.tmp").write_bytes(b"\x93NUMPY partial")
    assert cache.get("k") is None
    cache.put("k", np.ones(4, np.float32))
    np.testing.assert_array_equal(cache.get("k"), np.ones(4, np.float32))


# ---------------------------------------------------------------------- content_key
def test_content_key_shape_and_stability():
    k = content_key("abc", 1.5, None)
    assert isinstance(k, str) and len(k) == 32 and all(c in "0123456789abcdef" for c in k)
    assert k == content_key("abc", 1.5, None)
    # fixed across releases: a change silently invalidates every user's cache
    assert content_key() == content_key()
    assert content_key("x") != content_key()


def test_content_key_is_stable_across_processes():
    parts = ("0f" * 16, 0.0, 2.5, "Kids are talking by the door", "ünïcode", None, True)
    code = f"from imer.extractors.cache import content_key; print(content_key(*{parts!r}))"
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == content_key(*parts)


@pytest.mark.parametrize(
    "a, b",
    [
        (("h", 0.0, 1.0), ("h", 0.0, 2.0)),  # segment end
        (("h", 0.0, 1.0), ("h", 0.5, 1.0)),  # segment start
        (("h", None, None), ("h", 0.0, None)),  # whole file vs from 0
        (("h1", None, None), ("h2", None, None)),  # file content
        (("a", "b"), ("b", "a")),  # order
        (("a", "b"), ("ab",)),  # boundaries between parts
        (("a,b",), ("a", "b")),
        (("text", True, ""), ("text", False, "")),  # no transcript vs empty transcript
        (("text", False, "Hello"), ("text", False, "hello")),  # case
        (("text", False, "hi"), ("text", False, "hi ")),  # whitespace
        ((1.0,), (1,)),
    ],
)
def test_content_key_is_sensitive(a, b):
    assert content_key(*a) != content_key(*b)
