"""`sia-edge bench`: speed against the right baselines, measured in one process, arms interleaved.

Ratios between arms measured in the same run are what to read: the machines are shared and noisy, absolute
tokens/s are not comparable between runs.
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field

import click
import numpy as np

from ..progress import progress_bar
from ..signals import step_stats
from .common import DEFAULTS, build_engine, model_options

BENCH_PROMPTS = (
    "The movie was",
    "When I opened the door of the new cafe,",
    "My neighbour asked me whether",
)


@dataclass
class Arm:
    name: str
    kind: str  # raw | completion | sia
    settings: dict = field(default_factory=dict)


DEFAULT_ARMS = (
    Arm("raw decode", "raw"),
    Arm("llama-cpp-python", "completion"),
    Arm("sia none", "sia", {"gate": "none"}),
    Arm("sia entropy r=0.2", "sia", {"gate": "entropy", "ratio": 0.2}),
    Arm("sia entropy r=0.5", "sia", {"gate": "entropy", "ratio": 0.5}),
    Arm("sia dense", "sia", {"gate": "dense"}),
)


@dataclass
class Sample:
    arm: str
    repetition: int
    tokens: int
    seconds: float  # from the prompt to the last token (prefill included, for every arm alike)
    breakdown: dict = field(default_factory=dict)  # seconds per part, sia arms only


def run_arm(engine, arm: Arm, prompt: str, continuation: list[int], max_tokens: int, seed: int) -> tuple[int, float, dict]:
    if arm.kind == "raw":
        return len(continuation), engine.base.raw_decode(engine.tokenize(prompt), continuation), {}
    if arm.kind == "completion":
        tokens, seconds = engine.base.plain_completion(prompt, max_tokens, top_k=DEFAULTS.top_k,
                                                       temperature=DEFAULTS.temperature, seed=seed)
        return tokens, seconds, {}
    result = engine.generate(prompt, max_tokens=max_tokens, seed=seed, **arm.settings)
    st = result.stats
    decode = st.base_model_seconds - st.prefill_seconds  # llama.cpp time of the decode steps alone
    breakdown = {
        "prefill": st.prefill_seconds,
        "base_decode": decode,
        "gate": st.gate_seconds,
        "value_model": st.value_model_seconds,
        "sampling": st.sample_seconds,
        "junction_ratio": st.junction_ratio,
    }
    accounted = st.prefill_seconds + decode + st.gate_seconds + st.value_model_seconds + st.sample_seconds
    breakdown["bookkeeping"] = max(st.total_seconds - accounted, 0.0)
    return st.tokens, st.total_seconds, breakdown


def fixed_continuations(engine, prompts, max_tokens: int, seed: int) -> dict[str, list[int]]:
    """The tokens raw decode feeds: an unsteered generation per prompt, made once before timing."""
    return {p: engine.generate(p, gate="none", max_tokens=max_tokens, seed=seed).token_ids for p in prompts}


def run_arms(engine, arms, prompts, max_tokens: int, repetitions: int, seed: int, progress) -> list[Sample]:
    continuations = fixed_continuations(engine, prompts, max_tokens, seed)
    samples = []
    for rep in range(repetitions):
        order = arms[rep % len(arms):] + arms[: rep % len(arms)]  # rotate so no arm always runs first
        for arm in order:
            tokens = seconds = 0.0
            parts: dict[str, float] = {}
            for i, prompt in enumerate(prompts):
                n, s, breakdown = run_arm(engine, arm, prompt, continuations[prompt], max_tokens, seed + i)
                tokens += n
                seconds += s
                for key, value in breakdown.items():
                    parts[key] = parts.get(key, 0.0) + value
                progress.update(1)
            if "junction_ratio" in parts:
                parts["junction_ratio"] /= len(prompts)
            samples.append(Sample(arm.name, rep, int(tokens), seconds, parts))
    return samples


def summarise(samples: list[Sample], arms) -> list[dict]:
    rows = []
    for arm in arms:
        mine = [s for s in samples if s.arm == arm.name]
        rates = [s.tokens / s.seconds for s in mine]
        row = {"arm": arm.name, "tokens_per_second": statistics.median(rates), "min": min(rates), "max": max(rates),
               "tokens": sum(s.tokens for s in mine)}
        if arm.kind == "sia":
            tokens = sum(s.tokens for s in mine)
            for part in ("gate", "value_model", "sampling", "bookkeeping", "base_decode"):
                row[f"{part}_ms_per_token"] = 1e3 * sum(s.breakdown[part] for s in mine) / tokens
            row["prefill_ms"] = 1e3 * statistics.median(s.breakdown["prefill"] for s in mine) / len(BENCH_PROMPTS)
            row["junction_ratio"] = statistics.mean(s.breakdown["junction_ratio"] for s in mine)
        rows.append(row)
    by_name = {r["arm"]: r["tokens_per_second"] for r in rows}
    for row in rows:
        row["vs_raw_decode"] = row["tokens_per_second"] / by_name["raw decode"] if "raw decode" in by_name else None
        row["vs_llama_cpp_python"] = (row["tokens_per_second"] / by_name["llama-cpp-python"]
                                      if "llama-cpp-python" in by_name else None)
        row["vs_sia_none"] = row["tokens_per_second"] / by_name["sia none"] if "sia none" in by_name else None
    return rows


def batch_throughput(engine, batch_sizes, n_requests: int, max_tokens: int, seed: int, progress) -> list[dict]:
    """Tokens/s of `generate_many` at each batch size against `generate` one request after another, same run.

    Each configuration decodes the same requests (BENCH_PROMPTS cycled, SIA at ratio 0.2); configurations are
    interleaved over two rounds so drift in machine load hits all of them alike.
    """
    prompts = [BENCH_PROMPTS[i % len(BENCH_PROMPTS)] for i in range(n_requests)]
    seeds = [seed + i for i in range(n_requests)]
    settings = engine.settings(gate="entropy", ratio=0.2, max_tokens=max_tokens)
    timings: dict[str, list[float]] = {}
    tokens: dict[str, int] = {}
    for _ in range(2):
        for label, size in [("sequential", None)] + [(f"batch {b}", b) for b in batch_sizes]:
            start = time.perf_counter()
            if size is None:
                n = sum(engine.generate(p, settings, seed=s).stats.tokens for p, s in zip(prompts, seeds))
            else:
                outputs = engine.generate_many(prompts, settings, seeds=seeds, batch_size=size)
                n = sum(output.result.stats.tokens for output in outputs)
            timings.setdefault(label, []).append(n / (time.perf_counter() - start))
            tokens[label] = n
            progress.update(1)
    sequential = statistics.median(timings["sequential"])
    return [{"mode": label, "requests": n_requests, "tokens": tokens[label],
             "tokens_per_second": statistics.median(rates), "vs_sequential": statistics.median(rates) / sequential}
            for label, rates in timings.items()]


def gate_costs(engine, n_rows: int = 40) -> dict:
    """Per-step gate cost on real logits rows: our top-k + entropy vs a naive argpartition and a full sort."""
    engine.base.prefill(engine.tokenize(BENCH_PROMPTS[0]))
    rows = []
    for _ in range(n_rows):
        logits = engine.base.logits()
        rows.append(logits.copy())
        engine.base.step(int(np.argmax(logits)))
    candidates = {
        "top-k + entropy (sia-edge)": lambda x: step_stats(x, DEFAULTS.top_k),
        "argpartition top-k (naive)": lambda x: np.argpartition(-x, 10)[:10],
        "argsort (full sort)": lambda x: np.argsort(-x, kind="stable")[:10],
        "full-vocabulary entropy": lambda x: step_stats(x, DEFAULTS.top_k, "full"),
    }
    return {name: _median_ms(func, rows) for name, func in candidates.items()}


def value_model_costs(engine, lengths=(32, 128, 512, 1024), new_tokens: int = 8) -> list[dict]:
    """One junction's value-model cost at growing prefix lengths: carried state vs re-scoring from scratch."""
    vm = engine.value_model
    rng = np.random.default_rng(0)
    out = []
    if getattr(vm, "looks_ahead", False):  # a junction decodes its 10 candidates after the text
        look_ahead, candidates = engine.base.look_ahead(10, vm.layer), np.arange(100, 110)
        for length in lengths:
            prefix_tokens = rng.integers(3, 20000, size=length).tolist()
            grown = prefix_tokens + rng.integers(3, 20000, size=new_tokens).tolist()

            def junction(tokens):
                states = look_ahead.states(tokens, candidates)
                vm.score_hidden(states, [np.array([c]) for c in candidates], states if vm.pools else None)

            look_ahead.states(prefix_tokens, candidates)  # mirrored: the candidates alone
            mirrored = _median_ms(lambda _: junction(prefix_tokens), [None] * 10)
            after_new = []  # the usual case: the text grew since the last junction, and those tokens share its decode
            for _ in range(20):
                look_ahead.states(prefix_tokens, candidates)  # back to the prefix (untimed)
                start = time.perf_counter()
                junction(grown)
                after_new.append(time.perf_counter() - start)
            out.append({"prefix_tokens": length, "carried_state_ms": mirrored, "from_scratch_ms": float("nan"),
                        "after_new_tokens_ms": 1e3 * statistics.median(after_new), "new_tokens": new_tokens})
        return out
    if vm.reads_hidden:  # stateless: one call reads one hidden state (and the tokens so far, for a token memory)
        hidden = rng.normal(size=(1, vm.hidden_size)).astype(np.float32)
        pooled = hidden if vm.pools else None  # a pooling model's second input: same shape, same cost
        def call(length: int) -> float:
            written = [rng.integers(3, 20000, size=length).tolist()] if vm.reads_continuation else None
            return _median_ms(lambda _: vm.score_hidden(hidden, [np.arange(100, 110)], pooled, written), [None] * 50)

        flat = None if vm.reads_continuation else call(0)  # without a token memory the length changes nothing
        return [{"prefix_tokens": length, "carried_state_ms": call(length) if flat is None else flat,
                 "from_scratch_ms": float("nan")} for length in lengths]
    for length in lengths:
        prefix_tokens = rng.integers(3, 20000, size=length).tolist()
        new = rng.integers(3, 20000, size=new_tokens).tolist()
        candidates = np.arange(100, 110)
        state = vm.extend(vm.empty_prefix(), prefix_tokens)

        def carried():  # the runtime's junction: the new tokens and each candidate in one call
            vm.score_junctions([state], [new], [candidates])

        def from_scratch():  # what the reference implementation does: each candidate re-reads the whole prefix
            full = prefix_tokens + new
            vm.score_sequences([full + [int(c)] for c in candidates])

        out.append({"prefix_tokens": length, "carried_state_ms": _median_ms(lambda _: carried(), [None] * 50),
                    "from_scratch_ms": _median_ms(lambda _: from_scratch(), [None] * 20)})
    return out


