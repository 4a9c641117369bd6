"""Evaluation: does steering a few uncertain tokens buy most of the alignment of steering all of them, and does
choosing them by entropy matter?

Every arm generates from every prompt with every seed; a prompt and seed pair is the same across arms, so arms
are compared pairwise. Per sample we record the value model's score of the text (the proxy objective being
steered), an independent judge's score of the continuation, the unsteered base model's perplexity of the
continuation (distribution preservation), distinct-1/2 (repetition), the realised junction ratio and the cost.
Samples of an arm are generated batched (`--batch-size` sequences per llama.cpp decode), and the loop records each
token's base log-probability as it goes, so perplexity needs no second pass. Aggregates carry 95% percentile-bootstrap confidence intervals over prompts (seeds are averaged within a prompt
first, so a prompt is the unit of resampling).

Arms (`--arms`, comma-separated):
    none, dense                     the unsteered base arm and ARGS (steer every token)
    entropy@R                       SIA: tau from the calibration for target ratio R
    online@R                        the online ratio controller holding R on every prompt (prior tau calibrated)
    random@R                        steer each token with probability q = the *realised* ratio of entropy@R
    first-n@R                       steer the first N tokens, N = the realised mean junction count of entropy@R
random@R and first-n@R run right after entropy@R, which must be in the same run.

Output directory: run.json (settings; a restart with other settings is refused), samples.jsonl (appended as it
goes; a restart skips samples already there), results.json, results.md, tradeoff.png.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np

from .batch import DEFAULT_BATCH_SIZE
from .calibrate import load_calibration, read_prompt_file, sampling_options, tau_from_calibration, write_json
from .cli import model_options
from .decoder import without_leading_bos
from .errors import InvalidSettingError, SiaError
from .settings import GenerationSettings

FORMAT = 2  # 2: perplexity recorded by the (batched) generation loop instead of a second stepwise pass
EVAL_BATCH_SIZE = 16  # ~2.4x the tokens/s of one sequence on 2 cores; see docs/results.md
DEFAULT_ARMS = ("none,dense,entropy@0.2,entropy@0.5,entropy@0.8,online@0.2,online@0.5,"
                "random@0.2,random@0.5,random@0.8,first-n@0.2,first-n@0.5,first-n@0.8")
FAMILIES = ("none", "dense", "entropy", "online", "random", "first-n")
MATCHED = ("random", "first-n")  # families whose parameter comes from the realised behaviour of entropy@R
# Metrics averaged per arm; log_ppl is the mean negative log-likelihood per token (perplexity = exp(log_ppl)).
METRICS = ("value_score", "judge", "log_ppl", "distinct_1", "distinct_2", "junction_ratio", "value_calls_per_token",
           "ms_per_token")


# --- arms --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Arm:
    family: str  # one of FAMILIES
    ratio: float | None = None  # target (entropy, online) or the entropy arm matched (random, first-n)

    @property
    def name(self) -> str:
        return self.family if self.ratio is None else f"{self.family}@{self.ratio:g}"

    @property
    def matched_to(self) -> str | None:
        return f"entropy@{self.ratio:g}" if self.family in MATCHED else None


def parse_arms(text: str) -> list[Arm]:
    """'none,entropy@0.2,random@0.2' -> Arms in run order: matched arms after the entropy arms they copy."""
    arms = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        family, _, ratio_text = part.partition("@")
        if family not in FAMILIES:
            raise InvalidSettingError(f"unknown arm {part!r}: use {', '.join(FAMILIES)} (with @R where needed)")
        needs_ratio = family not in ("none", "dense")
        if needs_ratio != bool(ratio_text):
            raise InvalidSettingError(f"arm {part!r}: {family} " + ("needs @R, e.g. @0.2" if needs_ratio
                                                                      else "takes no @R"))
        try:
            ratio = float(ratio_text) if ratio_text else None
        except ValueError:
            raise InvalidSettingError(f"arm {part!r}: {ratio_text!r} is not a number") from None
        if ratio is not None and not 0.0 < ratio < 1.0:
            raise InvalidSettingError(f"arm {part!r}: the ratio must be strictly between 0 and 1")
        arm = Arm(family, ratio)
        if arm not in arms:
            arms.append(arm)
    if not arms:
        raise InvalidSettingError(f"no arms given, got {text!r}")
    names = {arm.name for arm in arms}
    for arm in arms:
        if arm.matched_to and arm.matched_to not in names:
            raise InvalidSettingError(f"arm {arm.name} copies the realised ratio of {arm.matched_to}: add that arm")
    return _run_order(arms)


def _run_order(arms: list[Arm]) -> list[Arm]:
    """The given order, except that each matched arm runs right after the entropy arm it copies (so a run cut
    short still has complete entropy-vs-random pairs)."""
    ordered = []
    for arm in arms:
        if arm.family not in MATCHED:
            ordered.append(arm)
            ordered += [m for m in arms if m.matched_to == arm.name]
    return ordered


def arm_settings(arm: Arm, base: GenerationSettings, calibration: dict | None, samples: list[dict]) -> GenerationSettings:
    """The generation settings of one arm; matched arms read the finished samples of their entropy arm."""
    if arm.family in ("none", "dense"):
        return base.with_(gate=arm.family)
    if arm.family == "entropy":
        return base.with_(gate="entropy", tau=tau_from_calibration(calibration, arm.ratio))
    if arm.family == "online":
        return base.with_(gate="online", ratio=arm.ratio, tau=tau_from_calibration(calibration, arm.ratio))
    source = [s for s in samples if s["arm"] == arm.matched_to]
    if not source:
        raise SiaError(f"arm {arm.name} needs the samples of {arm.matched_to}, and there are none")
    if arm.family == "random":  # token-weighted, so the expected junction count matches
        q = sum(s["junctions"] for s in source) / max(1, sum(s["tokens"] for s in source))
        return base.with_(gate="random", q=q)
    return base.with_(gate="first-n", first_n=round(float(np.mean([s["junctions"] for s in source]))))


# --- per-sample measurements -------------------------------------------------------------------------------


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def distinct_n(tokens: list[int], n: int) -> float:
    """Share of the n-grams of a text that are distinct (1.0 = no repetition); nan if it has none."""
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) if grams else math.nan


def sample_record(engine, judge, prompt: str, settings: GenerationSettings, result, events) -> dict:
    """Everything measured about one finished generation. Perplexity comes from the log-probabilities the loop
    recorded (the unsteered base model's, T = 1, full vocabulary), so no second pass over the text is needed."""
    steps = [event for event in events if event.token_id >= 0]  # -1: a held-back stop-string tail, not a step
    entropies = [event.entropy for event in steps]
    junction_entropies = [event.entropy for event in steps if event.junction]
    log_probs = np.asarray([event.log_prob for event in steps], dtype=np.float64)
    stats = result.stats
    continuation = list(result.token_ids)
    scored = without_leading_bos(engine.tokenize(prompt), engine.base.bos_id) + continuation  # what the VM sees
    return {
        "seed": stats.seed,
        "text": result.text,
        "stop_reason": result.stop_reason,
        "tokens": stats.tokens,
        "junctions": stats.junctions,
        "junction_ratio": stats.junction_ratio,
        "value_model_calls": stats.value_model_calls,
        "value_calls_per_token": stats.value_model_calls / max(1, stats.tokens),
        "ms_per_token": 1000.0 * stats.total_seconds / max(1, stats.tokens),
        "value_score": sigmoid(float(engine.value_model.score_sequences([scored])[0])),
        "judge": float(judge.score([result.text])[0]),
        "log_ppl": float(-log_probs.mean()) if log_probs.size else math.nan,
        "distinct_1": distinct_n(continuation, 1),
        "distinct_2": distinct_n(continuation, 2),
        "entropy_mean": float(np.mean(entropies)) if entropies else math.nan,
        "junction_entropy_mean": float(np.mean(junction_entropies)) if junction_entropies else math.nan,
        "entropies": [round(float(h), 4) for h in entropies],  # per step, for offline replays of gate policies
        "gate": settings.build_gate().describe(),
        "settings": {key: getattr(settings, key) for key in ("gate", "tau", "ratio", "q", "first_n")},
    }


# --- statistics --------------------------------------------------------------------------------------------


def _resamples(n: int, n_boot: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def bootstrap_ci(values, level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): the mean and its percentile-bootstrap confidence interval. NaNs are dropped.

    Degenerate cases: no values -> all nan; one value (or all equal) -> a zero-width interval.
    """
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return (math.nan, math.nan, math.nan)
    mean = float(x.mean())
    if x.size == 1:
        return (mean, mean, mean)
    means = x[_resamples(x.size, n_boot, seed)].mean(axis=1)
    low, high = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return (mean, float(min(low, mean)), float(max(high, mean)))


def bootstrap_ratio_ci(numerator, denominator, level: float = 0.95, n_boot: int = 2000,
                       seed: int = 0) -> tuple[float, float, float]:
    """mean(numerator) / mean(denominator) over paired values, with a percentile-bootstrap interval."""
    a, b = np.asarray(numerator, dtype=np.float64), np.asarray(denominator, dtype=np.float64)
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    if a.size == 0 or b.mean() == 0:
        return (math.nan, math.nan, math.nan)
    ratio = float(a.mean() / b.mean())
    if a.size == 1:
        return (ratio, ratio, ratio)
    index = _resamples(a.size, n_boot, seed)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = a[index].mean(axis=1) / b[index].mean(axis=1)
    ratios = ratios[np.isfinite(ratios)]
    low, high = np.quantile(ratios, [(1 - level) / 2, 1 - (1 - level) / 2])
    return (ratio, float(low), float(high))


def per_prompt(samples: list[dict], metric: str) -> dict[int, float]:
    """The metric averaged over seeds within each prompt (the bootstrap's unit)."""
    groups: dict[int, list[float]] = {}
    for sample in samples:
        value = sample[metric]
        if _is_number(value):
            groups.setdefault(sample["prompt_index"], []).append(value)
    return {index: float(np.mean(values)) for index, values in groups.items()}


def paired_differences(samples_a: list[dict], samples_b: list[dict], metric: str) -> dict[int, float]:
    """Per prompt, the mean over the seeds both arms share of (a - b)."""
    b_by_key = {(s["prompt_index"], s["seed"]): s for s in samples_b}
    diffs = []
    for sample in samples_a:
        other = b_by_key.get((sample["prompt_index"], sample["seed"]))
        if other is not None and _is_number(sample[metric]) and _is_number(other[metric]):
            diffs.append({"prompt_index": sample["prompt_index"], "diff": sample[metric] - other[metric]})
    return per_prompt(diffs, "diff")


def _is_number(value) -> bool:
    return value is not None and math.isfinite(value)


# --- aggregation -------------------------------------------------------------------------------------------


def comparison_key(control: str) -> str:
    """Where the summary keeps entropy@R minus a matched control: 'entropy_vs_random', 'entropy_vs_first_n'."""
    return f"entropy_vs_{control.replace('-', '_')}"


def summarize(samples: list[dict], arms: list[Arm]) -> dict:
    """Per-arm aggregates with CIs, paired differences and the three goals, as a JSON-ready dict."""
    by_arm = {arm.name: [s for s in samples if s["arm"] == arm.name] for arm in arms}
    out = {"arms": {}, "paired_vs_none": {}, **{comparison_key(control): {} for control in MATCHED}, "goals": {}}
    for arm in arms:
        rows = by_arm[arm.name]
        if not rows:
            continue
        summary = {"family": arm.family, "ratio": arm.ratio, "samples": len(rows),
                   "prompts": len({s["prompt_index"] for s in rows}), "gate": rows[0]["gate"]}
        for metric in METRICS:
            summary[metric] = _ci(per_prompt(rows, metric).values())
        summary["ratio_control"] = ratio_control(rows, target_ratio(arm, rows))
        out["arms"][arm.name] = summary
    for name, rows in by_arm.items():
        if rows and name != "none" and by_arm.get("none"):
            out["paired_vs_none"][name] = {m: _ci(paired_differences(rows, by_arm["none"], m).values())
                                           for m in ("value_score", "judge", "log_ppl")}
    for arm in arms:
        for control in MATCHED:  # entropy@R against the controls matched to it: does *which* steps matter?
            control_name = f"{control}@{arm.ratio:g}" if arm.family == "entropy" else None
            if control_name and by_arm.get(control_name) and by_arm[arm.name]:
                out[comparison_key(control)][arm.name] = {
                    m: _ci(paired_differences(by_arm[arm.name], by_arm[control_name], m).values())
                    for m in ("value_score", "judge", "log_ppl")}
    out["goals"] = goals(by_arm, out)
    return out


def _ci(values) -> dict:
    mean, low, high = bootstrap_ci(list(values))
    return {"mean": _finite(mean), "low": _finite(low), "high": _finite(high)}


def _finite(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else x


def target_ratio(arm: Arm, rows: list[dict]) -> float | None:
    """What the arm meant to steer: the target for entropy/online, q for random, none/dense 0/1."""
    if arm.family in ("entropy", "online"):
        return arm.ratio
    if arm.family == "none":
        return 0.0
    if arm.family == "dense":
        return 1.0
    if arm.family == "random":
        return rows[0]["settings"]["q"]
    return None  # first-n: a count, not a ratio


def ratio_control(rows: list[dict], target: float | None) -> dict:
    """How well each generation held its ratio: spread of the per-sample realised ratio around the target."""
    realised = np.asarray([s["junction_ratio"] for s in rows], dtype=np.float64)
    result = {"target": target, "mean": float(realised.mean()), "sd": float(realised.std(ddof=1)) if realised.size > 1
              else 0.0, "min": float(realised.min()), "max": float(realised.max())}
    if target is not None:
        error = np.abs(realised - target)
        result["mean_abs_error"] = float(error.mean())
        result["within_0.1"] = float(np.mean(error <= 0.1 + 1e-12))
    entropies = [s["junction_entropy_mean"] for s in rows if s["junction_entropy_mean"] is not None
                 and math.isfinite(s["junction_entropy_mean"])]
    result["junction_entropy_mean"] = float(np.mean(entropies)) if entropies else None
    return result


def goals(by_arm: dict[str, list[dict]], summary: dict) -> dict:
    """The three questions this evaluation exists to answer, with the evidence for each."""
    verdict = {}
    sparse = by_arm.get("entropy@0.2")
    if sparse and by_arm.get("dense") and by_arm.get("none"):
        gain_sparse = paired_differences(sparse, by_arm["none"], "judge")
        gain_dense = paired_differences(by_arm["dense"], by_arm["none"], "judge")
        shared = sorted(set(gain_sparse) & set(gain_dense))  # resample prompts jointly: the share is a ratio
        share, low, high = bootstrap_ratio_ci([gain_sparse[i] for i in shared], [gain_dense[i] for i in shared])
        dense_gain = float(np.mean([gain_dense[i] for i in shared])) if shared else math.nan
        verdict["sparse_recovers_half_of_dense"] = {
            "share_of_dense_judge_gain": _finite(share), "low": _finite(min(low, high)),
            "high": _finite(max(low, high)), "dense_gain": _finite(dense_gain),
            "realised_ratio": summary["arms"]["entropy@0.2"]["junction_ratio"]["mean"],
            # a share of a loss means nothing: with no dense gain there is nothing to recover
            "met": bool(dense_gain > 0 and math.isfinite(share) and share >= 0.5)}
    beats = {}
    for name, diffs in summary["entropy_vs_random"].items():
        low = diffs["judge"]["low"]
        beats[name] = {"judge_diff": diffs["judge"], "met": bool(low is not None and low > 0)}
    if beats:
        verdict["entropy_beats_random"] = beats
    # paired (same prompts and seeds as none), so arms with different prompt coverage stay comparable
    shift = {name: diff["log_ppl"]["mean"] for name, diff in summary["paired_vs_none"].items()
             if diff["log_ppl"]["mean"] is not None}
    if "dense" in shift:
        dense_gap = abs(shift["dense"])
        verdict["sparse_closer_to_base_perplexity"] = {
            name: {"log_ppl_gap": abs(value), "dense_gap": dense_gap, "met": abs(value) < dense_gap}
            for name, value in shift.items() if summary["arms"][name]["family"] in ("entropy", "online", "random")}
    return verdict


# --- reports -----------------------------------------------------------------------------------------------


def _fmt(ci: dict, digits: int = 3, transform=None) -> str:
    if ci["mean"] is None:
        return "–"
    f = transform or (lambda v: v)
    return f"{f(ci['mean']):.{digits}f} [{f(ci['low']):.{digits}f}, {f(ci['high']):.{digits}f}]"


def _num(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown_report(summary: dict, config: dict) -> str:
    """results.md: the per-arm table, the paired comparisons, ratio control and the goals."""
    lines = [f"# Evaluation: {config['n_prompts']} prompts x {config['seeds']} seeds, {config['max_tokens']} tokens",
             "",
             f"Judge: `{config['judge']}` on the continuation. Value score: sigmoid of the value model on "
             f"prompt + continuation. Perplexity: unsteered base model, T=1, full vocabulary. "
             f"k={config['top_k']}, w={config['weight']:g}, T={config['temperature']:g}. "
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
        share = "–" if half["share_of_dense_judge_gain"] is None else (
            f"{half['share_of_dense_judge_gain']:.2f} [{half['low']:.2f}, {half['high']:.2f}]")
        note = "" if (half["dense_gain"] or 0) > 0 else "; dense itself does not raise the judge score"
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
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    seen = set()
    for name, arm in summary["arms"].items():
        marker, colour = style[arm["family"]]
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


# --- the run -----------------------------------------------------------------------------------------------


@dataclass
class EvalConfig:
    prompt_file: str
    prompts: list[str]
    seeds: int
    max_tokens: int
    arms: list[Arm]
    judge: str = "vader"
    top_k: int = 10
    weight: float = 1.0
    temperature: float = 1.0
    entropy_over: str = "top-k"
    calibration: str | None = None  # explicit calibration file, else the cache / shipped one
    batch_size: int = DEFAULT_BATCH_SIZE  # sequences decoded together (throughput only; not part of the run)

    def base_settings(self) -> GenerationSettings:
        return GenerationSettings(top_k=self.top_k, weight=self.weight, temperature=self.temperature,
                                  entropy_over=self.entropy_over, max_tokens=self.max_tokens)


def run_config(config: EvalConfig, engine, calibration: dict | None) -> dict:
    """What run.json records: everything that must not change when a run is resumed."""
    return {
        "format": FORMAT, "prompt_file": config.prompt_file, "n_prompts": len(config.prompts),
        "prompts_sha256": hashlib.sha256("\n".join(config.prompts).encode()).hexdigest(),
        "seeds": config.seeds, "max_tokens": config.max_tokens, "judge": config.judge, "top_k": config.top_k,
        "weight": config.weight, "temperature": config.temperature, "entropy_over": config.entropy_over,
        "model": engine.base.name, "model_fingerprint": engine.fingerprint,
        "value_model": engine.value_model.path.name, "value_model_sha256": _sha256(engine.value_model.path),
        "calibration_taus": calibration["taus"] if calibration else None,
    }


def json_safe(value):
    """NaN and infinities become null: strict JSON readers reject them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def check_or_write_run(out_dir: Path, config: dict) -> None:
    """A directory holds one run: resuming with different settings would mix incomparable samples."""
    path = out_dir / "run.json"
    if path.exists():
        previous = json.loads(path.read_text())
        changed = sorted(k for k in config if previous.get(k) != config[k])
        if changed:
            raise InvalidSettingError(f"{out_dir} holds a run with other settings ({', '.join(changed)}); "
                                      f"use another --out or delete it")
        return
    write_json(path, config)


def read_samples(path: Path) -> list[dict]:
    """Samples already written. A line cut short by an interruption is dropped (and trimmed off the file)."""
    if not path.exists():
        return []
    raw = path.read_bytes()
    if raw and not raw.endswith(b"\n"):  # interrupted mid-write: drop the partial last line
        raw = raw[: raw.rfind(b"\n") + 1]
        path.write_bytes(raw)
    return [json.loads(line) for line in raw.decode("utf-8").splitlines() if line.strip()]


def sample_seed(prompt_index: int, seed_index: int) -> int:
    """One seed per (prompt, seed index), the same in every arm (paired samples). Distinct across prompts, because
    the random gate draws its junctions from the seed: a shared seed would steer the same positions everywhere."""
    return prompt_index + 10_000 * seed_index


def run_evaluation(engine, config: EvalConfig, out_dir: str | os.PathLike, judge=None, progress: bool = True) -> dict:
    """Generate every missing sample, then write results.json, results.md and tradeoff.png. Returns the summary."""
    from tqdm import tqdm

    from .judges import load_judge

    if engine.value_model is None:
        raise SiaError("evaluation needs a value model (for steering and the value score): pass --value-model")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    judge = judge or load_judge(config.judge)
    calibration = None
    if any(arm.family in ("entropy", "online") for arm in config.arms):
        calibration = load_calibration(engine.fingerprint, config.top_k, config.temperature, config.entropy_over,
                                       config.calibration)
    run = run_config(config, engine, calibration)
    check_or_write_run(out_dir, run)
    samples_path = out_dir / "samples.jsonl"
    samples = read_samples(samples_path)
    done = {(s["arm"], s["prompt_index"], s["seed"]) for s in samples}
    total = len(config.arms) * len(config.prompts) * config.seeds
    names = {arm.name for arm in config.arms}
    bar = tqdm(total=total, initial=sum(key[0] in names for key in done), desc="eval", unit="gen", disable=not progress, dynamic_ncols=True)
    start = time.perf_counter()
    with samples_path.open("a", encoding="utf-8") as sink:
        for arm in config.arms:
            todo = [(index, seed) for index in range(len(config.prompts))
                    for seed in (sample_seed(index, s) for s in range(config.seeds))
                    if (arm.name, index, seed) not in done]
            if not todo:
                continue  # a finished arm needs no calibration lookup or matching
            bar.set_postfix_str(arm.name)
            settings = arm_settings(arm, config.base_settings(), calibration, samples)
            outputs = engine.generate_many([config.prompts[i] for i, _ in todo], settings,
                                           seeds=[seed for _, seed in todo], batch_size=config.batch_size,
                                           log_probs=True)
            for output in outputs:  # in finishing order; each is written at once, so an interrupt loses little
                index = todo[output.index][0]
                prompt = config.prompts[index]
                sample = {"arm": arm.name, "prompt_index": index, "prompt": prompt,
                          **sample_record(engine, judge, prompt, settings, output.result, output.events)}
                sink.write(json.dumps(json_safe(sample)) + "\n")
                sink.flush()
                samples.append(sample)
                bar.update(1)
    bar.close()
    summary = summarize(samples, config.arms)
    summary["config"] = run
    summary["seconds_this_session"] = time.perf_counter() - start
    write_json(out_dir / "results.json", json_safe(summary))
    (out_dir / "results.md").write_text(markdown_report(summary, run), encoding="utf-8")
    try:
        plot_tradeoff(summary, out_dir / "tradeoff.png")
    except ImportError:
        click.echo("sia-edge: matplotlib is not installed, so no tradeoff.png (pip install 'sia-edge[eval]')",
                   err=True)
    return summary


# --- CLI ---------------------------------------------------------------------------------------------------


@click.command("eval")
@click.option("--prompts", "prompt_file", type=click.Path(dir_okay=False), required=True,
              help="Text file with one prompt per line (keep it disjoint from the calibration prompts).")
@click.option("--seeds", type=click.IntRange(min=1), default=3, show_default=True,
              help="Generations per prompt and arm (seed = prompt index + 10000 x i, the same in every arm: paired samples).")
@click.option("-n", "--max-tokens", type=click.IntRange(min=1), default=64, show_default=True,
              help="Tokens generated per sample.")
@click.option("--arms", default=DEFAULT_ARMS, show_default=True,
              help="Comma-separated arms: none, dense, entropy@R, online@R, random@R, first-n@R "
                   "(random/first-n match the realised ratio/count of entropy@R).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="runs/eval", show_default=True,
              help="Output directory; rerunning with the same settings resumes where it stopped.")
@click.option("--judge", default="vader", show_default=True,
              help="Independent judge: 'vader', 'profanity' (1 = the text holds a listed swear word), or 'module:callable' returning an object with name and score(texts).")
@click.option("--calibration", type=click.Path(dir_okay=False), default=None,
              help="Calibration JSON for the entropy/online arms [default: the cached one, else the shipped one].")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Use only the first N prompts of the file.")
@click.option("-w", "--weight", type=float, default=1.0, show_default=True,
              help="Reward weight w in s = logit + w * value, for every steered arm.")
@click.option("--batch-size", type=click.IntRange(min=1), default=EVAL_BATCH_SIZE, show_default=True,
              help="Generations decoded together in one llama.cpp context (throughput; 1 = one at a time).")
@sampling_options
@model_options
def eval_command(prompt_file, seeds, max_tokens, arms, out_dir, judge, calibration, limit, weight, batch_size,
                 top_k, temperature, entropy_over, model, value_model, n_ctx, threads):
    """Compare the gates (none, dense, entropy, online, random, first-n) on a prompt set: judge score, value score,
    perplexity, repetition, realised ratio and cost, with bootstrap CIs. Writes DIR/results.{json,md}, tradeoff.png."""
    from .cli import build_engine

    prompts = read_prompt_file(prompt_file)[:limit]
    config = EvalConfig(prompt_file=str(prompt_file), prompts=prompts, seeds=seeds, max_tokens=max_tokens,
                        arms=parse_arms(arms), judge=judge, top_k=top_k, weight=weight, temperature=temperature,
                        entropy_over=entropy_over, calibration=calibration, batch_size=batch_size)
    from .judges import load_judge

    chosen_judge = load_judge(judge)  # fail on a bad judge before loading models
    engine = build_engine(model, value_model, n_ctx, threads, gate="dense", weight=weight, calibration=calibration)
    summary = run_evaluation(engine, config, out_dir, judge=chosen_judge)
    click.echo((Path(out_dir) / "results.md").read_text(encoding="utf-8"))
    click.echo(f"sia-edge: {sum(a['samples'] for a in summary['arms'].values())} samples -> {out_dir}", err=True)
