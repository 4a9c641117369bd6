"""Per-step uncertainty statistics and the junction policies (pure numpy).

Every step the decoder asks for the top-k candidates and their entropy (cheap, always computed), then asks a
gate policy whether this step is a junction (only then does the expensive value model run) -- the same
"cheap path first" split llama.cpp uses for its grammar check.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .errors import InvalidSettingError

# Logits further than this below the maximum are pre-filtered away before partitioning. Most steps keep a few
# hundred survivors out of Gemma's 262,144 tokens; when fewer than k survive we widen once, then sort exactly.
_PREFILTER_MARGINS = (12.0, 24.0)


def top_k(logits: np.ndarray, k: int, scratch: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The k largest logits, largest first, ties broken by the lower token id (exactly `argsort(-x, stable)[:k]`).

    Returns (ids (k,) int64, values (k,) float32). The input is never modified. A full sort over a 262k
    vocabulary costs milliseconds, so the candidates are first cut down to those within a margin of the max.
    `scratch`, a bool array shaped like `logits`, saves allocating the pre-filter mask at every step.
    """
    n = logits.shape[0]
    k = min(k, n)
    peak = logits.max()
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


# The uncertainty signal a gate thresholds (settings.entropy_over): the paper's top-k entropy, the entropy of the
# whole vocabulary, or the top-two probability ratio.
SIGNALS = ("top-k", "full", "top2")
SIGNAL_HELP = ("The uncertainty the gate thresholds: 'top-k' entropy of the k candidates (the paper), 'full' entropy "
               "of the whole vocabulary, or 'top2' the runner-up/top probability ratio p2/p1.")


@dataclass(frozen=True)
class StepStats:
    """The cheap statistics of one decoding step."""

    candidate_ids: np.ndarray  # (k,) int64, best first
    candidate_logits: np.ndarray  # (k,) float64 raw logits
    entropy: float  # the uncertainty signal: nats over the k candidates, over the vocabulary, or p2/p1 (SIGNALS)


def step_stats(logits: np.ndarray, k: int, entropy_over: str = "top-k", scratch: np.ndarray | None = None) -> StepStats:
    """Top-k candidates and the entropy the gate looks at, for one logits row."""
    ids, values = top_k(logits, k, scratch)
    values64 = values.astype(np.float64)
    if entropy_over == "full":
        entropy = full_vocab_entropy(logits)
    elif entropy_over == "top2":
        entropy = top_two_ratio(values64)
    else:
        entropy = softmax_entropy(values64)
    return StepStats(ids, values64, entropy)


# --- junction policies -------------------------------------------------------------------------------------
# Shaped like llama.cpp samplers: a frozen config, a name, one decide() call per step, reset() per generation.


@dataclass
class EntropyGate:
    """SIA's gate (Hu et al. 2026, arXiv 2602.21215): steer iff the step's entropy H >= tau.

    tau = inf never steers; tau = 0 steers every step.
    """

    tau: float
    name: str = field(default="entropy", init=False)

    def __post_init__(self) -> None:
        if not (self.tau >= 0.0):  # also rejects NaN
            raise InvalidSettingError(f"tau must be >= 0 nats, got {self.tau}")

    def reset(self, seed: int) -> None:
        pass

    def decide(self, step: int, entropy: float) -> bool:
        return entropy >= self.tau

    def describe(self) -> str:
        return f"entropy-gate(tau={self.tau:g})"


@dataclass
class DenseGate:
    """Steer every step: ARGS (Khanov et al. 2024) with the same k, w and T."""

    name: str = field(default="dense", init=False)

    def reset(self, seed: int) -> None:
        pass

    def decide(self, step: int, entropy: float) -> bool:
        return True

    def describe(self) -> str:
        return "dense-gate"


@dataclass
class NoneGate:
    """Never steer: the fair base arm (same top-k sampler and temperature, w = 0)."""

    name: str = field(default="none", init=False)

    def reset(self, seed: int) -> None:
        pass

    def decide(self, step: int, entropy: float) -> bool:
        return False

    def describe(self) -> str:
        return "no-gate"


@dataclass
class RandomGate:
    """Steer each step with probability q, independent of entropy: the matched-sparsity control.

    Its random stream is derived from the generation seed but separate from the sampler's, so switching the
    gate never changes which uniform numbers the sampler draws.
    """

    q: float
    name: str = field(default="random", init=False)

    def __post_init__(self) -> None:
        if not (0.0 <= self.q <= 1.0):
            raise InvalidSettingError(f"q must be in [0, 1], got {self.q}")
        self._rng = np.random.default_rng(0)

    def reset(self, seed: int) -> None:
        self._rng = np.random.default_rng([seed, 0x5EED])

    def decide(self, step: int, entropy: float) -> bool:
        return bool(self._rng.random() < self.q)

    def describe(self) -> str:
        return f"random-gate(q={self.q:g})"


