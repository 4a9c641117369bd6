"""Evaluation statistics: percentile-bootstrap intervals over prompts, paired differences between arms, the
per-arm summary and the verdicts on the questions an evaluation exists to answer."""

from __future__ import annotations

import math

import numpy as np

from .arms import MATCHED, Arm

# Metrics averaged per arm; log_ppl is the mean negative log-likelihood per token (perplexity = exp(log_ppl)).
METRICS = ("value_score", "judge", "log_ppl", "distinct_1", "distinct_2", "junction_ratio", "value_calls_per_token",
           "ms_per_token")


def _resamples(n: int, n_boot: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def bootstrap_ci(values, level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): the mean and its percentile-bootstrap confidence interval. NaNs are dropped. The
    interval is reported as computed: for skewed data it need not contain the mean.

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
    return (mean, float(low), float(high))  # as computed: a percentile interval need not contain the mean


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
    if arm.family == "none":
        return 0.0
    if arm.family == "dense":
        return 1.0
    if arm.ratio is not None and arm.family not in MATCHED:
        return arm.ratio  # entropy, online: the target
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
        dense_low = bootstrap_ci([gain_dense[i] for i in shared])[1] if shared else math.nan
        verdict["sparse_recovers_half_of_dense"] = {
            "share_of_dense_judge_gain": _finite(share), "low": _finite(min(low, high)),
            "high": _finite(max(low, high)), "dense_gain": _finite(dense_gain),
            "realised_ratio": summary["arms"]["entropy@0.2"]["junction_ratio"]["mean"],
            "dense_gain_established": bool(dense_low > 0),
            # a share of nothing means nothing: dense must raise the judge score beyond its CI first
            "met": bool(dense_low > 0 and math.isfinite(share) and share >= 0.5)}
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