def _median_ms(func, inputs) -> float:
    times = []
    for item in inputs * 3:
        start = time.perf_counter()
        func(item)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


_RSS_SCRIPT = """
import resource, sys
from sia_edge.engine import Engine
plain = sys.argv[1] == "plain"
engine = Engine(model=sys.argv[2], n_ctx=int(sys.argv[3]), use_value_model=not plain)
if plain:
    engine.base.plain_completion("The movie was", 64, top_k=10, temperature=1.0, seed=1)
else:
    engine.generate("The movie was", max_tokens=64, seed=1, gate="dense")
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def peak_rss_mb(model_path: str, n_ctx: int) -> dict:
    """Peak RSS of plain llama-cpp-python vs sia-edge (dense, value model loaded), each in a fresh process."""
    out = {}
    for mode in ("plain", "sia"):
        proc = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, mode, model_path, str(n_ctx)],
                              capture_output=True, text=True, timeout=600)
        out[mode] = int(proc.stdout.strip().splitlines()[-1]) / 1024 if proc.returncode == 0 else None
    if out["plain"] and out["sia"]:
        out["difference"] = out["sia"] - out["plain"]
    return out


def format_table(report: dict) -> str:
    lines = [f"model {report['model']}  value model {report['value_model']}",
             f"{report['max_tokens']} new tokens x {len(BENCH_PROMPTS)} prompts x {report['repetitions']} "
             f"repetitions, llama.cpp threads {report['threads']}", "",
             "| arm | tok/s (median) | min-max | x raw decode | x llama-cpp-python | x sia none | ratio | "
             "gate ms/tok | value ms/tok | sample ms/tok | other ms/tok |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["arms"]:
        def f(key, fmt="{:.2f}"):
            return fmt.format(r[key]) if r.get(key) is not None else ""
        lines.append(f"| {r['arm']} | {r['tokens_per_second']:.1f} | {r['min']:.1f}-{r['max']:.1f} | "
                     f"{f('vs_raw_decode')} | {f('vs_llama_cpp_python')} | {f('vs_sia_none')} | "
                     f"{f('junction_ratio')} | {f('gate_ms_per_token', '{:.3f}')} | "
                     f"{f('value_model_ms_per_token', '{:.3f}')} | {f('sampling_ms_per_token', '{:.3f}')} | "
                     f"{f('bookkeeping_ms_per_token', '{:.3f}')} |")
    lines += ["", "| per-step gate over the vocabulary | ms (median) |", "|---|---|"]
    lines += [f"| {name} | {ms:.3f} |" for name, ms in report["gate_ms"].items()]
    rows = report.get("value_model_ms")
    if rows and "after_new_tokens_ms" in rows[0]:  # a look-ahead model: its junction decodes, nothing to re-score
        lines += ["", f"| prefix tokens | look-ahead junction, text mirrored, ms | after {rows[0]['new_tokens']} new "
                      f"tokens, ms |", "|---|---|---|"]
        lines += [f"| {r['prefix_tokens']} | {r['carried_state_ms']:.3f} | {r['after_new_tokens_ms']:.3f} |"
                  for r in rows]
    elif rows:
        lines += ["", "| prefix tokens | junction with carried state, ms | re-scoring from scratch, ms |",
                  "|---|---|---|"]
        lines += [f"| {r['prefix_tokens']} | {r['carried_state_ms']:.3f} | {r['from_scratch_ms']:.3f} |"
                  for r in rows]
    if report.get("batched"):
        lines += ["", f"| many requests ({report['batched'][0]['requests']}, SIA r=0.2) | tok/s (median) | "
                      f"x sequential |", "|---|---|---|"]
        lines += [f"| {r['mode']} | {r['tokens_per_second']:.1f} | {r['vs_sequential']:.2f} |"
                  for r in report["batched"]]
    if report.get("peak_rss_mb"):
        rss = report["peak_rss_mb"]
        lines += ["", f"peak RSS: plain llama-cpp-python {rss['plain']:.0f} MB, sia-edge {rss['sia']:.0f} MB "
                      f"(+{rss.get('difference', float('nan')):.0f} MB)"]
    return "\n".join(lines)


class BenchGroup(click.Group):
    """`sia-edge bench` runs the in-process bench itself; `sia-edge bench serve` (its own module, loaded when
    named) measures a live server."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return ["serve"]

    def get_command(self, ctx: click.Context, name: str):
        if name == "serve":
            from .bench_serve import bench_serve_command

            return bench_serve_command
        return None


