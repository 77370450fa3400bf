"""``imer predict`` on the command line: documented JSON, every switch, audio-only and text-only
inputs, transcripts, segments, folders, clips with no usable stream, the human table and clear errors.

The extracted store and trained bundles are shared with ``tests/test_predict.py`` (built once per
session by :func:`test_predict.trained_models` on the real RAVDESS clips).
"""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from imer.cli.app import app, main
from imer.errors import BadInput, IncompatibleBundle
from test_predict import STATEMENT, STREAMS, make_blank_clip, standin_bundle, trained_models  # tests/test_predict.py

runner = CliRunner()

PREDICTION_KEYS = {"id", "source", "start", "end", "label", "probabilities", "value", "streams", "abstained"}
STREAM_KEYS = {"present", "reason", "detail"}


@pytest.fixture(scope="module")
def models(tmp_path_factory, shared_data):
    return trained_models(tmp_path_factory, shared_data)


@pytest.fixture(scope="module")
def blank_clip(tmp_path_factory):
    """No usable stream: coloured blocks (no face), a digitally silent track, no transcript."""
    return make_blank_clip(tmp_path_factory.mktemp("blank-cli") / "blank.mp4")


def _predict(models, *args, model=None) -> dict:
    r = runner.invoke(app, ["predict", *map(str, args), "--model", str(model or models.concat), "--device", "cpu", "--json"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    out = json.loads(r.stdout)  # stdout carries nothing but the JSON document
    assert set(out) == {"model", "predictions", "warnings"}
    assert isinstance(out["warnings"], list)
    for p in out["predictions"]:
        _check_documented(p, models.label_names)
    return out


def _check_documented(p: dict, names: list[str]) -> None:
    """The keys and types README's "imer predict … --json" section documents."""
    assert set(p) == PREDICTION_KEYS, p
    assert isinstance(p["id"], str)
    assert p["source"] is None or isinstance(p["source"], str)
    assert p["value"] is None  # classification model
    assert set(p["streams"]) == set(STREAMS)
    for s in p["streams"].values():
        assert set(s) == STREAM_KEYS
        assert isinstance(s["present"], bool) and isinstance(s["reason"], str) and isinstance(s["detail"], str)
        assert s["present"] == (s["reason"] == "present")
    if p["abstained"] is not None:  # nothing observed: no label, and why
        assert p["abstained"] == "no usable stream"
        assert p["label"] is None and p["probabilities"] == {}
        assert not any(s["present"] for s in p["streams"].values())
        return
    assert any(s["present"] for s in p["streams"].values())
    assert p["label"] in names
    assert list(p["probabilities"]) == names
    assert sum(p["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert p["label"] == max(p["probabilities"], key=p["probabilities"].get)


def _vec(p: dict, names) -> np.ndarray:
    return np.array([p["probabilities"][n] for n in names])


@pytest.mark.parametrize("which", ["concat", "comp"])
def test_json_output_is_valid_and_documented(models, which):
    out = _predict(models, models.clip, model=getattr(models, which))
    assert out["model"] == str(getattr(models, which))
    (p,) = out["predictions"]
    assert p["id"] == models.clip.stem and p["source"].endswith(models.clip.name)
    assert p["start"] is None and p["end"] is None and p["abstained"] is None
    assert p["streams"]["audio"] == {"present": True, "reason": "present", "detail": ""}
    assert p["streams"]["video"]["present"] is True
    assert p["streams"]["text"]["reason"] == "no_transcript" and p["streams"]["text"]["present"] is False


@pytest.mark.parametrize("flag,stream", [("--no-audio", "audio"), ("--no-text", "text"), ("--no-video", "video")])
def test_each_switch_is_reflected(models, flag, stream):
    (p,) = _predict(models, models.clip, "--text", STATEMENT, flag)["predictions"]
    for m in STREAMS:
        want = (False, "disabled") if m == stream else (True, "present")
        assert (p["streams"][m]["present"], p["streams"][m]["reason"]) == want, (flag, m)


def test_silent_track_and_wav_only(models, tmp_path):
    import soundfile as sf

    samples, rate = sf.read(models.flac, dtype="int16")
    wav = tmp_path / "speech.wav"
    sf.write(wav, samples, rate, subtype="PCM_16")
    silent, w = _predict(models, models.silent, wav)["predictions"]
    assert (silent["streams"]["audio"]["present"], silent["streams"]["audio"]["reason"]) == (False, "silent_audio")
    assert silent["streams"]["video"]["present"]
    assert (w["streams"]["video"]["present"], w["streams"]["video"]["reason"]) == (False, "no_video_track")
    assert w["streams"]["audio"]["present"] and w["id"] == "speech"


def test_text_alone_and_transcript_files(models, tmp_path):
    (alone,) = _predict(models, "--text", STATEMENT)["predictions"]
    assert alone["source"] is None
    assert alone["streams"]["text"]["present"] and not alone["streams"]["audio"]["present"] and not alone["streams"]["video"]["present"]
    (given,) = _predict(models, models.flac, "--text", STATEMENT)["predictions"]
    assert given["streams"]["text"]["present"]
    txt = tmp_path / "t.txt"
    txt.write_text(STATEMENT)
    srt = tmp_path / "t.srt"
    srt.write_text("1\n00:00:00,000 --> 00:00:01,000\nKids are talking\n\n2\n00:00:01,000 --> 00:00:02,000\nby the door\n")
    for f in (txt, srt):
        (p,) = _predict(models, models.flac, "--transcript", f)["predictions"]
        assert p["streams"]["text"]["present"], f
        np.testing.assert_allclose(_vec(p, models.label_names), _vec(given, models.label_names), atol=1e-5)
    (only,) = _predict(models, "--transcript", txt)["predictions"]
    np.testing.assert_allclose(_vec(only, models.label_names), _vec(alone, models.label_names), atol=1e-5)


def test_segment_in_json(models):
    (p,) = _predict(models, models.clip, "--start", "0.5", "--end", "2.0")["predictions"]
    assert (p["start"], p["end"]) == (0.5, 2.0)
    assert p["streams"]["audio"]["present"] and p["streams"]["video"]["present"]


def test_folder_and_many_paths_one_row_each(models, tmp_path):
    folder = tmp_path / "clips"
    folder.mkdir()
    shutil.copyfile(models.clip, folder / "a.mp4")
    shutil.copyfile(models.flac, folder / "b.flac")
    preds = _predict(models, folder, models.silent)["predictions"]
    assert [p["id"] for p in preds] == ["a", "b", models.silent.stem]
    assert [p["streams"]["video"]["reason"] for p in preds] == ["present", "no_video_track", "present"]


def test_discovery_warnings_reach_the_output(models, tmp_path):
    """A sidecar with malformed cue times is said so (JSON and table); a link to nowhere says why."""
    folder = tmp_path / "clips"
    folder.mkdir()
    shutil.copyfile(models.clip, folder / "a.mp4")
    (folder / "a.srt").write_text("1\n00:00:00,000 --> 00:00:01,000\nhello\n\n2\n00:00:0x,000 --> 00:00:02,000\nbad\n")
    out = _predict(models, folder)
    assert len(out["predictions"]) == 1
    assert any("1 cue with malformed timestamps skipped" in w and "a.srt" in w for w in out["warnings"]), out["warnings"]
    r = runner.invoke(app, ["predict", str(folder), "--model", str(models.concat), "--device", "cpu"])
    assert r.exit_code == 0 and "warning:" in r.stdout and "malformed timestamps" in " ".join(r.stdout.split())
    link = tmp_path / "gone.mp4"
    link.symlink_to(tmp_path / "never-there.mp4")
    r = runner.invoke(app, ["predict", str(link), "--model", str(models.concat), "--json"])
    assert isinstance(r.exception, BadInput) and "target of symlink" in str(r.exception)


def test_human_table_prints(models):
    r = runner.invoke(app, ["predict", str(models.clip), str(models.flac), "--text", STATEMENT, "--no-video",
                            "--model", str(models.comp), "--device", "cpu"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    assert "predictions" in r.stdout
    assert any(name in r.stdout for name in models.label_names)
    assert "disabled" in r.stdout and "used" in r.stdout
    assert "no usable stream" not in r.stdout
    with pytest.raises(json.JSONDecodeError):
        json.loads(r.stdout)


def test_no_usable_stream_in_json(models, blank_clip):
    """Exit 0; the clip gets a null label and says why; the clip beside it still gets one."""
    out = _predict(models, blank_clip, models.clip)
    blank, clip = out["predictions"]
    assert blank["id"] == "blank" and blank["source"].endswith("blank.mp4")
    assert blank["label"] is None and blank["value"] is None and blank["probabilities"] == {}
    assert blank["abstained"] == "no usable stream"
    assert [(blank["streams"][m]["present"], blank["streams"][m]["reason"]) for m in STREAMS] == [
        (False, "silent_audio"), (False, "no_transcript"), (False, "no_face")
    ]
    assert clip["abstained"] is None and clip["label"] in models.label_names
    # alone, too (and the JSON is plain: null, not NaN)
    r = runner.invoke(app, ["predict", str(blank_clip), "--model", str(models.concat), "--device", "cpu", "--json"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    assert '"label": null' in r.stdout and '"abstained": "no usable stream"' in r.stdout
    (only,) = json.loads(r.stdout)["predictions"]
    assert only == blank


def test_no_usable_stream_in_the_table(models, blank_clip):
    r = runner.invoke(app, ["predict", str(blank_clip), str(models.clip), "--model", str(models.concat), "--device", "cpu"],
                      env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output + repr(r.exception)
    assert "no usable stream" in r.stdout
    rows = {line.split()[1]: line for line in r.stdout.splitlines() if line.split()[1:2] in (["blank.mp4"], [models.clip.name])}
    assert set(rows) == {"blank.mp4", models.clip.name}, r.stdout
    assert "no usable stream" in rows["blank.mp4"] and "no usable stream" not in rows[models.clip.name]
    for reason in ("silent_audio", "no_transcript", "no_face"):
        assert reason in rows["blank.mp4"]
    assert any(name in rows[models.clip.name] for name in models.label_names)


def test_text_and_transcript_together_is_an_error(models, tmp_path):
    txt = tmp_path / "t.txt"
    txt.write_text(STATEMENT)
    r = runner.invoke(app, ["predict", str(models.flac), "--text", STATEMENT, "--transcript", str(txt), "--model", str(models.concat)])
    assert r.exit_code != 0 and isinstance(r.exception, BadInput)
    assert "not both" in str(r.exception)


def test_nonexistent_path_is_an_error(models, tmp_path, monkeypatch, capsys):
    missing = tmp_path / "nope.mp4"
    r = runner.invoke(app, ["predict", str(missing), "--model", str(models.concat), "--json"])
    assert r.exit_code != 0 and isinstance(r.exception, BadInput)
    assert "nope.mp4" in str(r.exception) and "no such file" in str(r.exception)
    # the console entry point: one clear line on stderr, exit status 2, nothing on stdout
    monkeypatch.setattr(sys, "argv", ["imer", "predict", str(missing), "--model", str(models.concat), "--json"])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    flat = " ".join(err.split())
    assert flat.startswith("error:") and "no such file" in flat and "Traceback" not in err


def test_nothing_given_is_an_error(models):
    r = runner.invoke(app, ["predict", "--model", str(models.concat)])
    assert isinstance(r.exception, BadInput) and "nothing to predict" in str(r.exception)


def test_refuses_bundle_with_unknown_extractor(models, tmp_path, monkeypatch, capsys):
    bundle = standin_bundle(models)
    r = runner.invoke(app, ["predict", str(models.clip), "--model", str(bundle), "--json"])
    assert isinstance(r.exception, IncompatibleBundle) and "standin-egemaps-ravdess" in str(r.exception)
    monkeypatch.setattr(sys, "argv", ["imer", "predict", str(models.clip), "--model", str(bundle)])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 2
    assert "standin-egemaps-ravdess" in " ".join(capsys.readouterr().err.split())


def test_not_a_bundle_is_an_error(tmp_path, models):
    r = runner.invoke(app, ["predict", str(models.flac), "--model", str(tmp_path)])
    assert isinstance(r.exception, BadInput) and "not a model bundle" in str(r.exception)
