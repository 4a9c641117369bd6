"""`sia-edge calibrate`: entropy thresholds for target junction ratios (the library side is sia_edge/calibration.py)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..calibration import (DEFAULT_RATIOS, build_calibration, cache_calibration_path, parse_ratios, read_prompt_file,
                           write_json)
from ..settings import GenerationSettings
from .common import build_engine, build_pool, chosen_signal, model_options, ray_options, sampling_options


@click.command("calibrate")
@click.option("--prompts", "prompt_file", type=click.Path(dir_okay=False), required=True,
              help="Text file with one prompt per line (use prompts you will not evaluate on).")
@click.option("--ratios", default=",".join(f"{r:g}" for r in DEFAULT_RATIOS), show_default=True,
              help="Comma-separated target junction ratios to compute tau for.")
@click.option("--seeds", type=click.IntRange(min=1), default=1, show_default=True,
              help="Generations per prompt (seeds 0..N-1).")
@click.option("-n", "--max-tokens", type=click.IntRange(min=1), default=64, show_default=True,
              help="Tokens generated per prompt and seed.")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Where to write the calibration JSON [default: <cache>/calibrations/<fingerprint>-k-T-entropy.json, "
                   "where generate --ratio finds it].")
@ray_options
@sampling_options
@model_options
def calibrate_command(prompt_file, ratios, seeds, max_tokens, out, ray_address, ray_actors, top_k, temperature,
                      signal, entropy_over, model, value_model, n_ctx, threads, gpu_layers):
    """Compute entropy thresholds for target junction ratios from unsteered generations over a prompt set."""
    signal = chosen_signal(signal, entropy_over)
    prompts = read_prompt_file(prompt_file)
    chosen_ratios = parse_ratios(ratios)
    settings = GenerationSettings(gate="none", top_k=top_k, temperature=temperature, signal=signal,
                                  max_tokens=max_tokens)
    pool = build_pool(ray_address, ray_actors, model, value_model, n_ctx, threads, gpu_layers,
                      use_value_model=value_model is not None)
    engine = build_engine(model, value_model, n_ctx, threads, needs_value_model=False, gpu_layers=gpu_layers)
    if pool is not None:
        pool.expect = {"model_fingerprint": engine.fingerprint}
    try:
        calibration = build_calibration(engine, prompts, str(prompt_file), settings, chosen_ratios, seeds,
                                        progress=True, pool=pool)
    finally:
        if pool is not None:
            pool.close()
    target = Path(out) if out else cache_calibration_path(engine.fingerprint, top_k, temperature, signal)
    write_json(target, calibration)
    click.echo(json.dumps(calibration["taus"]))
    click.echo(f"sia-edge: {calibration['tokens']} steps from {len(prompts)} prompts x {seeds} seeds -> {target}",
               err=True)
