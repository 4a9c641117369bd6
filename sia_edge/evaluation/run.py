"""Evaluation: does steering a few uncertain tokens buy most of the alignment of steering all of them, and does
choosing them by entropy matter?

Every arm generates from every prompt with every seed; a prompt and seed pair is the same across arms, so arms
are compared pairwise. Per sample we record the value model's score of the text (the proxy objective being
steered), an independent judge's score of the continuation, the unsteered base model's perplexity of the
continuation (distribution preservation), distinct-1/2 (repetition), the realised junction ratio and the cost.
Samples of an arm are generated in fixed batches (`--batch-size` sequences per llama.cpp decode; a seeded sample is
reproducible for a given batch composition), here or on Ray actors (`--ray`, sia_edge/distributed.py), and the loop
records each token's base log-probability as it goes, so perplexity needs no second pass. Aggregates carry 95% percentile-bootstrap confidence intervals over prompts (seeds are averaged within a prompt
first, so a prompt is the unit of resampling).

The package, one module per job: arms.py (which arms, their settings), run.py (this file: generating and
recording samples, resumable), stats.py (bootstrap intervals, paired differences, verdicts), report.py (results.md,
tradeoff.png). The `sia-edge eval` command is sia_edge/commands/evaluate.py.

Output directory: run.json (settings, and the code that ran: version, path, git commit; a restart with other
settings is refused, one with other code is allowed and recorded), samples.jsonl (appended as it goes; a restart
skips samples already there), results.json, results.md, tradeoff.png.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from .. import provenance
from ..batch import DEFAULT_BATCH_SIZE, fixed_batches, run_batches
from ..calibration import load_calibration, write_json
from ..decoder import value_model_tokens
from ..errors import InvalidSettingError, SiaError
from ..progress import progress_bar
from ..gate import GATES
from ..settings import GenerationSettings, default_weight
from .arms import Arm, arm_settings
from .report import markdown_report, plot_tradeoff
from .stats import summarize

FORMAT = 2  # 2: perplexity recorded by the (batched) generation loop instead of a second stepwise pass
EVAL_BATCH_SIZE = 16  # ~2.4x the tokens/s of one sequence on 2 cores; see docs/results.md
_DEFAULTS = GenerationSettings()


# --- per-sample measurements -------------------------------------------------------------------------------


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def distinct_n(tokens: list[int], n: int) -> float:
    """Share of the n-grams of a text that are distinct (1.0 = no repetition); nan if it has none."""
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) if grams else math.nan


def sample_record(engine, judge, prompt: str, result, events) -> dict:
    """Everything measured about one finished generation. Perplexity comes from the log-probabilities the loop
    recorded (the unsteered base model's, T = 1, full vocabulary), so no second pass over the text is needed."""
    steps = [event for event in events if event.token_id >= 0]  # -1: a held-back stop-string tail, not a step
    # every decoding step has an event, the end-of-generation step too, so these match stats.tokens
    entropies = [event.entropy for event in steps]
    junction_entropies = [event.entropy for event in steps if event.junction]
    log_probs = np.asarray([event.log_prob for event in steps], dtype=np.float64)
    stats = result.stats
    ran = GenerationSettings.from_ran(result.settings)
    continuation = list(result.token_ids)
    scored = value_model_tokens(engine.tokenize(prompt), continuation, engine.base.bos_id)
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
        "value_score": sigmoid(result.value if result.value is not None
                               else float(engine.value_model.score_sequences(
                                   [scored], [len(scored) - len(continuation)])[0])),
        "judge": float(judge.score([result.text])[0]),
        "log_ppl": float(-log_probs.mean()) if log_probs.size else math.nan,
        "distinct_1": distinct_n(continuation, 1),
        "distinct_2": distinct_n(continuation, 2),
        "entropy_mean": float(np.mean(entropies)) if entropies else math.nan,
        "junction_entropy_mean": float(np.mean(junction_entropies)) if junction_entropies else math.nan,
        "entropies": [round(float(h), 4) for h in entropies],  # per step, for offline replays of gate policies
        "junction_steps": [event.index for event in steps if event.junction],
        "gate": ran.build_gate().describe(),  # as it ran: entropy-gate(tau=1.88)
        "weight": ran.w,  # the w it steered with (given, or its gate's default)
        "settings": {key: result.settings[key] for key in ("gate", "tau", "ratio", "q", "first_n", "calibrated_tau")},
    }



