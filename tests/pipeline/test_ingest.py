"""Folders and manifests -> utterances; decoded inputs with a reason for every missing stream."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from imer.errors import BadInput
from imer.pipeline.ingest import (
    DecodeConfig,
    UtteranceInputs,
    discover,
    file_hash,
    load_inputs,
    read_manifest,
)
from imer.pipeline.manifest import Utterance
from imer.pipeline.media import probe
from imer.types import MissingReason, Modality

A, T, V = Modality.AUDIO, Modality.TEXT, Modality.VIDEO
ALL = {A, T, V}

SRT3 = (
    "1\n00:00:00,100 --> 00:00:00,600\nFirst <i>line</i>\n\n"
    "2\n00:00:00,700 --> 00:00:01,200\nSecond\n\n"
    "3\n00:00:01,300 --> 00:00:01,900\nThird\n"
)


def _reasons(x: UtteranceInputs) -> dict[str, str]:
    return {m.value: s.reason.value for m, s in x.status.items()}


# -- discover ---------------------------------------------------------------------------------


@pytest.fixture()
def corpus(tmp_path, media_dir) -> Path:
    """A folder with every sidecar kind, a nested file, an orphan sidecar and a stem clash."""
    root = tmp_path / "corpus"
    (root / "sub" / "deeper").mkdir(parents=True)
    sine, wav = media_dir / "sine.mp4", media_dir / "tone.wav"
    for name in [
        "a.mp4",
        "b.mp4",
        "d.mp4",
        "e.mp4",
        "f.mp4",
        "x.mp4",
        "sub/g.mp4",
        "sub/deeper/h.MP4",
        ".hidden.mp4",
    ]:
        shutil.copy(sine, root / name)
    shutil.copy(wav, root / "c.wav")
    shutil.copy(wav, root / "x.wav")
    (root / "a.txt").write_bytes("Ça va très bien, naïve “quote”\r\n".encode("cp1252"))
    (root / "b.srt").write_text(SRT3, encoding="utf-8")
    (root / "c.vtt").write_text(
        "WEBVTT\n\n00:00.000 --> 00:00.900\n<v Ann>Hi there\n\n00:01.000 --> 00:01.800\n<v Bob>Hello\n"
    )
    (root / "d.json").write_text(
        json.dumps(
            {
                "text": "one two",
                "segments": [
                    {"start": 0.0, "end": 1.0, "text": " one"},
                    {"start": 1.0, "end": 2.0, "text": " two"},
                ],
            }
        )
    )
    (root / "e.json").write_text(json.dumps({"transcript": "whole text"}))
    (root / "sub" / "g.txt").write_text("   ")
    (root / "orphan.srt").write_text(SRT3)
    (root / "notes.txt").write_text("not a transcript of anything")
    return root


def test_discover_folder(corpus):
    utts = discover(corpus)
    ids = [u.id for u in utts]
    assert ids == sorted(ids)
    assert ids == [
        "a",
        "b#0",
        "b#1",
        "b#2",
        "c#0",
        "c#1",
        "d#0",
        "d#1",
        "e",
        "f",
        "sub/deeper/h",
        "sub/g",
        "x.mp4",
        "x.wav",
    ]
    by = {u.id: u for u in utts}
    assert by["a"].transcript == "Ça va très bien, naïve “quote”"
    assert by["a"].transcript_source == "sidecar:a.txt"
    assert by["a"].start is None and by["a"].end is None and by["a"].source.is_absolute()
    b1 = by["b#1"]
    assert (b1.start, b1.end, b1.transcript, b1.dialogue, b1.order) == (0.7, 1.2, "Second", "b", 1)
    assert by["b#0"].transcript == "First line"
    assert (by["c#1"].speaker, by["c#1"].transcript, by["c#1"].source.name) == ("Bob", "Hello", "c.wav")
    assert [by["d#0"].transcript, by["d#1"].transcript] == ["one", "two"]
    assert by["e"].transcript == "whole text"
    assert by["f"].transcript is None and by["f"].transcript_source is None
    assert by["sub/g"].transcript == ""  # a sidecar that is blank: empty, not missing


def test_discover_options_and_single_file(corpus):
    whole = {u.id: u for u in discover(corpus, cues_as_utterances=False)}
    assert whole["b"].transcript == "First line Second Third" and whole["b"].start is None
    assert whole["d"].transcript == "one two"
    flat = [u.id for u in discover(corpus, recursive=False)]
    assert "sub/g" not in flat and "a" in flat
    single = discover(corpus / "b.mp4")
    assert [u.id for u in single] == ["b#0", "b#1", "b#2"]
    assert discover(corpus / "b.mp4") == single  # deterministic


def test_discover_errors(tmp_path, corpus):
    with pytest.raises(BadInput, match="no such file"):
        discover(tmp_path / "nope")
    with pytest.raises(BadInput, match="not a supported media file"):
        discover(corpus / "a.txt")
    (tmp_path / "only_text").mkdir()
    (tmp_path / "only_text" / "t.srt").write_text(SRT3)
    with pytest.raises(BadInput, match="no media files"):
        discover(tmp_path / "only_text")


# -- manifests --------------------------------------------------------------------------------


def _media_folder(tmp_path, media_dir) -> Path:
    d = tmp_path / "m"
    (d / "clips").mkdir(parents=True)
    for name in ["one.mp4", "two.mp4"]:
        shutil.copy(media_dir / "sine.mp4", d / "clips" / name)
    (d / "clips" / "two.srt").write_text(SRT3)
    return d


def test_manifest_csv(tmp_path, media_dir):
    d = _media_folder(tmp_path, media_dir)
    (d / "m.csv").write_text(
        "Utterance_ID,File,Start,End,Text,Emotion,Speaker,Dialogue,Split,notes\n"
        'u1,clips/one.mp4,0.5,1.5,"Hello, world",happy,A,d1,train,first\n'
        'u2,clips/one.mp4,"00:00:01,500",,,neutral,,d1,test,\n'
        'u3,,,,"text only",sad,B,d2,,\n'
        f"u4,{(d / 'clips' / 'two.mp4').as_posix()},,,,angry,,,,\n",
        encoding="utf-8",
    )
    utts = read_manifest(d / "m.csv")
    assert [u.id for u in utts] == ["u1", "u2", "u3", "u4"]
    u1, u2, u3, u4 = utts
    assert u1.source == (d / "clips" / "one.mp4").absolute()
    assert (u1.start, u1.end, u1.transcript, u1.transcript_source) == (0.5, 1.5, "Hello, world", "manifest")
    assert (u1.label, u1.speaker, u1.dialogue, u1.split, u1.order) == ("happy", "A", "d1", "train", 0)
    assert u1.extra == {"notes": "first"}
    assert u2.start == 1.5 and u2.end is None
    assert u2.transcript == ""  # the column exists, the cell is empty
    assert u2.speaker is None and u2.extra == {"notes": None} and u2.order == 1  # 2nd row of d1
    assert u3.source is None and u3.transcript == "text only"
    assert u4.source == d / "clips" / "two.mp4" and u4.label == "angry"


def test_manifest_without_id_or_transcript_columns(tmp_path, media_dir):
    d = _media_folder(tmp_path, media_dir)
    (d / "m.csv").write_text(
        "path;start;end;label\n"
        "clips/two.mp4;0.65;1.25;a\n"
        "clips/two.mp4;0.0;0.65;b\n"
        "clips/one.mp4;;;c\n"
        "clips/two.mp4;;;d\n"
    )
    utts = read_manifest(d / "m.csv")
    # Rows sharing a file are numbered by start time; the sidecar gives the text of the cues
    # whose midpoint is in the row's segment, or all of it for the whole file.
    assert [(u.id, u.transcript) for u in utts] == [
        ("clips/two#2", "Second"),
        ("clips/two#0", "First line"),
        ("clips/one", None),
        ("clips/two#1", "First line Second Third"),
    ]
    assert utts[0].transcript_source == "sidecar:two.srt"


def test_manifest_json_forms(tmp_path, media_dir):
    d = _media_folder(tmp_path, media_dir)
    items = [
        {"id": "j1", "media": "clips/one.mp4", "start": 0, "end": 1.0, "label": 2, "order": 3},
        {"id": "j2", "path": "clips/two.mp4", "transcript": None},
        {"id": "j3", "path": "clips/two.mp4", "text": ""},
    ]
    (d / "list.json").write_text(json.dumps(items))
    (d / "obj.json").write_text(json.dumps({"utterances": items}))
    (d / "lines.jsonl").write_text("\n".join(json.dumps(i) for i in items) + "\n")
    for name in ["list.json", "obj.json", "lines.jsonl"]:
        j1, j2, j3 = read_manifest(d / name)
        assert (j1.start, j1.end, j1.label, j1.order) == (0.0, 1.0, 2, 3)
        assert j1.transcript is None  # no transcript key and no sidecar for one.mp4
        assert j2.transcript is None  # explicit null: no transcript
        assert j3.transcript == ""


def test_manifest_ravdess_columns(shared_data):
    utts = read_manifest(shared_data / "av-clips" / "ravdess-actor01" / "manifest.csv")
    assert len(utts) == 18
    u = utts[0]
    assert u.id == "Actor_01/01-01-01-01-01-01-01"
    assert u.source.is_file()
    assert (u.label, u.transcript, u.speaker) == ("neutral", "Kids are talking by the door", "01")
    assert u.extra["sex"] == "male"


@pytest.mark.parametrize(
    "content, match",
    [
        ("id,start\nu1,0\n", "no media path column"),
        ("id,path,start,end\nu1,a.mp4,2,1\n", r"line 2: end \(1\) must be after start \(2\)"),
        ("id,path,start\nu1,a.mp4,0\nu2,a.mp4,abc\n", r"line 3: start 'abc' is not a time"),
        ("id,path\nu1,a.mp4\nu2,b.mp4\nu1,c.mp4\n", r"line 4: duplicate id 'u1' \(first at line 2\)"),
        ("id,path\nu1,a.mp4,extra\n", "line 2: 3 cells but 2 columns"),
        ("id,path,start\nu1,a.mp4,-1\n", "line 2: start -1 is negative"),
        ("id,path,label\n,,happy\n", "no media path and no id"),
        ("", "empty manifest"),
    ],
)
def test_manifest_csv_errors(tmp_path, content, match):
    (tmp_path / "m.csv").write_text(content)
    with pytest.raises(BadInput, match=match):
        read_manifest(tmp_path / "m.csv", strict=True)  # without strict, a bad segment is a row (test_bad_rows.py)


def test_manifest_json_errors(tmp_path):
    (tmp_path / "m.json").write_text(json.dumps([{"path": "a.mp4"}, {"path": "b.mp4", "end": 0}]))
    with pytest.raises(BadInput, match="item 2: end"):
        read_manifest(tmp_path / "m.json", strict=True)
    (tmp_path / "m.json").write_text(json.dumps({"rows": []}))
    with pytest.raises(BadInput, match="utterances"):
        read_manifest(tmp_path / "m.json")
    with pytest.raises(BadInput, match="manifest not found"):
        read_manifest(tmp_path / "missing.csv")


def test_manifest_cp1252_bytes(tmp_path):
    (tmp_path / "m.csv").write_bytes("id,path,text\nu1,a.mp4,Très “bien”\n".encode("cp1252"))
    assert read_manifest(tmp_path / "m.csv")[0].transcript == "Très “bien”"


# -- load_inputs ------------------------------------------------------------------------------


def test_all_present(media_dir):
    x = load_inputs(Utterance("u", media_dir / "sine.mp4", transcript="hello"), ALL)
    assert _reasons(x) == {"audio": "present", "text": "present", "video": "present"}
    assert list(x.status) == [A, T, V]  # the one fixed modality order
    assert x.audio.dtype == np.float32 and 32000 <= len(x.audio) <= 33000
    assert x.text == "hello"
    assert len(x.frames) == len(x.frame_times) == 4 and x.frames[0].shape == (120, 160, 3)


def test_segment_decoding(media_dir):
    cfg = DecodeConfig(fps=4.0, max_side=80)
    x = load_inputs(Utterance("u", media_dir / "sine.mp4", start=0.5, end=1.0, transcript="x"), ALL, cfg)
    assert len(x.audio) == 8000
    assert len(x.frames) == 2 and x.frames[0].shape == (60, 80, 3)
    assert all(0.5 <= t < 1.0 for t in x.frame_times)


@pytest.mark.parametrize(
    "name, start, end, audio, video",
    [
        ("silent.mp4", None, None, "silent_audio", "present"),
        ("noaudio.mp4", None, None, "no_audio_track", "present"),
        ("tone.wav", None, None, "present", "no_video_track"),
        ("tone.flac", 0.2, 0.9, "present", "no_video_track"),
        ("missing.mp4", None, None, "unreadable", "unreadable"),
        ("empty.mp4", None, None, "unreadable", "unreadable"),
        ("truncated.mp4", None, None, "unreadable", "unreadable"),
        ("garbage.mp4", None, None, "unreadable", "unreadable"),
        ("sine.mp4", 2.5, 3.0, "out_of_range", "out_of_range"),  # starts after the end
        ("sine.mp4", 1.0, 3.0, "out_of_range", "out_of_range"),  # ends > 0.5 s after the end
        ("sine.mp4", 1.5, 2.4, "present", "present"),  # within the tolerance: clamped
        ("noaudio.mp4", 5.0, 6.0, "no_audio_track", "out_of_range"),  # no track beats range
        ("sine.mp4", 1.0, 1.0, "out_of_range", "out_of_range"),  # empty segment
    ],
)
def test_missing_reasons(media_dir, name, start, end, audio, video):
    x = load_inputs(Utterance("u", media_dir / name, start=start, end=end, transcript="t"), ALL)
    assert _reasons(x) == {"audio": audio, "text": "present", "video": video}
    # A slot holds data exactly when its stream is present.
    assert (x.audio is not None) == x.status[A].present
    assert (x.frames is not None) == x.status[V].present
    for m in (A, V):
        if x.status[m].reason in (
            MissingReason.UNREADABLE,
            MissingReason.OUT_OF_RANGE,
            MissingReason.SILENT_AUDIO,
        ):
            assert x.status[m].detail  # the reason comes with an explanation


def test_unreadable_detail_names_the_problem(media_dir):
    x = load_inputs(Utterance("u", media_dir / "empty.mp4"), {A, V})
    assert "empty file" in x.status[A].detail and "empty.mp4" in x.status[V].detail


def test_clamped_segment_length(media_dir):
    x = load_inputs(Utterance("u", media_dir / "tone.wav", start=1.5, end=2.4), {A})
    assert len(x.audio) == 8000  # clamped to the 2.0 s file


def test_damaged_payload_never_raises(media_dir):
    x = load_inputs(Utterance("u", media_dir / "damaged.mp4"), ALL)
    assert set(x.status) == ALL  # whatever the decoder made of it, no exception escaped


def test_text_reasons_and_disabled(media_dir):
    none = load_inputs(Utterance("u", media_dir / "sine.mp4"), {T})
    assert _reasons(none) == {"audio": "disabled", "text": "no_transcript", "video": "disabled"}
    assert none.audio is None and none.frames is None and none.text is None
    blank = load_inputs(Utterance("u", None, transcript="  \n"), {T})
    assert blank.status[T].reason == MissingReason.EMPTY_TRANSCRIPT and blank.text is None
    off = load_inputs(Utterance("u", media_dir / "garbage.mp4", transcript="hi"), {T, V})
    assert _reasons(off) == {"audio": "disabled", "text": "present", "video": "unreadable"}


def test_text_only_utterance():
    x = load_inputs(Utterance("u", None, transcript="only words"), ALL)
    assert _reasons(x) == {"audio": "no_audio_track", "text": "present", "video": "no_video_track"}
    assert x.status[A].detail == x.status[V].detail == "no media file"


def test_passed_info_is_used(media_dir):
    info = probe(media_dir / "sine.mp4")
    x = load_inputs(Utterance("u", media_dir / "sine.mp4", start=0.0, end=1.0), {A}, DecodeConfig(), info)
    assert len(x.audio) == 16000


def test_silence_threshold_is_configurable(media_dir):
    x = load_inputs(Utterance("u", media_dir / "sine.mp4"), {A}, DecodeConfig(silence_rms=0.5))
    assert x.status[A].reason == MissingReason.SILENT_AUDIO  # RMS 0.35 < 0.5


# -- file_hash --------------------------------------------------------------------------------


def test_file_hash(tmp_path, media_dir):
    p = tmp_path / "f.mp4"
    shutil.copy(media_dir / "sine.mp4", p)
    expected = hashlib.blake2b(p.read_bytes(), digest_size=16).hexdigest()
    assert file_hash(p) == expected == file_hash(str(p))
    assert len(expected) == 32
    p.write_bytes(b"changed")
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert file_hash(p) == hashlib.blake2b(b"changed", digest_size=16).hexdigest()


# -- real clips -------------------------------------------------------------------------------


def test_ravdess_clips(shared_data):
    folder = shared_data / "av-clips" / "ravdess-actor01"
    utts = {u.id: u for u in read_manifest(folder / "manifest.csv")}
    found = discover(folder)
    assert sorted(utts) == [u.id for u in found]  # the folder and its manifest agree on ids
    cfg = DecodeConfig()
    with_audio = load_inputs(utts["Actor_01/01-01-01-01-01-01-01"], ALL, cfg)
    assert _reasons(with_audio) == {"audio": "present", "text": "present", "video": "present"}
    assert abs(len(with_audio.audio) / 16000 - 3.3) < 0.1
    assert len(with_audio.frames) == 7 and with_audio.frames[0].shape == (360, 640, 3)
    silent = load_inputs(utts["Actor_01/02-01-01-01-01-01-01"], {A}, cfg)
    assert silent.status[A].reason == MissingReason.SILENT_AUDIO
    for u in utts.values():  # every clip has a video track, the 02-* ones a (silent) audio track
        info = probe(u.source)
        assert info.has_video and info.has_audio and (info.width, info.height) == (1280, 720)


def test_ravdess_silent_tracks_audio_only(shared_data):
    """Decode the audio of every clip (cheap, ~20 ms each): 02-* silent, 01-* present."""
    folder = shared_data / "av-clips" / "ravdess-actor01"
    for u in read_manifest(folder / "manifest.csv"):
        x = load_inputs(u, {A})
        expected = MissingReason.SILENT_AUDIO if Path(u.id).name.startswith("02-") else MissingReason.PRESENT
        assert x.status[A].reason == expected, u.id


def test_ravdess_speech_flac(shared_data):
    sf = pytest.importorskip("soundfile")
    path = min((shared_data / "ravdess-speech").glob("Actor_*/*.flac"))
    info = probe(path)
    assert (info.audio_rate, info.audio_channels, info.has_video) == (16000, 1, False)
    ref, _ = sf.read(path, dtype="float32")
    x = load_inputs(Utterance("s", path), {A, V})
    assert _reasons(x)["video"] == "no_video_track" and x.status[A].present
    np.testing.assert_allclose(x.audio, ref, atol=1e-4)
