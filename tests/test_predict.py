"""``imer.predict`` end to end on real RAVDESS clips: bundle round trip, refusal of extractors
the bundle cannot rebuild, every stream switch, silent tracks, audio-only files, transcripts,
segments, folders and batches, clips with no usable stream (no label, ``abstained``), version-1
bundles and the rule that prediction writes no temporary store.

One shared setup (:func:`trained_models`, built once per session and reused by
``tests/cli/test_predict_cli.py``) runs ``imer extract`` on the 18 real clips of
``../shared/data/av-clips/ravdess-actor01`` with a small decode config (1 fps, at most 2 frames:
MTCNN is the slow part) and a non-default faceprint option, then trains a small ``concat`` model
(run_experiment) and a tiny ``comp`` model (the ``imer train`` command) into temporary bundles.

:func:`make_blank_clip` writes a clip no stream of which is usable (coloured blocks, no face; a
digitally silent audio track; no transcript).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from imer.errors import BadInput, IncompatibleBundle
from imer.predict import NO_USABLE_STREAM
from imer.store import FeatureSpec
from imer.types import MissingReason, Modality, StreamStatus

STATEMENT = "Kids are talking by the door"
FPS, MAX_FRAMES = 1.0, 2  # small decode config: 2 frames per clip through MTCNN
FACEPRINT_OPTIONS = {"detect_side": 256}  # not the default (320): the bundle must carry it
STREAMS = ("audio", "text", "video")

# ------------------------------------------------------------------------------ shared setup
_CACHE: dict[str, object] = {}


def trained_models(tmp_path_factory, shared_data: Path) -> SimpleNamespace:
    """Extract the real clips once and train both bundles once per test session."""
    if "models" in _CACHE:
        return _CACHE["models"]  # type: ignore[return-value]
    from typer.testing import CliRunner

    from imer.cli.app import app
    from imer.extractors.run import ExtractConfig
    from imer.fusion.experiment import run_experiment
    from imer.fusion.train_config import TrainConfig
    from imer.pipeline.ingest import DecodeConfig, read_manifest
    from imer.workflows import extract_store

    root = shared_data / "av-clips" / "ravdess-actor01"
    if not (root / "manifest.csv").is_file():
        pytest.skip(f"{root}: real RAVDESS clips not found")
    base = tmp_path_factory.mktemp("predict-models")
    store = base / "store"
    cfg = ExtractConfig(
        options={"faceprint": dict(FACEPRINT_OPTIONS)},
        decode=DecodeConfig(fps=FPS, max_frames=MAX_FRAMES),
        device="cpu",
        cache_dir=base / "extract-cache",
    )
    fs, summary = extract_store(read_manifest(root / "manifest.csv"), store, cfg)
    concat = base / "concat"
    res = run_experiment(
        fs, "concat", TrainConfig(epochs=6, lr=3e-3, device="cpu", seed=0, missing_rate=0.3), {"hidden": 16},
        out=concat, evaluate=False,
    )
    comp = base / "comp"
    r = CliRunner().invoke(app, ["train", "--data", str(store), "--method", "comp", "--model", str(comp), "--epochs", "2",
                                 "--set", "hidden=16", "--no-evaluate", "--device", "cpu", "--json"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    with open(root / "manifest.csv", newline="") as f:
        manifest = list(csv.DictReader(f))
    clips = root / "Actor_01"
    speech = shared_data / "ravdess-speech" / "Actor_01"
    models = SimpleNamespace(
        base=base,
        root=root,
        store=store,
        fs=fs,
        summary=summary,
        concat=concat,
        comp=comp,
        concat_result=res,
        manifest=manifest,
        label_names=sorted({row["emotion"] for row in manifest}),
        clip=clips / "01-01-01-01-01-01-01.mp4",  # real audio, statement 01
        silent=clips / "02-01-01-01-01-01-01.mp4",  # video-only release: silent AAC track
        flac=speech / "03-01-01-01-01-01-01.flac",  # audio only
    )
    for f in (models.clip, models.silent):
        assert f.is_file(), f
    if not models.flac.is_file():
        pytest.skip(f"{models.flac}: RAVDESS speech audio not found")
    _CACHE["models"] = models
    return models


def predictor_for(bundle: Path):
    """One Predictor per bundle per session (extractors load once)."""
    from imer.predict import Predictor

    key = f"predictor:{bundle}"
    if key not in _CACHE:
        _CACHE[key] = Predictor(bundle, device="cpu")
    return _CACHE[key]


def standin_bundle(models: SimpleNamespace) -> Path:
    """A bundle trained on a store whose audio features come from an extractor imer does not know."""
    key = "standin"
    if key not in _CACHE:
        from imer.store import load_store, save_store

        specs = dict(models.fs.specs)
        specs["audio"] = FeatureSpec(name="standin-egemaps-ravdess", dim=models.fs.dims["audio"], config={"source": "community"})
        save_store(dataclasses.replace(models.fs, feats=dict(models.fs.feats), specs=specs), models.base / "standin-store")
        _CACHE[key] = _train(load_store(models.base / "standin-store"), models.base / "standin-model")
    return _CACHE[key]  # type: ignore[return-value]


def regression_bundle(models: SimpleNamespace) -> Path:
    """A regression bundle on the same features (labels: the class index as a value)."""
    key = "regression"
    if key not in _CACHE:
        from imer.types import TaskKind, TaskSpec

        fs = models.fs
        values = np.where(fs.labels >= 0, fs.labels.astype(np.float32) - 3.5, np.nan).astype(np.float32)
        reg = dataclasses.replace(fs, feats=dict(fs.feats), labels=values, task=TaskSpec(TaskKind.REGRESSION, ("sentiment",)))
        _CACHE[key] = _train(reg, models.base / "regression-model")
    return _CACHE[key]  # type: ignore[return-value]


def make_blank_clip(path: Path) -> Path:
    """A clip with no usable stream: coloured blocks (no face), a digitally silent audio track and
    no transcript sidecar."""
    from pipeline.media_factory import write_media  # tests/pipeline/media_factory.py

    write_media(path, seconds=1.5, audio="zero")
    assert not path.with_suffix(".txt").exists()
    return path


def _train(fs, out: Path, epochs: int = 1) -> Path:
    from imer.fusion.experiment import run_experiment
    from imer.fusion.train_config import TrainConfig

    run_experiment(fs, "concat", TrainConfig(epochs=epochs, device="cpu", seed=0), {"hidden": 8}, out=out, evaluate=False)
    return out


def probs(pred, names) -> np.ndarray:
    return np.array([pred.probabilities[n] for n in names])


@pytest.fixture(scope="module")
def models(tmp_path_factory, shared_data) -> SimpleNamespace:
    return trained_models(tmp_path_factory, shared_data)


@pytest.fixture(scope="module")
def concat_predictor(models):
    return predictor_for(models.concat)


@pytest.fixture(scope="module")
def blank_clip(tmp_path_factory) -> Path:
    return make_blank_clip(tmp_path_factory.mktemp("blank") / "blank.mp4")


# ------------------------------------------------------------------------------ the bundle
def test_store_and_bundle_record_the_exact_extractors(models):
    from imer.fusion.bundle import read_bundle_spec
    from imer.store import load_store

    cfg = json.loads((models.concat / "config.json").read_text())
    assert cfg["format"] == "imer-model-bundle" and cfg["version"] == 2 and cfg["method"] == "concat"
    assert cfg["method_config"]["hidden"] == 16
    assert cfg["task"]["kind"] == "classification"
    assert cfg["task"]["label_names"] == models.label_names == list(models.fs.task.label_names)
    # version 2 keeps the label names in the task only (version 1 repeated them at top level)
    assert read_bundle_spec(models.concat).label_names == models.label_names
    assert cfg["dims"] == models.fs.dims
    assert cfg["dims"]["audio"] == 88 and cfg["dims"]["text"] == 384
    assert {p.name for p in models.concat.iterdir()} >= {"model.safetensors", "normalizer.safetensors", "config.json"}
    stored = load_store(models.store)
    for m in STREAMS:
        ex = cfg["features"][m]
        assert set(ex) == {"name", "config", "dim", "decode", "kind"}, ex
        assert ex["dim"] == cfg["dims"][m] and ex["kind"] == "utterance"
        assert ex == json.loads(json.dumps(models.fs.specs[m].to_dict()))  # exactly what the store recorded
        assert stored.specs[m] == models.fs.specs[m]  # and what it reads back
        assert models.summary.extractors[m] == models.fs.specs[m].to_dict()
    assert [cfg["features"][m]["name"] for m in STREAMS] == ["egemaps", "minilm", "faceprint"]
    assert cfg["features"]["video"]["decode"]["fps"] == FPS
    assert cfg["features"]["video"]["decode"]["max_frames"] == MAX_FRAMES
    assert cfg["features"]["video"]["config"]["detect_side"] == FACEPRINT_OPTIONS["detect_side"]
    assert cfg["features"]["audio"]["decode"]["sample_rate"] == 16000
    assert cfg["features"]["text"]["config"]["model"]
    comp = json.loads((models.comp / "config.json").read_text())
    assert comp["method"] == "comp" and comp["method_config"]["hidden"] == 16
    assert comp["features"] == cfg["features"] and comp["dims"] == cfg["dims"]


def test_bundle_round_trip(models):
    import torch

    from imer.fusion.bundle import LoadedBundle, load_bundle
    from imer.fusion.data import TensorData
    from imer.fusion.evaluation import predict_outputs

    res = models.concat_result
    loaded = load_bundle(models.concat, "cpu")
    assert isinstance(loaded, LoadedBundle)
    model, norm, spec = loaded.method, loaded.normalizer, loaded.spec
    want = res.model.state_dict()
    got = model.state_dict()
    assert set(got) == set(want)
    for k in want:
        assert torch.equal(got[k].cpu(), want[k].cpu()), k
    assert set(norm.tensors()) == set(res.normalizer.tensors())
    for k, v in res.normalizer.tensors().items():
        np.testing.assert_array_equal(norm.tensors()[k], v)
    assert not model.training and spec.method == "concat"
    assert spec.features == models.fs.specs and spec.task == models.fs.task
    data = TensorData(norm.apply(models.fs))
    a = predict_outputs(model, data, None, "utterance", 64)
    b = predict_outputs(res.model.eval(), TensorData(res.normalizer.apply(models.fs)), None, "utterance", 64)
    np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(a.sum(1), 1.0, atol=1e-5)


def test_not_a_bundle_is_a_clear_error(tmp_path, models):
    from imer.predict import Predictor

    with pytest.raises(BadInput, match="not a model bundle"):
        Predictor(tmp_path, device="cpu")
    bad = tmp_path / "bad"
    shutil.copytree(models.concat, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["format"] = "something-else"
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(BadInput, match="format"):
        Predictor(bad, device="cpu")


def test_predictor_rebuilds_the_bundles_own_extractors(models, concat_predictor):
    from imer.pipeline.ingest import DecodeConfig

    cfg = json.loads((models.concat / "config.json").read_text())
    assert set(concat_predictor.extractors) == set(Modality)
    for m, ex in concat_predictor.extractors.items():
        want = cfg["features"][m.value]
        # spec() is the value-determining identity (runtime-only knobs such as minilm's
        # batch_size are left out of it, by design): it must be exactly what the bundle recorded
        assert json.loads(json.dumps(ex.spec(concat_predictor.decode).to_dict())) == want
        assert concat_predictor.spec.features[m.value] == FeatureSpec.from_dict(want)
    assert concat_predictor.extractors[Modality.VIDEO].config.detect_side == FACEPRINT_OPTIONS["detect_side"]
    assert concat_predictor.decode == DecodeConfig(fps=FPS, max_frames=MAX_FRAMES)
    assert concat_predictor.label_names == models.label_names == concat_predictor.spec.label_names
    assert concat_predictor.spec.method == "concat" and not concat_predictor.model.training


def test_predict_reproduces_the_training_features(models, concat_predictor):
    """Prediction on a clip (with its manifest transcript) = the model on that clip's store row:
    the predictor computed the very features the model was trained on."""
    from imer.fusion.data import TensorData
    from imer.fusion.evaluation import predict_outputs

    res = models.concat_result
    table = predict_outputs(res.model.eval(), TensorData(res.normalizer.apply(models.fs)), None, "utterance", 64)
    for clip in (models.clip, models.silent):
        row = next(i for i, uid in enumerate(models.fs.ids) if uid.endswith(clip.stem))
        text = next(r["transcript"] for r in models.manifest if r["path"].endswith(clip.name))
        (pred,) = concat_predictor.predict([clip], text=text)
        np.testing.assert_allclose(probs(pred, models.label_names), table[row], atol=1e-4)
        assert [pred.streams[m].present for m in STREAMS] == list(models.fs.present[row])
        assert [pred.streams[m].reason for m in STREAMS] == list(models.fs.reasons[row])


# ------------------------------------------------------------------------------ predictions
@pytest.mark.parametrize("which", ["concat", "comp"])
def test_predict_one_clip(models, which):
    p = predictor_for(getattr(models, which))
    (pred,) = p.predict([models.clip])
    assert pred.id == models.clip.stem and Path(pred.source) == models.clip.absolute()
    assert pred.start is None and pred.end is None and pred.value is None and pred.abstained is None
    assert list(pred.probabilities) == models.label_names
    assert sum(pred.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert all(0.0 <= v <= 1.0 for v in pred.probabilities.values())
    assert pred.label in models.label_names
    assert pred.label == max(pred.probabilities, key=pred.probabilities.get)
    assert set(pred.streams) == set(STREAMS)
    assert all(isinstance(s, StreamStatus) for s in pred.streams.values())
    assert pred.streams["audio"].present and pred.streams["audio"].reason == MissingReason.PRESENT
    assert pred.streams["video"].present and pred.streams["video"].reason == MissingReason.PRESENT
    # the clip has no transcript sidecar and no --text: text is missing, with the reason
    assert not pred.streams["text"].present and pred.streams["text"].reason == MissingReason.NO_TRANSCRIPT
    d = pred.to_dict()
    assert set(d) == {"id", "source", "start", "end", "label", "probabilities", "value", "streams", "abstained"}
    assert d["abstained"] is None and d["label"] == pred.label
    assert d["streams"]["audio"] == {"present": True, "reason": "present", "detail": ""}
    assert d["streams"]["text"]["present"] is False and d["streams"]["text"]["reason"] == "no_transcript"
    json.dumps(d, allow_nan=False)


@pytest.mark.parametrize("which", ["concat", "comp"])
def test_every_switch(models, which):
    p = predictor_for(getattr(models, which))
    settings = [(), ("audio",), ("text",), ("video",)]
    vectors = []
    for off in settings:
        (pred,) = p.predict([models.clip], disable=set(off), text=STATEMENT)
        assert pred.label in models.label_names
        assert sum(pred.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
        for m in STREAMS:
            s = pred.streams[m]
            if m in off:
                assert (s.present, s.reason) == (False, "disabled"), (off, m, s)
            else:
                assert (s.present, s.reason) == (True, "present"), (off, m, s)
        vectors.append(probs(pred, models.label_names))
    for i in range(len(settings)):
        for j in range(i + 1, len(settings)):
            assert not np.allclose(vectors[i], vectors[j], atol=1e-7), (settings[i], settings[j])


def test_switching_everything_off_abstains(models, concat_predictor):
    """Nothing observed: no label (a label would be the model's prior), the reason says so."""
    (pred,) = concat_predictor.predict([models.clip], disable={"audio", "text", "video"}, text=STATEMENT)
    assert pred.label is None and pred.value is None and pred.probabilities == {}
    assert pred.abstained == NO_USABLE_STREAM
    assert all((s.present, s.reason) == (False, "disabled") for s in pred.streams.values())


def test_disable_takes_modality_values(models, concat_predictor):
    (a,) = concat_predictor.predict([models.flac], disable=[Modality.VIDEO, "text"])
    assert a.streams["text"].reason == "disabled" and a.streams["video"].reason == "disabled"
    with pytest.raises((BadInput, ValueError)):
        concat_predictor.predict([models.flac], disable={"audo"})


def test_silent_audio_track_is_missing_not_used(models, concat_predictor):
    (pred,) = concat_predictor.predict([models.silent])
    audio = pred.streams["audio"]
    assert (audio.present, audio.reason) == (False, "silent_audio")
    assert pred.streams["video"].present
    assert pred.label in models.label_names
    assert sum(pred.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    # a silent track enters the model exactly like a switched-off one
    (off,) = concat_predictor.predict([models.silent], disable={"audio"})
    np.testing.assert_allclose(probs(pred, models.label_names), probs(off, models.label_names), atol=1e-6)


def test_missing_streams_say_why_in_detail(models, concat_predictor):
    (pred,) = concat_predictor.predict([models.silent])
    assert "RMS" in pred.streams["audio"].detail
    (pred,) = concat_predictor.predict([models.flac])
    assert models.flac.name in pred.streams["video"].detail


def test_audio_only_flac_and_wav(models, concat_predictor, tmp_path):
    import soundfile as sf

    (flac,) = concat_predictor.predict([models.flac])
    assert (flac.streams["video"].present, flac.streams["video"].reason) == (False, "no_video_track")
    assert (flac.streams["audio"].present, flac.streams["audio"].reason) == (True, "present")
    assert flac.label in models.label_names
    assert sum(flac.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    samples, rate = sf.read(models.flac, dtype="int16")
    wav = tmp_path / "speech.wav"
    sf.write(wav, samples, rate, subtype="PCM_16")
    (w,) = concat_predictor.predict([wav])
    assert w.id == "speech" and w.streams["video"].reason == "no_video_track" and w.streams["audio"].present
    np.testing.assert_allclose(probs(w, models.label_names), probs(flac, models.label_names), atol=1e-5)


def test_transcript_alone(models, concat_predictor):
    (pred,) = concat_predictor.predict(text=STATEMENT)
    assert pred.source is None and pred.start is None and pred.end is None
    assert (pred.streams["text"].present, pred.streams["text"].reason) == (True, "present")
    assert not pred.streams["audio"].present and not pred.streams["video"].present
    assert pred.streams["audio"].reason == "no_audio_track" and pred.streams["video"].reason == "no_video_track"
    assert pred.label in models.label_names
    (other,) = concat_predictor.predict(text="Dogs are sitting by the door")
    assert not np.allclose(probs(pred, models.label_names), probs(other, models.label_names), atol=1e-7)


def test_nothing_to_predict_is_an_error(concat_predictor):
    with pytest.raises(BadInput, match="nothing to predict"):
        concat_predictor.predict([])


def test_text_override_and_transcript_files(models, concat_predictor, tmp_path):
    names = models.label_names
    (plain,) = concat_predictor.predict([models.clip])
    (given,) = concat_predictor.predict([models.clip], text=STATEMENT)
    assert not plain.streams["text"].present and given.streams["text"].present
    assert not np.allclose(probs(plain, names), probs(given, names), atol=1e-7)
    txt = tmp_path / "words.txt"
    txt.write_text(STATEMENT + "\n")
    srt = tmp_path / "words.srt"
    srt.write_text("1\n00:00:00,500 --> 00:00:01,400\nKids are talking\n\n2\n00:00:01,400 --> 00:00:02,600\nby the door\n")
    for f in (txt, srt):
        (pred,) = concat_predictor.predict([models.clip], transcript=f)
        assert pred.streams["text"].present, f
        np.testing.assert_allclose(probs(pred, names), probs(given, names), atol=1e-5, err_msg=str(f))
    # the text switch wins over a given transcript
    (off,) = concat_predictor.predict([models.clip], transcript=srt, disable={"text"})
    assert off.streams["text"].reason == "disabled"
    np.testing.assert_allclose(probs(off, names), probs(plain, names), atol=1e-6)
    with pytest.raises(BadInput, match="not both"):
        concat_predictor.predict([models.clip], text=STATEMENT, transcript=txt)
    with pytest.raises(BadInput, match="not found"):
        concat_predictor.predict([models.clip], transcript=tmp_path / "nope.txt")


def test_sidecar_transcript_is_used_and_text_overrides_it(models, concat_predictor, tmp_path):
    clip = tmp_path / "talk.mp4"
    shutil.copyfile(models.clip, clip)
    (tmp_path / "talk.txt").write_text(STATEMENT)
    names = models.label_names
    (side,) = concat_predictor.predict([clip])
    assert side.streams["text"].present
    (given,) = concat_predictor.predict([models.clip], text=STATEMENT)
    np.testing.assert_allclose(probs(side, names), probs(given, names), atol=1e-5)
    (other,) = concat_predictor.predict([clip], text="Dogs are sitting by the door")
    assert not np.allclose(probs(other, names), probs(side, names), atol=1e-7)


def test_segment_is_honoured(models, concat_predictor):
    names = models.label_names
    (full,) = concat_predictor.predict([models.clip])
    (seg,) = concat_predictor.predict([models.clip], start=0.5, end=2.0)
    assert (seg.start, seg.end) == (0.5, 2.0)
    assert seg.streams["audio"].present and seg.streams["video"].present
    assert not np.allclose(probs(seg, names), probs(full, names), atol=1e-7)
    (late,) = concat_predictor.predict([models.clip], start=30.0)
    assert late.start == 30.0 and late.end is None
    for m in ("audio", "video"):
        assert (late.streams[m].present, late.streams[m].reason) == (False, "out_of_range")
    # past the end and no transcript: nothing observed, so no label
    assert late.streams["text"].reason == "no_transcript"
    assert late.label is None and late.probabilities == {} and late.abstained == NO_USABLE_STREAM


def test_folder_one_prediction_per_media_file_and_batch_equals_single(models, concat_predictor, tmp_path):
    folder = tmp_path / "inbox"
    (folder / "sub").mkdir(parents=True)
    shutil.copyfile(models.clip, folder / "a.mp4")
    shutil.copyfile(models.silent, folder / "sub" / "b.mp4")
    shutil.copyfile(models.flac, folder / "c.flac")
    (folder / "notes.md").write_text("not media")
    batch = concat_predictor.predict([folder], text=STATEMENT)
    assert [p.id for p in batch] == ["a", "c", "sub/b"]
    assert [Path(p.source).name for p in batch] == ["a.mp4", "c.flac", "b.mp4"]
    assert [p.streams["audio"].reason for p in batch] == ["present", "present", "silent_audio"]
    assert [p.streams["video"].reason for p in batch] == ["present", "no_video_track", "present"]
    for p in batch:
        (single,) = concat_predictor.predict([p.source], text=STATEMENT)
        assert single.label == p.label
        np.testing.assert_allclose(probs(single, models.label_names), probs(p, models.label_names), atol=1e-5)
        assert single.streams == p.streams
    # many paths (files and folders mixed) keep their order
    mixed = concat_predictor.predict([models.flac, folder / "a.mp4"], text=STATEMENT)
    assert [p.id for p in mixed] == [models.flac.stem, "a"]
    np.testing.assert_allclose(probs(mixed[1], models.label_names), probs(batch[0], models.label_names), atol=1e-5)


def test_same_file_name_in_two_folders(models, concat_predictor, tmp_path):
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        shutil.copyfile(models.flac, tmp_path / d / "x.flac")
    preds = concat_predictor.predict([tmp_path / "a" / "x.flac", tmp_path / "b" / "x.flac"])
    assert len(preds) == 2 and preds[0].id != preds[1].id


def test_missing_and_bad_paths(concat_predictor, tmp_path):
    with pytest.raises(BadInput, match="no such file"):
        concat_predictor.predict([tmp_path / "nope.mp4"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInput, match="no media files"):
        concat_predictor.predict([tmp_path / "empty"])
    (tmp_path / "notes.md").write_text("hi")
    with pytest.raises(BadInput, match="not a supported media file"):
        concat_predictor.predict([tmp_path / "notes.md"])


def test_generated_clip_without_audio_track_or_face_and_a_corrupt_file(models, concat_predictor, tmp_path):
    from pipeline.media_factory import write_media  # tests/pipeline/media_factory.py

    write_media(tmp_path / "noaudio.mp4", seconds=1.0, audio=None)
    (tmp_path / "garbage.mp4").write_bytes(b"this is not a video file at all\n" * 50)
    preds = concat_predictor.predict([tmp_path])
    by_id = {p.id: p for p in preds}
    assert set(by_id) == {"noaudio", "garbage"}
    na = by_id["noaudio"].streams
    assert (na["audio"].present, na["audio"].reason) == (False, "no_audio_track")
    assert (na["video"].present, na["video"].reason) == (False, "no_face")
    assert (na["text"].present, na["text"].reason) == (False, "no_transcript")
    g = by_id["garbage"].streams
    assert (g["audio"].reason, g["video"].reason) == ("unreadable", "unreadable")
    # neither has a usable stream: no label, and the reason why
    for p in preds:
        assert p.label is None and p.value is None and p.probabilities == {} and p.abstained == NO_USABLE_STREAM


def test_one_call_api_and_package_export(models):
    import imer
    from imer.predict import Prediction, Predictor, predict

    assert imer.Predictor is Predictor and imer.Prediction is Prediction
    (pred,) = predict([models.flac], model=models.concat, device="cpu", disable={"video"}, text=STATEMENT)
    assert isinstance(pred, Prediction) and pred.label in models.label_names
    assert pred.streams["video"].reason == "disabled" and pred.streams["text"].present


# ------------------------------------------------------------------------------ refusals
def test_refuses_a_bundle_whose_extractor_is_unknown(models):
    from imer.predict import Predictor, predict

    bundle = standin_bundle(models)
    cfg = json.loads((bundle / "config.json").read_text())
    assert cfg["features"]["audio"]["name"] == "standin-egemaps-ravdess"
    with pytest.raises(IncompatibleBundle, match="standin-egemaps-ravdess") as e:
        Predictor(bundle, device="cpu")
    assert "audio" in str(e.value) and "imer extract" in str(e.value)
    with pytest.raises(IncompatibleBundle, match="standin-egemaps-ravdess"):
        predict([models.clip], model=bundle, device="cpu")


@pytest.mark.parametrize("checkpoint", [None, "/nonexistent/MA-Net-RAF-DB.pth"])
def test_refuses_a_manet_bundle_without_its_checkpoint(models, checkpoint):
    from imer.extractors.backends.manet import ManetConfig, ManetExtractor
    from imer.pipeline.ingest import DecodeConfig
    from imer.predict import Predictor

    fs = models.fs
    n = len(fs)
    spec = ManetExtractor(ManetConfig(checkpoint=checkpoint)).spec(DecodeConfig(fps=FPS, max_frames=MAX_FRAMES))
    assert spec.decode == fs.specs["video"].decode
    feats = dict(fs.feats)
    feats["video"] = np.random.default_rng(0).normal(size=(n, spec.dim)).astype(np.float32)
    mfs = dataclasses.replace(fs, feats=feats, specs={**fs.specs, "video": spec})
    bundle = _train(mfs, models.base / f"manet-{'none' if checkpoint is None else 'missing'}")
    assert json.loads((bundle / "config.json").read_text())["features"]["video"]["name"] == "manet"
    with pytest.raises(IncompatibleBundle, match="manet") as e:
        Predictor(bundle, device="cpu")
    assert "checkpoint" in str(e.value) and "not available" in str(e.value)


def test_cached_features_of_another_config_are_never_mixed_in(models, concat_predictor, tmp_path):
    """A shared cache holding this clip's features under another faceprint config and decode does not
    leak into predictions: the predictor extracts with the bundle's config into its own namespace."""
    from imer.extractors.run import ExtractConfig, extract_features
    from imer.pipeline.ingest import DecodeConfig, discover
    from imer.predict import Predictor

    cache = tmp_path / "cache"
    other = ExtractConfig(
        backends={Modality.AUDIO: None, Modality.TEXT: None, Modality.VIDEO: "faceprint"},
        options={"faceprint": {"detect_side": 320, "crop_size": 48}},
        decode=DecodeConfig(fps=2.0, max_frames=1),
        device="cpu", cache_dir=cache,
    )
    extract_features(discover(models.clip), other)
    before = {d.name for d in cache.iterdir()}
    assert len(before) == 1
    p = Predictor(models.concat, device="cpu", cache_dir=cache)
    recorded = json.loads((models.concat / "config.json").read_text())["features"]
    for m, ex in p.extractors.items():
        assert json.loads(json.dumps(ex.spec(p.decode).to_dict())) == recorded[m.value]
    (cached,) = p.predict([models.clip])
    new = {d.name for d in cache.iterdir()} - before
    assert any(n.startswith("video-faceprint-") for n in new), new
    (fresh,) = concat_predictor.predict([models.clip])
    np.testing.assert_allclose(probs(cached, models.label_names), probs(fresh, models.label_names), atol=1e-6)
    (again,) = p.predict([models.clip])  # now from the cache: same answer
    np.testing.assert_allclose(probs(again, models.label_names), probs(fresh, models.label_names), atol=1e-6)


def test_extractor_dim_that_does_not_match_is_refused(models, tmp_path):
    from imer.predict import Predictor

    bad = tmp_path / "bundle"
    shutil.copytree(models.concat, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["features"]["video"]["dim"] += 1
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(IncompatibleBundle, match="video"):
        Predictor(bad, device="cpu")


def test_extractor_config_this_version_does_not_know_is_refused(models, tmp_path):
    from imer.predict import Predictor

    bad = tmp_path / "bundle"
    shutil.copytree(models.concat, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["features"]["video"]["config"]["future_option"] = 3
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(IncompatibleBundle, match="faceprint"):
        Predictor(bad, device="cpu")


def _tamper_dims(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["dims"]["audio"] -= 1
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def test_tampered_dims_are_an_error(models, tmp_path):
    from imer.predict import Predictor

    bad = _tamper_dims(models.concat, tmp_path / "bundle")
    with pytest.raises(Exception, match="audio"):
        Predictor(bad, device="cpu")


def test_tampered_dims_are_an_incompatible_bundle(models, tmp_path):
    from imer.predict import Predictor

    bad = _tamper_dims(models.concat, tmp_path / "bundle")
    with pytest.raises(IncompatibleBundle, match="audio"):
        Predictor(bad, device="cpu")


def test_model_trained_without_a_modality_never_uses_it(models, tmp_path):
    """--text none at extract time: the bundle records no text spec and prediction never computes text."""
    from imer.predict import Predictor

    fs = models.fs
    n = len(fs)
    feats = dict(fs.feats)
    feats["text"] = np.zeros((n, 1), np.float32)
    present = fs.present.copy()
    present[:, 1] = False
    reasons = fs.reasons.copy()
    reasons[:, 1] = "disabled"
    nt = dataclasses.replace(fs, feats=feats, present=present, reasons=reasons, specs={**fs.specs, "text": None})
    bundle = _train(nt, tmp_path / "no-text")
    assert json.loads((bundle / "config.json").read_text())["features"]["text"] is None
    p = Predictor(bundle, device="cpu")
    assert Modality.TEXT not in p.extractors
    (pred,) = p.predict([models.flac], text=STATEMENT)
    assert (pred.streams["text"].present, pred.streams["text"].reason) == (False, "disabled")
    assert pred.streams["audio"].present and pred.label in models.label_names


# ------------------------------------------------------------------------------ no usable stream
def test_clip_with_no_usable_stream_gets_no_label_and_the_others_still_do(models, concat_predictor, blank_clip):
    """A clip with a face-less video, a digitally silent track and no transcript abstains; the
    clips beside it in the same call are predicted as if alone."""
    names = models.label_names
    preds = concat_predictor.predict([models.clip, blank_clip, models.flac])
    assert [p.id for p in preds] == [models.clip.stem, "blank", models.flac.stem]
    clip, blank, flac = preds
    s = blank.streams
    assert (s["audio"].present, s["audio"].reason) == (False, MissingReason.SILENT_AUDIO)
    assert "RMS" in s["audio"].detail
    assert (s["text"].present, s["text"].reason) == (False, MissingReason.NO_TRANSCRIPT)
    assert (s["video"].present, s["video"].reason) == (False, MissingReason.NO_FACE)
    assert NO_USABLE_STREAM == "no usable stream"
    assert blank.label is None and blank.value is None and blank.probabilities == {}
    assert blank.abstained == "no usable stream"
    assert Path(blank.source) == blank_clip.absolute()
    d = blank.to_dict()
    assert d["label"] is None and d["value"] is None and d["probabilities"] == {} and d["abstained"] == "no usable stream"
    assert d["streams"]["video"] == {"present": False, "reason": "no_face", "detail": s["video"].detail}
    json.dumps(d, allow_nan=False)
    for p in (clip, flac):
        assert p.abstained is None and p.label in names and p.value is None
        assert list(p.probabilities) == names
        assert sum(p.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
        assert p.label == max(p.probabilities, key=p.probabilities.get)
        (alone,) = concat_predictor.predict([p.source])
        assert alone.label == p.label and alone.streams == p.streams
        np.testing.assert_allclose(probs(alone, names), probs(p, names), atol=1e-5)
    # one usable stream is enough to answer: the same blank clip with a transcript gets a label
    (worded,) = concat_predictor.predict([blank_clip], text=STATEMENT)
    assert worded.abstained is None and worded.label in names and worded.streams["text"].present
    assert not worded.streams["audio"].present and not worded.streams["video"].present


def test_regression_bundle_abstains_too(models, blank_clip):
    from imer.types import TaskKind

    p = predictor_for(regression_bundle(models))
    assert p.model.task.kind == TaskKind.REGRESSION
    blank, flac = p.predict([blank_clip, models.flac])
    assert blank.label is None and blank.value is None and blank.probabilities == {}
    assert blank.abstained == NO_USABLE_STREAM
    assert not any(s.present for s in blank.streams.values())
    assert flac.abstained is None and flac.label is None and flac.probabilities == {}
    assert isinstance(flac.value, float) and np.isfinite(flac.value)
    assert flac.streams["audio"].present
    d = blank.to_dict()
    assert (d["label"], d["value"], d["probabilities"], d["abstained"]) == (None, None, {}, "no usable stream")


# ------------------------------------------------------------------------------ old bundles
def _as_version_1(src: Path, dst: Path) -> dict:
    """Rewrite a version-2 bundle's config.json into the imer 0.1 layout (weights untouched)."""
    shutil.copytree(src, dst)
    cfg = json.loads((src / "config.json").read_text())
    old = {k: v for k, v in cfg.items() if k != "features"}
    old["version"] = 1
    old["imer_version"] = "0.1.0"
    old["extractors"] = {
        m: {"name": f["name"], "config": f["config"], "dim": f["dim"], "decode": f["decode"]}
        for m, f in cfg["features"].items()
    }
    old["label_names"] = list(cfg["task"]["label_names"])
    (dst / "config.json").write_text(json.dumps(old, indent=2))
    return old


def test_version_1_bundle_loads_and_predicts_like_its_version_2_rewrite(models, tmp_path):
    import torch

    from imer.fusion.bundle import load_bundle, read_bundle_spec
    from imer.pipeline.ingest import DecodeConfig
    from imer.predict import Predictor

    v2 = _train(models.fs, tmp_path / "v2")
    cfg2 = json.loads((v2 / "config.json").read_text())
    assert cfg2["version"] == 2 and "features" in cfg2 and "extractors" not in cfg2
    old = _as_version_1(v2, tmp_path / "v1")
    v1 = tmp_path / "v1"
    assert "features" not in old and all("kind" not in e for e in old["extractors"].values())
    assert [old["extractors"][m]["name"] for m in STREAMS] == ["egemaps", "minilm", "faceprint"]

    s1, s2 = read_bundle_spec(v1), read_bundle_spec(v2)
    for f in ("method", "method_config", "task", "dims", "features", "stage", "train_config", "train_result"):
        assert getattr(s1, f) == getattr(s2, f), f
    assert s1.imer_version == "0.1.0"
    assert s1.label_names == s2.label_names == models.label_names
    b1, b2 = load_bundle(v1, "cpu"), load_bundle(v2, "cpu")
    for k, v in b2.method.state_dict().items():
        assert torch.equal(b1.method.state_dict()[k], v), k
    assert b1.method.stage == b2.method.stage

    p1, p2 = Predictor(v1, device="cpu"), Predictor(v2, device="cpu")
    assert p1.decode == p2.decode == DecodeConfig(fps=FPS, max_frames=MAX_FRAMES)
    assert p1.label_names == p2.label_names
    assert {m: ex.spec(p1.decode) for m, ex in p1.extractors.items()} == {m: ex.spec(p2.decode) for m, ex in p2.extractors.items()}
    inputs = [models.clip, models.silent, models.flac]
    a = p1.predict(inputs, text=STATEMENT)
    b = p2.predict(inputs, text=STATEMENT)
    assert [x.id for x in a] == [x.id for x in b]
    for x, y in zip(a, b):
        assert x.label == y.label and x.abstained is None and y.abstained is None
        assert x.streams == y.streams
        np.testing.assert_allclose(probs(x, models.label_names), probs(y, models.label_names), atol=1e-6)
    # the version-1 spec accepts the very store its features came from (same specs as version 2)
    s1.check_compatible(models.fs.dims, models.fs.specs)


# ------------------------------------------------------------------------------ no temporary store
def test_predictor_writes_no_temporary_store(models, concat_predictor, monkeypatch, blank_clip):
    import tempfile

    import imer.store
    import imer.store.format

    names = models.label_names
    before = concat_predictor.predict([models.clip, blank_clip], text=STATEMENT)

    def refuse(*args, **kwargs):
        raise AssertionError("predict must not write a feature store")

    monkeypatch.setattr(imer.store.format, "save_store", refuse)
    monkeypatch.setattr(imer.store, "save_store", refuse)
    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    monkeypatch.setattr(tempfile, "TemporaryDirectory", refuse)
    after = concat_predictor.predict([models.clip, blank_clip], text=STATEMENT)
    assert [p.id for p in after] == [p.id for p in before]
    for x, y in zip(before, after):
        assert x.label == y.label and x.abstained == y.abstained and x.streams == y.streams
        assert x.abstained is None  # with the transcript even the blank clip has a usable stream
        np.testing.assert_allclose(probs(x, names), probs(y, names), atol=1e-6)
    (alone,) = concat_predictor.predict(text=STATEMENT)
    assert alone.label in names
