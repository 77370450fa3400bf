"""The one progress hook: long-running library calls report :class:`ProgressEvent` s.

Extraction, import, training and evaluation all call ``progress(event)``; ``imer/cli/progress.py``
draws a bar per ``stage``. The library itself never renders anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass(frozen=True)
class ProgressEvent:
    """``done`` of ``total`` units of ``stage`` (total None = unknown).

    ``info`` carries what the producer wants shown beside the bar, already named: training
    sends ``loss``, ``split``, ``metric`` (the one it selects on, e.g. ``"WA"``), ``value`` and
    ``best``, so no display has to guess which metric it is.
    """

    stage: str
    done: int
    total: int | None = None
    info: dict[str, Any] = field(default_factory=dict)


Progress = Callable[[ProgressEvent], None]


def report(progress: Progress | None, stage: str, done: int, total: int | None = None, **info: Any) -> None:
    """Call ``progress`` if there is one (keeps producers free of ``if progress:`` noise)."""
    if progress is not None:
        progress(ProgressEvent(stage, done, total, info))
