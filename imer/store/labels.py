"""Labels that look wrong, and the label set a user fixes. Pure functions; :mod:`imer.store.compile` applies them.

A manifest's labels become classes as they are written, so a typo (``hapy`` beside ``happy``),
a case variant (``Happy`` beside ``happy``) or a stray number (``7`` among emotion names) would
silently become a class of its own. :func:`find_label_issues` reports such labels;
:func:`check_label_set` refuses any label outside a set the user named (``imer extract --labels``),
naming the rows; :func:`apply_label_map` renames labels first (``--label-map hapy=happy``).

A label is compared as written, after stripping surrounding spaces (as the store encodes it):
``Happy`` and ``happy`` are different labels.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import median
from typing import Any, Literal, Mapping, Sequence

from imer.errors import BadInput

IssueKind = Literal["near_spelling", "case_variant", "number_among_names", "name_among_numbers", "rare"]

MAX_ROWS = 5  # row ids named per issue (the count is always given)
MAX_ERROR_ROWS = 10  # row ids named per label in an error


@dataclass(frozen=True)
class LabelIssue:
    """One label that looks wrong.

    Attributes:
        kind: ``near_spelling`` (a small class one or two edits from a bigger one), ``case_variant``
            (differs from another label only in case), ``number_among_names`` /
            ``name_among_numbers`` (the odd kind of label out), ``rare`` (a class of one or two
            utterances that resembles nothing, while the typical class is far bigger: a note).
        label: the label as written.
        count: how many utterances carry it.
        rows: the first utterance ids that carry it (at most ``MAX_ROWS``).
        resembles: the label it seems meant to be (near_spelling, case_variant), else None.
        resembles_count: how many utterances carry ``resembles`` (0 when None).
        others: a few of the other labels (number/name among ...).
        typical: the median size of the other classes (rare).
    """

    kind: IssueKind
    label: str
    count: int
    rows: tuple[str, ...] = ()
    resembles: str | None = None
    resembles_count: int = 0
    others: tuple[str, ...] = ()
    typical: int = 0

    @property
    def severity(self) -> Literal["warning", "note"]:
        return "note" if self.kind == "rare" else "warning"

    @property
    def message(self) -> str:
        """One line for people: what is suspicious, where, and how to fix it."""
        where = f"{_n(self.count, 'utterance')}: {_rows_text(self.rows, self.count)}"
        became = "and became a class of its own"
        if self.kind in ("near_spelling", "case_variant"):
            how = "looks like a misspelling of" if self.kind == "near_spelling" else "differs only in case from"
            return (
                f"label {self.label!r} ({where}) {how} {self.resembles!r} ({_n(self.resembles_count, 'utterance')}) "
                f"{became}; fix the manifest, map it with --label-map '{self.label}={self.resembles}', "
                "or name the classes with --labels"
            )
        if self.kind in ("number_among_names", "name_among_numbers"):
            what = "a number among named" if self.kind == "number_among_names" else "a name among numbered"
            return (
                f"label {self.label!r} ({where}) is {what} classes ({_list_text(self.others)}) {became}; "
                "fix the manifest, map it with --label-map, or name the classes with --labels"
            )
        return (
            f"class {self.label!r} has only {_n(self.count, 'utterance')} ({_rows_text(self.rows, self.count)}), "
            f"while the median class has {self.typical}: too few "
            f"to learn or to evaluate; check its label, or make those rows unlabelled with --label-map '{self.label}='"
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["rows"] = list(self.rows)
        d["others"] = list(self.others)
        d["severity"] = self.severity
        d["message"] = self.message
        return d


def label_name(x: Any) -> str | None:
    """A raw label as a class name (how the store encodes it): stripped text; None when blank."""
    if x is None:
        return None
    s = str(x).strip()
    return s or None


def is_number(name: str) -> bool:
    try:
        return math.isfinite(float(name))
    except ValueError:
        return False


def edit_distance(a: str, b: str) -> int:
    """Edits (insert, delete, substitute, swap two neighbours) that turn ``a`` into ``b``."""
    if a == b:
        return 0
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = a[i - 1] != b[j - 1]
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        prev2, prev = prev, cur
    return prev[-1]


def near_spelling(a: str, b: str) -> bool:
    """Two labels one edit apart (two when both have five letters or more), ignoring case; labels
    shorter than three letters never are (``a``/``b`` are codes, not typos)."""
    a, b = a.casefold(), b.casefold()
    shortest = min(len(a), len(b))
    if a == b or shortest < 3:
        return False
    return edit_distance(a, b) <= (2 if shortest >= 5 else 1)


def closest(label: str, names: Sequence[str]) -> str | None:
    """The name ``label`` was most likely meant to be: same letters in another case, else the
    nearest spelling (:func:`near_spelling`); None when nothing is close."""
    same = [n for n in names if n.casefold() == label.casefold() and n != label]
    if same:
        return same[0]
    near = [n for n in names if near_spelling(label, n)]
    return min(near, key=lambda n: edit_distance(label.casefold(), n.casefold())) if near else None


def find_label_issues(
    labels: Sequence[Any],
    ids: Sequence[str] | None = None,
    max_rows: int = MAX_ROWS,
    few: int | None = None,
) -> list[LabelIssue]:
    """Labels that look wrong, for a classification task (do not call it for regression values).

    Args:
        labels: one raw label per utterance (None or blank = unlabelled, ignored).
        ids: the utterance ids, to name rows (default: row numbers from 1).
        max_rows: row ids kept per issue.
        few: the most utterances a class may have to count as a near-spelling of a bigger one;
            default: max(3, 2% of the labelled utterances).

    Returns:
        Issues in a stable order (by kind, then label): every spelling of a case-variant group
        but its most frequent one; every smaller class that is a near-spelling of a bigger one;
        numbers among names (or names among numbers, whichever kind has fewer utterances); and,
        as a note, a class of one or two utterances resembling nothing while the median class
        has at least five times as many. A set of labels that are all numbers (``0``..``6``)
        is a numbered scheme, checked for nothing but rarity.
    """
    ids = [str(i) for i in ids] if ids is not None else [str(k) for k in range(1, len(labels) + 1)]
    if len(ids) != len(labels):
        raise BadInput(f"{len(ids)} ids for {len(labels)} labels")
    rows: dict[str, list[str]] = defaultdict(list)
    for uid, x in zip(ids, labels):
        name = label_name(x)
        if name is not None:
            rows[name].append(uid)
    counts = Counter({k: len(v) for k, v in rows.items()})
    if not counts:
        return []
    few = few if few is not None else max(3, round(0.02 * sum(counts.values())))

    def issue(kind: IssueKind, label: str, resembles: str | None = None, others: Sequence[str] = ()) -> LabelIssue:
        return LabelIssue(kind, label, counts[label], tuple(rows[label][:max_rows]), resembles,
                          counts[resembles] if resembles is not None else 0, tuple(others))

    by_freq = sorted(counts, key=lambda n: (-counts[n], n != n.lower(), n))  # most frequent first
    numbers = [n for n in by_freq if is_number(n)]
    names = [n for n in by_freq if not is_number(n)]
    issues: list[LabelIssue] = []
    flagged: set[str] = set()

    # 1. case variants: all but the most frequent spelling of each group
    groups: dict[str, list[str]] = defaultdict(list)
    for n in names:
        groups[n.casefold()].append(n)
    for group in groups.values():
        for n in group[1:]:
            issues.append(issue("case_variant", n, group[0]))
            flagged.add(n)

    # 2. a small class one or two edits from a bigger one
    for n in names:
        if n in flagged or counts[n] > few:
            continue
        bigger = [m for m in names if counts[m] > counts[n] and m not in flagged and near_spelling(n, m)]
        if bigger:
            best = min(bigger, key=lambda m: (edit_distance(n.casefold(), m.casefold()), -counts[m], m))
            issues.append(issue("near_spelling", n, best))
            flagged.add(n)

    # 3. the odd kind out: numbers among names, or names among numbers
    if names and numbers:
        n_named = sum(counts[n] for n in names)
        n_numbered = sum(counts[n] for n in numbers)
        odd, kind, rest = (numbers, "number_among_names", names) if n_named >= n_numbered else (names, "name_among_numbers", numbers)
        shown = [n for n in rest if n not in flagged][:6]
        for n in odd:
            if n not in flagged:
                issues.append(issue(kind, n, others=shown))  # type: ignore[arg-type]
                flagged.add(n)

    # 4. a note: one or two utterances where the typical class has many
    if len(counts) > 1:
        for n in by_freq:
            typical = median(counts[m] for m in counts if m != n)
            if n not in flagged and counts[n] <= 2 and typical >= 5 * counts[n]:
                issues.append(LabelIssue("rare", n, counts[n], tuple(rows[n][:max_rows]), typical=round(typical)))
    order = {k: i for i, k in enumerate(("near_spelling", "case_variant", "number_among_names", "name_among_numbers", "rare"))}
    return sorted(issues, key=lambda i: (order[i.kind], i.label))


def apply_label_map(labels: Sequence[Any], mapping: Mapping[str, str]) -> list[Any]:
    """Rename labels (compared after stripping spaces); a label mapped to "" becomes unlabelled (None)."""
    if not mapping:
        return list(labels)
    out: list[Any] = []
    for x in labels:
        name = label_name(x)
        if name is not None and name in mapping:
            out.append(mapping[name].strip() or None)
        else:
            out.append(x)
    return out


def check_label_set(labels: Sequence[Any], ids: Sequence[str], allowed: Sequence[str], flag: str = "--labels") -> None:
    """Raise :class:`BadInput` naming the rows whose label is not in ``allowed`` (unlabelled rows pass)."""
    allowed_set = set(allowed)
    bad: dict[str, list[str]] = defaultdict(list)
    for uid, x in zip(ids, labels):
        name = label_name(x)
        if name is not None and name not in allowed_set:
            bad[name].append(str(uid))
    if not bad:
        return
    parts = []
    for name, where in sorted(bad.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        guess = closest(name, list(allowed))
        hint = f"; did you mean {guess!r}?" if guess else ""
        parts.append(f"{name!r} in {_n(len(where), 'row')} ({_rows_text(where, len(where), MAX_ERROR_ROWS)}{hint})")
    total = sum(len(v) for v in bad.values())
    raise BadInput(
        f"{_n(total, 'row')} {'has a label' if total == 1 else 'have labels'} outside {flag} ({_list_text(allowed, 12)}): "
        + "; ".join(parts)
        + f". Fix them in the manifest, add the labels to {flag}, or map them with --label-map OLD=NEW (OLD= makes rows unlabelled)"
    )


def parse_label_list(text: str, flag: str = "--labels") -> tuple[str, ...]:
    """``"neutral,happy,sad"`` or ``"@labels.txt"`` (names separated by commas or lines; ``#`` starts a comment)."""
    body = _read_at(text, flag)
    names = [n.strip() for line in body.splitlines() for n in line.split("#", 1)[0].split(",")]
    names = [n for n in names if n]
    if not names:
        raise BadInput(f"{flag} {text!r}: no label names (give them as NAME,NAME,... or @FILE)")
    dup = sorted(n for n, c in Counter(names).items() if c > 1)
    if dup:
        raise BadInput(f"{flag}: {', '.join(map(repr, dup))} given more than once")
    return tuple(names)


def parse_label_map(text: str, flag: str = "--label-map") -> dict[str, str]:
    """``"Happy=happy,hapy=happy,xxx="`` or ``"@map.txt"`` (pairs separated by commas or lines):
    OLD=NEW renames a label; OLD= makes its rows unlabelled."""
    body = _read_at(text, flag)
    mapping: dict[str, str] = {}
    for line in body.splitlines():
        for item in line.split("#", 1)[0].split(","):
            if not item.strip():
                continue
            if "=" not in item:
                raise BadInput(f"{flag}: {item.strip()!r} is not OLD=NEW (e.g. hapy=happy; OLD= makes rows unlabelled)")
            old, new = (s.strip() for s in item.split("=", 1))
            if not old:
                raise BadInput(f"{flag}: {item.strip()!r} has no label before '='")
            if old in mapping and mapping[old] != new:
                raise BadInput(f"{flag}: {old!r} is mapped twice ({mapping[old]!r} and {new!r})")
            mapping[old] = new
    if not mapping:
        raise BadInput(f"{flag} {text!r}: no OLD=NEW pairs")
    return mapping


# ---------------------------------------------------------------------- text helpers
def _read_at(text: str, flag: str) -> str:
    if not text.startswith("@"):
        return text
    path = Path(text[1:]).expanduser()
    if not path.is_file():
        raise BadInput(f"{flag} {text}: file {path} not found")
    return path.read_text(encoding="utf-8-sig")


def _n(k: int, word: str) -> str:
    return f"{k} {word}" + ("" if k == 1 else "s")


def _rows_text(rows: Sequence[str], count: int, limit: int | None = None) -> str:
    shown = list(rows[:limit] if limit is not None else rows)
    more = count - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def _list_text(names: Sequence[str], limit: int = 6) -> str:
    shown = list(names[:limit])
    return ", ".join(shown) + (f", ... ({len(names)} in all)" if len(names) > limit else "")
