"""Progress of long jobs: a tqdm bar on a terminal, plain lines in a log file.

A progress bar redraws itself with carriage returns: on a terminal that is one moving line,
but written to a file (a cluster job, `nohup`, CI) every redraw stays, thousands of
characters per job. `progress_bar` takes tqdm's arguments and gives a tqdm bar when
standard error is a terminal; otherwise a `LogLines` object with the same methods that
writes one line when the job starts, one about every `CXR_TF_LOG_SECONDS` seconds (default
30) with the count, the rate and what is left, and one when it ends, as Keras does for
non-interactive output (one line per epoch). Commands import it in place of tqdm.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

DEFAULT_SECONDS = 30.0


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get("CXR_TF_LOG_SECONDS", DEFAULT_SECONDS)))
    except ValueError:
        return DEFAULT_SECONDS


class LogLines:
    """tqdm's interface (iterate, `update`, `write`, `set_postfix`, `close`, context
    manager) as a few plain lines: start, every `interval` seconds, end."""

    def __init__(
        self,
        iterable: Iterable | None = None,
        total: int | None = None,
        desc: str = "",
        unit: str = "it",
        disable: bool = False,
        file: TextIO | None = None,
        interval: float | None = None,
        **_: Any,
    ) -> None:
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.disable, self.file = disable, file
        self.interval = _interval() if interval is None else interval
        self.n, self.postfix = 0, ""
        self.started = self.last = time.monotonic()
        self.closed = False
        self._line(f"{self.total} {self.unit}" if self.total else "started")

    def _out(self) -> TextIO:
        return self.file or sys.stderr

    def _line(self, text: str) -> None:
        if not self.disable:
            prefix = f"{self.desc}: " if self.desc else ""
            print(f"{prefix}{text}", file=self._out(), flush=True)

    def _status(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = self.n / elapsed
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        left = ""
        if self.total and rate > 0 and self.n < self.total:
            left = f", ~{(self.total - self.n) / rate:.0f} s left"
        extra = f", {self.postfix}" if self.postfix else ""
        return f"{done} {self.unit}, {rate:.1f} {self.unit}/s, {elapsed:.0f} s{left}{extra}"

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.interval and not (self.total and self.n >= self.total):
            self.last = now
            self._line(self._status())

    def set_postfix(self, refresh: bool = True, **values: Any) -> None:
        self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())

    def write(self, text: str) -> None:
        print(text, file=self._out(), flush=True)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._line(f"done, {self._status()}")

    def __iter__(self) -> Iterator:
        try:
            for item in self.iterable or ():
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> LogLines:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def interactive(stream: TextIO | None = None) -> bool:
    """Is the stream (default standard error) a terminal?"""
    stream = stream or sys.stderr
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def progress_bar(iterable: Iterable | None = None, **kwargs: Any) -> Any:
    """A tqdm bar on a terminal, `LogLines` otherwise; takes tqdm's arguments."""
    if interactive(kwargs.get("file")):
        from tqdm.auto import tqdm

        return tqdm(iterable, **kwargs)
    return LogLines(iterable, **kwargs)
