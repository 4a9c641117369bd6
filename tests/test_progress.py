"""Progress bars off a terminal update at most every few seconds (issue 19: a log file got a new line every few
hundred milliseconds), and every bar in the package goes through the one helper."""

import io
import time
from pathlib import Path

from sia_edge.progress import LOG_INTERVAL, progress_bar

PACKAGE = Path(__file__).resolve().parents[1] / "sia_edge"


class Terminal(io.StringIO):
    def isatty(self):
        if self.closed:
            raise ValueError("I/O operation on closed file")  # as a real stream does
        return True


def redraws(stream: io.StringIO) -> int:
    return stream.getvalue().count("\r")


def run(stream, steps=30, pause=0.01) -> None:
    with progress_bar(total=steps, desc="x", file=stream) as bar:
        for _ in range(steps):
            time.sleep(pause)
            bar.update(1)


def test_a_log_file_gets_few_updates_and_a_terminal_live_ones():
    log, terminal = io.StringIO(), Terminal()
    run(log)
    run(terminal)  # 0.3 s: tqdm's 0.1 s interval redraws a few times
    assert redraws(log) <= 2 < redraws(terminal)  # the first draw and the final one only
    assert "30/30" in log.getvalue()
    assert progress_bar(total=1, file=io.StringIO()).mininterval == LOG_INTERVAL >= 3


def test_a_closed_or_odd_stream_counts_as_no_terminal():
    closed = Terminal()
    closed.close()
    from sia_edge.progress import is_terminal

    assert not is_terminal(closed) and not is_terminal(object()) and is_terminal(Terminal())


def test_no_module_builds_a_bar_of_its_own():
    direct = [str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py")
              if path.name != "progress.py" and "tqdm" in path.read_text()]
    assert not direct, f"use sia_edge.progress.progress_bar: {direct}"
