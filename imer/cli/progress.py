"""Progress bars (rich) fed by the library's callbacks; silent when output is JSON."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from imer.cli.render import err_console


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


@contextmanager
def bar(description: str, quiet: bool = False) -> Iterator[Callable[[int, int], None]]:
    """A ``update(done, total)`` callback drawing one bar."""
    if quiet:
        yield lambda done, total: None
        return
    with _progress() as p:
        task = p.add_task(description, total=None, info="")

        def update(done: int, total: int) -> None:
            p.update(task, completed=done, total=total)

        yield update


class _Display:
    """A rich Progress shown on stderr, or nothing when ``quiet`` (JSON output)."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.p: Progress | None = None

    def __enter__(self):
        if not self.quiet:
            self.p = _progress()
            self.p.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.p is not None:
            self.p.__exit__(*exc)


class TrainProgress(_Display):
    """One bar per training stage; the info column shows loss and the selection metric."""

    def __init__(self, quiet: bool = False):
        super().__init__(quiet)
        self.task = None
        self.eval_task = None

    def update(self, event: dict) -> None:
        if self.p is None:
            return
        if event["event"] == "stage":
            self.task = self.p.add_task(f"stage {event['stage']}", total=event["epochs"], info="")
        elif event["event"] == "epoch" and self.task is not None:
            split = "valid" if "valid" in event else "test"
            m = event[split]
            key = "WA" if "WA" in m else "Acc2"
            info = f"loss {event['loss'].get('total', float('nan')):.3f}  {split} {key} {m.get(key, float('nan')):.3f}  best {event['best']:.3f}"
            self.p.update(self.task, completed=event["epoch"] + 1, info=info)

    def evaluation(self, done: int, total: int) -> None:
        """``update(done, total)`` callback for the evaluation table, in the same display."""
        if self.p is None:
            return
        if self.eval_task is None:
            self.eval_task = self.p.add_task("evaluating", total=total, info="")
        self.p.update(self.eval_task, completed=done, total=total)


class StageProgress(_Display):
    """One bar per named stage, created on first report: ``update(stage, done, total)``."""

    def __init__(self, quiet: bool = False):
        super().__init__(quiet)
        self.tasks: dict[str, object] = {}

    def update(self, stage: str, done: int, total: int) -> None:
        if self.p is None:
            return
        if stage not in self.tasks:
            self.tasks[stage] = self.p.add_task(stage, total=total, info="")
        self.p.update(self.tasks[stage], completed=done, total=total)
