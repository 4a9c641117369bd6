"""Two value models steering the same base model, compared from two `sia-edge eval` runs, paired by prompt and seed.

    python tools/compare_value_models.py --a bytes=runs/smollm-bytes --b tokens=runs/smollm-tokens \
        --arms dense,entropy@0.2 --judge-of none

Both runs use the same prompts, seeds and batch size, so their unsteered `none` arms are the same texts: a run may
leave `none` out and borrow it from the other (`--none-from`). For each arm: each model's judge gain over none,
the gain of a minus the gain of b with a 95% bootstrap CI over prompts, and each model's share of its own dense
gain. Prints Markdown. Only the judge score is compared: each run's value score is its own model's opinion.
"""

import argparse
import json
from pathlib import Path

import numpy as np

from sia_edge.evaluation.run import read_samples
from sia_edge.evaluation.stats import bootstrap_ci, bootstrap_ratio_ci, paired_differences


def load(spec: str) -> tuple[str, list[dict]]:
    name, _, directory = spec.partition("=")
    return name, read_samples(Path(directory) / "samples.jsonl")


def arm(samples: list[dict], name: str) -> list[dict]:
    return [s for s in samples if s["arm"] == name]


def ci(values) -> str:
    mean, low, high = bootstrap_ci(list(values))
    return f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a", required=True, help="NAME=EVAL_DIR")
    parser.add_argument("--b", required=True, help="NAME=EVAL_DIR")
    parser.add_argument("--arms", default="dense,entropy@0.2,random@0.2,first-n@0.2")
    parser.add_argument("--none-from", default=None, help="EVAL_DIR whose none arm both runs use [default: a's]")
    parser.add_argument("--own-none", action="store_true",
                        help="Each run's gains over its own none arm (both runs have one): for value models whose "
                             "runs decode the prompt differently, e.g. a hidden-state model's")
    args = parser.parse_args()
    (name_a, a), (name_b, b) = load(args.a), load(args.b)
    none = arm(read_samples(Path(args.none_from) / "samples.jsonl") if args.none_from else a, "none")
    none_b = arm(b, "none") if args.own_none else none
    print(f"| arm | judge gain, {name_a} | judge gain, {name_b} | {name_a} − {name_b} | realised ratio "
          f"{name_a} / {name_b} |\n|---|---|---|---|---|")
    gains = {}
    for name in args.arms.split(","):
        ga, gb = paired_differences(arm(a, name), none, "judge"), paired_differences(arm(b, name), none_b, "judge")
        gains[name] = (ga, gb)
        shared = sorted(set(ga) & set(gb))
        if not shared:
            continue
        ratios = [np.mean([s["junction_ratio"] for s in arm(x, name)]) for x in (a, b)]
        print(f"| {name} | {ci(ga.values())} | {ci(gb.values())} | {ci(ga[i] - gb[i] for i in shared)} "
              f"| {ratios[0]:.3f} / {ratios[1]:.3f} |")
    if "dense" in gains:
        print(f"\n| sparse arm | share of its own dense gain, {name_a} | {name_b} |\n|---|---|---|")
        for name, (ga, gb) in gains.items():
            if name == "dense":
                continue
            cells = []
            for sparse, dense in ((ga, gains["dense"][0]), (gb, gains["dense"][1])):
                shared = sorted(set(sparse) & set(dense))
                if bootstrap_ci([dense[i] for i in shared])[1] <= 0:  # no dense gain: a share of it is noise / ~0
                    cells.append("– (dense gain within its CI of 0)")
                    continue
                share, low, high = bootstrap_ratio_ci([sparse[i] for i in shared], [dense[i] for i in shared])
                cells.append(f"{share:.2f} [{min(low, high):.2f}, {max(low, high):.2f}]")
            print(f"| {name} | {cells[0]} | {cells[1]} |")
    print()
    for label, samples in ((name_a, a), (name_b, b)):
        for control in ("random@0.2", "first-n@0.2"):
            if arm(samples, control) and arm(samples, "entropy@0.2"):
                diff = paired_differences(arm(samples, "entropy@0.2"), arm(samples, control), "judge")
                print(f"- {label}: entropy@0.2 − {control}, Δ judge {ci(diff.values())}")
    print(json.dumps({"prompts": len({s['prompt_index'] for s in none}), "none_samples": len(none)}))


if __name__ == "__main__":
    main()
