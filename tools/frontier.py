"""The alignment / fluency frontier across several `sia-edge eval` runs of the same prompts and seeds.

    python tools/frontier.py --run w1=runs/frontier/n128-w1 --run w2=runs/frontier/n128-w2 \
        --run w4=runs/frontier/n128-w4 --reference dense@w1 --plot docs/frontier-128.png

Each run is one weight (or normalisation, or length) and its arms; runs share `sia-edge eval`'s seeds
(prompt index + 10000 x i), so the same prompt and seed are the same unsteered text in every run, and any run may
borrow the `none` arm of the first run that has one (`--none-from` picks another). Every comparison is paired by
prompt and seed, on the prompts both sides have, with 95% bootstrap CIs over prompts (stats.py). Per arm: judge
gain over none, share of the reference arm's gain, log-perplexity shift (nats/token; the unsteered model's
log-likelihood, so the shift measures how far steering pulls the text from the model's own distribution),
distinct-2 shift, the realised ratio and value-model calls per token. Then entropy - random and entropy - first-n
within each run. Prints Markdown; `--json` writes the numbers; `--plot` draws judge gain against perplexity shift.
"""

import argparse
import json
from pathlib import Path

import numpy as np

from sia_edge.evaluation.run import read_samples
from sia_edge.evaluation.stats import bootstrap_ci, bootstrap_ratio_ci, paired_differences


def ci(values) -> tuple[float, float, float]:
    return bootstrap_ci(list(values))


def show(triple, digits=3) -> str:
    mean, low, high = triple
    return f"{mean:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"


def load_runs(specs: list[str], limit: int | None) -> dict[str, dict[str, list[dict]]]:
    """{run label: {arm: samples}} in the order given; only prompts with index < limit, if given."""
    runs = {}
    for spec in specs:
        label, _, directory = spec.partition("=")
        by_arm: dict[str, list[dict]] = {}
        for sample in read_samples(Path(directory) / "samples.jsonl"):
            if limit is None or sample["prompt_index"] < limit:
                by_arm.setdefault(sample["arm"], []).append(sample)
        runs[label] = by_arm
    return runs


def across_runs(runs) -> list[dict]:
    """The same arm at another weight (or length, or normalisation): each later run minus the first that has it."""
    out = []
    firsts: dict[str, tuple[str, list[dict]]] = {}
    for label, by_arm in runs.items():
        for arm, samples in by_arm.items():
            if arm not in firsts:
                firsts[arm] = (label, samples)
                continue
            base_label, base = firsts[arm]
            out.append(contrast(f"{label} - {base_label}", arm, samples, base))
    return out


def contrast(run: str, name: str, a: list[dict], b: list[dict]) -> dict:
    """a - b, paired by prompt and seed: judge and log-perplexity, with CIs."""
    diff = paired_differences(a, b, "judge")
    return {"run": run, "contrast": name, "prompts": len(diff), "judge": ci(diff.values()),
            "log_ppl": ci(paired_differences(a, b, "log_ppl").values())}


def shared_prompts(a: dict[int, float], b: dict[int, float]) -> list[int]:
    return sorted(set(a) & set(b))


def arm_rows(runs, none: list[dict], reference: str) -> list[dict]:
    """One row per (run, arm). `reference` is ARM@LABEL (e.g. dense@w1), or 'own': each run's own dense arm."""
    rows = []
    for label, by_arm in runs.items():
        if reference == "own":
            ref_samples = by_arm.get("dense")
        else:
            ref_arm, _, ref_run = reference.rpartition("@")
            ref_samples = runs.get(ref_run, {}).get(ref_arm)
        ref_gain = paired_differences(ref_samples, none, "judge") if ref_samples else {}
        for arm, samples in by_arm.items():
            if arm == "none":
                continue
            gain = paired_differences(samples, none, "judge")
            row = {"run": label, "arm": arm, "name": f"{arm} {label}", "prompts": len(gain),
                   "samples": len(samples), "judge_gain": ci(gain.values()),
                   "log_ppl_shift": ci(paired_differences(samples, none, "log_ppl").values()),
                   "distinct_2_shift": ci(paired_differences(samples, none, "distinct_2").values()),
                   "value_score_gain": ci(paired_differences(samples, none, "value_score").values()),
                   "ratio": float(np.mean([s["junction_ratio"] for s in samples])),
                   "calls_per_token": float(np.mean([s["value_calls_per_token"] for s in samples]))}
            common = shared_prompts(gain, ref_gain)
            if common:
                row["share_of_reference"] = bootstrap_ratio_ci([gain[i] for i in common],
                                                               [ref_gain[i] for i in common])
            rows.append(row)
    return rows


