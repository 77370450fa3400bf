"""Transcript sidecars: ``clip.srt`` / ``clip.vtt`` / ``clip.json`` / ``clip.txt`` next to ``clip.mp4``.

Sidecars are looked up in the order of :data:`SIDECAR_EXTS`, and the first one found is used.
Timed formats come first, because their cues can become utterances. Each file is decoded with
:func:`decode_text`: UTF-8 (with or without BOM), a UTF-16/32 BOM, else the encoding that
charset-normalizer detects. Subtitle markup (``<i>``, ``{\\an8}``, ``<v Bob>``, ``<c.red>``,
inline timestamps, HTML entities) is stripped from cue text. A WebVTT voice tag becomes the cue's
``speaker``.

Each ``parse_*`` function takes the decoded text, ``source`` (stored as ``Transcript.source``)
and ``where`` (the name its errors use, usually the file path).

SRT goes through pysubs2. WebVTT is parsed here: pysubs2 drops ``<v>`` voices and keeps
entities and inline timestamps, and the format is small and fully specified.

A cue that cannot be placed in time is skipped, never guessed, and never fails the file: a timing
line with a malformed timestamp (SRT, WebVTT), or a cue that ends before it starts (any timed
format). Each kind of skip becomes one line in ``Transcript.warnings`` that names the file, the
count and the first lines, e.g. "3 cues with malformed timestamps skipped in clip.srt (line 6:
'00:00:0x,000 --> 00:00:03,000'; ...)". ``imer extract`` shows them in its summary.
"""

from __future__ import annotations

import codecs
import html
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from imer.errors import BadInput

SIDECAR_EXTS: tuple[str, ...] = (".srt", ".vtt", ".json", ".txt")


class BadTranscript(BadInput):
    """A sidecar file exists but cannot be parsed (the message names the file and the problem)."""


@dataclass(frozen=True)
class Cue:
    """One timed piece of transcript; times in seconds from the start of the media."""

    start: float
    end: float
    text: str
    speaker: str | None = None


@dataclass
class Transcript:
    """``text`` is the whole transcript (cues joined by spaces for timed formats); None = none."""

    text: str | None
    cues: list[Cue] = field(default_factory=list)
    source: str = ""  # "sidecar:clip.srt"
    warnings: list[str] = field(default_factory=list)  # cues skipped, one line each (see the module docstring)


# -- text decoding ------------------------------------------------------------------------------

_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def decode_text(data: bytes) -> str:
    """Bytes of a text file -> str, whatever its encoding.

    UTF-8 first: a non-ASCII byte sequence that is valid UTF-8 almost never comes from another
    encoding. Then charset-normalizer. On short Western text it often ties cp1250, cp1252 and
    cp1257 at zero "chaos" and picks cp1250 (turning 'ï' into 'ď'), so cp1252 wins any tie it is
    part of, or whose text it reproduces. Nothing detected -> cp1252 with replacement characters.
    Universal newlines are applied.
    """
    text: str | None = None
    for bom, enc in _BOMS:
        if data.startswith(bom):
            text = data.decode(enc, errors="replace")
            break
    if text is None:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = _detect(data)
    text = text.lstrip("\ufeff")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _detect(data: bytes) -> str:
    from charset_normalizer import from_bytes

    try:
        as_1252: str | None = data.decode("cp1252")
    except UnicodeDecodeError:  # 0x81, 0x8D, 0x8F, 0x90, 0x9D are undefined in cp1252
        as_1252 = None
    matches = list(from_bytes(data))
    if not matches:
        return as_1252 if as_1252 is not None else data.decode("cp1252", errors="replace")
    best = min(m.chaos for m in matches)
    tier = [m for m in matches if m.chaos <= best + 1e-9]
    if as_1252 is not None and any(m.encoding == "cp1252" or str(m) == as_1252 for m in tier):
        return as_1252
    return str(tier[0])


def read_text_file(path: Path) -> str:
    try:
        return decode_text(path.read_bytes())
    except OSError as e:
        raise BadTranscript(f"{path}: cannot read ({e.strerror or e})") from e


# -- markup -------------------------------------------------------------------------------------

_ASS_OVERRIDE = re.compile(r"\{\\[^}]*\}")
_VOICE = re.compile(r"<v(?:\.[^\s>]*)?\s+([^>]*)>", re.IGNORECASE)
_TAG = re.compile(r"</?[A-Za-z][^>]*>|<\d{1,2}:\d{2}(?::\d{2})?[.,]\d{1,3}>")
_SPACES = re.compile(r"\s+")  # every Unicode space (U+00A0, U+1680, U+3000, ...)


def clean_cue_text(raw: str) -> tuple[str, str | None]:
    """Strip subtitle markup; return (plain text, speaker from the first ``<v Name>`` or None).

    Line breaks inside a cue become spaces: a cue is one stretch of speech.
    """
    m = _VOICE.search(raw)
    speaker = (m.group(1).strip() or None) if m else None
    text = _ASS_OVERRIDE.sub("", raw)
    text = text.replace("\\N", " ").replace("\\n", " ").replace("\\h", " ")
    text = _TAG.sub("", text)
    text = html.unescape(text)
    text = " ".join(_SPACES.sub(" ", line).strip() for line in text.splitlines())
    return _SPACES.sub(" ", text).strip(), speaker


