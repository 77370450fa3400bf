"""From what the user points at (a folder, a media file, a manifest) to utterances and decoded inputs.

Utterance ids
-------------
A media file's id is its path relative to the root (the folder given to :func:`discover`, or
the manifest's folder), in POSIX form and without the extension:
``Actor_01/01-01-01-01-01-01-01``. Ids stay readable and stable across machines and operating
systems. When two files in one folder differ only in extension (``clip.mp4`` and ``clip.wav``),
both keep their extension (``clip.mp4``, ``clip.wav``), so neither id depends on the order of a
directory listing. A timed sidecar (srt/vtt/json segments) turns file ``F`` into the utterances
``F#0``, ``F#1``, ... in cue order, with ``dialogue = F`` and ``order = k``. Manifest rows without
an id column get the same ids, and rows that share a file are numbered ``#k`` in order of start.

Decoding never raises for bad media. :func:`load_inputs` returns a :class:`StreamStatus` per
modality instead, decided with the rules in :mod:`imer.pipeline.streams`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import threading
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imer.errors import BadInput
from imer.fsutil import dangling_symlink
from imer.pipeline.manifest import Utterance
from imer.pipeline.media import (
    MEDIA_EXTS,
    MediaInfo,
    MediaReader,
    UnreadableMedia,
    is_media_file,
)
from imer.pipeline.decode import DecodeConfig  # noqa: F401  (re-exported: the decode settings live there)
from imer.pipeline.streams import StreamStatus, audio_status, text_status
from imer.pipeline.transcripts import Transcript, decode_text, load_transcript
from imer.types import MissingReason, Modality

# A segment may end this far (s) past the container's duration and still count as in range:
# durations in headers are rounded, and subtitle cues often overshoot the last frame.
END_TOLERANCE = 0.5

# -- ids ------------------------------------------------------------------------------------------


def _rel_posix(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _strip_ext(rel: str) -> str:
    head, _, name = rel.rpartition("/")
    stem = name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name
    return f"{head}/{stem}" if head else stem


def file_ids(files: list[Path], root: Path) -> dict[Path, str]:
    """Id per media file (see the module docstring): relative path without its extension, or
    with it for the files whose id would otherwise collide."""
    rel = {f: _rel_posix(f, root) for f in files}
    base = {f: _strip_ext(r) for f, r in rel.items()}
    counts = Counter(base.values())
    return {f: (base[f] if counts[base[f]] == 1 else rel[f]) for f in files}


# -- discover -------------------------------------------------------------------------------------


def _is_hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)


def discover(
    path: str | Path,
    recursive: bool = True,
    cues_as_utterances: bool = True,
    warnings: list[str] | None = None,
) -> list[Utterance]:
    """Utterances for a media file or every media file in a folder (recursively), sorted by id.

    Each file is one utterance whose transcript comes from its sidecar. A sidecar with timed
    cues instead makes one utterance per cue (unless ``cues_as_utterances`` is False; then the
    cues' joined text is the file's transcript). Transcript files without media are not
    utterances. Hidden files and folders (``.DS_Store``, ``._clip.mp4``) are skipped.

    A symlink with a media extension whose target does not exist (e.g. a git-annex or DataLad
    file not fetched yet) is an utterance like the others: its audio and video are then
    ``unreadable`` with the reason "target of symlink X (-> T) does not exist", and one line in
    ``warnings`` counts such links. A folder holding only such links is an error. ``warnings``
    also receives the sidecars' own (cues skipped, see :mod:`imer.pipeline.transcripts`).
    """
    path = Path(path)
    if not path.exists():
        raise BadInput(dangling_symlink(path) or f"{path}: no such file or folder")
    if path.is_file():
        if not is_media_file(path):
            raise BadInput(
                f"{path}: not a supported media file (supported: {' '.join(MEDIA_EXTS)}); "
                "for a list of files use a manifest (CSV or JSON)"
            )
        root, files = path.parent, [path]
    else:
        root = path
        pattern = path.rglob("*") if recursive else path.glob("*")
        found = [f for f in pattern if is_media_file(f) and not _is_hidden(f.relative_to(root))]
        files = [f for f in found if f.is_file()]
        dangling = [f for f in found if not f.exists() and f.is_symlink()]
        if not files:
            raise BadInput(
                f"{path}: no media files found{' (searched recursively)' if recursive else ''}; "
                f"supported extensions: {' '.join(MEDIA_EXTS)}"
                + (f"; {_dangling_note(dangling)}" if dangling else "")
            )
        if dangling:
            _note(warnings, [f"{_dangling_note(dangling)}: recorded as unreadable"])
            files += dangling
    ids = file_ids(files, root)
    out: list[Utterance] = []
    for f in sorted(files, key=lambda f: ids[f]):
        fid, source = ids[f], f.absolute()
        tr = load_transcript(f)
        if tr is not None:
            _note(warnings, tr.warnings)
        if tr is not None and tr.cues and cues_as_utterances:
            out.extend(_cue_utterances(fid, source, tr))
        else:
            out.append(
                Utterance(
                    id=fid,
                    source=source,
                    transcript=tr.text if tr is not None else None,
                    transcript_source=tr.source if tr is not None else None,
                )
            )
    return out


def _dangling_note(links: list[Path]) -> str:
    """"2 media symlinks lead nowhere (first: target of symlink X (-> T) does not exist)"."""
    n = len(links)
    return f"{n} media symlink{'s lead' if n != 1 else ' leads'} nowhere (first: {dangling_symlink(sorted(links)[0])})"


def _note(warnings: list[str] | None, lines: list[str]) -> None:
    """Add ``lines`` to ``warnings`` (if collected), each once: many rows or cues share one sidecar."""
    if warnings is not None:
        warnings.extend(ln for ln in dict.fromkeys(lines) if ln not in warnings)


def _cue_utterances(fid: str, source: Path, tr: Transcript) -> list[Utterance]:
    return [
        Utterance(
            id=f"{fid}#{k}",
            source=source,
            start=cue.start,
            end=cue.end,
            transcript=cue.text,
            transcript_source=tr.source,
            speaker=cue.speaker,
            dialogue=fid,
            order=k,
        )
        for k, cue in enumerate(tr.cues)
    ]


# -- manifests ------------------------------------------------------------------------------------

# Canonical column -> accepted names (matched case-insensitively; the first present one wins).
COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "id": ("id", "utterance_id", "utt_id"),
    "path": ("path", "file", "media", "filename"),
    "start": ("start", "start_time", "begin"),
    "end": ("end", "end_time", "stop"),
    "transcript": ("transcript", "text"),
    "label": ("label", "emotion"),
    "speaker": ("speaker", "speaker_id", "actor"),
    "dialogue": ("dialogue", "dialogue_id", "dialog"),
    "order": ("order", "turn"),
    "split": ("split", "subset"),
}


def read_manifest(path: str | Path, strict: bool = False, warnings: list[str] | None = None) -> list[Utterance]:
    """Utterances from a CSV/TSV or JSON/JSONL manifest, in file order.

    Columns are listed in :data:`COLUMN_ALIASES`; ``path`` is required (a row may leave it empty
    for a text-only utterance if it has an id). Other columns go to ``Utterance.extra``. Relative
    paths resolve against the manifest's folder. An empty cell means None, except for the
    transcript: a transcript column with an empty cell means the transcript is "". With no
    transcript column at all, the text comes from the media file's sidecar. For a row with a
    segment, that is the text of the cues whose midpoint falls in the segment. Without an
    ``order`` column, rows are numbered within their dialogue in file order. CSV cells stay
    strings (a label "1.5" is the string "1.5"); the task spec decides what labels mean.

    A row whose own segment is unusable (a start or end that is not a time, or is negative, or an
    end not after the start) does not stop the run of thousands it belongs to: it becomes an
    utterance with ``invalid`` set to the message naming the row ("m.csv: line 7: end (2) must be
    after start (5)"), whose audio and video will be missing with reason ``invalid_segment``. Its
    transcript from the manifest stays (it does not depend on the times); a transcript that would
    come from the sidecar's cues within the segment is None. ``strict=True`` raises
    :class:`BadInput` with that message instead. Errors in the manifest's structure (no path and
    no id, a duplicate id, an order that is not an integer, a bad label) always raise.
    ``warnings`` receives the sidecars' warnings (cues skipped), once each.
    """
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"{dangling_symlink(path) or path}: manifest not found")
    suffix = path.suffix.lower()
    text = decode_text(path.read_bytes())
    if suffix in (".json", ".jsonl"):
        rows = _json_rows(path, text, suffix == ".jsonl")
        where = "item"
    elif suffix in (".csv", ".tsv"):
        rows = _csv_rows(path, text, "\t" if suffix == ".tsv" else None)
        where = "line"
    else:
        raise BadInput(f"{path}: unknown manifest format (use .csv, .tsv, .json or .jsonl)")
    return _rows_to_utterances(path, rows, where, strict, warnings)


def _csv_rows(path: Path, text: str, delimiter: str | None) -> list[tuple[int, dict[str, Any]]]:
    header = text.split("\n", 1)[0]
    if delimiter is None:  # the most frequent candidate in the header line
        delimiter = max((",", "\t", ";"), key=header.count)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        columns = [c.strip() for c in next(reader)]
    except StopIteration:
        raise BadInput(f"{path}: empty manifest") from None
    rows = []
    for cells in reader:
        if not any(c.strip() for c in cells):
            continue
        if len(cells) > len(columns):
            raise BadInput(
                f"{path}: line {reader.line_num}: {len(cells)} cells but {len(columns)} columns "
                "(an unquoted delimiter inside a transcript?)"
            )
        cells = cells + [""] * (len(columns) - len(cells))
        rows.append((reader.line_num, dict(zip(columns, cells))))
    if not any(columns):
        raise BadInput(f"{path}: empty manifest")
    _check_columns(path, columns)
    return rows


def _json_rows(path: Path, text: str, lines: bool) -> list[tuple[int, dict[str, Any]]]:
    try:
        if lines:
            data = [json.loads(ln) for ln in text.split("\n") if ln.strip()]
        else:
            data = json.loads(text)
    except json.JSONDecodeError as e:
        raise BadInput(f"{path}: invalid JSON ({e})") from e
    if isinstance(data, dict):
        if "utterances" not in data:
            raise BadInput(f'{path}: expected a list of objects or {{"utterances": [...]}}')
        data = data["utterances"]
    if not isinstance(data, list):
        raise BadInput(f'{path}: expected a list of objects or {{"utterances": [...]}}')
    rows = []
    columns: set[str] = set()
    for k, item in enumerate(data, 1):
        if not isinstance(item, dict):
            raise BadInput(f"{path}: item {k} is not an object")
        rows.append((k, item))
        columns.update(item)
    if rows:
        _check_columns(path, sorted(columns))
    return rows


def _canonical(columns: list[str]) -> dict[str, str]:
    """Canonical name -> the column that provides it."""
    lower = {c.strip().lower(): c for c in columns}
    found = {}
    for canon, aliases in COLUMN_ALIASES.items():
        for a in aliases:
            if a in lower:
                found[canon] = lower[a]
                break
    return found


def _check_columns(path: Path, columns: list[str]) -> None:
    if "path" not in _canonical(columns):
        raise BadInput(
            f"{path}: no media path column (accepted names: {', '.join(COLUMN_ALIASES['path'])}); "
            f"columns found: {', '.join(columns) or 'none'}"
        )


class _NegativeTime(ValueError):
    """A well-formed time before zero: reported as "start -1 is negative", not as "not a time"."""


def _parse_time(value: Any) -> float:
    """Seconds from a number or "[-][HH:]MM:SS[.,]mmm"; ValueError (:class:`_NegativeTime` for a
    negative time) otherwise."""
    if isinstance(value, bool):
        raise ValueError("boolean")  # noqa: TRY004 - reported to the user as BadInput
    if isinstance(value, (int, float)):
        t = float(value)
    else:
        s = str(value).strip().replace(",", ".")
        negative = s.startswith("-") and ":" in s  # "-00:01.5": the sign is for the whole time
        parts = (s[1:] if negative else s).split(":")
        if len(parts) > 3 or any(p.strip()[:1] in ("+", "-") for p in parts[1:]):
            raise ValueError(s)
        t = 0.0
        for p in parts:
            t = t * 60 + float(p)
        t = -t if negative else t
    if not math.isfinite(t):
        raise ValueError(str(value))
    if t < 0:
        raise _NegativeTime(str(value))
    return t


def _time_problem(name: str, value: Any, e: ValueError) -> str:
    if isinstance(e, _NegativeTime):
        return f"{name} {value} is negative"
    return f"{name} {value!r} is not a time in seconds (or HH:MM:SS.mmm)"


def _empty(v: Any) -> bool:
    return v is None or (isinstance(v, str) and not v.strip())


def _cell(row: dict[str, Any], canon: dict[str, str], name: str) -> Any:
    """The value of canonical column ``name`` in ``row``; blank -> None, strings stripped."""
    col = canon.get(name)
    v = row.get(col) if col is not None else None
    return None if _empty(v) else (v.strip() if isinstance(v, str) else v)


def _row_to_utterance(
    row: dict[str, Any],
    base: Path,
    loc: str,
    strict: bool = True,
    sidecars: dict[Path, Transcript | None] | None = None,
) -> Utterance:
    """One manifest row -> Utterance (id may be "" and is filled in from the path later).

    A bad segment raises when ``strict``, else sets ``invalid`` (see :func:`read_manifest`); a
    time that is not a usable time is then None. ``sidecars`` memoises transcripts by media file.
    """
    canon = _canonical(list(row))  # per row: JSON objects may use different aliases
    raw_path = _cell(row, canon, "path")
    source = None
    if raw_path is not None:
        p = Path(str(raw_path))
        source = Path(os.path.normpath(p if p.is_absolute() else base / p))
    uid = _cell(row, canon, "id")
    if uid is None and source is None:
        raise BadInput(f"{loc}: no media path and no id; give at least one")
    times: dict[str, float | None] = {}
    problem: str | None = None
    for name in ("start", "end"):
        v = _cell(row, canon, name)
        try:
            times[name] = None if v is None else _parse_time(v)
        except ValueError as e:
            times[name] = None
            problem = problem or _time_problem(name, v, e)
    start, end = times["start"], times["end"]
    if problem is None and end is not None and end <= (start or 0.0):
        problem = f"end ({end:g}) must be after start ({start or 0.0:g})"
    invalid = f"{loc}: {problem}" if problem is not None else None
    if invalid is not None and strict:
        raise BadInput(invalid)
    order = 0
    raw_order = _cell(row, canon, "order")
    if raw_order is not None:
        try:
            as_float = float(str(raw_order))
        except ValueError:
            as_float = math.nan
        if not as_float.is_integer():
            raise BadInput(f"{loc}: order {raw_order!r} is not an integer")
        order = int(as_float)
    label = _cell(row, canon, "label")
    if isinstance(label, (bool, list, dict)):
        raise BadInput(f"{loc}: label {label!r} must be a string or a number")
    transcript, tsource = _row_transcript(row, canon, source, start, end, loc, invalid is not None, sidecars)
    mapped = set(canon.values())
    return Utterance(
        id=str(uid) if uid is not None else "",
        source=source,
        start=start,
        end=end,
        transcript=transcript,
        transcript_source=tsource,
        label=label,
        speaker=_opt_str(_cell(row, canon, "speaker")),
        dialogue=_opt_str(_cell(row, canon, "dialogue")),
        order=order,
        split=_opt_str(_cell(row, canon, "split")),
        extra={c: (None if _empty(v) else v) for c, v in row.items() if c not in mapped},
        invalid=invalid,
    )


def _rows_to_utterances(
    path: Path,
    rows: list[tuple[int, dict[str, Any]]],
    where: str,
    strict: bool = True,
    warnings: list[str] | None = None,
) -> list[Utterance]:
    base = Path(os.path.normpath(path.parent.absolute()))  # '..' in the manifest path must not leak into ids
    sidecars: dict[Path, Transcript | None] = {}
    utts = [_row_to_utterance(row, base, f"{path}: {where} {num}", strict, sidecars) for num, row in rows]
    for tr in sidecars.values():
        if tr is not None:
            _note(warnings, tr.warnings)
    _ids_from_paths([u for u in utts if not u.id], base)
    if "order" not in _canonical(sorted({c for _, r in rows for c in r})):
        counters: dict[str, int] = defaultdict(int)
        for u in utts:
            if u.dialogue is not None:
                u.order = counters[u.dialogue]
                counters[u.dialogue] += 1
    first: dict[str, int] = {}
    for u, (num, _) in zip(utts, rows):
        if u.id in first:
            raise BadInput(f"{path}: {where} {num}: duplicate id {u.id!r} (first at {where} {first[u.id]})")
        first[u.id] = num
    return utts


def _opt_str(v: Any) -> str | None:
    return None if v is None else str(v)


def _row_transcript(
    row: dict[str, Any],
    canon: dict[str, str],
    source: Path | None,
    start: float | None,
    end: float | None,
    loc: str,
    invalid: bool = False,
    sidecars: dict[Path, Transcript | None] | None = None,
) -> tuple[str | None, str | None]:
    col = canon.get("transcript")
    if col is not None and col in row:
        v = row[col]
        if v is None:  # JSON null: explicitly no transcript
            return None, None
        return str(v).strip(), "manifest"
    if source is None:
        return None, None
    if sidecars is not None and source in sidecars:
        tr = sidecars[source]
    else:
        try:
            tr = load_transcript(source)
        except BadInput as e:
            raise BadInput(f"{loc}: {e}") from e
        if sidecars is not None:
            sidecars[source] = tr
    if tr is None:
        return None, None
    if tr.cues and invalid:  # which cues fall in the segment is unknowable
        return None, None
    if tr.cues and (start is not None or end is not None):
        lo, hi = start or 0.0, end if end is not None else math.inf
        return " ".join(c.text for c in tr.cues if lo <= (c.start + c.end) / 2 < hi and c.text), tr.source
    return tr.text, tr.source


def _ids_from_paths(utts: list[Utterance], base: Path) -> None:
    """Ids for rows without one: the file id, plus ``#k`` when such rows share a file."""
    sources = sorted({u.source for u in utts if u.source is not None})
    ids = file_ids(sources, base)
    groups: dict[Path, list[Utterance]] = defaultdict(list)
    for u in utts:
        if u.source is not None:
            groups[u.source].append(u)
    for src, group in groups.items():
        if len(group) == 1:
            group[0].id = ids[src]
            continue
        ranked = sorted(range(len(group)), key=lambda i: (group[i].start or 0.0, i))
        for k, i in enumerate(ranked):
            group[i].id = f"{ids[src]}#{k}"