# --- one batch ----------------------------------------------------------------------------------------------


@dataclass
class EvalBatch:
    """A fixed chunk of one arm's work: decoded together, in this process or on a Ray actor."""

    arm: str
    prompt_indices: list[int]
    prompts: list[str]
    seeds: list[int]
    settings: GenerationSettings
    judge: object  # a judge, or its spec (loaded once per process)


def generate_batch(engine, batch: EvalBatch) -> list[dict]:
    """The sample records of one batch, in finishing order: one `generate_many` call over exactly these prompts."""
    judge = _judge(batch.judge) if isinstance(batch.judge, str) else batch.judge
    outputs = engine.generate_many(batch.prompts, batch.settings, seeds=batch.seeds, batch_size=len(batch.prompts),
                                   log_probs=True)
    return [{"arm": batch.arm, "prompt_index": batch.prompt_indices[output.index],
             "prompt": batch.prompts[output.index],
             **sample_record(engine, judge, batch.prompts[output.index], output.result, output.events)}
            for output in outputs]


@lru_cache(maxsize=4)
def _judge(spec: str):
    from ..judges import load_judge

    return load_judge(spec)


# --- the run ---------------------------------------------------------------------------------------------


@dataclass
class EvalConfig:
    prompt_file: str
    prompts: list[str]
    seeds: int
    max_tokens: int
    arms: list[Arm]
    judge: str = "vader"
    top_k: int = _DEFAULTS.top_k
    weight: float | None = None  # None: each arm's gate default (gate.GATES[...].weight)
    reward_norm: str = _DEFAULTS.reward_norm
    temperature: float = _DEFAULTS.temperature
    signal: str = _DEFAULTS.signal
    calibration: str | None = None  # explicit calibration file, else the cache / shipped one
    batch_size: int = DEFAULT_BATCH_SIZE  # sequences decoded together (fixes the batches; not part of run.json)

    def base_settings(self) -> GenerationSettings:
        return GenerationSettings(top_k=self.top_k, weight=self.weight, reward_norm=self.reward_norm,
                                  temperature=self.temperature, signal=self.signal, max_tokens=self.max_tokens)


