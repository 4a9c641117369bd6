"""Evaluation reports: results.md (tables, paired comparisons, ratio control, goals) and tradeoff.png."""

from __future__ import annotations

import math
from pathlib import Path

from .stats import comparison_key


def _fmt(ci: dict, digits: int = 3, transform=None) -> str:
    if ci["mean"] is None:
        return "–"
    f = transform or (lambda v: v)
    return f"{f(ci['mean']):.{digits}f} [{f(ci['low']):.{digits}f}, {f(ci['high']):.{digits}f}]"


def _num(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _weights(weight) -> str:
    """One w for every arm, or each gate's default ({gate: w}) grouped: '1 (dense), 2 (entropy, random)'."""
    if not isinstance(weight, dict):
        return f"{weight:g}"
    groups: dict[float, list[str]] = {}
    for gate, w in weight.items():
        groups.setdefault(w, []).append(gate)
    return ", ".join(f"{w:g} ({', '.join(gates)})" for w, gates in groups.items())


def markdown_report(summary: dict, config: dict) -> str:
    """results.md: the per-arm table, the paired comparisons, ratio control and the goals."""
    lines = [f"# Evaluation: {config['n_prompts']} prompts x {config['seeds']} seeds, {config['max_tokens']} tokens",
             "",
             f"Judge: `{config['judge']}` on the continuation. Value score: sigmoid of the value model on "
             f"prompt + continuation. Perplexity: unsteered base model, T=1, full vocabulary. "
             f"k={config['top_k']}, w={_weights(config['weight'])}, T={config['temperature']:g}. "
             "Brackets: 95% percentile-bootstrap CI over prompts.", "",
             "| arm | samples | realised ratio | judge | value score | perplexity | distinct-1 | distinct-2 "
             "| VM calls/token | ms/token |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, arm in summary["arms"].items():
        ratio = arm["ratio_control"]
        lines.append(f"| {name} | {arm['samples']} | {ratio['mean']:.3f} ± {ratio['sd']:.3f} | {_fmt(arm['judge'])} "
                     f"| {_fmt(arm['value_score'])} | {_fmt(arm['log_ppl'], 2, math.exp)} "
                     f"| {_num(arm['distinct_1']['mean'])} | {_num(arm['distinct_2']['mean'])} "
                     f"| {_num(arm['value_calls_per_token']['mean'], 2)} | {_num(arm['ms_per_token']['mean'], 1)} |")
    lines += ["", "## Paired difference vs none (per prompt, same seeds)", "",
              "| arm | Δ judge | Δ value score | Δ log-perplexity (nats/token) |", "|---|---|---|---|"]
    for name, diff in summary["paired_vs_none"].items():
        lines.append(f"| {name} | {_fmt(diff['judge'])} | {_fmt(diff['value_score'])} | {_fmt(diff['log_ppl'])} |")
    for control, title in (("random", "Entropy gate vs random gate at the same realised ratio (the key question)"),
                           ("first-n", "Entropy gate vs first-n (the positional control) at the same junction count")):
        comparisons = summary.get(comparison_key(control), {})
        if comparisons:
            lines += ["", f"## {title}", "",
                      f"| entropy arm − {control} arm | Δ judge | Δ value score | Δ log-perplexity |",
                      "|---|---|---|---|"]
            for name, diff in comparisons.items():
                lines.append(f"| {name} − {control}@{name.split('@')[1]} | {_fmt(diff['judge'])} "
                             f"| {_fmt(diff['value_score'])} | {_fmt(diff['log_ppl'])} |")
    lines += ["", "## Ratio control (per generation)", "",
              "| arm | target | realised mean | sd | min–max | mean abs. error | within ±0.1 | mean H at junctions |",
              "|---|---|---|---|---|---|---|---|"]
    for name, arm in summary["arms"].items():
        r = arm["ratio_control"]
        target = "–" if r["target"] is None else f"{r['target']:.3f}"
        error = "–" if "mean_abs_error" not in r else f"{r['mean_abs_error']:.3f}"
        within = "–" if "within_0.1" not in r else f"{100 * r['within_0.1']:.0f}%"
        h = "–" if r["junction_entropy_mean"] is None else f"{r['junction_entropy_mean']:.2f}"
        lines.append(f"| {name} | {target} | {r['mean']:.3f} | {r['sd']:.3f} | {r['min']:.2f}–{r['max']:.2f} "
                     f"| {error} | {within} | {h} |")
    lines += ["", "## Goals", ""] + goal_lines(summary["goals"])
    return "\n".join(lines) + "\n"


def goal_lines(verdict: dict) -> list[str]:
    lines = []
    half = verdict.get("sparse_recovers_half_of_dense")
    if half:
        # a share of a gain that is not there (dense within its CI of zero) is noise divided by ~0: not printed
        share = "–" if half["share_of_dense_judge_gain"] is None or not half.get("dense_gain_established") else (
            f"{half['share_of_dense_judge_gain']:.2f} [{half['low']:.2f}, {half['high']:.2f}]")
        note = "" if half.get("dense_gain_established") else (
            "; dense itself does not raise the judge score beyond its CI, so there is no gain to share")
        lines.append(f"- Steering ~20% of tokens (realised {half['realised_ratio']:.3f}) recovers >= half of dense's "
                     f"judge gain: **{'met' if half['met'] else 'not met'}** (share {share}, dense gain "
                     f"{_num(half['dense_gain'])}{note}).")
    for name, beat in verdict.get("entropy_beats_random", {}).items():
        lines.append(f"- {name} beats random at the same realised ratio beyond the CI: "
                     f"**{'met' if beat['met'] else 'not met'}** (Δ judge {_fmt(beat['judge_diff'])}).")
    closer = verdict.get("sparse_closer_to_base_perplexity", {})
    if closer:
        met = [name for name, c in closer.items() if c["met"]]
        lines.append(f"- Sparse arms keep log-perplexity closer to none than dense does: "
                     f"**{len(met)}/{len(closer)} arms** ({', '.join(met) or 'none'}).")
    return lines or ["- not enough arms to judge the goals"]


def plot_tradeoff(summary: dict, path: Path) -> None:
    """Judge score vs realised ratio and vs cost (value-model calls per token), one marker style per arm family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    style = {"none": ("X", "black"), "dense": ("*", "tab:red"), "entropy": ("o", "tab:blue"),
             "online": ("D", "tab:cyan"), "random": ("s", "tab:orange"), "first-n": ("^", "tab:green")}
    other = ("P", "tab:purple")  # any gate added to the registry later
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    seen = set()
    for name, arm in summary["arms"].items():
        marker, colour = style.get(arm["family"], other)
        judge = arm["judge"]
        if judge["mean"] is None:
            continue
        yerr = [[judge["mean"] - judge["low"]], [judge["high"] - judge["mean"]]]
        label = arm["family"] if arm["family"] not in seen else None
        seen.add(arm["family"])
        for axis, x in ((axes[0], arm["junction_ratio"]["mean"]), (axes[1], arm["value_calls_per_token"]["mean"])):
            axis.errorbar([x], [judge["mean"]], yerr=yerr, fmt=marker, color=colour, markersize=9, capsize=3,
                          label=label if axis is axes[0] else None)
            axis.annotate(name, (x, judge["mean"]), textcoords="offset points", xytext=(5, 5), fontsize=7)
    axes[0].set_xlabel("realised junction ratio")
    # the cost that carries over to any value model; wall ms/token is noise on a shared machine, and in a
    # batched run it measures the batch, not the arm
    axes[1].set_xlabel("value-model calls per token (cost)")
    axes[0].set_ylabel("judge score (95% CI)")
    axes[0].legend(fontsize=8)
    for axis in axes:
        axis.grid(alpha=0.3)
    figure.suptitle("Alignment trade-off: judge score vs steering ratio and cost")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


