"""Measure how hard a value model pushes at a junction, against the model the default weights were chosen with, and
optionally stamp the ratio into a copy of it as metadata `sia_edge.weight_scale`.

    PYTHONPATH=. python tools/weight_scale.py sia_edge/models/gemma3-270m-clean.onnx \
        --prompts tools/prompts/provocative-calibration.txt --write OUT.onnx

At a junction steering adds w * r_j to the k candidates' logits, so what moves the choice is w times the spread of
the k scores r_j. The gates' default weights (dense 1, sparse 4) were chosen with the token sentiment model
(docs/results.md, "Weight, length and normalisation"); a model whose candidate scores spread three times less pushes
three times less at the same w. Both models score the same unsteered texts here (the dense gate at a negligible
weight, so every step is scored and nothing is steered), and the spread of a junction is the standard deviation of
its k scores. The scale is the reference's median spread over the model's, to two significant digits. The runtime
multiplies a gate's default w by it when the user gives no weight (an explicit -w is used as given).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
REFERENCE = REPO / "sia_edge" / "models" / "gemma3-270m-sentiment.onnx"
MEASURING_WEIGHT = 1e-9  # scores every step; too small to change a choice


def junction_spreads(engine, value_model: str, prompts: list[str], max_tokens: int) -> np.ndarray:
    """The standard deviation of the k candidate scores at every step of the texts (prompt i with seed i)."""
    spreads = []
    for seed, prompt in enumerate(prompts):
        for event in engine.stream(prompt, value_model=value_model, gate="dense", weight=MEASURING_WEIGHT,
                                   max_tokens=max_tokens, seed=seed):
            if event.rewards is not None:
                spreads.append(float(np.std(np.asarray(event.rewards, dtype=np.float64))))
        print(f"  {Path(value_model).name}: {seed + 1}/{len(prompts)} prompts", file=sys.stderr, end="\r")
    print(file=sys.stderr)
    return np.asarray(spreads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("value_model", help="the ONNX value model to measure")
    parser.add_argument("--reference", default=str(REFERENCE), help="the model the default weights were chosen with")
    parser.add_argument("--prompts", default=str(REPO / "tools" / "prompts" / "provocative-calibration.txt"),
                        help="one prompt per line; use prompts neither model was trained on")
    parser.add_argument("--model", default=None, help="GGUF base model [default: the built-in one]")
    parser.add_argument("-n", "--max-tokens", type=int, default=32, help="tokens per text")
    parser.add_argument("--write", type=Path, default=None,
                        help="write a copy of the value model with the measured sia_edge.weight_scale here "
                             "(needs the train extra: pip install 'sia-edge[train]')")
    args = parser.parse_args()

    from sia_edge import Engine

    prompts = [line.strip() for line in Path(args.prompts).read_text().splitlines() if line.strip()]
    engine = Engine(args.model, parallel=1)
    measured = {}
    for name, path in (("reference", args.reference), ("model", args.value_model)):
        spreads = junction_spreads(engine, path, prompts, args.max_tokens)
        measured[name] = {"file": str(path), "junctions": int(spreads.size), "median_spread": float(np.median(spreads)),
                          "mean_spread": float(spreads.mean())}
    scale = float(f"{measured['reference']['median_spread'] / measured['model']['median_spread']:.2g}")
    report = {"prompts": args.prompts, "n_prompts": len(prompts), "max_tokens": args.max_tokens, **measured,
              "weight_scale": scale}
    if args.write is not None:
        from sia_edge.train.export import stamp_metadata

        stamp_metadata(Path(args.value_model), args.write, {"weight_scale": f"{scale:g}"})
        report["written"] = str(args.write)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
