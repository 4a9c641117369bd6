"""Which summary of a continuation's hidden states predicts a distilled reward? Ridge regressions of the full text's
standardised reward on one vector each (the last state, the running max, the mean of the continuation's states, the
mean over prompt and continuation, the prompt's mean), fitted on the training prompts' samples of a `vm distill`
sample cache and scored (R²) on the held-out prompts' (the distillation's own split).

    PYTHONPATH=. python tools/pooling_ridge.py build/clean-hidden.samples.jsonl --reward 'clean|continuation'

Reads the hidden states from the feature cache `vm distill --input hidden` filled (it decodes nothing); samples
whose states are not cached are skipped and counted. This is the check behind contract 3's `pooled` input
(docs/distillation.md).

--layer L reads the states of block L from the feature cache `vm distill --scoring look-ahead --layer L` filled
(the default: the final state's), to see whether a middle layer carries the reward better:

    PYTHONPATH=. python tools/pooling_ridge.py build/clean-hidden.samples.jsonl --layer 8

--bag N adds the continuation's own tokens as counts over the N ids most frequent in the training continuations,
alone and beside the mean state: does a memory of which tokens were written add to the states' mean? (The `clean`
reward is a linear model over word n-grams.) --holdout-among is the distillation's option of that name.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter

import numpy as np

from sia_edge.train.distill import split_prompts, standardise
from sia_edge.train.features import text_key
from sia_edge.train.hidden_train import feature_cache, feature_cache_folder
from sia_edge.train.metrics import r_squared


def summaries(h: np.ndarray, prompt_length: int) -> dict[str, np.ndarray]:
    """h: states after BOS and after each token; the continuation's states start with the one after the prompt."""
    continuation = h[prompt_length:]
    return {"last state": h[-1], "max of the continuation": continuation.max(0),
            "mean of the continuation": continuation.mean(0), "mean of prompt and continuation": h[1:].mean(0),
            "mean of the prompt": h[1:prompt_length + 1].mean(0)}


def ridge_r2(x: np.ndarray, z: np.ndarray, held: np.ndarray, penalty: float) -> float:
    mean, sd = x[~held].mean(0), x[~held].std(0) + 1e-3
    xs = (x - mean) / sd
    a = xs[~held]
    w = np.linalg.solve(a.T @ a + penalty * np.eye(a.shape[1]), a.T @ z[~held])
    return r_squared(z[held], xs[held] @ w)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("samples", help="a `vm distill` sample cache (JSONL) of an --input hidden run")
    parser.add_argument("--reward", default="clean|continuation", help="the reward key in the samples")
    parser.add_argument("--holdout", type=float, default=0.1, help="the distillation's --holdout")
    parser.add_argument("--seed", type=int, default=0, help="the distillation's --seed")
    parser.add_argument("--bos", type=int, default=2, help="the base model's BOS id (Gemma: 2)")
    parser.add_argument("--layer", type=int, help="read the feature cache of `vm distill --layer L` (block L's "
                        "states) instead of the final state's")
    parser.add_argument("--holdout-among", type=int, default=None,
                        help="draw the held-out prompts among the first N (the distillation's option)")
    parser.add_argument("--bag", type=int, default=0, help="also fit on counts of the continuation's tokens over "
                        "the N most frequent ids (0: not)")
    args = parser.parse_args()
    lines = [json.loads(line) for line in open(args.samples, encoding="utf-8")]
    header, samples = lines[0], [s for s in lines[1:] if s.get("rewards", {}).get(args.reward) is not None]
    among = args.holdout_among or max(s["prompt_index"] for s in samples) + 1
    held_prompts = set(split_prompts(among, args.holdout, args.seed).tolist())
    rows, tokens, rewards, held, missing = cached_summaries(samples, header, args.bos, args.reward, held_prompts,
                                                            args.layer)
    if args.bag:
        add_bags(rows, tokens, held, args.bag)
    report(rows, rewards, held, missing, args.reward)


def add_bags(rows: list[dict], tokens: list[list[int]], held: np.ndarray, size: int) -> None:
    """Each row gains the counts of its continuation's tokens over the `size` ids most frequent in the training
    rows' continuations, alone and beside the mean of the continuation's states."""
    counts = Counter(t for continuation, h in zip(tokens, held) if not h for t in continuation)
    ids = {token: column for column, (token, _) in enumerate(counts.most_common(size))}
    for row, continuation in zip(rows, tokens):
        bag = np.zeros(len(ids), dtype=np.float32)
        for token in continuation:
            if token in ids:
                bag[ids[token]] += 1
        row[f"bag of the continuation's tokens ({len(ids)} ids)"] = bag
        row["mean of the continuation + bag"] = np.concatenate([row["mean of the continuation"], bag])


def cached_summaries(samples, header, bos, reward, held_prompts, layer):
    weights = header["model_weights_sha256"]
    header_path = feature_cache_folder(layer) / weights[:32] / "header.json"
    cache = feature_cache(weights, json.loads(header_path.read_text())["hidden_size"], layer)
    rows, tokens, rewards, held, missing = [], [], [], [], 0
    for sample in samples:
        key = text_key([bos] + sample["prompt_tokens"] + sample["token_ids"])
        if key not in cache:
            missing += 1
            continue
        rows.append(summaries(cache.get(key)["states"].astype(np.float32), len(sample["prompt_tokens"])))
        tokens.append(sample["token_ids"])
        rewards.append(sample["rewards"][reward])
        held.append(sample["prompt_index"] in held_prompts)
    return rows, tokens, np.array(rewards), np.array(held), missing


def report(rows, rewards, held, missing, reward) -> None:
    _, mean, sd = standardise(rewards[~held], reward)
    z = (rewards - mean) / sd
    print(f"{len(rows)} samples ({held.sum()} held out), {missing} without cached states")
    print("| summary | R², penalty 300 | 1000 | 3000 |\n|---|---|---|---|")
    for name in rows[0]:
        x = np.stack([r[name] for r in rows])
        print(f"| {name} | " + " | ".join(f"{ridge_r2(x, z, held, p):.3f}" for p in (300, 1000, 3000)) + " |")


if __name__ == "__main__":
    main()
