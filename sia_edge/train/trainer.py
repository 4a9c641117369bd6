"""Train a value model on labelled text and export it as an incremental ONNX file.

Every prefix of every training text is trained to predict the text's final label (the spirit of the SIA paper's
Eq. 6): junctions happen mid-sentence, so partial texts must already score sensibly.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import SiaError, TrainingDataError
from ..value_model import pad_sequences  # the runtime's padding, so training and scoring agree
from .config import (ARCHITECTURES, BYTES_PER_TOKEN, DEFAULT_ARCH, INPUTS, FitReport,  # noqa: F401 (re-exported)
                     TrainingConfig)
from .data import LabelledTexts, load_labelled_texts
from .metrics import PREFIX_FRACTIONS, accuracy, correlation, prefix_length, r_squared, roc_auc, sigmoid

INSTALL_HINT = "pip install 'sia-edge[train]'"


class MissingTrainingExtraError(SiaError):
    """torch or onnx is not installed."""


@dataclass(kw_only=True)
class TrainingReport(FitReport):
    label_type: str
    fingerprint: str  # "" for a byte-level model
    majority_baseline: float  # binary: held-out accuracy of always answering the majority class; score: nan
    prefix_metrics: list[dict] = field(default_factory=list)  # one per fraction of each held-out text's length
    after_context: dict = field(default_factory=dict)  # whole held-out texts preceded by other held-out texts


def stderr_progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def require_training_extra():
    """Import torch and onnx, or say how to install them."""
    try:
        import onnx  # noqa: F401
        import torch
    except ImportError as exc:
        raise MissingTrainingExtraError(
            f"training a value model needs torch and onnx ({exc.name} is missing): {INSTALL_HINT}"
        ) from None
    return torch


def train_value_model(config: TrainingConfig, progress: Callable[[str], None] = stderr_progress) -> TrainingReport:
    """Read, tokenize (or take the bytes), split, train, evaluate, export; returns the held-out metrics."""
    torch = require_training_extra()
    config = replace(config, data=Path(config.data), out=Path(config.out),
                     model=None if config.model is None else Path(config.model),
                     arch=config.arch or DEFAULT_ARCH.get(config.input, "bag"))
    _check_config(config)
    started = time.perf_counter()
    data = load_labelled_texts(config.data, config.text_column, config.label_column, config.positive,
                               config.weight_column, config.label_type)
    if data.skipped_empty:
        progress(f"skipped {data.skipped_empty} rows with an empty {config.text_column!r}")

    train_idx, holdout_idx = stratified_split(data.targets, config.holdout, config.seed)
    _check_split(config, data, train_idx, holdout_idx)
    if config.input == "bytes":
        base, row_of_token, n_rows = None, None, 256
        token_lists = [list(text.encode("utf-8")[: config.max_tokens * BYTES_PER_TOKEN]) for text in data.texts]
        rows = [np.asarray(units, dtype=np.int64) for units in token_lists]  # a byte is its own row
        progress(f"{len(data.texts)} texts ({data.label_type}), {len(train_idx)} train / {len(holdout_idx)} held out; "
                 f"read as UTF-8 bytes")
    else:
        from ..base_model import BaseModel

        base = BaseModel(config.model, vocab_only=True)
        token_lists = [base.tokenize(text, add_bos=False)[: config.max_tokens] for text in data.texts]
        row_of_token, n_rows = compact_vocabulary([token_lists[i] for i in train_idx], base.n_vocab,
                                                  config.min_count)
        rows = [row_of_token[np.asarray(tokens, dtype=np.int64)] for tokens in token_lists]  # compact ids per text
        progress(f"{len(data.texts)} texts ({data.label_type}), {len(train_idx)} train / {len(holdout_idx)} held "
                 f"out; {n_rows - 1} token types of {base.n_vocab} kept (+1 unknown row)")

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)  # a fixed thread count keeps float sums, hence results, reproducible
    try:
        net = _fit(torch, config, data, rows, train_idx, holdout_idx, n_rows, progress)
        held_out = [rows[i] for i in holdout_idx]
        metrics = evaluate(torch, net, held_out, data.targets[holdout_idx], data.label_type)
        after_context = evaluate_after_context(torch, net, held_out, data.targets[holdout_idx], data.label_type,
                                               _context_units(config))
        graph = _export(torch, config, data, base, net, row_of_token, metrics, after_context, len(train_idx),
                        len(holdout_idx))
        _check_export_matches(torch, graph, config.out, [token_lists[i] for i in holdout_idx[:16]])
    finally:
        torch.set_num_threads(previous_threads)

    positive_share = float(data.targets[holdout_idx].mean())
    baseline = max(positive_share, 1 - positive_share) if data.label_type == "binary" else float("nan")
    return TrainingReport(
        out=str(config.out), objective=_objective(config), label_type=data.label_type,
        fingerprint=base.fingerprint if base is not None else "", n_train=len(train_idx), n_holdout=len(holdout_idx),
        majority_baseline=baseline, prefix_metrics=metrics, after_context=after_context, vocab_rows=n_rows,
        state_size=net.state_size, file_bytes=config.out.stat().st_size, seconds=time.perf_counter() - started,
        graph=graph, input=config.input, arch=config.arch,
    )


# --- data preparation ------------------------------------------------------------------------------------------


def stratified_split(targets: np.ndarray, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split keeping each label (binary) or each fifth of the score range (scores) in proportion."""
    rng = np.random.default_rng(seed)
    strata = np.minimum((targets * 5).astype(np.int64), 4)  # binary labels land in strata 0 and 4
    held = []
    for stratum in np.unique(strata):
        members = rng.permutation(np.flatnonzero(strata == stratum))
        held.append(members[: int(round(holdout * len(members)))])
    holdout_idx = np.sort(np.concatenate(held))
    train_idx = np.setdiff1d(np.arange(len(targets)), holdout_idx)
    return train_idx, holdout_idx


