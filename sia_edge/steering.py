"""Combine base logits with value-model rewards and choose a token (pure numpy).

At a junction the k candidates are rescored as s_i = l_i + w * r_i (SIA/ARGS); elsewhere s_i = l_i. The next
token is drawn from softmax(s / T) over the k candidates only, so sampling is always restricted to the top-k.
Equivalently pi(c_i) ∝ p_base(c_i)^(1/T) * exp(w * r_i / T).
"""

from __future__ import annotations

import math

import numpy as np

from .errors import ValueModelError


# How the k candidates' rewards are normalised per junction, before w: the raw value-model scores (the paper),
# centred on their mean (a shift changes nothing after softmax, so this only changes what is reported), or
# z-scored, so that w means the same thing whether the candidates' rewards spread over 4 logits or 0.5.
REWARD_NORMS = ("none", "center", "zscore")


def weight_scale(text: str | None, source) -> float:
    """A value model's metadata `sia_edge.weight_scale` (1 when absent): what the gates' default w is multiplied by
    when the user gives none. The defaults were chosen with a sentiment model whose k candidate scores spread by
    ~0.25 at a junction; a model whose scores spread 3x less pushes 3x less at the same w, so it says so here
    (tools/weight_scale.py measures it). An explicit w is used as given."""
    if text is None:
        return 1.0
    try:
        scale = float(text)
    except ValueError:
        scale = math.nan
    if not (math.isfinite(scale) and scale > 0):
        raise ValueModelError(f"{source}: metadata 'sia_edge.weight_scale' must be a number > 0, got {text!r}; "
                              f"remove the key or stamp a measured one with tools/weight_scale.py")
    return scale


def normalised_rewards(rewards: np.ndarray, norm: str) -> np.ndarray:
    """The k rewards as steering uses them.  # (k,) float64; all-equal rewards z-score to zeros"""
    r = np.asarray(rewards, dtype=np.float64)
    if norm == "none":
        return r.copy()
    centred = r - r.mean()
    if norm == "center":
        return centred
    spread = r.std()
    return centred / spread if spread > 0 else np.zeros_like(r)


def steered_scores(logits: np.ndarray, rewards: np.ndarray | None, weight: float, norm: str = "none") -> np.ndarray:
    """s = l + w * norm(r) over the k candidates; with no rewards (not a junction) s = l.  # (k,) float64"""
    scores = np.asarray(logits, dtype=np.float64)
    if rewards is None or weight == 0.0:
        return scores.copy()
    return scores + weight * normalised_rewards(rewards, norm)


def sampling_probs(scores: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(scores / T) in float64; T = 0 puts all mass on the first maximum.  # (k,) float64"""
    scores = np.asarray(scores, dtype=np.float64)
    if temperature == 0.0:
        probs = np.zeros_like(scores)
        probs[int(np.argmax(scores))] = 1.0
        return probs
    z = scores / temperature
    z = z - z.max()
    e = np.exp(z)
    return e / e.sum()


def choose(scores: np.ndarray, temperature: float, uniform: float) -> int:
    """Index of the chosen candidate, by inverse CDF with one uniform number in [0, 1).

    The caller draws exactly one uniform per step whatever the gate decided, so the same seed walks the same
    random stream under every gate (the arms of an evaluation differ only where steering changed the scores).
    """
    if temperature == 0.0:
        return int(np.argmax(scores))
    cdf = np.cumsum(sampling_probs(scores, temperature))
    index = int(np.searchsorted(cdf, uniform * cdf[-1], side="right"))
    return min(index, len(cdf) - 1)
