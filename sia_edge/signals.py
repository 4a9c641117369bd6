"""Per-step uncertainty statistics (pure numpy): the top-k candidates and the signal a gate thresholds.

Every step the decoder asks for the top-k candidates and one uncertainty signal (cheap, always computed); only
then does a gate decide whether the step is a junction and the expensive value model runs -- the same
"cheap path first" split llama.cpp uses for its grammar check. A new signal is one function and one entry in
SIGNALS.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .errors import ModelOutputError

# Logits further than this below the maximum are pre-filtered away before partitioning. Most steps keep a few
# hundred survivors out of Gemma's 262,144 tokens; when fewer than k survive we widen once, then sort exactly.
_PREFILTER_MARGINS = (12.0, 24.0)


def top_k(logits: np.ndarray, k: int, scratch: np.ndarray | None = None,
          peak: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The k largest logits, largest first, ties broken by the lower token id (exactly `argsort(-x, stable)[:k]`).

    Returns (ids (k,) int64, values (k,) float32). The input is never modified. A full sort over a 262k
    vocabulary costs milliseconds, so the candidates are first cut down to those within a margin of the max.
    `scratch`, a bool array shaped like `logits`, saves allocating the pre-filter mask at every step.
    """
    n = logits.shape[0]
    k = min(k, n)
    peak = logits.max() if peak is None else peak  # the caller may already know the row's maximum
    if np.isfinite(peak):
        mask = scratch if scratch is not None else np.empty(n, dtype=bool)
        for margin in _PREFILTER_MARGINS:
            np.greater_equal(logits, peak - margin, out=mask)
            survivors = np.flatnonzero(mask)  # ascending ids
            if survivors.size >= k:
                return _exact_top_k(survivors, logits[survivors], k)
    order = np.argsort(-logits, kind="stable")[:k]  # fallback: -inf/NaN present or a very flat distribution
    return order.astype(np.int64), logits[order]


def _exact_top_k(ids: np.ndarray, values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of a candidate subset whose ids are ascending; ties at the k-th value keep the lowest ids."""
    if ids.size > k:
        kth_value = np.partition(values, ids.size - k)[ids.size - k]  # the k-th largest
        above = values > kth_value
        n_ties_needed = k - int(above.sum())
        tied = np.flatnonzero(values == kth_value)[:n_ties_needed]
        keep = np.sort(np.concatenate([np.flatnonzero(above), tied]))
        ids, values = ids[keep], values[keep]
    order = np.lexsort((ids, -values))  # by value descending, then id ascending
    return ids[order].astype(np.int64), values[order]


def softmax_entropy(logits: np.ndarray) -> float:
    """Entropy in nats of softmax(logits), computed in float64 without forming log-probabilities.

    H = log S - sum(e * z) / S with z = x - max(x), e = exp(z), S = sum(e). Entries at -inf contribute nothing.
    """
    x = np.asarray(logits, dtype=np.float64)
    peak = x.max()
    if not np.isfinite(peak):
        return 0.0 if peak == -np.inf else math.nan
    z = x - peak
    e = np.exp(z)
    total = e.sum()
    live = e > 0.0  # entries at -inf: 0 * -inf must count as 0, not NaN
    weighted = (e[live] * z[live]).sum()
    return float(max(math.log(total) - weighted / total, 0.0))


def full_vocab_entropy(logits: np.ndarray) -> float:
    """Entropy over the whole vocabulary, fused in float32 for speed (one exp pass)."""
    peak = logits.max()
    z = logits - peak
    e = np.exp(z)
    total = float(e.sum(dtype=np.float64))
    finite = np.isfinite(z)
    weighted = float(np.dot(e[finite], z[finite]))
    return max(math.log(total) - weighted / total, 0.0)


def top_two_ratio(sorted_logits: np.ndarray) -> float:
    """p2 / p1 = exp(l2 - l1) for logits sorted largest first: 1 when the top two tie, near 0 when one dominates.

    The margin alternative to entropy: it asks only whether the runner-up is a real contender. In [0, 1], larger
    means less certain, so every threshold, calibration and quantile built for entropy works on it unchanged.
    """
    if sorted_logits.shape[0] < 2 or not np.isfinite(sorted_logits[0]):
        return 0.0
    return float(math.exp(sorted_logits[1] - sorted_logits[0]))


@dataclass(frozen=True)
class Signal:
    """One uncertainty measure a gate can threshold. Larger always means less certain."""

    name: str
    label: str  # as describe() prints it
    help: str
    compute: Callable[[np.ndarray, np.ndarray], float]  # (logits row, top-k logits largest first) -> value
    most: Callable[[int], float | None]  # the largest value it can take with k candidates (None: the vocabulary's)


SIGNALS: dict[str, Signal] = {s.name: s for s in (
    Signal("top-k", "entropy", "entropy in nats of the k candidates (the paper)",
           lambda logits, top: softmax_entropy(top), lambda k: math.log(k)),
    Signal("full", "full-entropy", "entropy in nats of the whole vocabulary",
           lambda logits, top: full_vocab_entropy(logits), lambda k: None),  # log(n_vocab): 10+ nats
    Signal("top2", "top2-ratio", "the runner-up/top probability ratio p2/p1, in [0, 1]",
           lambda logits, top: top_two_ratio(top), lambda k: 1.0 if k >= 2 else 0.0),
)}
SIGNAL_HELP = "The uncertainty the gate thresholds: " + "; ".join(f"'{s.name}' {s.help}" for s in SIGNALS.values()) + "."


@dataclass(frozen=True)
class StepStats:
    """The cheap statistics of one decoding step."""

    candidate_ids: np.ndarray  # (k,) int64, best first
    candidate_logits: np.ndarray  # (k,) float64 raw logits
    entropy: float  # the uncertainty signal: nats over the k candidates, over the vocabulary, or p2/p1 (SIGNALS)


def step_stats(logits: np.ndarray, k: int, signal: str = "top-k", scratch: np.ndarray | None = None) -> StepStats:
    """Top-k candidates and the signal the gate looks at, for one logits row.

    Raises ModelOutputError when the row's maximum is NaN or +inf (NaN anywhere propagates into the max): such a
    row has no distribution to sample from, and a NaN signal would silently read as "not a junction".
    """
    peak = float(logits.max())
    if not math.isfinite(peak):
        raise ModelOutputError(f"the base model produced non-finite logits (max {peak}); "
                               "the model file or the llama.cpp build is broken")
    ids, values = top_k(logits, k, scratch, peak)
    values64 = values.astype(np.float64)
    return StepStats(ids, values64, SIGNALS[signal].compute(logits, values64))
