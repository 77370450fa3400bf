"""Sidecar parsing: encodings, SRT/WebVTT markup, JSON shapes, lookup order."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imer.pipeline.transcripts import (
    BadTranscript,
    Cue,
    clean_cue_text,
    decode_text,
    find_sidecar,
    load_transcript,
    parse_json,
    parse_srt,
    parse_vtt,
    read_sidecar,
)

WESTERN = "Él está aquí… “quoted” naïve – 5 €"


@pytest.mark.parametrize(
    "data",
    [
        WESTERN.encode("cp1252"),
        WESTERN.encode("utf-8"),
        WESTERN.encode("utf-8-sig"),
        WESTERN.encode("utf-16"),
        "café".encode("cp1252"),  # too short for detection: cp1252 wins the tie
    ],
)
def test_decode_text_encodings(data):
    text = decode_text(data)
    assert text in (WESTERN, "café")


def test_decode_text_other_legacy_encodings():
    assert decode_text("Привет, как дела? Всё хорошо.".encode("cp1251")) == "Привет, как дела? Всё хорошо."
    assert decode_text(b"a\r\nb\rc") == "a\nb\nc"


def test_srt_markup_and_zero_length_cues():
    srt = (
        "1\n00:00:00,500 --> 00:00:02,000\n{\\an8}<i>Hello</i> there\n\n"
        '2\n00:00:02,500 --> 00:00:04,000\n<font color="red">Second</font>\n- line two\n\n'
        "3\n00:00:05,000 --> 00:00:05,000\nzero length\n"
    )
    tr = parse_srt(srt)
    assert tr.cues == [Cue(0.5, 2.0, "Hello there"), Cue(2.5, 4.0, "Second - line two")]
    assert tr.text == "Hello there Second - line two"


def test_vtt_blocks_voices_entities():
    vtt = (
        "WEBVTT - demo\nKind: captions\n\n"
        "NOTE a note\nspanning lines\n\n"
        "STYLE\n::cue { color: red }\n\n"
        "intro\n00:00.500 --> 00:02.000 align:start position:10%\n<v Bob>Hello <i>there</i></v>\n\n"
        "00:00:02.500 --> 00:00:04.000\n<v.loud Alice>Fish &amp; chips\nplease\n\n"
        "3\n01:00:05.000 --> 01:00:06.250\n<c.yellow>Third</c> <01:00:05.500>karaoke\n"
    )
    tr = parse_vtt(vtt, source="sidecar:x.vtt")
    assert tr.cues == [
        Cue(0.5, 2.0, "Hello there", "Bob"),
        Cue(2.5, 4.0, "Fish & chips please", "Alice"),
        Cue(3605.0, 3606.25, "Third karaoke", None),
    ]
    assert tr.source == "sidecar:x.vtt"


def test_vtt_errors():
    with pytest.raises(BadTranscript, match="WEBVTT"):
        parse_vtt("00:00.000 --> 00:01.000\nhi\n")
    # A malformed cue timing no longer fails the file: the cue is skipped with a warning.
    tr = parse_vtt("WEBVTT\n\n00:00 --> 00:01.000\nhi\n", where="x.vtt")
    assert (tr.cues, tr.text) == ([], "")
    assert tr.warnings == ["1 cue with malformed timestamps skipped in x.vtt (line 3: '00:00 --> 00:01.000')"]


def test_json_shapes():
    assert parse_json('{"transcript": " hi "}').text == "hi"
    assert parse_json('{"text": "hey"}').cues == []
    whisper = {
        "text": " Hello world",
        "segments": [
            {"id": 0, "start": 0.0, "end": 1.5, "text": " Hello"},
            {"start": 1.5, "end": 3, "text": " world"},
        ],
    }
    tr = parse_json(json.dumps(whisper))
    assert tr.text == "Hello world" and [c.text for c in tr.cues] == ["Hello", "world"]
    tr = parse_json(
        '[{"start": 2, "end": 3, "text": "b", "speaker": "S2"}, {"start": 0, "end": 1, "text": "a"}]'
    )
    assert tr.cues == [Cue(0.0, 1.0, "a"), Cue(2.0, 3.0, "b", "S2")]  # ordered by time
    for bad in ["{not json", '{"foo": 1}', '[{"start": "x", "end": 1, "text": "a"}]', "[1]", "3"]:
        with pytest.raises(BadTranscript):
            parse_json(bad, where="clip.json")


def test_sidecar_lookup_order_and_errors(tmp_path):
    media = tmp_path / "clip.mp4"
    assert find_sidecar(media) is None and load_transcript(media) is None
    (tmp_path / "clip.txt").write_bytes("  naïve   text\n".encode("cp1252"))
    tr = load_transcript(media)
    assert (tr.text, tr.cues, tr.source) == ("naïve text", [], "sidecar:clip.txt")
    (tmp_path / "clip.SRT").write_text("1\n00:00:01,000 --> 00:00:02,000\ntimed\n")
    assert find_sidecar(media).name == "clip.SRT"  # timed formats first, any case
    assert load_transcript(media).cues == [Cue(1.0, 2.0, "timed")]
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(BadTranscript, match="bad.json"):
        read_sidecar(tmp_path / "bad.json")
    (tmp_path / "empty.txt").write_bytes(b"")
    assert read_sidecar(tmp_path / "empty.txt").text == ""  # empty, not missing


_plain = st.text(
    alphabet=st.characters(blacklist_characters="<>{}\\&\r", blacklist_categories=("Cs", "Cc")), max_size=40
)


@given(_plain)
def test_clean_cue_text_keeps_plain_text(text):
    assert clean_cue_text(text) == (" ".join(text.split()), None)


@settings(max_examples=50)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 10**7),
            st.integers(1, 10**5),
            st.text(alphabet="abcdefghij klmnopq.,!?ÄÖüé", min_size=1, max_size=30).filter(str.strip),
        ),
        max_size=6,
    )
)
def test_vtt_round_trip(cues):
    def stamp(ms: int) -> str:
        h, rem = divmod(ms, 3_600_000)
        m, rem = divmod(rem, 60_000)
        return f"{h:02d}:{m:02d}:{rem // 1000:02d}.{rem % 1000:03d}"

    body = "".join(f"{stamp(s)} --> {stamp(s + d)}\n{t}\n\n" for s, d, t in cues)
    tr = parse_vtt("WEBVTT\n\n" + body)
    expected = sorted(
        (Cue(s / 1000, (s + d) / 1000, " ".join(t.split())) for s, d, t in cues),
        key=lambda c: (c.start, c.end),
    )
    assert [(c.start, c.end, c.text) for c in tr.cues] == [
        (pytest.approx(c.start), pytest.approx(c.end), c.text) for c in expected
    ]


# ---------------------------------------------------------------------- cues that are skipped say so
# Issue: "an SRT with malformed timestamps is parsed silently with no word about the cues it dropped".
MALFORMED_SRT = (
    "1\n00:00:01,000 --> 00:00:02,000\none\n\n"
    "2\n00:00:0x,000 --> 00:00:03,000\ntwo\n\n"  # a letter in the start
    "3\n00:00:04,000 --> 00:00:05,000\nthree\n\n"
    "4\n00:00:06 --> 00:00:07,000\nfour\n\n"  # no milliseconds
    "5\n1:2 --> 3:4\nfive\n\n"  # not a timestamp at all
    "6\n00:00:08,000 --> 00:00:09,000\nsix\n"
)


def test_srt_malformed_timestamps_are_skipped_and_counted(tmp_path):
    (tmp_path / "clip.srt").write_text(MALFORMED_SRT)
    tr = load_transcript(tmp_path / "clip.mp4")
    # The good cues keep their own text: pysubs2 alone glued a bad cue (index, timing line and
    # text) onto the previous cue's text ("one 2 00:00:0x,000 --> 00:00:03,000 two").
    assert tr.cues == [Cue(1.0, 2.0, "one"), Cue(4.0, 5.0, "three"), Cue(8.0, 9.0, "six")]
    assert tr.text == "one three six"
    assert tr.warnings == [
        f"3 cues with malformed timestamps skipped in {tmp_path / 'clip.srt'} (line 6: '00:00:0x,000 --> 00:00:03,000'; "
        "line 14: '00:00:06 --> 00:00:07,000'; line 18: '1:2 --> 3:4')"
    ]


def test_well_formed_srt_has_no_warnings():
    tr = parse_srt("1\n00:00:01,000 --> 00:00:02,000\none\n\n2\n00:00:03,000 --> 00:00:04,000\n42\n")
    assert tr.warnings == [] and [c.text for c in tr.cues] == ["one", "42"]


def test_more_than_three_skipped_cues_are_counted_not_all_quoted():
    srt = "".join(f"{k}\n00:00:{k:02d},000 --> bad\ncue {k}\n\n" for k in range(1, 6))
    tr = parse_srt(srt + "6\n00:00:07,000 --> 00:00:08,000\nok\n", where="many.srt")
    assert [c.text for c in tr.cues] == ["ok"]
    (w,) = tr.warnings
    assert w.startswith("5 cues with malformed timestamps skipped in many.srt (line 2: '00:00:01,000 --> bad'; ")
    assert w.endswith("; and 2 more)")


def test_vtt_malformed_timing_is_skipped_not_fatal():
    vtt = "WEBVTT\n\n00:00.500 --> 00:01.000\nfirst\n\nid-2\n00:01 --> 00:02.000\nbad\n\n00:03.000 --> 00:04.000\nlast\n"
    tr = parse_vtt(vtt, where="talk.vtt")
    assert [c.text for c in tr.cues] == ["first", "last"]
    assert tr.warnings == ["1 cue with malformed timestamps skipped in talk.vtt (line 7: '00:01 --> 00:02.000')"]


@pytest.mark.parametrize(
    "parse, text",
    [
        (parse_srt, "1\n00:00:01,000 --> 00:00:02,000\nok\n\n2\n00:00:05,000 --> 00:00:04,000\nbackwards\n\n"
                    "3\n00:00:06,000 --> 00:00:06,000\nzero\n"),
        (parse_vtt, "WEBVTT\n\n00:01.000 --> 00:02.000\nok\n\n00:05.000 --> 00:04.000\nbackwards\n\n"
                    "00:06.000 --> 00:06.000\nzero\n"),
        (parse_json, '[{"start": 1, "end": 2, "text": "ok"}, {"start": 5, "end": 4, "text": "backwards"}, '
                     '{"start": 6, "end": 6, "text": "zero"}]'),
    ],
)
def test_cues_ending_before_they_start_are_skipped_with_a_warning(parse, text):
    tr = parse(text, where="subs")
    assert [c.text for c in tr.cues] == ["ok"]
    assert tr.warnings == [
        "2 cues ending at or before their start skipped in subs "
        "(00:00:05.000 --> 00:00:04.000; 00:00:06.000 --> 00:00:06.000)"
    ]


def test_an_arrow_inside_cue_text_is_text_not_a_timing_line():
    tr = parse_srt("1\n00:00:01,000 --> 00:00:02,000\nleft --> right\n\n2\n00:00:03,000 --> 00:00:04,000\nnext\n")
    assert [c.text for c in tr.cues] == ["left --> right", "next"] and tr.warnings == []
