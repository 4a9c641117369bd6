"""Build the shipped `clean` value model for Gemma 3 270M base, reproducibly, with `sia-edge vm distill`.

    PYTHONPATH=. python tools/build_clean_value_model.py   # ~1 h on a shared 2-core CPU (sampling 3,376 continuations)

Steps:
1. `sia-edge vm distill` on tools/prompts/provocative-train.txt: Gemma continues each opening 16 times (64 tokens,
   unsteered, top-k 10, T 1), alt-profanity-check scores each continuation once (reward `clean` = 1 - P(offensive)),
   every continuation prefix regresses onto the standardised reward; 10% of the prompts are held out;
2. a fresh check on prompts it never saw: the same sampling on tools/prompts/provocative-calibration.txt, then the
   value model's full-text score against the reward, and against better-profanity's word list (a different method);
3. the steering signal (candidate words after a provocative prefix) and the junction cost;
4. the weight scale (tools/weight_scale.py): how narrowly its candidate scores spread against the token sentiment
   model the default weights were chosen with, stamped as metadata `sia_edge.weight_scale`;
5. the model card models/gemma3-270m-clean.md, and the .onnx copied to sia_edge/models/ (what the runtime loads).

Samples are cached in build/distill/ (JSONL, resumable): rerunning after an interruption continues where it stopped.
Needs the train and clean extras: pip install 'sia-edge[train,clean]'.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
BUILD = REPO / "build" / "distill"
NAME = "gemma3-270m-clean"
SEED = 0
TRAIN_PROMPTS = REPO / "tools" / "prompts" / "provocative-train.txt"
CHECK_PROMPTS = REPO / "tools" / "prompts" / "provocative-calibration.txt"
DESCRIPTION = ("Clean language (1 - P(offensive) from alt-profanity-check), distilled on continuations of "
               "provocative openings written by Gemma 3 270M base itself")
# Shared by the build and the fresh check: what a sample depends on.
SAMPLING = {"samples_per_prompt": 16, "max_tokens": 64, "top_k": 10, "temperature": 1.0, "seed": SEED}
CHECK_SAMPLES_PER_PROMPT = 16
DISTILL_OPTIONS = ["--reward", "clean", "--reward-on", "continuation", "--objective", "clean",
                   "--samples-per-prompt", str(SAMPLING["samples_per_prompt"]), "-n", str(SAMPLING["max_tokens"]),
                   "--top-k", str(SAMPLING["top_k"]), "-t", str(SAMPLING["temperature"]), "--seed", str(SEED),
                   "--llama-threads", "1"]


def distill(out: Path) -> dict:
    """Run the user-facing command in a fresh process; its progress streams to our stderr."""
    command = [sys.executable, "-c", "from sia_edge.cli import main; main(prog_name='sia-edge')", "vm", "distill",
               "--prompts", str(TRAIN_PROMPTS.relative_to(REPO)), "--out", str(out.relative_to(REPO)), "--json",
               "--description", DESCRIPTION, *DISTILL_OPTIONS]
    print("$ sia-edge " + shlex.join(command[3:]), file=sys.stderr, flush=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIA_EDGE_")}  # no stray option defaults
    result = subprocess.run(command, stdout=subprocess.PIPE, text=True, cwd=REPO,
                            env={**env, "PYTHONPATH": str(REPO)})
    if result.returncode != 0:
        sys.exit(f"distillation failed (exit {result.returncode})")
    return json.loads(result.stdout)


def fresh_check(onnx_path: Path, gguf: Path) -> dict:
    """Sample the calibration prompts as the build sampled the training ones; compare the value model's full-text
    score with the reward (standardised with the stored transform) and with the word-list judge."""
    from sia_edge.base_model import BaseModel
    from sia_edge.judges import load_judge
    from sia_edge.rewards import load_reward
    from sia_edge.train.distill import (DistillConfig, SampleCache, cache_header, reward_key, sample_missing,
                                        score_missing)
    from sia_edge.calibration import read_prompt_file
    from sia_edge.train.metrics import correlation, r_squared, roc_auc
    from sia_edge.value_model import ValueModel

    config = DistillConfig(prompts=CHECK_PROMPTS, reward="clean", out=BUILD / "unused.onnx", model=gguf,
                           reward_on="continuation", cache=BUILD / f"{NAME}-check.samples.jsonl", llama_threads=1,
                           **{**SAMPLING, "samples_per_prompt": CHECK_SAMPLES_PER_PROMPT})
    tokenizer = BaseModel(gguf, vocab_only=True)
    prompts = read_prompt_file(CHECK_PROMPTS)
    cache = SampleCache(config.cache_path, cache_header(config, tokenizer.fingerprint, None))

    def engine_factory():
        from sia_edge.engine import Engine

        return Engine(model=gguf, use_value_model=False, threads=1)

    sample_missing(config, prompts, cache, engine_factory)
    keys = sorted(cache.samples)
    score_missing(config, keys, cache, load_reward("clean"))
    samples = [cache.samples[k] for k in keys if cache.samples[k]["token_ids"]]
    model = ValueModel(onnx_path)
    mean, sd = float(model.metadata["reward_mean"]), float(model.metadata["reward_sd"])
    reward = np.array([s["rewards"][reward_key(config)] for s in samples])
    target = (reward - mean) / sd
    score = model.score_sequences([s["prompt_tokens"] + s["token_ids"] for s in samples])
    prompt_ids = np.array([s["prompt_index"] for s in samples])
    centred_t, centred_s = target.copy(), score.copy()
    for p in np.unique(prompt_ids):
        centred_t[prompt_ids == p] -= centred_t[prompt_ids == p].mean()
        centred_s[prompt_ids == p] -= centred_s[prompt_ids == p].mean()
    hits = 1.0 - np.array(load_judge("word-list-clean").score([s["continuation"] for s in samples]))
    return {
        "prompts": len(prompts), "samples": len(samples), "r2": r_squared(target, score),
        "correlation": correlation(target, score), "within_prompt_correlation": correlation(centred_t, centred_s),
        "offensive_share": float(np.mean(reward < 0.5)), "word_list_share": float(hits.mean()),
        # Does the value model's score (higher = cleaner) separate texts free of listed words from the rest?
        "auc_word_list_value_model": roc_auc(1 - hits, score) if 0 < hits.sum() < len(hits) else float("nan"),
        "auc_word_list_reward": roc_auc(1 - hits, reward) if 0 < hits.sum() < len(hits) else float("nan"),
    }


def training_rewards(report: dict) -> dict:
    """How offensive the training samples are, by the reward and by the word list."""
    from sia_edge.judges import load_judge

    samples = [json.loads(line) for line in Path(report["cache"]).read_text(encoding="utf-8").splitlines()[1:]]
    reward = np.array([s["rewards"]["clean|continuation"] for s in samples])
    hits = 1.0 - np.array(load_judge("word-list-clean").score([s["continuation"] for s in samples]))
    return {"samples": len(samples), "offensive_share": float(np.mean(reward < 0.5)),
            "word_list_share": float(hits.mean()), "median": float(np.median(reward))}


def candidate_scores(onnx_path: Path, gguf: Path) -> dict:
    """Scores of candidate next words after a provocative opening: the signal steering acts on."""
    from sia_edge.base_model import BaseModel
    from sia_edge.decoder import value_model_tokens
    from sia_edge.value_model import ValueModel

    base, model = BaseModel(gguf, vocab_only=True), ValueModel(onnx_path)
    model.bind(base.fingerprint, base.name, base.token_bytes, base.n_vocab)
    prompt = "That ref tonight was an absolute"
    words = [" disgrace", " idiot", " joke", " clown", " legend", " professional", " mess", " shambles", " star",
             " fucking"]
    candidates = np.array([base.tokenize(w, add_bos=False)[0] for w in words])
    prefix = model.extend(model.empty_prefix(), value_model_tokens(base.tokenize(prompt), (), base.bos_id))
    scores = model.score_candidates(prefix, candidates)
    return {"prompt": prompt, "scores": {w.strip(): round(float(s), 3) for w, s in zip(words, scores)}}


def stamp_weight_scale(out: Path) -> dict:
    """Measure the model's weight scale and stamp it into `out` (tools/weight_scale.py, in a fresh process)."""
    command = [sys.executable, str(REPO / "tools" / "weight_scale.py"), str(out), "--write", str(out)]
    print("$ " + shlex.join(command[1:]), file=sys.stderr, flush=True)
    result = subprocess.run(command, stdout=subprocess.PIPE, text=True, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    if result.returncode != 0:
        sys.exit(f"measuring the weight scale failed (exit {result.returncode})")
    return json.loads(result.stdout)


def model_card(report: dict, check: dict, rewards: dict, candidates: dict, latency: dict, scale: dict,
               onnx_path: Path, gguf: Path) -> str:
    import onnxruntime

    from sia_edge.settings import default_weight

    rows = "\n".join(f"| {m['fraction']:.0%} | {m['r2']:.3f} | {m['correlation']:.3f} |"
                     for m in report["holdout_metrics"])
    ranked = sorted(candidates["scores"].items(), key=lambda item: -item[1])
    shown = ", ".join(f"{w} {s:+.2f}" for w, s in ranked)
    command = ("sia-edge vm distill --prompts tools/prompts/provocative-train.txt --out "
               f"{NAME}.onnx --description {shlex.quote(DESCRIPTION)} {shlex.join(DISTILL_OPTIONS)}")
    return f"""# {NAME}: clean-language value model for Gemma 3 270M base (Q4_K_M)

Generated by `tools/build_clean_value_model.py` from its own measurements; do not edit by hand, rebuild instead.

| | |
|---|---|
| file | `sia_edge/models/{NAME}.onnx` |
| size | {onnx_path.stat().st_size:,} bytes ({onnx_path.stat().st_size / 1e6:.1f} MB) |
| sha256 | `{hashlib.sha256(onnx_path.read_bytes()).hexdigest()}` |
| objective | `clean` (metadata `sia_edge.objective`) |
| reward | `clean` = 1 − P(offensive) from `alt-profanity-check` 1.9.1, on the continuation alone; standardised with mean {report['reward_mean']:.4f} and sd {report['reward_sd']:.4f} (metadata `sia_edge.reward_mean`, `sia_edge.reward_sd`): the score predicts `(reward − mean) / sd`, higher = cleaner |
| base model | Gemma 3 270M base (Q4_K_M), `{gguf.name}` |
| contract | sia-edge value model v1 (`models/README.md`), state size 129, {report['vocab_rows']:,} embedding rows |
| weight scale | {scale['weight_scale']:g} (metadata `sia_edge.weight_scale`): at a junction its 10 candidate scores spread by {scale['model']['median_spread']:.3f} (median standard deviation), against {scale['reference']['median_spread']:.3f} for the token sentiment model the default weights were chosen with, so with no `-w` each gate's default is multiplied by it (dense {default_weight('dense', scale['weight_scale']):g}, sparse gates {default_weight('entropy', scale['weight_scale']):g}); measured by `tools/weight_scale.py` on `provocative-calibration.txt` ({scale['n_prompts']} prompts × {scale['max_tokens']} unsteered tokens) |
| junction cost | {latency['median_ms']:.3f} ms median ({latency['p99_ms']:.3f} ms p99) to score 10 candidates after a 256-token prefix: one onnxruntime {onnxruntime.__version__} call, 1 thread |

## Data: the base model's own text (the paper's Eq. 6)

Prompts: `tools/prompts/provocative-train.txt`, {len(TRAIN_PROMPTS.read_text().splitlines())} openings written for this
project to tempt a base model into insults and swearing (referees, traffic, neighbours, bosses, online
arguments, complaints). The disjoint `provocative-calibration.txt` and `provocative-dev.txt` were not used for
training (dev is for evaluations). Gemma 3 270M base continued each opening {SAMPLING['samples_per_prompt']} times
({SAMPLING['max_tokens']} tokens, {report['samples'] + report['skipped_empty']} samples, unsteered, top-k {SAMPLING['top_k']}, T {SAMPLING['temperature']:g}: the sampler steering
uses; one seed per prompt and sample derived from seed {SEED}); {report['skipped_empty']} samples that ended at once
were skipped. Each continuation was scored once by the reward: {rewards['offensive_share']:.1%} of them have
P(offensive) > 0.5 and {rewards['word_list_share']:.1%} contain a word of `better-profanity`'s list (median reward
{rewards['median']:.3f}): the offensive tail the value model has to learn is small.

Why the continuation alone: the openings are provocative by design, so on prompt + continuation the prompt's own words
would set much of the reward, and it is the same for every candidate at a junction. Scoring what the model wrote
makes the reward's spread the part steering can change, and matches the evaluation's judge, which reads the
continuation. The value model still reads prompt + continuation (as the runtime feeds it).

## Training

    {command}

Every prefix of prompt + continuation from the first generated token on regresses onto the sample's standardised
reward (squared error per prefix, averaged per sample; `--loss mean` would be the paper's squared error of the mean
over prefixes). Same network and export as `vm train` (token embeddings over a compact vocabulary, sum + moving
average state, MLP). 10% of the prompts, with all their samples, are held out.

## Fit

Held-out prompts of the training split ({report['n_holdout_prompts']} prompts, {report['n_holdout']} samples), each
cut after 25/50/75/100% of its continuation and scored from the empty state (R² and correlation against the
standardised reward):

| continuation seen | R² | correlation |
|---|---|---|
{rows}

Ranking continuations of one prompt (what a junction needs), full texts, each prompt's mean removed: correlation
{report['within_prompt_correlation']:.3f}.

Fresh prompts (`provocative-calibration.txt`, {check['prompts']} prompts × {CHECK_SAMPLES_PER_PROMPT} samples, drawn the same way): full-text R²
{check['r2']:.3f}, correlation {check['correlation']:.3f}, within-prompt correlation {check['within_prompt_correlation']:.3f}.
There {check['offensive_share']:.1%} of the continuations have P(offensive) > 0.5, and {check['word_list_share']:.1%}
contain a word of `better-profanity`'s list (a different method from the reward's learned model). The value
model's score separates the continuations without a listed word from those with one at ROC AUC
{check['auc_word_list_value_model']:.3f} (the reward itself: {check['auc_word_list_reward']:.3f}).

Steering signal: after "{candidates['prompt']}", candidate next words score {shown}.

## Rebuild

    PYTHONPATH=. python tools/build_clean_value_model.py

Deterministic for a given seed, torch thread count (1) and llama.cpp build; the sample cache in `build/distill/`
makes a rerun resume instead of resampling.

## Known limits

- A distillation of `alt-profanity-check`, a linear model over word n-grams whose training data is not shipped: it
  inherits its blind spots (misspellings, slurs it never saw, polite hostility). Judge steering with something else.
- A weak fit (held-out full-text R² {report['holdout_metrics'][-1]['r2']:.2f}, correlation
  {report['holdout_metrics'][-1]['correlation']:.2f}): most continuations are clean and the reward's spread sits in a
  few percent of them, so the model has learned mainly that a handful of insult and swear tokens are bad (see the
  candidate scores above) rather than a graded notion of hostility. More samples per prompt would help.
- Trained on 64-token continuations of short provocative openings; longer texts and other domains are
  extrapolation.
- A bag of token embeddings plus a recency average: word order beyond recency is invisible.
- Clean is not kind, true or helpful: a polite falsehood scores high.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args()
    sys.path.insert(0, str(REPO / "tools"))
    from build_value_models import junction_latency_ms
    from sia_edge.models import default_base_model

    gguf = default_base_model()
    BUILD.mkdir(parents=True, exist_ok=True)
    out = BUILD / f"{NAME}.onnx"
    report = distill(out)
    check = fresh_check(out, gguf)
    rewards = training_rewards(report)
    candidates = candidate_scores(out, gguf)
    latency = junction_latency_ms(out)
    scale = stamp_weight_scale(out)
    (BUILD / f"{NAME}-build.json").write_text(json.dumps(
        {"report": report, "fresh_check": check, "training_rewards": rewards, "candidates": candidates,
         "latency": latency, "weight_scale": scale}, indent=2))
    shipped = REPO / "sia_edge" / "models" / f"{NAME}.onnx"
    shutil.copy(out, shipped)
    (REPO / "models" / f"{NAME}.md").write_text(model_card(report, check, rewards, candidates, latency, scale, shipped,
                                                                  gguf))
    print(json.dumps({"fit": report["holdout_metrics"][-1], "within_prompt": report["within_prompt_correlation"],
                      "fresh_check": check}, indent=2))


if __name__ == "__main__":
    main()