_SHOWN = 3  # skipped cues quoted in a warning


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _skipped_warning(what: str, where: str, examples: list[str]) -> str:
    """"3 cues with malformed timestamps skipped in clip.srt (line 6: '...'; ...; and 1 more)"."""
    shown = "; ".join(examples[:_SHOWN]) + (f"; and {len(examples) - _SHOWN} more" if len(examples) > _SHOWN else "")
    return f"{_plural(len(examples), 'cue')} {what} skipped in {where} ({shown})"


def _clock(t: float) -> str:
    ms = round(t * 1000)
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}.{ms % 1000:03d}"


def _finish(
    cues: list[Cue], source: str, text: str | None = None, where: str | None = None, warnings: list[str] | None = None
) -> Transcript:
    """Drop cues with no duration (with a warning), order by time, and join their text unless given."""
    kept = sorted((c for c in cues if c.end > c.start), key=lambda c: (c.start, c.end))
    warnings = list(warnings or [])
    backwards = [f"{_clock(c.start)} --> {_clock(c.end)}" for c in cues if not c.end > c.start]
    if backwards:
        their = "its" if len(backwards) == 1 else "their"
        warnings.append(_skipped_warning(f"ending at or before {their} start", where or source, backwards))
    if text is None:
        text = " ".join(c.text for c in kept if c.text)
    return Transcript(text=text, cues=kept, source=source, warnings=warnings)


def _quote_line(number: int, line: str) -> str:
    """"line 6: '00:00:0x,000 --> 00:00:03,000'" (a long line cut at 60 characters)."""
    line = line.strip()
    return f"line {number}: {line if len(line) <= 60 else line[:60] + '...'!r}"


def _drop_malformed_srt(text: str) -> tuple[str, list[str]]:
    """SRT text without the cues whose timing line does not hold two timestamps, and those lines.

    pysubs2 treats such a line as text, so the cue (index, timing line and text) would be glued
    onto the previous cue's text. A timing line is a line with ``-->`` at the start of a block
    (after a blank line or a cue index), so an arrow in a cue's text is left alone. A cue runs
    from its timing line to the next blank line; the index line just before it goes with it.
    """
    from pysubs2.formats.subrip import SubripFormat

    lines = text.split("\n")

    def block_start(k: int) -> bool:
        return k == 0 or not lines[k - 1].strip()

    drop: set[int] = set()
    bad: list[str] = []
    for i, line in enumerate(lines):
        if "-->" not in line or len(SubripFormat.TIMESTAMP.findall(line)) == 2:
            continue
        indexed = i > 0 and lines[i - 1].strip().isdigit() and block_start(i - 1)
        if not (indexed or block_start(i)):
            continue
        bad.append(_quote_line(i + 1, line))
        if indexed:
            drop.add(i - 1)
        j = i
        while j < len(lines) and lines[j].strip():
            drop.add(j)
            j += 1
    if not bad:
        return text, []
    return "\n".join(ln for k, ln in enumerate(lines) if k not in drop), bad


# -- formats ------------------------------------------------------------------------------------


def parse_srt(text: str, source: str = "srt", where: str | None = None) -> Transcript:
    """SubRip through pysubs2; it handles comma/period decimals, missing indices and ``<i>``."""
    import pysubs2

    text, malformed = _drop_malformed_srt(text)
    try:
        subs = pysubs2.SSAFile.from_string(text, format_="srt")
    except Exception as e:  # pysubs2 raises several unrelated types on malformed input
        raise BadTranscript(f"{where or source}: not a valid SRT file ({type(e).__name__}: {e})") from e
    cues = []
    for ev in subs:
        if ev.is_comment:
            continue
        plain, speaker = clean_cue_text(ev.text)
        cues.append(Cue(ev.start / 1000.0, ev.end / 1000.0, plain, speaker))
    warnings = [_skipped_warning("with malformed timestamps", where or source, malformed)] if malformed else []
    return _finish(cues, source, where=where, warnings=warnings)


_VTT_TIME = r"(?:(\d+):)?(\d{1,2}):(\d{2})[.,](\d{1,3})"
_VTT_TIMING = re.compile(rf"^\s*{_VTT_TIME}\s+-->\s+{_VTT_TIME}(?:\s+.*)?$")


def _vtt_seconds(h: str | None, m: str, s: str, frac: str) -> float:
    return int(h or 0) * 3600 + int(m) * 60 + int(s) + int(frac.ljust(3, "0")) / 1000.0