# -- decoding -------------------------------------------------------------------------------------


@dataclass
class UtteranceInputs:
    """Decoded inputs of one utterance. A slot is None exactly when its status is missing."""

    utterance: Utterance
    audio: np.ndarray | None
    frames: list[np.ndarray] | None
    frame_times: list[float]
    text: str | None
    status: dict[Modality, StreamStatus] = field(default_factory=dict)


def _segment_reason(utt: Utterance) -> MissingReason:
    """The reason for :func:`_range_problem`'s answer: the row's own segment, or its fit to the file."""
    return MissingReason.INVALID_SEGMENT if utt.invalid else MissingReason.OUT_OF_RANGE


def _range_problem(utt: Utterance, info: MediaInfo) -> str | None:
    if utt.invalid:
        return utt.invalid
    start = utt.start or 0.0
    end = utt.end
    seg = f"segment {start:.2f}-{end:.2f} s" if end is not None else f"segment from {start:.2f} s"
    if start < 0 or (end is not None and end <= start):
        return f"{seg} is empty or negative"
    dur = info.duration
    if dur is None:
        return None
    if start >= dur:
        return f"{seg} starts after the end of the file ({dur:.2f} s)"
    if end is not None and end > dur + END_TOLERANCE:
        return f"{seg} ends after the end of the file ({dur:.2f} s)"
    return None


