"""Time a look-ahead junction after 8 new tokens (the usual case between entropy junctions) with whichever sia_edge is
imported, to compare two checkouts back to back:

    PYTHONPATH=/path/to/old/clone python tools/look_ahead_junction_ab.py   # e.g. c4e9e2e: two decodes per junction
    python tools/look_ahead_junction_ab.py                                 # this checkout: one decode

Prints the median ms per junction (30 each) at prefixes of 32-1024 tokens, Gemma's block-8 look-ahead model.
`sia-edge bench` reports the same row for the installed checkout alone ("after 8 new tokens").
"""

import statistics
import time

import numpy as np

import sia_edge
from sia_edge.engine import Engine
from sia_edge.models import shipped_value_model_dir


def main() -> None:
    engine = Engine(value_model=shipped_value_model_dir() / "gemma3-270m-lookahead-l8-sentiment.onnx", threads=2)
    look_ahead = engine.base.look_ahead(10, engine.value_model.layer)
    rng = np.random.default_rng(0)
    candidates = np.arange(100, 110)
    medians = {}
    for length in (32, 128, 512, 1024):
        prefix = rng.integers(3, 20000, size=length).tolist()
        grown = prefix + rng.integers(3, 20000, size=8).tolist()
        times = []
        for _ in range(30):
            look_ahead.states(prefix, candidates)  # back to the prefix (untimed): the 8 tokens are new again
            start = time.perf_counter()
            look_ahead.states(grown, candidates)
            times.append(time.perf_counter() - start)
        medians[length] = round(1e3 * statistics.median(times), 2)
    engine.close()
    print(sia_edge.__file__, medians)


if __name__ == "__main__":
    main()