def contrasts(runs) -> list[dict]:
    """entropy@R - random@R and entropy@R - first-n@R within each run (same weight, same prompts and seeds)."""
    out = []
    for label, by_arm in runs.items():
        for arm in by_arm:
            if not arm.startswith("entropy@"):
                continue
            ratio = arm.partition("@")[2]
            for other in (f"random@{ratio}", f"first-n@{ratio}"):
                if other in by_arm:
                    out.append(contrast(label, f"{arm} - {other}", by_arm[arm], by_arm[other]))
    return out


def markdown(rows, pairs, reference: str) -> str:
    lines = [f"| arm | prompts | judge gain | share of {reference} | log-ppl shift | distinct-2 shift | "
             "value gain | ratio | VM calls/token |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        share = show(r["share_of_reference"], 2) if "share_of_reference" in r else "-"
        lines.append(f"| {r['name']} | {r['prompts']} | {show(r['judge_gain'])} | {share} | "
                     f"{show(r['log_ppl_shift'])} | {show(r['distinct_2_shift'])} | {show(r['value_score_gain'])} | "
                     f"{r['ratio']:.3f} | {r['calls_per_token']:.2f} |")
    lines += ["", "| run | contrast | prompts | Δ judge | Δ log-ppl |", "|---|---|---|---|---|"]
    for p in pairs:
        lines.append(f"| {p['run']} | {p['contrast']} | {p['prompts']} | {show(p['judge'])} | {show(p['log_ppl'])} |")
    return "\n".join(lines)


def plot(rows, path: Path, budget: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    families = sorted({r["arm"].partition("@")[0] for r in rows})
    colours = dict(zip(families, plt.cm.tab10.colors))
    for r in rows:
        x, (y, low, high) = r["log_ppl_shift"][0], r["judge_gain"]
        xl, xh = r["log_ppl_shift"][1:]
        ax.errorbar(x, y, yerr=[[y - low], [high - y]], xerr=[[x - xl], [xh - x]], fmt="o", capsize=2,
                    color=colours[r["arm"].partition("@")[0]], alpha=0.8)
        ax.annotate(r["name"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.axvline(budget, color="grey", linestyle="--", linewidth=1, label=f"budget {budget} nats/token")
    ax.axhline(0, color="black", linewidth=0.5)
    ax.set_xlabel("log-perplexity shift over unsteered (nats/token)")
    ax.set_ylabel("judge gain over unsteered")
    ax.set_title("Alignment against distribution shift (paired, 95% CIs)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", required=True, help="LABEL=EVAL_DIR (label e.g. w2); repeat")
    parser.add_argument("--none-from", default=None, help="EVAL_DIR whose none arm every run uses "
                                                         "[default: the first run that has one]")
    parser.add_argument("--reference", default="dense@w1", help="ARM@LABEL whose gain the shares divide by, or "
                                                                "'own': each run's own dense arm")
    parser.add_argument("--budget", type=float, default=0.03, help="log-perplexity budget drawn on the plot")
    parser.add_argument("--plot", default=None, help="PNG path for judge gain against perplexity shift")
    parser.add_argument("--json", dest="json_path", default=None, help="also write the numbers here")
    parser.add_argument("--limit", type=int, default=None, help="only the prompts with index < N (the prompts "
                                                                 "every run has, for like-for-like shares)")
    parser.add_argument("--min-prompts", type=int, default=20, help="leave out arms and contrasts with fewer "
                                                                      "prompts (a run cut short)")
    args = parser.parse_args()
    runs = load_runs(args.run, args.limit)
    if args.none_from:
        none = [s for s in read_samples(Path(args.none_from) / "samples.jsonl")
                if s["arm"] == "none" and (args.limit is None or s["prompt_index"] < args.limit)]
    else:
        none = next(by_arm["none"] for by_arm in runs.values() if "none" in by_arm)
    rows, pairs = arm_rows(runs, none, args.reference), contrasts(runs) + across_runs(runs)
    rows = [r for r in rows if r["prompts"] >= args.min_prompts]  # an arm cut short is noise, not a point
    pairs = [p for p in pairs if p["prompts"] >= args.min_prompts]
    print(markdown(rows, pairs, args.reference))
    if args.plot:
        plot(rows, Path(args.plot), args.budget)
    if args.json_path:
        Path(args.json_path).write_text(json.dumps({"arms": rows, "contrasts": pairs}, indent=1))


if __name__ == "__main__":
    main()