def run_config(config: EvalConfig, engine, calibration: dict | None) -> dict:
    """What run.json records: everything that must not change when a run is resumed."""
    return {
        "format": FORMAT, "prompt_file": config.prompt_file, "n_prompts": len(config.prompts),
        "prompts_sha256": hashlib.sha256("\n".join(config.prompts).encode()).hexdigest(),
        "seeds": config.seeds, "max_tokens": config.max_tokens, "judge": config.judge, "top_k": config.top_k,
        "weight": config.weight if config.weight is not None else {  # the defaults this run used
            name: default_weight(name, engine.value_model.weight_scale) for name, spec in GATES.items() if spec.steers},
        "temperature": config.temperature, "entropy_over": config.signal,
        "model": engine.base.name, "model_fingerprint": engine.fingerprint,
        "value_model": engine.value_model.path.name, "value_model_sha256": _sha256(engine.value_model.path),
        "calibration_taus": calibration["taus"] if calibration else None,
        # only when set, so the runs made before the option existed still resume
        **({"reward_norm": config.reward_norm} if config.reward_norm != "none" else {}),
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


def check_or_write_run(out_dir: Path, config: dict, code: dict) -> None:
    """A directory holds one run: resuming with different settings would mix incomparable samples, so it is
    refused. Other code (provenance.software()) may resume it, but says so on stderr and run.json keeps the record:
    `software` started the run, `resumed_by` lists each other version or commit that added samples."""
    path = out_dir / "run.json"
    if not path.exists():
        write_json(path, {**config, "software": code})
        return
    previous = json.loads(path.read_text())
    changed = sorted(k for k in config if previous.get(k) != config[k])
    if changed:
        raise InvalidSettingError(f"{out_dir} holds a run with other settings ({', '.join(changed)}); "
                                  f"use another --out or delete it")
    started = previous.get("software")
    if not provenance.differs(started, code):
        return
    print(f"sia-edge: warning: {out_dir} was started by {provenance.describe(started)} and is resumed by "
          f"{provenance.describe(code)}: its samples may come from both (run.json, resumed_by)", file=sys.stderr)
    resumed_by = previous.get("resumed_by", [])
    if all(provenance.differs(record, code) for record in resumed_by):
        write_json(path, {**previous, "resumed_by": resumed_by + [code]})


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


def run_evaluation(engine, config: EvalConfig, out_dir: str | os.PathLike, judge=None, progress: bool = True,
                   pool=None) -> dict:
    """Generate every missing sample, then write results.json, results.md and tradeoff.png. Returns the summary.

    Each arm's missing (prompt, seed) pairs are cut into fixed batches of `config.batch_size`, decoded here or on
    `pool` (a sia_edge.distributed.RayPool, which loads the judge by name on its actors); the same batches give
    the same samples either way."""
    from ..judges import load_judge

    if engine.value_model is None:
        raise SiaError("evaluation needs a value model (for steering and the value score): pass --value-model")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    judge = judge or load_judge(config.judge)
    calibration = None
    if any(GATES[arm.family].arm == "calibrated" for arm in config.arms):  # recorded in run.json
        calibration = load_calibration(engine.fingerprint, config.top_k, config.temperature, config.signal,
                                       config.calibration or engine.calibration)
    run = run_config(config, engine, calibration)
    code = provenance.software()
    check_or_write_run(out_dir, run, code)
    run["software"] = code  # results.json: the code that summarised
    samples_path = out_dir / "samples.jsonl"
    samples = read_samples(samples_path)
    done = {(s["arm"], s["prompt_index"], s["seed"]) for s in samples}
    total = len(config.arms) * len(config.prompts) * config.seeds
    names = {arm.name for arm in config.arms}
    bar = progress_bar(total=total, initial=sum(key[0] in names for key in done), desc="eval", unit="gen",
                       disable=not progress, dynamic_ncols=True)
    start = time.perf_counter()
    batch_judge = judge if pool is None else config.judge  # actors load the judge by name, once each
    with samples_path.open("a", encoding="utf-8") as sink:
        for arm in config.arms:  # arm by arm: a matched arm reads the finished samples of its entropy arm
            todo = [(index, seed) for index in range(len(config.prompts))
                    for seed in (sample_seed(index, s) for s in range(config.seeds))
                    if (arm.name, index, seed) not in done]
            if not todo:
                continue  # a finished arm needs no calibration lookup or matching
            bar.set_postfix_str(arm.name)
            settings = arm_settings(arm, engine, config.base_settings(), samples, config.calibration)
            batches = [EvalBatch(arm.name, [i for i, _ in chunk], [config.prompts[i] for i, _ in chunk],
                                 [seed for _, seed in chunk], settings, batch_judge)
                       for chunk in fixed_batches(todo, config.batch_size)]
            for _, records in run_batches(engine, generate_batch, batches, pool):
                for sample in records:  # each batch is written as it arrives, so an interrupt loses little
                    sink.write(json.dumps(json_safe(sample)) + "\n")
                    samples.append(sample)
                sink.flush()
                bar.update(len(records))
    bar.close()
    summary = summarize(samples, config.arms)
    summary["config"] = run
    summary["seconds_this_session"] = time.perf_counter() - start
    write_json(out_dir / "results.json", json_safe(summary))
    (out_dir / "results.md").write_text(markdown_report(summary, run), encoding="utf-8")
    try:
        plot_tradeoff(summary, out_dir / "tradeoff.png")
    except ImportError:
        print("sia-edge: matplotlib is not installed, so no tradeoff.png (pip install 'sia-edge[eval]')",
              file=sys.stderr)
    return summary


