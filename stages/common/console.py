"""Progress that reads well in a terminal and in a log file. On a terminal the libraries' progress bars (tqdm:
ours, transformers', sentence-transformers') redraw in place; written to a file (`make run > log`, CI, a Prefect
worker) each redraw would be a carriage return and the log one endless line. There, a bar becomes a line every
`EVERY_S` seconds and its final state, each ending with a newline.

    python -m stages.common.console     # a 3-second bar: try it with and without `2> log`
"""

from __future__ import annotations

import re
import sys
import time

EVERY_S = 30.0  # one progress line per bar this often in a log: enough to see it move, few enough to read


class ProgressLines:
    """A text stream over another that turns carriage-return redraws into whole lines, at most one per `every`
    seconds, and always a bar's last state before a newline; text without carriage returns passes as it is."""

    def __init__(self, stream, every: float = EVERY_S, clock=time.monotonic):
        self.stream, self.every, self.clock = stream, every, clock
        self.pending, self.partial, self.in_bar, self.last = "", "", False, float("-inf")

    def write(self, text: str) -> int:
        if not text:  # tqdm writes "" between redraws
            return 0
        if self.in_bar and not text.startswith(("\r", "\n")):  # a log line while a bar runs: the bar's state first
            self._redraw(self.partial)
            self._emit()
            self.partial, self.in_bar = "", False
        for piece in re.split(r"(\r|\n)", text):
            if piece == "\r":  # a redraw: what came since the last one is the bar's state
                self.in_bar = True
                self._redraw(self.partial)
                self.partial = ""
            elif piece == "\n" and self.in_bar:  # the bar is done: its final state as a line
                self._redraw(self.partial)
                self._emit()
                self.partial, self.in_bar = "", False
            elif self.in_bar:
                self.partial += piece
            else:
                self.stream.write(piece)
        return len(text)

    def _redraw(self, line: str) -> None:
        if line.strip():
            self.pending = line.rstrip()
            if self.clock() - self.last >= self.every:
                self._emit()

    def _emit(self) -> None:
        if self.pending:
            self.stream.write(self.pending + "\n")
            self.last = self.clock()
        self.pending = ""

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name: str):  # encoding, fileno, ...: the wrapped stream's
        return getattr(self.stream, name)


def progress_as_lines() -> None:
    """Progress bars as lines when stderr is not a terminal (idempotent)."""
    if not sys.stderr.isatty() and not isinstance(sys.stderr, ProgressLines):
        sys.stderr = ProgressLines(sys.stderr)


def main() -> int:
    from tqdm import tqdm

    progress_as_lines()
    for _ in tqdm(range(30), desc="a 3-second bar", unit="step"):
        time.sleep(0.1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
