"""Distillation's last stage: fit the value model to the standardised rewards, measure the fit on held-out
prompts, export it with its reward metadata (sia_edge/train/distill.py runs the stages)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np


def train_and_export(torch, config, tokenizer, reward, prompts, used, token_lists, score_from, targets,
                      train_idx, holdout_idx, mean, sd, progress) -> tuple[dict, object]:
    """Train on `train_idx`, measure on `holdout_idx`, export to config.out. Returns (the fit's facts, the graph).

    `token_lists` hold what the value model reads: base-model ids (input tokens, mapped to compact rows) or bytes
    (input bytes, each its own row); `config` is the DistillConfig, whose FitConfig part `vm train`'s fit reads."""
    from .data import LabelledTexts
    from .trainer import _check_export_matches, _fit, compact_vocabulary

    if config.input == "bytes":
        row_of_token, n_rows = None, 256
        rows = [np.asarray(units, dtype=np.int64) for units in token_lists]
        kept = "read as UTF-8 bytes"
    else:
        row_of_token, n_rows = compact_vocabulary([token_lists[i] for i in train_idx], tokenizer.n_vocab,
                                                  config.min_count)
        rows = [row_of_token[np.asarray(tokens, dtype=np.int64)] for tokens in token_lists]
        kept = f"{n_rows - 1} token types of {tokenizer.n_vocab} kept"
    data = LabelledTexts(texts=[""] * len(used), targets=targets, weights=np.ones(len(used), dtype=np.float32),
                         label_type="reward", skipped_empty=0, score_from=score_from)
    progress(f"{len(used)} samples ({len(train_idx)} train / {len(holdout_idx)} held out by prompt); reward "
             f"{reward.name!r} mean {mean:.4g}, sd {sd:.4g}; {kept}")
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        net = _fit(torch, config, data, rows, train_idx, holdout_idx, n_rows, progress)
        metrics, within = continuation_metrics(torch, net, [rows[i] for i in holdout_idx], score_from[holdout_idx],
                                               targets[holdout_idx], [used[i][0] for i in holdout_idx])
        graph = _export(torch, config, tokenizer, reward, prompts, net, row_of_token, metrics, within, mean, sd,
                        len(train_idx), len(holdout_idx))
        _check_export_matches(torch, graph, config.out, [token_lists[i] for i in holdout_idx[:16]])
    finally:
        torch.set_num_threads(previous_threads)
    fit = dict(objective=objective_of(config, reward), n_train=len(train_idx), n_holdout=len(holdout_idx),
               holdout_metrics=metrics, within_prompt_correlation=within, vocab_rows=n_rows,
               state_size=net.state_size, file_bytes=config.out.stat().st_size)
    return fit, graph


def continuation_metrics(torch, net, sequences, score_from, targets, prompt_ids) -> tuple[list[dict], float]:
    """Fit on held-out samples, each cut after 25/50/75/100% of its continuation: R² of the score against the
    standardised reward, and the correlation. Plus the correlation on full texts after removing each prompt's
    mean (of rewards and of scores): how well it ranks continuations of one prompt, which is what steering needs."""
    from .metrics import PREFIX_FRACTIONS, correlation, prefix_length, r_squared
    from .trainer import prefix_logits

    logits_at = prefix_logits(torch, net, sequences)
    results = []
    for fraction in PREFIX_FRACTIONS:
        scores = np.array([logits_at[i][int(start) + prefix_length(len(seq) - int(start), fraction) - 1]
                           for i, (seq, start) in enumerate(zip(sequences, score_from))])
        results.append({"fraction": fraction, "r2": r_squared(targets, scores),
                        "correlation": correlation(targets, scores)})
    return results, within_prompt_correlation(targets, np.array([scores[-1] for scores in logits_at]), prompt_ids)


def within_prompt_correlation(targets, scores, prompt_ids) -> float:
    """Correlation of full-text scores with rewards after removing each prompt's mean from both: how well a model
    ranks continuations of one prompt, which is what steering needs."""
    from .metrics import correlation

    prompt_ids = np.asarray(prompt_ids)
    centred_t, centred_s = np.asarray(targets, np.float64).copy(), np.asarray(scores, np.float64).copy()
    for p in np.unique(prompt_ids):
        members = prompt_ids == p
        centred_t[members] -= centred_t[members].mean()
        centred_s[members] -= centred_s[members].mean()
    return correlation(centred_t, centred_s)


def _export(torch, config, tokenizer, reward, prompts, net, row_of_token, metrics, within, mean, sd, n_train,
            n_holdout):
    from .export import export_trained

    objective = objective_of(config, reward)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()
                if k not in ("prompts", "texts", "out", "model", "cache", "steer_value_model", "ray_address",
                             "ray_actors")}
    source = config.texts or config.prompts
    training = {
        "method": "distillation", "source": "texts" if config.texts else "sampled", "prompts": source.name,
        "prompts_sha256": hashlib.sha256("\n".join(prompts).encode()).hexdigest(), "n_prompts": len(prompts),
        "reward": reward.name, "reward_on": config.reward_on, "label_type": "reward", "n_train": n_train,
        "n_holdout": n_holdout, "settings": settings, "holdout_metrics": metrics,
        "within_prompt_correlation": within, "sampled_by": tokenizer.name,
    }
    metadata = {
        "input": config.input,
        "architecture": config.arch,
        "objective": objective,
        "description": config.description or (f"{objective} value model "
                                               + ("(UTF-8 bytes, any GGUF) " if config.input == "bytes" else
                                                  f"for {tokenizer.name}, ")
                                               + f"distilled from reward {reward.name} on "
                                               + (f"the texts of {source.name}" if config.texts else
                                                  f"{tokenizer.name}'s continuations of {source.name}")),
        "reward": reward.name,
        "reward_mean": repr(mean),
        "reward_sd": repr(sd),
        "training": json.dumps(training, sort_keys=True),
    }
    if config.input == "tokens":  # a byte-level model reads any tokenizer and must not name one
        metadata.update({"tokenizer_fingerprint": tokenizer.fingerprint, "base_model": tokenizer.name})
    return export_trained(net, row_of_token, config.arch, config.out, metadata)


def objective_of(config, reward) -> str:
    return config.objective or reward.name