def parse_vtt(text: str, source: str = "vtt", where: str | None = None) -> Transcript:
    """WebVTT: blocks split by blank lines. NOTE/STYLE/REGION blocks are skipped, and the
    optional cue identifier is ignored. Timestamps may omit hours, and cue settings are ignored."""
    lines = text.split("\n")
    if not lines or not lines[0].lstrip("\ufeff").startswith("WEBVTT"):
        raise BadTranscript(f"{where or source}: not a WebVTT file (the first line must start with 'WEBVTT')")
    blocks: list[tuple[int, list[str]]] = []  # (line number of the block's first line, its lines)
    cur: list[str] = []
    first = 0
    for number, line in enumerate(lines[1:], 2):
        if line.strip():
            if not cur:
                first = number
            cur.append(line)
        elif cur:
            blocks.append((first, cur))
            cur = []
    if cur:
        blocks.append((first, cur))
    cues = []
    malformed: list[str] = []
    for first, block in blocks:
        timing_at = next((i for i, ln in enumerate(block[:2]) if "-->" in ln), None)
        if timing_at is None:
            continue  # header metadata, NOTE, STYLE, REGION
        m = _VTT_TIMING.match(block[timing_at])
        if m is None:
            malformed.append(_quote_line(first + timing_at, block[timing_at]))
            continue
        g = m.groups()
        start, end = _vtt_seconds(*g[0:4]), _vtt_seconds(*g[4:8])
        plain, speaker = clean_cue_text("\n".join(block[timing_at + 1 :]))
        cues.append(Cue(start, end, plain, speaker))
    warnings = [_skipped_warning("with malformed timestamps", where or source, malformed)] if malformed else []
    return _finish(cues, source, where=where, warnings=warnings)


_START_KEYS = ("start", "start_time", "begin")
_END_KEYS = ("end", "end_time", "stop")
_TEXT_KEYS = ("text", "transcript", "utterance")


def _first(d: dict, keys: tuple[str, ...]):
    for k in keys:
        if k in d:
            return d[k]
    return None


def parse_json(text: str, source: str = "json", where: str | None = None) -> Transcript:
    """``{"transcript"|"text": str}``, a list of ``{"start", "end", "text"}`` segments, or
    ``{"segments": [...]}`` (whisper's output; its top-level "text" is kept as the whole text)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise BadTranscript(f"{where or source}: invalid JSON ({e})") from e
    whole: str | None = None
    if isinstance(data, dict):
        if "segments" in data:
            whole = _first(data, _TEXT_KEYS)
            data = data["segments"]
        else:
            value = _first(data, _TEXT_KEYS)
            if value is None or not isinstance(value, str):
                raise BadTranscript(
                    f"{where or source}: expected a 'transcript' or 'text' string, or a list of "
                    "{'start', 'end', 'text'} segments"
                )
            return Transcript(text=value.strip(), cues=[], source=source)
    if not isinstance(data, list):
        raise BadTranscript(f"{where or source}: expected an object or a list of segments")
    cues = []
    for k, seg in enumerate(data, 1):
        if not isinstance(seg, dict):
            raise BadTranscript(f"{where or source}: segment {k} is not an object")
        start, end, raw = _first(seg, _START_KEYS), _first(seg, _END_KEYS), _first(seg, _TEXT_KEYS)
        try:
            start_f, end_f = float(start), float(end)
        except (TypeError, ValueError):
            raise BadTranscript(
                f"{where or source}: segment {k} needs numeric 'start' and 'end' (seconds)"
            ) from None
        plain, speaker = clean_cue_text(str(raw or ""))
        speaker = seg.get("speaker") or speaker
        cues.append(Cue(start_f, end_f, plain, str(speaker) if speaker is not None else None))
    if isinstance(whole, str):
        return _finish(cues, source, text=whole.strip(), where=where)
    return _finish(cues, source, where=where)


def parse_txt(text: str, source: str = "txt", where: str | None = None) -> Transcript:
    """Plain text: the whole file, whitespace-normalised (an empty file -> "" , not None)."""
    return Transcript(text=" ".join(text.split()), cues=[], source=source)


_PARSERS = {".srt": parse_srt, ".vtt": parse_vtt, ".json": parse_json, ".txt": parse_txt}


# -- lookup -------------------------------------------------------------------------------------


def find_sidecar(media: Path) -> Path | None:
    """The first of ``<stem>.srt|.vtt|.json|.txt`` (also upper-case) next to ``media``."""
    for ext in SIDECAR_EXTS:
        for candidate in (media.with_suffix(ext), media.with_suffix(ext.upper())):
            if candidate != media and candidate.is_file():
                return candidate
    return None


def read_sidecar(path: Path) -> Transcript:
    """Parse one sidecar by its extension; raises BadTranscript naming the file."""
    parser = _PARSERS.get(path.suffix.lower())
    if parser is None:
        raise BadTranscript(f"{path}: unsupported transcript format (use {', '.join(SIDECAR_EXTS)})")
    return parser(read_text_file(path), source=f"sidecar:{path.name}", where=str(path))


def load_transcript(media: Path) -> Transcript | None:
    """The transcript beside ``media``, or None when there is no sidecar."""
    sidecar = find_sidecar(media)
    return read_sidecar(sidecar) if sidecar is not None else None
