"""Replay gate policies on recorded unsteered entropy traces and compare how they choose junctions.

    python tools/replay_gates.py runs/eval-reduced/samples.jsonl --ratio 0.2 [--arm none]

For each policy and trace: the realised ratio, its error against the target, the mean entropy at junctions, and
the share of junctions that fall in the trace's own top-r entropies (what a clairvoyant per-prompt gate would pick).
Replays ignore the feedback of steering on the text, so they isolate the selection rule itself.
"""

import argparse
import json

import numpy as np

from sia_edge.calibration import shipped_calibration_path, tau_from_calibration
from sia_edge.gate import BudgetQuantileGate, EntropyGate, OnlineRatioGate


def replay_gate(gate, entropies: list[float], seed: int = 0) -> list[bool]:
    """The junction decisions a gate makes on a recorded entropy trace (no steering feedback)."""
    gate.reset(seed)
    return [gate.decide(step, h) for step, h in enumerate(entropies)]


def hindsight_top(entropies: list[float], ratio: float) -> set[int]:
    count = int(round(ratio * len(entropies)))
    return set(np.argsort(-np.asarray(entropies), kind="stable")[:count].tolist())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("samples")
    parser.add_argument("--ratio", type=float, default=0.2)
    parser.add_argument("--arm", default="none", help="arm whose traces to replay (unsteered: none)")
    args = parser.parse_args()
    samples = [json.loads(line) for line in open(args.samples) if line.strip()]
    fingerprint = json.load(open(args.samples.replace("samples.jsonl", "run.json")))["model_fingerprint"]
    calibration = json.load(open(shipped_calibration_path(fingerprint, 10, 1.0, "top-k")))
    tau = tau_from_calibration(calibration, args.ratio)
    traces = [s["entropies"] for s in samples if s["arm"] == args.arm and len(s["entropies"]) >= 16]
    policies = {"entropy (fixed tau)": EntropyGate(tau), "online (gate.py)": OnlineRatioGate(args.ratio, tau),
                "online-budget (proposed)": BudgetQuantileGate(args.ratio, tau)}
    print(f"{len(traces)} traces of arm {args.arm}, target ratio {args.ratio}, calibrated tau {tau:.3f}\n")
    print("| policy | realised ratio mean ± sd | mean abs. error | within ±0.1 | mean H at junctions "
          "| junctions in the trace's top-r | junctions with H < 0.5 |")
    print("|---|---|---|---|---|---|---|")
    for name, gate in policies.items():
        ratios, h_at, overlap, low = [], [], [], []
        for trace in traces:
            chosen = [i for i, j in enumerate(replay_gate(gate, trace)) if j]
            ratios.append(len(chosen) / len(trace))
            h_at += [trace[i] for i in chosen]
            top = hindsight_top(trace, args.ratio)
            overlap += [i in top for i in chosen]
            low += [trace[i] < 0.5 for i in chosen]
        r = np.asarray(ratios)
        print(f"| {name} | {r.mean():.3f} ± {r.std(ddof=1):.3f} | {np.abs(r - args.ratio).mean():.3f} "
              f"| {100 * np.mean(np.abs(r - args.ratio) <= 0.1):.0f}% | {np.mean(h_at):.2f} "
              f"| {100 * np.mean(overlap):.0f}% | {100 * np.mean(low):.0f}% |")


if __name__ == "__main__":
    main()
