"""Interleaved A/B speed check on a busy machine: gate none vs entropy@0.2, same prompts and seeds, one after the
other, and the median of the per-pair tokens/s ratios (a burst of load hits one pair, not one arm's total).

    PYTHONPATH=. python tools/ab_speed.py --value-model sia_edge/models/byte-sentiment.onnx --repetitions 6

`sia-edge bench` is the full benchmark; on a machine shared with other jobs its arm totals can differ by more than
the value model costs (docs/results.md, byte-level value model).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sia_edge.bench import BENCH_PROMPTS  # noqa: E402
from sia_edge.engine import Engine  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="GGUF [default: the built-in Gemma 3 270M]")
    parser.add_argument("--value-model", default=None, help="ONNX value model [default: the resolved one]")
    parser.add_argument("--repetitions", type=int, default=6)
    parser.add_argument("-n", "--max-tokens", type=int, default=64)
    args = parser.parse_args()
    engine = Engine(model=args.model, value_model=args.value_model)
    pairs = []
    for rep in range(args.repetitions):
        for i, prompt in enumerate(BENCH_PROMPTS):
            pair = {}
            for arm, options in (("none", {"gate": "none"}), ("entropy@0.2", {"gate": "entropy", "ratio": 0.2})):
                stats = engine.generate(prompt, max_tokens=args.max_tokens, seed=100 * rep + i, **options).stats
                pair[arm] = {"tokens_per_second": stats.tokens_per_second, "junction_ratio": stats.junction_ratio,
                             "value_model_ms_per_token": 1000 * stats.value_model_seconds / max(1, stats.tokens)}
            pairs.append(pair)
            print(f"pair {len(pairs)}: {pair['entropy@0.2']['tokens_per_second'] / pair['none']['tokens_per_second']:.3f}",
                  file=sys.stderr, flush=True)
    steered = [p["entropy@0.2"] for p in pairs]
    print(json.dumps({
        "value_model": engine.value_model.path.name if engine.value_model else None,
        "pairs": len(pairs),
        "median_speed_ratio": statistics.median(p["entropy@0.2"]["tokens_per_second"] / p["none"]["tokens_per_second"]
                                                for p in pairs),
        "none_tokens_per_second": statistics.mean(p["none"]["tokens_per_second"] for p in pairs),
        "entropy_tokens_per_second": statistics.mean(s["tokens_per_second"] for s in steered),
        "value_model_ms_per_token": statistics.mean(s["value_model_ms_per_token"] for s in steered),
        "realised_ratio": statistics.mean(s["junction_ratio"] for s in steered),
    }, indent=1))


if __name__ == "__main__":
    main()
