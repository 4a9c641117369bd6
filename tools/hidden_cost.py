"""What reading hidden states costs the base model, in one run: decoding with them on against off, single stream
and batched slots, and the prefill. Rounds alternate on and off so that a noisy machine affects both alike.

    PYTHONPATH=. python tools/hidden_cost.py [--model GGUF] [--tokens 64] [--rounds 5] [--slots 8]

Prints one JSON object: tokens/s with hidden states on and off and their ratio (on / off, higher is better).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

PROMPT = "The weather in the mountains this weekend was"


def single(base, tokens: list[int], n: int, hidden: bool) -> tuple[float, float]:
    """(prefill seconds, decode tokens/s) of one greedy stream."""
    start = time.perf_counter()
    base.prefill(tokens, hidden=hidden)
    prefill = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(n):
        token = int(np.argmax(base.logits()))
        if hidden:
            np.array(base.hidden())  # what the decoder copies at a step
        base.step(token)
    return prefill, n / (time.perf_counter() - start)


def batched(base, tokens: list[int], n: int, slots: int, hidden: bool) -> float:
    """Decode tokens/s of `slots` greedy streams in one BatchContext."""
    from sia_edge.base_model import BatchContext

    context = BatchContext(base, slots, len(tokens) + n + 8)
    try:
        for slot in context.slots:
            slot.prefill(tokens, hidden=hidden)
        start = time.perf_counter()
        for _ in range(n):
            for slot in context.slots:
                if hidden:
                    np.array(slot.hidden())
                slot.step(int(np.argmax(slot.logits())))
            context.flush()
        return n * slots / (time.perf_counter() - start)
    finally:
        context.close()


def main() -> None:
    from sia_edge.base_model import BaseModel
    from sia_edge.models import resolve_base_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="GGUF [default: the built-in Gemma 3 270M]")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--slots", type=int, default=8)
    args = parser.parse_args()
    base = BaseModel(resolve_base_model(args.model), n_ctx=512)
    tokens = base.tokenize(PROMPT)
    runs = {"single": {True: [], False: []}, "batched": {True: [], False: []}, "prefill": {True: [], False: []}}
    for _ in range(args.rounds):
        for hidden in (False, True):
            prefill, rate = single(base, tokens, args.tokens, hidden)
            runs["prefill"][hidden].append(prefill)
            runs["single"][hidden].append(rate)
            runs["batched"][hidden].append(batched(base, tokens, args.tokens, args.slots, hidden))
    out = {"model": base.name, "tokens": args.tokens, "rounds": args.rounds, "slots": args.slots}
    for name, by in runs.items():
        on, off = statistics.median(by[True]), statistics.median(by[False])
        unit = "ms" if name == "prefill" else "tokens_per_s"
        scale = 1000 if name == "prefill" else 1
        out[name] = {f"on_{unit}": on * scale, f"off_{unit}": off * scale,
                     "on_over_off": on / off if name != "prefill" else off / on}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