def compact_vocabulary(token_lists: list[list[int]], n_vocab: int, min_count: int) -> tuple[np.ndarray, int]:
    """Map each base-model id seen >= min_count times in training to its own row (1..R); every other id -> row 0.

    Returns (row_of_token (n_vocab,) int32, R + 1). Rarer ids share the unknown row: they would only be memorised.
    """
    counts = Counter(token for tokens in token_lists for token in tokens)
    kept = sorted(token for token, count in counts.items() if count >= min_count)
    row_of_token = np.zeros(n_vocab, dtype=np.int32)
    row_of_token[kept] = np.arange(1, len(kept) + 1, dtype=np.int32)
    return row_of_token, len(kept) + 1


# --- training and evaluation -----------------------------------------------------------------------------------


def _fit(torch, config, data: LabelledTexts, rows, train_idx, holdout_idx, n_rows, progress):
    from .network import UNKNOWN_ROW, PrefixValueNet
    from .recurrent import RecurrentValueNet

    torch.manual_seed(config.seed)
    if config.arch == "gru":
        net = RecurrentValueNet(n_rows, config.dim, config.recurrent_size, config.hidden)
    else:
        net = PrefixValueNet(n_rows, config.dim, config.hidden, config.ema_decay)
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.learning_rate, weight_decay=1e-4)
    steps_per_epoch = -(-len(train_idx) // config.batch_size)
    total_steps = config.epochs * steps_per_epoch
    # Cosine decay to 5% of the rate: the last epochs settle instead of bouncing around.
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * min(step, total_steps) / total_steps)))
    rng = np.random.default_rng(config.seed)
    dropout = torch.Generator().manual_seed(config.seed)
    train_rows, holdout_rows = [rows[i] for i in train_idx], [rows[i] for i in holdout_idx]
    for epoch in range(1, config.epochs + 1):
        net.train()
        order = rng.permutation(train_idx)
        total_loss = 0.0
        for start in range(0, len(order), config.batch_size):
            batch = order[start : start + config.batch_size]
            sequences, text_starts = with_context([rows[i] for i in batch], train_rows, config.context_prob,
                                                  _context_units(config), rng)
            batch_rows, batch_mask = (torch.from_numpy(a) for a in pad_sequences(sequences))
            if data.score_from is not None:  # only the prefixes from there on are scored (e.g. after the prompt)
                text_starts = [start + int(data.score_from[i]) for start, i in zip(text_starts, batch)]
            loss_mask = batch_mask * (torch.arange(batch_mask.shape[1]) >= torch.tensor(text_starts)[:, None])
            # Token dropout: trains the unknown row and keeps any single token from deciding alone.
            dropped = torch.rand(batch_rows.shape, generator=dropout) < config.token_dropout
            batch_rows = torch.where(dropped, torch.full_like(batch_rows, UNKNOWN_ROW), batch_rows)
            loss = _prefix_loss(torch, net, batch_rows, batch_mask, loss_mask, torch.from_numpy(data.targets[batch]),
                                torch.from_numpy(data.weights[batch]), config.loss)
            optimizer.zero_grad()
            loss.backward()
            if config.arch == "gru":  # recurrent gradients can spike on long contexts
                torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            total_loss += loss.item() * len(batch)
        full = evaluate(torch, net, holdout_rows, data.targets[holdout_idx], data.label_type)[-1]
        shown = ", ".join(f"{k} {v:.3f}" for k, v in full.items() if k != "fraction")
        progress(f"epoch {epoch}/{config.epochs}: train loss {total_loss / len(order):.4f}; held out (full texts): {shown}")
    net.eval()
    return net


