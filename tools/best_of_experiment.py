"""Plain Best-of-N (gate none) vs Best-of-N over SIA samples (entropy gate), at the same N and length.

Both arms draw N samples of max_tokens tokens per prompt with the same seeds (seed + i) and keep the sample the
value model scores highest; the SIA arm additionally steers its samples at junctions. The judge is VADER (compound
sentiment of the continuation), which never saw the value model's training tweets. Sample 0 of each arm is the
N=1 baseline.

    PYTHONPATH=. python tools/best_of_experiment.py --threads 1 --out runs/best-of.md   # then paste into docs/results.md
"""

from __future__ import annotations

import hashlib
import statistics
import sys
import time

import click

from sia_edge.best_of import best_of
from sia_edge.engine import Engine
from sia_edge.settings import GenerationSettings

PROMPTS = [
    "The movie was", "My weekend was", "Today at work", "The weather this morning", "My new phone",
    "The restaurant downtown", "This morning's traffic", "The concert last night", "My flight home",
    "The customer service", "Monday mornings are", "The new update", "My neighbour's dog", "The football game",
    "The book I just finished", "Our hotel room", "The train to the city", "My first day at the gym",
    "The coffee at this place", "The election results",
]


def mean_ci(values: list[float]) -> str:
    m = statistics.fmean(values)
    half = 1.96 * statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else 0.0
    return f"{m:+.3f} ± {half:.3f}"


@click.command()
@click.option("--model", default=None, help="GGUF base model [default: the built-in Gemma 3 270M base].")
@click.option("--value-model", default=None, help="ONNX value model [default: the shipped one].")
@click.option("-n", "--best-of", "n", default=4, show_default=True, help="Samples per prompt.")
@click.option("--max-tokens", default=32, show_default=True, help="Tokens per sample.")
@click.option("--prompts", "n_prompts", default=len(PROMPTS), show_default=True, help="How many of the built-in prompts.")
@click.option("--seed", default=1000, show_default=True, help="Seed of prompt 0; prompt j uses seed + 100 * j.")
@click.option("--threads", default=None, type=int, help="llama.cpp threads [default: all cores].")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Also write the markdown table here.")
def main(model, value_model, n, max_tokens, n_prompts, seed, threads, out):
    """Compare plain Best-of-N with Best-of-N over SIA samples, judged by VADER."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    vader = SentimentIntensityAnalyzer()
    engine = Engine(model=model, value_model=value_model, threads=threads)
    arms = {"plain (gate none)": "none", "SIA (gate entropy)": "entropy"}
    rows = {}
    for label, gate in arms.items():
        first, best, vm_best, vm_first, ratios = [], [], [], [], []
        steps = calls = 0
        vm_seconds = 0.0
        start = time.perf_counter()
        for j, prompt in enumerate(PROMPTS[:n_prompts]):
            settings = GenerationSettings(gate=gate, max_tokens=max_tokens, seed=seed + 100 * j)
            result = best_of(engine, prompt, n, settings)
            first.append(vader.polarity_scores(result.results[0].text)["compound"])
            best.append(vader.polarity_scores(result.text)["compound"])
            vm_first.append(result.scores[0])
            vm_best.append(result.scores[result.best])
            ratios += [r.stats.junction_ratio for r in result.results]
            steps += result.base_steps
            calls += result.value_model_calls
            vm_seconds += sum(r.stats.value_model_seconds for r in result.results)
            print(f"{label} | {prompt!r} -> {result.text!r} (vader {best[-1]:+.2f})", file=sys.stderr, flush=True)
        rows[label] = dict(first=mean_ci(first), best=mean_ci(best), vm_first=statistics.fmean(vm_first),
                           vm_best=statistics.fmean(vm_best), ratio=statistics.fmean(ratios), steps=steps,
                           calls=calls, vm_seconds=vm_seconds, seconds=time.perf_counter() - start,
                           first_values=first, best_values=best)
    lines = [
        f"| samples drawn with | VADER, N=1 (sample 0) | VADER, best of {n} | value score N=1 | value score best of "
        f"{n} | junction ratio | base steps | value-model calls | value-model s | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, r in rows.items():
        lines.append(f"| {label} | {r['first']} | {r['best']} | {r['vm_first']:+.2f} | {r['vm_best']:+.2f} | "
                     f"{r['ratio']:.2f} | {r['steps']} | {r['calls']} | {r['vm_seconds']:.1f} | {r['seconds']:.0f} |")
    plain, sia = rows.values()
    for key, what in (("best_values", f"best of {n}"), ("first_values", "N=1")):
        diffs = [b - a for a, b in zip(plain[key], sia[key])]
        lines.append(f"\nPaired VADER difference, SIA minus plain, {what}: {mean_ci(diffs)} (95% CI, {len(diffs)} "
                     f"prompts; SIA higher on {sum(d > 0 for d in diffs)}, lower on {sum(d < 0 for d in diffs)})")
    vm = engine.value_model
    digest = hashlib.sha256(vm.path.read_bytes()).hexdigest()[:16]
    lines.append(f"\nBase model {engine.base.name}; value model {vm.path.name} (sha256 {digest}..., "
                 f"{vm.description}); {n_prompts} prompts, N={n}, {max_tokens} tokens, seeds {seed} + 100 * prompt.")
    table = "\n".join(lines)
    print(table)
    if out:
        with open(out, "w") as handle:
            handle.write(table + "\n")


if __name__ == "__main__":
    main()
