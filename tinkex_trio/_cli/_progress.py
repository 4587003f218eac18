"""Live progress of a long command: rich's progress bars on a terminal, one plain line per finished task elsewhere.

rich is optional (the ``sim`` extra brings it): without it, or when stderr is not a terminal (a pipe, a CI log, a
test), each task prints one line when it ends. Everything goes to stderr, so stdout keeps the results only.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import Any, Protocol

__all__ = ["Progress", "Task", "open_progress"]


class Task(Protocol):
    def update(self, done: int, total: int | None = None) -> None: ...
    def status(self, text: str) -> None: ...
    def done(self) -> None: ...


class Progress(Protocol):
    def task(self, label: str, total: int | None) -> Task: ...


class _PlainTask:
    def __init__(self, label: str, total: int | None) -> None:
        self.label = label
        self.total = total
        self.count = 0
        self.text = ""
        self.started = time.perf_counter()
        self.finished = False

    def update(self, done: int, total: int | None = None) -> None:
        self.count = done
        if total is not None:
            self.total = total

    def status(self, text: str) -> None:
        self.text = text

    def done(self) -> None:
        if self.finished:
            return
        self.finished = True
        what = f"{self.count}/{self.total}" if self.total else self.text
        print(f"  {self.label}: {what} in {time.perf_counter() - self.started:.1f} s", file=sys.stderr, flush=True)


class _PlainProgress:
    def task(self, label: str, total: int | None) -> Task:
        return _PlainTask(label, total)


class _RichTask:
    def __init__(self, progress: Any, label: str, total: int | None) -> None:
        self.progress = progress
        self.id = progress.add_task(label, total=total, status="")

    def update(self, done: int, total: int | None = None) -> None:
        if total is not None:
            self.progress.update(self.id, completed=done, total=total)
        else:
            self.progress.update(self.id, completed=done)

    def status(self, text: str) -> None:
        self.progress.update(self.id, status=text)

    def done(self) -> None:
        task = next(t for t in self.progress.tasks if t.id == self.id)
        if task.total is None:
            self.progress.update(self.id, total=1, completed=1)
        else:
            self.progress.update(self.id, completed=task.total)
        self.progress.stop_task(self.id)


class _RichProgress:
    def __init__(self, progress: Any) -> None:
        self.progress = progress

    def task(self, label: str, total: int | None) -> Task:
        return _RichTask(self.progress, label, total)


class open_progress:
    """``with open_progress() as progress:`` rich bars when rich is installed and stderr is a terminal."""

    def __init__(self, *, plain: bool = False) -> None:
        self._rich: Any = None
        self.plain = plain or not sys.stderr.isatty()

    def __enter__(self) -> Progress:
        if not self.plain:
            try:
                from rich.console import Console
                from rich.progress import (
                    BarColumn,
                    MofNCompleteColumn,
                    SpinnerColumn,
                    TextColumn,
                    TimeElapsedColumn,
                )
                from rich.progress import Progress as Bars
            except ImportError:
                return _PlainProgress()
            self._rich = Bars(
                SpinnerColumn(),
                TextColumn("{task.description:<22}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[status]}"),
                console=Console(stderr=True),
            )
            self._rich.start()
            return _RichProgress(self._rich)
        return _PlainProgress()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._rich is not None:
            self._rich.stop()
