"""Terminal output for every CLI command: progress bars, tables and colours, drawn by ``rich``.

The one module that talks to ``rich`` (a tools-only dependency, requirements-tools.txt;
the deployed function never imports it). Each helper decides once per stream:

* on a terminal, ``rich`` draws: a progress bar with rate and time left, tables,
  failures in red (``NO_COLOR`` turns colour off);
* otherwise (a pipe, a file, a test), plain text that scripts can read, and ``rich``
  is not even imported: progress as a line every 10%, each table row as its plain line.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence, TextIO

from handlers import log

if TYPE_CHECKING:
    from rich.console import Console

FAILURE_STYLE = "bold red"


def count(n: int, singular: str, plural: str | None = None) -> str:
    """``1 object``, ``2 objects``."""
    return f"{n} {singular if n == 1 else plural or singular + 's'}"


def is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def console(stream: TextIO) -> "Console":
    """A ``rich`` console writing to ``stream``, which the caller has found to be a terminal."""
    from rich.console import Console

    return Console(file=stream, force_terminal=True, highlight=False)


def styled(text: str, stream: TextIO, style: str = FAILURE_STYLE) -> str:
    """``text`` with ``style`` (default: a failure's red) when ``stream`` is a terminal; as is otherwise."""
    if not is_terminal(stream):
        return text
    from rich.text import Text

    terminal = console(stream)
    with terminal.capture() as captured:
        terminal.print(Text(text, style=style), end="", soft_wrap=True)
    return captured.get()


def failure(text: str, stream: TextIO) -> str:
    """A failure's line: red on a terminal."""
    return styled(text, stream, FAILURE_STYLE)


@dataclass(frozen=True)
class Column:
    """A table column: ``justify="right"`` for numbers, ``min_width`` to align tables printed one after another."""

    header: str
    justify: str = "left"
    min_width: int | None = None


class Table:
    """Rows shown as a ``rich`` table on a terminal, and as their plain lines otherwise.

    Each row has its cells (for the table) and its plain line (the command's output contract
    when not on a terminal; by default the cells joined by two spaces). A failed row is red
    on a terminal.
    """

    def __init__(self, columns: Sequence[Column], title: str | None = None) -> None:
        self.columns = tuple(columns)
        self.title = title
        self.rows: list[tuple[tuple[str, ...], str, bool]] = []

    def add(self, cells: Sequence[Any], *, plain: str | None = None, failed: bool = False) -> None:
        texts = tuple("" if cell is None else str(cell) for cell in cells)
        if len(texts) != len(self.columns):
            raise ValueError(f"a row of {len(texts)} cells for {len(self.columns)} columns")
        self.rows.append((texts, plain if plain is not None else "  ".join(texts), failed))

    def render(self, stream: TextIO, *, header: bool = True) -> None:
        """Write the table to ``stream``: ``header=False`` continues a table printed before (``tail``)."""
        if not is_terminal(stream):
            lines = ([self.title] if self.title and header else []) + [plain for _, plain, _ in self.rows]
            stream.write("".join(f"{line}\n" for line in lines))
            stream.flush()
            return
        from rich import box
        from rich.table import Table as RichTable

        table = RichTable(title=self.title if header else None, title_justify="left", show_header=header,
                          box=box.SIMPLE_HEAD, show_edge=False, header_style="bold", pad_edge=False)
        for column in self.columns:
            table.add_column(column.header, justify=column.justify, min_width=column.min_width,  # type: ignore[arg-type]
                             overflow="fold")
        for cells, _, failed in self.rows:
            table.add_row(*cells, style=FAILURE_STYLE if failed else None)
        console(stream).print(table)


class Progress:
    """A progress bar with count, rate and time left on a terminal; a plain line every 10% otherwise.

    ``total=None``: the end is not known (pages of search results): a moving bar on a terminal,
    a plain line at each step otherwise.

    Use as a context manager (the bar stops, and the cursor comes back, however the block ends);
    workers may call :meth:`advance` from several threads. While the bar is drawn, the JSON log
    lines the shared code writes (``handlers.log``) are printed above it instead of through it.
    """

    def __init__(self, stream: TextIO, label: str, total: int | None) -> None:
        self.stream = stream
        self.label = label
        self.total = total
        self.done = 0
        self.tty = is_terminal(stream)
        self._lock = threading.Lock()
        self._reported_tenth = 0
        self._bar: Any = None
        self._task: Any = None
        self._previous_log: TextIO | None = None
        self._finished = False

    def __enter__(self) -> "Progress":
        if self.tty:
            self._start_bar()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop_bar()

    def advance(self, step: int = 1) -> None:
        with self._lock:
            self.done += step
            if self._bar is not None:
                self._bar.update(self._task, completed=self.done)
            elif not self.tty:
                if self.total is None:
                    if step:
                        self.stream.write(f"{self.label}: {self.done}\n")
                        self.stream.flush()
                    return
                tenth = self.done * 10 // max(self.total, 1)
                if tenth > self._reported_tenth and self.done < self.total:
                    self._reported_tenth = tenth
                    self.stream.write(f"{self.label}: {self.done}/{self.total}\n")
                    self.stream.flush()

    def finish(self, note: str = "") -> None:
        """The last state, on its own line (``note`` after it)."""
        with self._lock:
            if self._finished:
                return
            self._finished = True
            suffix = f" {note}" if note else ""
            if self._bar is not None:
                # An open-ended bar ends full: what was found is the total.
                self._bar.update(self._task, completed=self.done, total=self.total if self.total is not None
                                 else self.done, note=suffix.strip())
        self._stop_bar()
        if not self.tty:
            total = "" if self.total is None else f"/{self.total}"
            self.stream.write(f"{self.label}: {self.done}{total}{suffix}\n")
            self.stream.flush()

    def _start_bar(self) -> None:
        terminal = console(self.stream)
        self._bar = _rich_progress(terminal)
        self._task = self._bar.add_task(self.label, total=self.total, note="")
        self._previous_log = log.redirect(_Above(terminal))
        self._bar.start()

    def _stop_bar(self) -> None:
        with self._lock:
            bar, self._bar = self._bar, None
        if bar is not None:
            bar.stop()
            log.redirect(self._previous_log)


def _rich_progress(terminal: "Console") -> Any:
    """label, bar, done/total, items per second, time elapsed, time left, a closing note."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.progress import Progress as RichProgress
    from rich.text import Text

    class RateColumn(ProgressColumn):
        """Items per second, from rich's estimate over the recent samples."""

        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            return Text("-/s" if speed is None else f"{speed:.1f}/s", style="progress.data.speed")

    return RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(),
                        TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(),
                        TextColumn("{task.fields[note]}"), console=terminal,
                        redirect_stdout=False, redirect_stderr=False)


class _Above:
    """A log stream that prints each line above a live progress bar (no wrapping: JSON stays one line)."""

    def __init__(self, terminal: "Console") -> None:
        self.terminal = terminal
        self._partial = ""

    def write(self, text: str) -> int:
        from rich.text import Text

        *lines, self._partial = (self._partial + text).split("\n")
        for line in lines:
            self.terminal.print(Text(line), soft_wrap=True)
        return len(text)

    def flush(self) -> None:
        pass