@click.group("bench", cls=BenchGroup, invoke_without_command=True)
@click.pass_context
@model_options
@click.option("-n", "--max-tokens", type=click.IntRange(min=1), default=128, show_default=True,
              help="New tokens per generation.")
@click.option("--repetitions", type=click.IntRange(min=1), default=3, show_default=True,
              help="Rounds over all arms (arms are interleaved within each round).")
@click.option("--seed", type=int, default=1, show_default=True, help="Seed of the first prompt (+1 per prompt).")
@click.option("--rss/--no-rss", default=True, show_default=True,
              help="Also measure peak RSS of plain llama-cpp-python vs sia-edge in fresh processes.")
@click.option("--batch-sizes", default="1,4,8,16", show_default=True,
              help="Batch sizes for the many-requests throughput table (comma-separated; '' skips it).")
@click.option("--batch-requests", type=click.IntRange(min=1), default=16, show_default=True,
              help="Requests decoded in the many-requests table.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of a table.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None,
              help="Also write a PNG of cost per token against the realised steering ratio (needs matplotlib).")
def bench_command(ctx, model, value_model, n_ctx, threads, gpu_layers, max_tokens, repetitions, seed, rss,
                  batch_sizes, batch_requests, as_json, plot):
    """Tokens/s of sia-edge's gates against raw llama.cpp decoding and llama-cpp-python, in one run.

    `sia-edge bench serve` measures a live server under concurrent clients instead (its own --help)."""
    if ctx.invoked_subcommand is not None:
        return
    sizes = parse_batch_sizes(batch_sizes)
    engine = build_engine(model, value_model, n_ctx, threads, needs_value_model=True, gpu_layers=gpu_layers)
    arms = list(DEFAULT_ARMS)
    with progress_bar(total=repetitions * len(arms) * len(BENCH_PROMPTS), desc="bench", unit="gen") as bar:
        samples = run_arms(engine, arms, list(BENCH_PROMPTS), max_tokens, repetitions, seed, bar)
    batched = []
    if sizes and engine.value_model is not None:
        with progress_bar(total=2 * (len(sizes) + 1), desc="bench batched", unit="run") as bar:
            batched = batch_throughput(engine, sizes, batch_requests, max_tokens, seed, bar)
    report = {
        "model": engine.base.name,
        "value_model": engine.value_model.path.name if engine.value_model else None,
        "max_tokens": max_tokens, "repetitions": repetitions, "threads": threads or "all",
        "arms": summarise(samples, arms),
        "samples": [vars(s) for s in samples],
        "batched": batched,
        "gate_ms": gate_costs(engine),
        "value_model_ms": value_model_costs(engine) if engine.value_model else [],
        "peak_rss_mb": peak_rss_mb(str(engine.base.path), n_ctx) if rss else None,
        "own_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    click.echo(json.dumps(report, indent=1) if as_json else format_table(report))
    if plot:
        plot_cost(report, plot)


def parse_batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}", param_hint="--batch-sizes")
    if any(size < 1 for size in sizes):
        raise click.BadParameter(f"batch sizes must be >= 1, got {text!r}", param_hint="--batch-sizes")
    return sizes


def plot_cost(report: dict, path: str) -> None:
    """Milliseconds per token against the realised junction ratio, one point per sia arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["arms"] if "junction_ratio" in r]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([r["junction_ratio"] for r in rows], [1e3 / r["tokens_per_second"] for r in rows], "o-")
    for r in rows:
        ax.annotate(r["arm"].replace("sia ", ""), (r["junction_ratio"], 1e3 / r["tokens_per_second"]), fontsize=8)
    for name, style in (("raw decode", ":"), ("llama-cpp-python", "--")):
        floor = next((r for r in report["arms"] if r["arm"] == name), None)
        if floor:
            ax.axhline(1e3 / floor["tokens_per_second"], linestyle=style, color="grey", label=name)
    ax.set_xlabel("realised junction ratio")
    ax.set_ylabel("ms per token")
    ax.set_title(f"value model: {report['value_model']}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
