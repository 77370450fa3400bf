"""Bad input that says what happened, and one bad row that does not sink a run (issue items 4 and 6).

"A row with start after end, or a negative start, stops `extract` before anything runs. Keep the
clear message, and offer what users of big manifests need: by default record such a row as
missing ... and carry on, listing it in the summary; `--strict` restores the stop."

"A symlink whose target is missing is reported as unreadable without saying the file does not
exist; an SRT with malformed timestamps is parsed silently with no word about the cues it
dropped; a negative start time is reported as 'not a time in seconds'."
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

pytest.importorskip("av")

from media_factory import write_media  # noqa: E402  (tests/pipeline/media_factory.py)

from imer.errors import BadInput  # noqa: E402
from imer.pipeline.ingest import discover, load_inputs, read_manifest  # noqa: E402
from imer.pipeline.manifest import Utterance  # noqa: E402
from imer.types import MissingReason, Modality  # noqa: E402
from imer.workflows import find_utterances, invalid_rows_warning  # noqa: E402

A, T, V = Modality.AUDIO, Modality.TEXT, Modality.VIDEO
ALL = {A, T, V}
INVALID = MissingReason.INVALID_SEGMENT

# Six rows on one 2 s clip: lines 3, 4, 6 and 7 have a bad segment; lines 2 and 5 are fine.
ROWS = (
    "id,path,start,end,transcript,label\n"
    "ok1,clip.mp4,0,1,first words,happy\n"
    "late_end,clip.mp4,5,2,backwards,sad\n"  # line 3: start after end
    "neg,clip.mp4,-1.0,1,negative start,sad\n"  # line 4
    "ok2,clip.mp4,1,2,second words,happy\n"
    "garbled,clip.mp4,abc,,not a time,sad\n"  # line 6
    "empty,clip.mp4,1,1,zero length,sad\n"  # line 7
)
BAD = ("late_end", "neg", "garbled", "empty")


def _problems(m: Path) -> dict[str, str]:
    return {
        "late_end": f"{m}: line 3: end (2) must be after start (5)",
        "neg": f"{m}: line 4: start -1.0 is negative",
        "garbled": f"{m}: line 6: start 'abc' is not a time in seconds (or HH:MM:SS.mmm)",
        "empty": f"{m}: line 7: end (1) must be after start (1)",
    }


@pytest.fixture()
def bad_manifest(tmp_path) -> Path:
    write_media(tmp_path / "clip.mp4", seconds=2.0)
    (tmp_path / "m.csv").write_text(ROWS)
    return tmp_path / "m.csv"


# ---------------------------------------------------------------------- manifests: default and strict


def test_bad_segment_rows_become_invalid_utterances_and_the_others_are_untouched(bad_manifest):
    utts = read_manifest(bad_manifest)
    assert [u.id for u in utts] == ["ok1", "late_end", "neg", "ok2", "garbled", "empty"]  # nothing dropped
    by_id = {u.id: u for u in utts}
    assert {u.id: u.invalid for u in utts if u.invalid} == _problems(bad_manifest)
    assert by_id["ok1"].invalid is None and (by_id["ok1"].start, by_id["ok1"].end) == (0.0, 1.0)
    # What the row says is kept where it is a time; what is not a time is None.
    assert (by_id["late_end"].start, by_id["late_end"].end) == (5.0, 2.0)
    assert (by_id["neg"].start, by_id["neg"].end) == (None, 1.0)
    assert (by_id["garbled"].start, by_id["garbled"].end) == (None, None)
    # The manifest's transcript and label do not depend on the times: they stay.
    assert (by_id["late_end"].transcript, by_id["late_end"].label) == ("backwards", "sad")


def test_invalid_rows_are_missing_invalid_segment_with_the_row_named(bad_manifest):
    problems = _problems(bad_manifest)
    for u in read_manifest(bad_manifest):
        x = load_inputs(u, ALL)
        if u.id in BAD:
            for m in (A, V):
                assert (x.status[m].present, x.status[m].reason, x.status[m].detail) == (False, INVALID, problems[u.id])
            assert x.audio is None and x.frames is None
            assert x.status[T].present and x.text == u.transcript  # the transcript is fine
        else:
            assert all(x.status[m].present for m in ALL), (u.id, x.status)


def test_strict_stops_at_the_first_bad_row_with_the_clear_message(bad_manifest):
    with pytest.raises(BadInput) as e:
        read_manifest(bad_manifest, strict=True)
    assert str(e.value) == _problems(bad_manifest)["late_end"]
    with pytest.raises(BadInput, match="line 3: end"):
        find_utterances(None, bad_manifest, strict=True)
    assert len(find_utterances(None, bad_manifest)) == 6


@pytest.mark.parametrize(
    "value, message",
    [
        (-1.0, "start -1.0 is negative"),
        (-0.5, "start -0.5 is negative"),
        ("-00:01.5", "start -00:01.5 is negative"),  # was read as +1.5 s: the sign belongs to the whole time
        ("00:-01", "start '00:-01' is not a time in seconds (or HH:MM:SS.mmm)"),
        ("1:2:3:4", "start '1:2:3:4' is not a time in seconds (or HH:MM:SS.mmm)"),
        ("inf", "start 'inf' is not a time in seconds (or HH:MM:SS.mmm)"),
        (True, "start True is not a time in seconds (or HH:MM:SS.mmm)"),
    ],
)
def test_negative_start_says_negative_not_not_a_time(tmp_path, value, message):
    (tmp_path / "m.json").write_text(json.dumps([{"id": "u", "path": "a.mp4", "start": value, "end": 3}]))
    with pytest.raises(BadInput) as e:
        read_manifest(tmp_path / "m.json", strict=True)
    assert str(e.value) == f"{tmp_path / 'm.json'}: item 1: {message}"
    (u,) = read_manifest(tmp_path / "m.json")
    assert u.invalid == str(e.value)


def test_end_problems_are_named_too(tmp_path):
    (tmp_path / "m.csv").write_text("id,path,start,end\nu1,a.mp4,00:01,-2\nu2,a.mp4,1,xyz\n")
    assert [u.invalid for u in read_manifest(tmp_path / "m.csv")] == [
        f"{tmp_path / 'm.csv'}: line 2: end -2 is negative",
        f"{tmp_path / 'm.csv'}: line 3: end 'xyz' is not a time in seconds (or HH:MM:SS.mmm)",
    ]


def test_structure_errors_still_stop_without_strict(tmp_path):
    (tmp_path / "m.csv").write_text("id,path,start,end\nu1,a.mp4,0,1\nu1,b.mp4,0,1\n")
    with pytest.raises(BadInput, match="line 3: duplicate id 'u1'"):
        read_manifest(tmp_path / "m.csv")
    (tmp_path / "m.csv").write_text("id,path,label\n,,happy\n")
    with pytest.raises(BadInput, match="no media path and no id"):
        read_manifest(tmp_path / "m.csv")
    (tmp_path / "m.csv").write_text("id,path,order\nu1,a.mp4,first\n")
    with pytest.raises(BadInput, match="order 'first' is not an integer"):
        read_manifest(tmp_path / "m.csv")


def test_invalid_row_takes_no_text_from_sidecar_cues(tmp_path):
    """Which cues fall in a segment that is not one is unknowable: no transcript, not a wrong one."""
    write_media(tmp_path / "clip.mp4", seconds=2.0)
    (tmp_path / "clip.srt").write_text("1\n00:00:00,000 --> 00:00:01,000\nfirst\n\n2\n00:00:01,000 --> 00:00:02,000\nsecond\n")
    (tmp_path / "m.csv").write_text("id,path,start,end\ngood,clip.mp4,1,2\nbad,clip.mp4,oops,1\n")
    good, bad = read_manifest(tmp_path / "m.csv")
    assert (good.transcript, good.invalid) == ("second", None)
    assert (bad.transcript, bad.transcript_source) == (None, None) and "start 'oops' is not a time" in bad.invalid


def test_summary_line_names_the_first_rows_and_counts_the_rest():
    rows = [f"m.csv: line {k}: end (1) must be after start (2)" for k in range(2, 10)]
    line = invalid_rows_warning(rows)
    assert line.startswith("8 manifest rows have an invalid segment; audio and video recorded as missing "
                           "(invalid_segment), --strict stops instead: m.csv: line 2: end (1) must be after start (2); ")
    assert "line 6:" in line and "line 7:" not in line and line.endswith("; and 3 more (all in --json: invalid_rows)")
    assert invalid_rows_warning(rows[:1]).startswith("1 manifest row has an invalid segment;")


# ---------------------------------------------------------------------- the cache and identical work


def test_invalid_row_is_never_cached_nor_shared_with_a_valid_row(tmp_path):
    """A row whose start is not a time has start = end = None, the whole file's segment: it must not
    lead, follow or cache under the whole-file key of a valid row of the same file."""
    pytest.importorskip("opensmile")
    from imer.extractors.run import ExtractConfig, extract_features

    write_media(tmp_path / "clip.mp4", seconds=1.0, video=False)
    (tmp_path / "m.csv").write_text("id,path,start\nbad,clip.mp4,oops\nbad2,clip.mp4,oops\nwhole,clip.mp4,\n")
    cfg = ExtractConfig(backends={A: "egemaps", T: None, V: None}, device="cpu", cache_dir=tmp_path / "cache")
    for run in range(2):  # the second run reads the cache
        ex = extract_features(read_manifest(tmp_path / "m.csv"), cfg)
        res = {u.id: r[A] for u, r in zip(ex.utterances, ex.results)}
        assert getattr(res["whole"], "shape", None) == (88,), res["whole"]  # a feature, not the bad row's status
        assert (res["bad"].reason, res["bad"].detail) == (INVALID, f"{tmp_path / 'm.csv'}: line 2: start 'oops' is not a time in seconds (or HH:MM:SS.mmm)")
        assert res["bad2"].detail.startswith(f"{tmp_path / 'm.csv'}: line 3:")  # its own row, not a copy of line 2's
        entries = [p for ns in (tmp_path / "cache").iterdir() for p in ns.iterdir() if p.name != "extractor.json"]
        assert [p.suffix for p in entries] == [".npy"]  # the valid row's feature only: no invalid_segment entry
        assert ex.summary.cache_hits.get("audio", 0) == run


# ---------------------------------------------------------------------- symlinks that lead nowhere


def test_manifest_row_on_a_dangling_symlink_says_the_target_is_missing(tmp_path):
    (tmp_path / "link.mp4").symlink_to(tmp_path / "gone.mp4")
    (tmp_path / "m.csv").write_text("id,path,transcript\nu,link.mp4,hello\n")
    (u,) = read_manifest(tmp_path / "m.csv")
    x = load_inputs(u, ALL)
    for m in (A, V):
        assert (x.status[m].reason, x.status[m].detail) == (
            MissingReason.UNREADABLE,
            f"target of symlink {tmp_path / 'link.mp4'} (-> {tmp_path / 'gone.mp4'}) does not exist",
        )
    assert x.status[T].present


def test_plain_missing_file_is_still_file_not_found(tmp_path):
    x = load_inputs(Utterance("u", tmp_path / "nothing.mp4"), {A})
    assert x.status[A].detail == f"{tmp_path / 'nothing.mp4'}: file not found"


def test_symlink_loop_is_called_a_loop(tmp_path):
    (tmp_path / "a.mp4").symlink_to("b.mp4")
    (tmp_path / "b.mp4").symlink_to("a.mp4")
    x = load_inputs(Utterance("u", tmp_path / "a.mp4"), {A})
    assert x.status[A].detail == f"symlink {tmp_path / 'a.mp4'} (-> b.mp4) is a loop"


def test_folder_scan_keeps_a_dangling_symlink_as_an_utterance_and_warns(tmp_path):
    write_media(tmp_path / "real.mp4", seconds=1.0)
    (tmp_path / "annexed.mp4").symlink_to("../.git/annex/objects/xx/missing.mp4")  # relative, as git-annex makes them
    (tmp_path / "notes.txt.lnk").symlink_to("nowhere")  # not media: ignored as before
    warnings: list[str] = []
    utts = discover(tmp_path, warnings=warnings)
    assert [u.id for u in utts] == ["annexed", "real"]
    target = "../.git/annex/objects/xx/missing.mp4"
    assert warnings == [
        f"1 media symlink leads nowhere (first: target of symlink {tmp_path / 'annexed.mp4'} (-> {target}) does not exist): "
        "recorded as unreadable"
    ]
    x = load_inputs(utts[0], {A, V})
    assert x.status[A].reason == MissingReason.UNREADABLE and "does not exist" in x.status[V].detail
    assert all(s.present for s in load_inputs(utts[1], {A, V}).status.values() if s.reason != MissingReason.DISABLED)


def test_folder_of_only_dangling_symlinks_is_an_error_that_says_so(tmp_path):
    (tmp_path / "a.mp4").symlink_to("gone_a.mp4")
    (tmp_path / "b.wav").symlink_to("gone_b.wav")
    with pytest.raises(BadInput) as e:
        discover(tmp_path)
    assert str(e.value).endswith(
        f"; 2 media symlinks lead nowhere (first: target of symlink {tmp_path / 'a.mp4'} (-> gone_a.mp4) does not exist)"
    )
    assert str(e.value).startswith(f"{tmp_path}: no media files found")


def test_dangling_symlink_given_directly_says_so(tmp_path):
    (tmp_path / "x.mp4").symlink_to("gone.mp4")
    with pytest.raises(BadInput) as e:
        discover(tmp_path / "x.mp4")
    assert str(e.value) == f"target of symlink {tmp_path / 'x.mp4'} (-> gone.mp4) does not exist"
    (tmp_path / "m.csv").symlink_to("gone.csv")
    with pytest.raises(BadInput, match=r"\(-> gone.csv\) does not exist: manifest not found"):
        read_manifest(tmp_path / "m.csv")


# ---------------------------------------------------------------------- skipped cues reach the caller

SRT_3_BAD = (
    "1\n00:00:00,000 --> 00:00:00,500\nzero\n\n"
    "2\n00:00:0x,500 --> 00:00:01,000\nbad one\n\n"
    "3\n00:00:01,000 --> 00:00:01:500\nbad two\n\n"
    "4\n00:00:01,000 --> 00:00:01,500\nfine\n\n"
    "5\n--> 00:00:02,000\nbad three\n"
)


def _srt_warning(srt: Path) -> str:
    return (
        f"3 cues with malformed timestamps skipped in {srt} (line 6: '00:00:0x,500 --> 00:00:01,000'; "
        "line 10: '00:00:01,000 --> 00:00:01:500'; line 18: '--> 00:00:02,000')"
    )


def test_skipped_cues_reach_discover_warnings_once(tmp_path):
    write_media(tmp_path / "clip.mp4", seconds=2.0)
    (tmp_path / "clip.srt").write_text(SRT_3_BAD)
    warnings: list[str] = []
    utts = discover(tmp_path, warnings=warnings)
    assert [(u.id, u.transcript) for u in utts] == [("clip#0", "zero"), ("clip#1", "fine")]
    assert warnings == [_srt_warning(tmp_path / "clip.srt")]


def test_skipped_cues_reach_manifest_warnings_once_for_many_rows(tmp_path):
    write_media(tmp_path / "clip.mp4", seconds=2.0)
    (tmp_path / "clip.srt").write_text(SRT_3_BAD)
    (tmp_path / "m.csv").write_text("id,path,start,end\na,clip.mp4,0,0.5\nb,clip.mp4,1,1.5\nc,clip.mp4,1.5,2\n")
    warnings: list[str] = []
    utts = read_manifest(tmp_path / "m.csv", warnings=warnings)
    assert [u.transcript for u in utts] == ["zero", "fine", ""]
    assert warnings == [_srt_warning(tmp_path / "clip.srt")]
    found: list[str] = []
    find_utterances(tmp_path, warnings=found)  # the folder's own manifest.csv is not there: discovery
    assert found == [_srt_warning(tmp_path / "clip.srt")]


# ---------------------------------------------------------------------- through `imer extract`


@pytest.fixture()
def cli():
    pytest.importorskip("opensmile")
    from typer.testing import CliRunner

    from imer.cli.app import app

    def invoke(*args: str):
        return CliRunner().invoke(app, ["extract", *args])

    return invoke


AUDIO_ONLY = ["--audio", "egemaps", "--text", "none", "--video", "none", "--device", "cpu"]


def test_extract_goes_on_and_lists_the_invalid_rows(cli, bad_manifest, tmp_path):
    from imer.store import load_store

    out = tmp_path / "feats"
    r = cli("--manifest", str(bad_manifest), "--out", str(out), *AUDIO_ONLY, "--json")
    assert r.exit_code == 0, r.output + repr(r.exception)
    s = json.loads(r.stdout)
    problems = _problems(bad_manifest)
    assert s["invalid_rows"] == [problems[k] for k in ("late_end", "neg", "garbled", "empty")]
    assert s["warnings"] == [invalid_rows_warning(s["invalid_rows"])]
    assert s["missing"]["audio"] == {"invalid_segment": 4} and s["present"]["audio"] == 2
    fs = load_store(out)
    i = fs.ids.index("late_end")
    assert (fs.reasons[i, 0], fs.details[i, 0]) == ("invalid_segment", problems["late_end"])
    assert fs.reasons[fs.ids.index("ok2"), 0] == "present"


def test_extract_summary_printed_for_people_names_the_rows(cli, bad_manifest, tmp_path):
    r = cli("--manifest", str(bad_manifest), "--out", str(tmp_path / "feats"), *AUDIO_ONLY)
    assert r.exit_code == 0, r.output + repr(r.exception)
    text = " ".join(r.stdout.split())  # rich wraps long lines
    assert "warning: 4 manifest rows have an invalid segment" in text
    assert "line 3: end (2) must be after start (5)" in text and "line 7: end (1) must be after start (1)" in text
    assert "invalid_segment: 4" in text  # the missing-reasons column of the table


def test_extract_strict_fails_with_the_message_and_writes_nothing(cli, bad_manifest, tmp_path):
    out = tmp_path / "feats"
    r = cli("--manifest", str(bad_manifest), "--out", str(out), *AUDIO_ONLY, "--strict", "--json")
    assert isinstance(r.exception, BadInput), r.output + repr(r.exception)
    assert str(r.exception) == _problems(bad_manifest)["late_end"]
    assert not out.exists()


def test_extract_reports_skipped_cues_and_dangling_links(cli, tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    write_media(media / "clip.mp4", seconds=2.0, video=False)
    (media / "clip.srt").write_text(SRT_3_BAD)
    (media / "fetched_later.mp4").symlink_to(os.path.join("..", "annex", "gone.mp4"))
    r = cli(str(media), "--out", str(tmp_path / "feats"), *AUDIO_ONLY, "--json")
    assert r.exit_code == 0, r.output + repr(r.exception)
    s = json.loads(r.stdout)
    link = media / "fetched_later.mp4"
    assert s["warnings"] == [
        f"1 media symlink leads nowhere (first: target of symlink {link} (-> ../annex/gone.mp4) does not exist): "
        "recorded as unreadable",
        _srt_warning(media / "clip.srt"),
    ]
    assert s["invalid_rows"] == [] and s["missing"]["audio"] == {"unreadable": 1}
