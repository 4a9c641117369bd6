"""`sia-edge eval`: compare the gates on a prompt set (the library side is sia_edge/evaluation/)."""

from __future__ import annotations

from pathlib import Path

import click

from ..calibration import read_prompt_file
from ..evaluation.arms import DEFAULT_ARMS, parse_arms
from ..evaluation.run import EVAL_BATCH_SIZE, EvalConfig, run_evaluation
from ..gate import GATES
from ..judges import load_judge
from .common import (build_engine, build_pool, chosen_signal, model_options, ray_options, reward_norm_option,
                     sampling_options, weight_option)

ARM_FORMS = [name if spec.arm == "fixed" else f"{name}@R" for name, spec in GATES.items()]


@click.command("eval")
@click.option("--prompts", "prompt_file", type=click.Path(dir_okay=False), required=True,
              help="Text file with one prompt per line (keep it disjoint from the calibration prompts).")
@click.option("--seeds", type=click.IntRange(min=1), default=3, show_default=True,
              help="Generations per prompt and arm (seed = prompt index + 10000 x i, the same in every arm: paired samples).")
@click.option("-n", "--max-tokens", type=click.IntRange(min=1), default=64, show_default=True,
              help="Tokens generated per sample.")
@click.option("--arms", default=DEFAULT_ARMS, show_default=True,
              help="Comma-separated arms: a gate name, with @R for the gates that take a ratio: "
                   f"{', '.join(ARM_FORMS)} (random/first-n match the realised ratio/count of entropy@R).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="runs/eval", show_default=True,
              help="Output directory; rerunning with the same settings resumes where it stopped.")
@click.option("--judge", default="vader", show_default=True,
              help="Independent judge, higher = better: 'vader' (sentiment), 'word-list-clean' (1 = no listed swear "
                   "word), or 'module:callable' returning an object with name and score(texts).")
@click.option("--calibration", type=click.Path(dir_okay=False), default=None,
              help="Calibration JSON for the entropy/online arms [default: the cached one, else the shipped one].")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Use only the first N prompts of the file.")
@weight_option
@reward_norm_option
@click.option("--batch-size", type=click.IntRange(min=1), default=EVAL_BATCH_SIZE, show_default=True,
              help="Generations decoded together in one llama.cpp context (throughput; 1 = one at a time). Each arm's "
                   "work is cut into fixed batches of this size, here or on Ray: same size, same samples.")
@ray_options
@sampling_options
@model_options
def eval_command(prompt_file, seeds, max_tokens, arms, out_dir, judge, calibration, limit, weight, reward_norm,
                 batch_size, ray_address, ray_actors, top_k, temperature, signal, entropy_over, model, value_model,
                 n_ctx, threads, gpu_layers):
    """Compare the gates (none, dense, entropy, online, random, first-n) on a prompt set: judge score, value score,
    perplexity, repetition, realised ratio and cost, with bootstrap CIs. Writes DIR/results.{json,md}, tradeoff.png."""
    prompts = read_prompt_file(prompt_file)[:limit]
    config = EvalConfig(prompt_file=str(prompt_file), prompts=prompts, seeds=seeds, max_tokens=max_tokens,
                        arms=parse_arms(arms), judge=judge, top_k=top_k, weight=weight, reward_norm=reward_norm,
                        temperature=temperature, signal=chosen_signal(signal, entropy_over),
                        calibration=calibration, batch_size=batch_size)
    chosen_judge = load_judge(judge)  # fail on a bad judge before loading models
    # a missing Ray fails here too; its actors start (and are checked against these models) at the first batch
    pool = build_pool(ray_address, ray_actors, model, value_model, n_ctx, threads, gpu_layers, use_value_model=True)
    engine = build_engine(model, value_model, n_ctx, threads, needs_value_model=True, calibration=calibration,
                          gpu_layers=gpu_layers)
    if pool is not None:
        from ..distributed import engine_identity

        pool.expect = engine_identity(engine)
    try:
        summary = run_evaluation(engine, config, out_dir, judge=chosen_judge, pool=pool)
    finally:
        if pool is not None:
            pool.close()
    click.echo((Path(out_dir) / "results.md").read_text(encoding="utf-8"))
    click.echo(f"sia-edge: {sum(a['samples'] for a in summary['arms'].values())} samples -> {out_dir}", err=True)