@dataclass
class FirstNGate:
    """Steer the first n generated tokens only: the positional control."""

    n: int
    name: str = field(default="first-n", init=False)

    def __post_init__(self) -> None:
        if self.n < 0:
            raise InvalidSettingError(f"first_n must be >= 0, got {self.n}")

    def reset(self, seed: int) -> None:
        pass

    def decide(self, step: int, entropy: float) -> bool:
        return step < self.n

    def describe(self) -> str:
        return f"first-n-gate(n={self.n})"


@dataclass
class OnlineRatioGate:
    """Hold the realised junction ratio near a target on every prompt (an improvement over the paper).

    The threshold is a running quantile of the entropies seen so far in this generation, seeded with a prior
    threshold (e.g. from calibration) so that the first steps behave like the fixed gate. A small integral
    correction keeps the realised ratio itself on target as the text drifts.
    """

    ratio: float
    prior_tau: float
    name: str = field(default="online", init=False)

    def __post_init__(self) -> None:
        if not (0.0 <= self.ratio <= 1.0):
            raise InvalidSettingError(f"ratio must be in [0, 1], got {self.ratio}")
        if not (self.prior_tau >= 0.0):
            raise InvalidSettingError(f"tau must be >= 0 nats, got {self.prior_tau}")
        self.reset(0)

    def reset(self, seed: int) -> None:
        self._seen: list[float] = []
        self._steered = 0

    def threshold(self) -> float:
        if len(self._seen) < 8:
            return self.prior_tau
        return float(np.quantile(self._seen, 1.0 - self.ratio))

    def decide(self, step: int, entropy: float) -> bool:
        tau = self.threshold()
        self._seen.append(entropy)
        n = len(self._seen)
        behind = self._steered < self.ratio * n - 1.0  # steered too little so far: take this one if uncertain
        ahead = self._steered > self.ratio * n + 1.0
        junction = (entropy >= tau and not ahead) or (behind and entropy > 0.0)
        self._steered += junction
        return junction

    def describe(self) -> str:
        return f"online-ratio-gate(r={self.ratio:g}, prior_tau={self.prior_tau:g})"


class BudgetQuantileGate:
    """Proposed replacement for OnlineRatioGate: hold `ratio` on every prompt without steering confident steps.

    OnlineRatioGate thresholds at a running quantile, then overrides it: when it is more than one junction behind
    it steers the next step whatever its entropy (even H ~ 0, where steering changes nothing and wastes a value-model
    call), and when more than one ahead it refuses any step. Here the budget error moves the *quantile level*
    instead: owing junctions lowers the threshold smoothly (over `horizon` steps), being ahead raises it, and a
    step is only ever steered for ranking high among this text's own entropies. Not yet behind a --gate name: measured by replay
    (tools/replay_gates.py), not yet by a full evaluation.
    """

    name = "online-budget"

    def __init__(self, ratio: float, prior_tau: float, warmup: int = 8, horizon: float = 16.0) -> None:
        if not 0.0 <= ratio <= 1.0:
            raise InvalidSettingError(f"ratio must be in [0, 1], got {ratio}")
        self.ratio, self.prior_tau, self.warmup, self.horizon = ratio, prior_tau, warmup, horizon
        self.reset(0)

    def reset(self, seed: int) -> None:
        self._seen: list[float] = []
        self._steered = 0

    def threshold(self) -> float:
        n = len(self._seen)
        if n < self.warmup:
            return self.prior_tau
        owed = self.ratio * (n + 1) - self._steered  # junctions owed, counting the step being decided
        level = min(1.0, max(0.0, self.ratio + owed / self.horizon))
        return math.inf if level <= 0.0 else float(np.quantile(self._seen, 1.0 - level))

    def decide(self, step: int, entropy: float) -> bool:
        junction = entropy >= self.threshold()
        self._seen.append(entropy)
        self._steered += junction
        return junction

    def describe(self) -> str:
        return f"online-budget-gate(r={self.ratio:g}, prior_tau={self.prior_tau:g})"


GATE_NAMES = ("entropy", "dense", "none", "random", "first-n", "online")
