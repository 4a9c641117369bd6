"""Score every sample of an eval run with a reward (a scorer of finished text), per arm, paired against `none`.

    python tools/score_arms.py runs/expB-clean --reward clean

Eval's own columns are the steering value model's score and the independent judge; this adds the proxy reward the
value model was distilled from (for `clean`: 1 - P(offensive) from alt-profanity-check), so the three can be read
side by side. Prints Markdown: the mean per arm, the share with P(offensive) > 0.5 (reward < 0.5), and the paired
difference from none with its 95% bootstrap CI over prompts.
"""

import argparse
from pathlib import Path

import numpy as np

from sia_edge.evaluation.run import read_samples
from sia_edge.evaluation.stats import bootstrap_ci, paired_differences
from sia_edge.rewards import load_reward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--reward", default="clean")
    args = parser.parse_args()
    samples = read_samples(args.run / "samples.jsonl")
    reward = load_reward(args.reward)
    scores = reward.score([s["text"] for s in samples])
    for sample, score in zip(samples, scores):
        sample["reward"] = float(score)
    arms = list(dict.fromkeys(s["arm"] for s in samples))
    none = [s for s in samples if s["arm"] == "none"]
    print(f"| arm | mean {reward.name} | share < 0.5 | Δ vs none |\n|---|---|---|---|")
    for arm in arms:
        rows = [s for s in samples if s["arm"] == arm]
        values = np.array([s["reward"] for s in rows])
        diff = "–"
        if arm != "none" and none:
            mean, low, high = bootstrap_ci(list(paired_differences(rows, none, "reward").values()))
            diff = f"{mean:+.4f} [{low:+.4f}, {high:+.4f}]"
        print(f"| {arm} | {values.mean():.4f} | {100 * np.mean(values < 0.5):.1f}% | {diff} |")


if __name__ == "__main__":
    main()