def with_context(texts: list[np.ndarray], pool: list[np.ndarray], prob: float, max_tokens: int, rng):
    """Precede each text, with probability `prob`, by 1..max_tokens tokens of other texts (any label).

    At generation time the value model reads prompt + continuation, and late in a long text only the recent
    tokens (the candidates) differ: context teaches it to judge the latest text, not the average of everything.
    Returns (sequences, index where each text starts).
    """
    sequences, starts = [], []
    for text in texts:
        context = np.zeros(0, dtype=np.int64)
        if rng.random() < prob:
            wanted = int(rng.integers(1, max_tokens + 1))
            while len(context) < wanted:
                context = np.concatenate([context, pool[int(rng.integers(len(pool)))]])
            context = context[-wanted:]
        sequences.append(np.concatenate([context, text]))
        starts.append(len(context))
    return sequences, starts


def _prefix_loss(torch, net, rows, mask, loss_mask, targets, weights, loss: str = "bce"):
    """Weighted mean over texts of the mean over each text's prefixes of BCE(prefix logit, final label), or of
    the squared error (prefix value - target)^2 (loss "prefix"); loss "mean": (mean of the prefix values - target)^2.

    rows, mask (B, L) cover context + text; loss_mask (B, L) only the text's own positions, whose prefixes are
    what is scored. targets, weights (B,). Each text counts once whatever its length.
    """
    logits = net.score_every_prefix(rows, mask)  # (B, L)
    scored = loss_mask.sum(dim=1).clamp(min=1.0)  # (B,)
    if loss == "mean":
        per_text = ((logits * loss_mask).sum(dim=1) / scored - targets) ** 2  # (B,)
    else:
        expanded = targets.unsqueeze(1).expand_as(logits)
        if loss == "prefix":
            per_prefix = (logits - expanded) ** 2 * loss_mask  # (B, L)
        else:
            per_prefix = torch.nn.functional.binary_cross_entropy_with_logits(
                logits, expanded, reduction="none") * loss_mask  # (B, L)
        per_text = per_prefix.sum(dim=1) / scored  # (B,)
    return (per_text * weights).sum() / weights.sum().clamp(min=1e-12)


def evaluate(torch, net, sequences: list[np.ndarray], targets: np.ndarray, label_type: str) -> list[dict]:
    """Held-out metrics for each text cut at 25/50/75/100% of its length."""
    logits_at = prefix_logits(torch, net, sequences)
    results = []
    for fraction in PREFIX_FRACTIONS:
        logits = np.array([logits_at[i][prefix_length(len(s), fraction) - 1] for i, s in enumerate(sequences)])
        if label_type == "binary":
            results.append({"fraction": fraction, "accuracy": accuracy(targets, logits), "auc": roc_auc(targets, logits)})
        elif label_type == "reward":  # regression: the score itself predicts the (standardised) target
            results.append({"fraction": fraction, "r2": r_squared(targets, logits),
                            "correlation": correlation(targets, logits)})
        else:
            predictions = sigmoid(logits)
            results.append({"fraction": fraction, "r2": r_squared(targets, predictions),
                            "mae": float(np.mean(np.abs(targets - predictions)))})
    return results


def evaluate_after_context(torch, net, sequences, targets, label_type: str, context_tokens: int) -> dict:
    """Metrics for each whole held-out text preceded by `context_tokens` tokens of other held-out texts.

    The other texts are picked in a fixed shuffled order: files are often sorted by label, and neighbours would
    leak it.
    """
    rng = np.random.default_rng(0)
    contexts = []
    for i in range(len(sequences)):
        context = np.zeros(0, dtype=np.int64)
        while len(context) < context_tokens and len(sequences) > 1:
            j = int(rng.integers(len(sequences)))
            context = context if j == i else np.concatenate([context, sequences[j]])
        contexts.append(np.concatenate([context[-context_tokens:], sequences[i]]))
    logits = np.array([scores[-1] for scores in prefix_logits(torch, net, contexts)])
    result = {"context_tokens": context_tokens}
    if label_type == "binary":
        return {**result, "accuracy": accuracy(targets, logits), "auc": roc_auc(targets, logits)}
    return {**result, "r2": r_squared(targets, sigmoid(logits))}


def prefix_logits(torch, net, sequences: list[np.ndarray], batch_size: int = 512) -> list[np.ndarray]:
    """Logits of every prefix of each compact-row sequence (list of (len,) arrays)."""
    out = []
    with torch.no_grad():
        for start in range(0, len(sequences), batch_size):
            chunk = sequences[start : start + batch_size]
            rows, mask = pad_sequences(chunk)
            logits = net.score_every_prefix(torch.from_numpy(rows), torch.from_numpy(mask)).numpy()  # (B, L)
            out.extend(logits[i, : max(1, len(s))] for i, s in enumerate(chunk))
    return out


