"""Held-out metrics in plain numpy (no scikit-learn): accuracy, ROC AUC, R²."""

from __future__ import annotations

import numpy as np

PREFIX_FRACTIONS = (0.25, 0.5, 0.75, 1.0)


def prefix_length(length: int, fraction: float) -> int:
    """Tokens kept when a text of `length` tokens is cut at `fraction` of its length (at least one)."""
    return max(1, int(np.ceil(fraction * length)))


def accuracy(targets: np.ndarray, logits: np.ndarray) -> float:
    return float(np.mean((logits > 0) == (targets > 0.5)))


def roc_auc(targets: np.ndarray, logits: np.ndarray) -> float:
    """Probability that a random positive outscores a random negative (ties count half): Mann-Whitney U."""
    positive = targets > 0.5
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    return float((_average_ranks(logits)[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def r_squared(targets: np.ndarray, predictions: np.ndarray) -> float:
    residual = float(np.sum((targets - predictions) ** 2))
    total = float(np.sum((targets - targets.mean()) ** 2))
    return 1.0 - residual / total if total > 0 else float("nan")


def correlation(targets: np.ndarray, predictions: np.ndarray) -> float:
    """Pearson correlation (nan when either side is constant)."""
    t, p = targets - targets.mean(), predictions - predictions.mean()
    scale = float(np.sqrt(np.sum(t * t) * np.sum(p * p)))
    return float(np.sum(t * p)) / scale if scale > 0 else float("nan")


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing their average rank."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    ranks = np.empty(len(values), dtype=np.float64)
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return ranks
