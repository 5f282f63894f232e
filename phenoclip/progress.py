"""Progress reporting: rich bars on a terminal, plain lines in batch logs, nothing with --quiet.

Everything goes to stderr so results on stdout stay clean for pipes.
"""

from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")

#: set by the CLI's ``--quiet``
QUIET = False

#: every warning of this process, so the run log can record them too
WARNINGS: list[str] = []


def info(message: str) -> None:
    """A status line on stderr (suppressed by ``--quiet``)."""
    if not QUIET:
        print(message, file=sys.stderr, flush=True)


def warn(message: str) -> None:
    """A warning on stderr; shown even with ``--quiet``, and recorded in ``OUT.log``."""
    WARNINGS.append(message)
    print(f"phenoclip: warning: {message}", file=sys.stderr, flush=True)


class Progress:
    """A single progress task. ``advance(n)`` as work completes; use as a context manager."""

    def __init__(self, description: str, total: float | None = None, unit: str = "items",
                 per_unit: tuple[float, str] | None = None):
        """``per_unit=(k, name)`` also shows the rate in ``name``/s, ``k`` of them per unit (pretraining
        counts steps and shows samples/s)."""
        self.description = description
        self.total = total
        self.unit = unit
        self.per_unit = per_unit
        self.done = 0.0
        self.skipped = 0.0
        self._rich = None
        self._task = None
        self._t0 = time.perf_counter()
        self._last_print = self._t0
        self._next_fraction = 0.1

    def __enter__(self) -> "Progress":
        if QUIET:
            return self
        if sys.stderr.isatty():
            # imported here: rich costs ~40 ms, only a terminal needs it, and every command imports this module
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichProgress,
                                       TextColumn, TimeElapsedColumn, TimeRemainingColumn)
            self._rich = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                                      TextColumn("ETA"), TimeRemainingColumn(),
                                      console=Console(stderr=True), transient=False)
            self._rich.__enter__()
            self._task = self._rich.add_task(self.description, total=self.total, rate="")
        return self

    def skip(self, n: float) -> None:
        """Count ``n`` units done before this run (a resumed pretraining): not part of the rate."""
        self.done += n
        self.skipped += n
        self._t0 = time.perf_counter()
        if self._rich is not None:
            self._rich.reset(self._task, completed=self.done, total=self.total, rate="")

    def rate(self, now: float | None = None) -> str:
        """``'12.3 steps/s, 394 samples/s'`` over this run so far ('' before any time has passed)."""
        elapsed = (now or time.perf_counter()) - self._t0
        if elapsed <= 0 or self.done <= self.skipped:
            return ""
        per_s = (self.done - self.skipped) / elapsed
        text = f"{per_s:.3g} {self.unit}/s"
        if self.per_unit:
            text += f", {per_s * self.per_unit[0]:.3g} {self.per_unit[1]}/s"
        return text

    def advance(self, n: float = 1) -> None:
        self.done += n
        if QUIET:
            return
        if self._rich is not None:
            self._rich.update(self._task, advance=n, rate=self.rate())
            return
        # plain lines for batch logs: at every 10% of the total, or every 30 s without a total
        now = time.perf_counter()
        if now - self._t0 < 1.0:
            return  # sub-second work gets no progress lines
        if self.total:
            frac = self.done / self.total
            if frac >= self._next_fraction or self.done >= self.total:
                while self._next_fraction <= frac:
                    self._next_fraction += 0.1
                self._line(now)
        elif now - self._last_print > 30:
            self._line(now)

    def _line(self, now: float) -> None:
        self._last_print = now
        total = f"/{self.total:g}" if self.total else ""
        elapsed = now - self._t0
        extra = [f"{elapsed:.1f} s"]
        if self.rate(now):
            extra.append(self.rate(now))
            left = (self.total - self.done) * elapsed / (self.done - self.skipped) if self.total else 0
            if left > 0:
                extra.append(f"ETA {left:.0f} s")
        print(f"{self.description}: {self.done:g}{total} {self.unit} ({', '.join(extra)})",
              file=sys.stderr, flush=True)

    def __exit__(self, *exc) -> None:
        if self._rich is not None:
            self._rich.__exit__(*exc)


def track(items: Iterable[T], description: str, total: int | None = None, unit: str = "items") -> Iterator[T]:
    """Iterate ``items`` with a progress bar."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Progress(description, total, unit) as bar:
        for item in items:
            yield item
            bar.advance(1)