# --- export ----------------------------------------------------------------------------------------------------


def _export(torch, config, data, base, net, row_of_token, metrics, after_context, n_train, n_holdout):
    from .export import export_trained

    objective = _objective(config)
    training = {
        "data": config.data.name, "data_sha256": hashlib.sha256(config.data.read_bytes()).hexdigest(),
        "label_type": data.label_type, "n_train": n_train, "n_holdout": n_holdout,
        "settings": {k: v for k, v in asdict(config).items() if k not in ("data", "model", "out")},
        "holdout_metrics": metrics, "after_context": after_context,
    }
    reads = "UTF-8 bytes (any base model)" if base is None else base.name
    metadata = {
        "input": config.input,
        "architecture": config.arch,
        "objective": objective,
        "description": config.description or f"{objective} value model for {reads}, trained on {config.data.name}",
        "training": json.dumps(training, sort_keys=True),
    }
    if base is not None:
        metadata.update({"tokenizer_fingerprint": base.fingerprint, "base_model": base.name})
    return export_trained(net, row_of_token, config.arch, config.out, metadata)


def _check_export_matches(torch, graph, path: Path, token_lists: list[list[int]]) -> None:
    """Reload through the runtime loader and compare with torch: a wrong export must not ship silently."""
    from ..value_model import ValueModel

    value_model = ValueModel(path)
    if value_model.reads_bytes:  # the byte lists are "token ids" of a 256-token vocabulary: byte i is token i
        value_model.bind("", "training check", lambda token: bytes([token]), 256)
    onnx_scores = value_model.score_sequences(token_lists)
    tokens, mask = pad_sequences([np.asarray(t) for t in token_lists])
    with torch.no_grad():
        state = torch.zeros(len(token_lists), value_model.state_size)
        _, torch_scores = graph(state, torch.from_numpy(tokens), torch.from_numpy(mask))
    gap = float(np.max(np.abs(onnx_scores - torch_scores.numpy())))
    if gap > 1e-4:
        raise SiaError(f"exported {path} disagrees with the trained model (max score gap {gap:.2g}); not usable")


def _objective(config: TrainingConfig) -> str:
    if config.objective:
        return config.objective
    return f"{config.label_column} = {config.positive}" if config.positive else f"high {config.label_column}"


def _context_units(config: TrainingConfig) -> int:
    return config.context_tokens * (BYTES_PER_TOKEN if config.input == "bytes" else 1)


def _check_config(config: TrainingConfig) -> None:
    if config.input not in INPUTS:
        raise TrainingDataError(f"input must be one of {', '.join(INPUTS)}, got {config.input!r}")
    if config.arch not in ARCHITECTURES:
        raise TrainingDataError(f"architecture must be one of {', '.join(ARCHITECTURES)}, got {config.arch!r}")
    if config.input == "bytes" and config.arch != "gru":
        raise TrainingDataError("a byte-level value model must be order-aware: use --arch gru with --input bytes")
    if config.input == "tokens" and config.model is None:
        raise TrainingDataError("a token-level value model needs the GGUF whose tokenizer it reads (--model)")
    if not 0 < config.holdout < 1:
        raise TrainingDataError(f"holdout fraction must be between 0 and 1, got {config.holdout}")
    if not 0 < config.ema_decay < 1:
        raise TrainingDataError(f"EMA decay must be between 0 and 1, got {config.ema_decay}")
    if not 0 <= config.context_prob <= 1:
        raise TrainingDataError(f"context probability must be between 0 and 1, got {config.context_prob}")
    for name in ("epochs", "dim", "hidden", "max_tokens", "min_count", "batch_size", "threads", "context_tokens",
                 "recurrent_size"):
        if getattr(config, name) < 1:
            raise TrainingDataError(f"{name.replace('_', '-')} must be at least 1, got {getattr(config, name)}")


def _check_split(config, data: LabelledTexts, train_idx, holdout_idx) -> None:
    if len(holdout_idx) == 0 or len(train_idx) == 0:
        raise TrainingDataError(
            f"{config.data}: {len(data.texts)} texts are too few to hold out {config.holdout:.0%} of them")
    if data.label_type == "binary":
        for name, idx in (("training", train_idx), ("held-out", holdout_idx)):
            if len(np.unique(data.targets[idx])) < 2:
                raise TrainingDataError(
                    f"{config.data}: too few examples of one class: the {name} split has only one class")
