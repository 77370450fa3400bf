"""Progress bars (rich) fed by the library's one progress hook; silent when output is JSON."""

from __future__ import annotations

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from imer.cli.render import err_console
from imer.progress import ProgressEvent


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=err_console,
        transient=False,
    )


def format_info(info: dict) -> str:
    """What a producer put beside its bar. A named selection metric is shown as
    ``valid WA 0.812  best 0.820``; anything else as ``key value`` pairs."""
    parts = []
    if "loss" in info:
        parts.append(f"loss {info['loss']:.3f}")
    if "metric" in info:
        parts.append(f"{info.get('split', '')} {info['metric']} {info.get('value', float('nan')):.3f}".strip())
        if "best" in info:
            parts.append(f"best {info['best']:.3f}")
    for k, v in info.items():
        if k not in ("loss", "metric", "split", "value", "best"):
            parts.append(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}")
    return "  ".join(parts)


class ProgressDisplay:
    """A rich display on stderr with one bar per event stage; nothing at all when ``quiet``.

    Use as a context manager and pass the instance itself as the library's ``progress`` hook.
    """

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.p: Progress | None = None
        self.tasks: dict[str, object] = {}

    def __enter__(self) -> "ProgressDisplay":
        if not self.quiet:
            self.p = _progress()
            self.p.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.p is not None:
            self.p.__exit__(*exc)

    def __call__(self, event: ProgressEvent) -> None:
        if self.p is None:
            return
        if event.stage not in self.tasks:
            self.tasks[event.stage] = self.p.add_task(event.stage, total=event.total, info="")
        self.p.update(self.tasks[event.stage], completed=event.done, total=event.total, info=format_info(event.info))

    def note(self, text: str) -> None:
        """A line above the bars (e.g. which cross-validation fold starts); a new fold gets new bars."""
        self.tasks.clear()
        if self.p is not None:
            self.p.console.print(text)
