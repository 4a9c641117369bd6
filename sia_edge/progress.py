"""Progress bars that suit where stderr goes. tqdm redraws up to ten times a second: on a terminal that rewrites
one line, but in a log file (a background run, CI) every redraw is a new line. Every bar in the package comes from
`progress_bar`, which off a terminal updates at most every LOG_INTERVAL seconds."""

from __future__ import annotations

import sys

LOG_INTERVAL = 5.0  # seconds between updates when the bar's stream is not a terminal


def progress_bar(file=None, **options):
    """A tqdm bar on `file` (stderr by default); `options` go to tqdm (total, desc, unit, disable, ...)."""
    from tqdm import tqdm

    file = file if file is not None else sys.stderr
    if not is_terminal(file):
        options.setdefault("mininterval", LOG_INTERVAL)
    return tqdm(file=file, **options)


def is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