def _detail(e: BaseException) -> str:
    return str(e) if isinstance(e, UnreadableMedia) else f"{type(e).__name__}: {e}"


def load_inputs(
    utt: Utterance,
    want: set[Modality] | frozenset[Modality],
    cfg: DecodeConfig | None = None,
    info: MediaInfo | None = None,
    reader: MediaReader | None = None,
) -> UtteranceInputs:
    """Decode what ``want`` asks for and say, per modality, whether it is usable and why not.

    Never raises for bad media. Any failure to open or decode becomes UNREADABLE, with the error
    as the detail, because one broken file must not stop a run over thousands. A programming
    error still shows in the detail text and in tests. Many utterances of one file (cues,
    manifest segments) should pass one ``reader`` open on it, in order of start: the file is
    then opened, probed and decoded once for all of them. ``info`` skips probing.
    """
    if reader is None and utt.source is not None and ({Modality.AUDIO, Modality.VIDEO} & set(want)):
        with MediaReader(utt.source) as own:
            return load_inputs(utt, want, cfg, info, own)
    cfg = cfg or DecodeConfig()
    status: dict[Modality, StreamStatus] = {}
    audio: np.ndarray | None = None
    frames: list[np.ndarray] | None = None
    frame_times: list[float] = []
    text: str | None = None

    if Modality.TEXT in want:
        status[Modality.TEXT] = text_status(utt.transcript)
        text = utt.transcript if status[Modality.TEXT].present else None
    else:
        status[Modality.TEXT] = StreamStatus.missing(MissingReason.DISABLED)

    media_want = [m for m in (Modality.AUDIO, Modality.VIDEO) if m in want]
    for m in (Modality.AUDIO, Modality.VIDEO):
        if m not in want:
            status[m] = StreamStatus.missing(MissingReason.DISABLED)
    no_track = {Modality.AUDIO: MissingReason.NO_AUDIO_TRACK, Modality.VIDEO: MissingReason.NO_VIDEO_TRACK}

    def finish() -> UtteranceInputs:
        ordered = {m: status[m] for m in (Modality.AUDIO, Modality.TEXT, Modality.VIDEO)}
        return UtteranceInputs(utt, audio, frames, frame_times, text, ordered)

    if not media_want:
        return finish()
    if utt.source is None:
        for m in media_want:
            status[m] = StreamStatus.missing(no_track[m], "no media file")
        return finish()
    if reader is None or reader.path != utt.source:
        raise ValueError(f"reader is open on {reader and reader.path}, not on {utt.source}")
    if info is None:
        try:
            info = reader.info
        except Exception as e:  # noqa: BLE001 - see docstring
            for m in media_want:
                status[m] = StreamStatus.missing(MissingReason.UNREADABLE, _detail(e))
            return finish()

    problem = _range_problem(utt, info)
    start = utt.start or 0.0
    end = utt.end
    if end is not None and info.duration is not None:
        end = min(end, info.duration)

    if Modality.AUDIO in media_want:
        if not info.has_audio:
            status[Modality.AUDIO] = StreamStatus.missing(
                MissingReason.NO_AUDIO_TRACK, f"no audio track in {utt.source.name}"
            )
        elif problem:
            status[Modality.AUDIO] = StreamStatus.missing(_segment_reason(utt), problem)
        else:
            try:
                samples = reader.audio(start, end, cfg.sample_rate)
            except Exception as e:  # noqa: BLE001
                status[Modality.AUDIO] = StreamStatus.missing(MissingReason.UNREADABLE, _detail(e))
            else:
                status[Modality.AUDIO] = audio_status(samples, True, cfg.silence_rms, cfg.sample_rate)
                audio = samples if status[Modality.AUDIO].present else None

    if Modality.VIDEO in media_want:
        if not info.has_video:
            status[Modality.VIDEO] = StreamStatus.missing(
                MissingReason.NO_VIDEO_TRACK, f"no video track in {utt.source.name}"
            )
        elif problem:
            status[Modality.VIDEO] = StreamStatus.missing(_segment_reason(utt), problem)
        else:
            try:
                imgs, times = reader.frames(start, end, cfg.fps, cfg.max_frames, cfg.max_side, cfg.skip_nonref)
            except Exception as e:  # noqa: BLE001
                status[Modality.VIDEO] = StreamStatus.missing(MissingReason.UNREADABLE, _detail(e))
            else:
                if imgs:
                    status[Modality.VIDEO] = StreamStatus.ok()
                    frames, frame_times = imgs, times
                else:
                    status[Modality.VIDEO] = StreamStatus.missing(
                        MissingReason.OUT_OF_RANGE, "no video frame in the segment"
                    )
    return finish()


# -- content hashing ------------------------------------------------------------------------------

_HASH_CHUNK = 1 << 20
_hash_memo: dict[tuple[str, int, int], str] = {}
_hash_lock = threading.Lock()


def file_hash(path: str | Path) -> str:
    """blake2b-128 hex digest of the file's bytes: the content part of every cache key.

    Memoised per (resolved path, size, mtime_ns) within the process, so the many cues of one
    long file hash it once. An edited file gets a new size or mtime and is hashed again.
    """
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    with _hash_lock:
        cached = _hash_memo.get(key)
    if cached is not None:
        return cached
    h = hashlib.blake2b(digest_size=16)
    with open(p, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    digest = h.hexdigest()
    with _hash_lock:
        _hash_memo[key] = digest
    return digest
