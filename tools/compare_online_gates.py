"""Compare two online ratio controllers from one `sia-edge eval` run, paired by prompt and seed.

    python tools/compare_online_gates.py runs/online-vs-budget/samples.jsonl --ratios 0.2,0.5 \
        --a online --b online-budget

For each target ratio: how tightly each gate held the ratio on every generation (sd and mean absolute error of the
per-generation realised ratio, share within +-0.1), how often it steered a near-certain step (share of junctions
with H < 0.5 nats, where steering can change little), and the paired difference b - a in judge score and value
score with 95% bootstrap CIs over prompts (the same resampling as `sia-edge eval`). Prints Markdown.
"""

import argparse
import json

import numpy as np

from sia_edge.evaluation.stats import bootstrap_ci, paired_differences

CONFIDENT = 0.5  # nats: below this a step is near-certain


def control(samples: list[dict], target: float) -> dict:
    realised = np.array([s["junction_ratio"] for s in samples])
    junction_h = [s["entropies"][i] for s in samples for i in s["junction_steps"]]
    return {"n": len(samples), "mean": realised.mean(), "sd": realised.std(ddof=1),
            "mae": np.abs(realised - target).mean(), "within": np.mean(np.abs(realised - target) <= 0.1 + 1e-12),
            "confident": np.mean(np.array(junction_h) < CONFIDENT) if junction_h else float("nan"),
            "calls": np.mean([s["value_calls_per_token"] for s in samples])}


def ci_text(values) -> str:
    mean, low, high = bootstrap_ci(list(values))
    return f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("samples")
    parser.add_argument("--ratios", default="0.2,0.5")
    parser.add_argument("--a", default="online")
    parser.add_argument("--b", default="online-budget")
    args = parser.parse_args()
    samples = [json.loads(line) for line in open(args.samples, encoding="utf-8") if line.strip()]
    print("| target | gate | samples | realised mean | sd | mean abs. error | within ±0.1 | junctions with H < 0.5 "
          "| VM calls/token |")
    print("|---|---|---|---|---|---|---|---|---|")
    diffs = []
    for ratio in (float(r) for r in args.ratios.split(",")):
        arms = {gate: [s for s in samples if s["arm"] == f"{gate}@{ratio:g}"] for gate in (args.a, args.b)}
        for gate, rows in arms.items():
            if rows:
                c = control(rows, ratio)
                print(f"| {ratio:g} | {gate} | {c['n']} | {c['mean']:.3f} | {c['sd']:.3f} | {c['mae']:.3f} "
                      f"| {100 * c['within']:.0f}% | {100 * c['confident']:.1f}% | {c['calls']:.3f} |")
        if all(arms.values()):
            diffs.append((ratio, {m: paired_differences(arms[args.b], arms[args.a], m).values()
                                  for m in ("judge", "value_score", "log_ppl")}))
    print(f"\n| target | {args.b} − {args.a}: Δ judge | Δ value score | Δ log-perplexity |\n|---|---|---|---|")
    for ratio, d in diffs:
        print(f"| {ratio:g} | {ci_text(d['judge'])} | {ci_text(d['value_score'])} | {ci_text(d['log_ppl'])} |")


if __name__ == "__main__":
    main()
