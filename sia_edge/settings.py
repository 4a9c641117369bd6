"""One settings object behind the CLI options, the Python API and the docs."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

from .errors import InvalidSettingError
from .gate import (SIGNALS, DenseGate, EntropyGate, FirstNGate, GATE_NAMES, NoneGate, OnlineRatioGate,
                   RandomGate)

# Calibrated on Gemma 3 270M base (sia_edge/models/calibration-*.json): with k=10, T=1 this threshold steers half
# of the steps of unsteered text; in the reduced evaluation (docs/results.md) it kept ~90% of dense steering's
# judge-score gain. Other models should calibrate: `sia-edge calibrate`, then `generate --ratio R`.
DEFAULT_TAU = 1.67


@dataclass(frozen=True)
class GenerationSettings:
    """How to generate: sampling, gate, steering and stop conditions. Validated on construction."""

    gate: str = "entropy"  # entropy | dense | none | random | first-n | online
    tau: float = DEFAULT_TAU  # entropy threshold in nats (entropy gate; prior for the online gate)
    ratio: float | None = None  # target junction ratio (online gate; or to look tau up in a calibration)
    q: float = 0.2  # steering probability of the random gate
    first_n: int = 32  # steered positions of the first-n gate
    top_k: int = 10  # candidates per step (the paper's k)
    weight: float = 1.0  # w in s = l + w * r
    temperature: float = 1.0  # T; 0 means greedy
    entropy_over: str = "top-k"  # the gate's signal (gate.SIGNALS): top-k (the paper) | full | top2
    max_tokens: int = 128
    stop: tuple[str, ...] = field(default_factory=tuple)
    seed: int | None = None  # None: a fresh one is drawn and reported

    def __post_init__(self) -> None:
        if self.gate not in GATE_NAMES:
            raise InvalidSettingError(f"gate must be one of {', '.join(GATE_NAMES)}, got {self.gate!r}")
        _check(self.top_k >= 1, "top_k must be >= 1", self.top_k)
        _check(math.isfinite(self.tau) and self.tau >= 0, "tau must be a finite number >= 0 nats", self.tau)
        _check(0.0 <= self.q <= 1.0, "q must be in [0, 1]", self.q)
        _check(self.ratio is None or 0.0 <= self.ratio <= 1.0, "ratio must be in [0, 1]", self.ratio)
        _check(self.first_n >= 0, "first_n must be >= 0", self.first_n)
        _check(math.isfinite(self.weight), "weight must be a finite number", self.weight)
        _check(math.isfinite(self.temperature) and self.temperature >= 0, "temperature must be >= 0",
               self.temperature)
        _check(self.entropy_over in SIGNALS, f"entropy_over must be one of {', '.join(SIGNALS)}", self.entropy_over)
        _check(self.max_tokens >= 1, "max_tokens must be >= 1", self.max_tokens)
        _check(self.seed is None or 0 <= self.seed < 2**63, "seed must be in [0, 2**63)", self.seed)
        _check(all(isinstance(s, str) and s for s in self.stop), "stop strings must be non-empty", self.stop)
        if self.gate == "online" and self.ratio is None:
            raise InvalidSettingError("the online gate needs a target ratio, got ratio=None")

    def with_(self, **changes) -> "GenerationSettings":
        return replace(self, **changes)

    def as_dict(self) -> dict:
        return asdict(self)

    def build_gate(self):
        """The junction policy these settings describe."""
        if self.gate == "entropy":
            return EntropyGate(self.tau)
        if self.gate == "dense":
            return DenseGate()
        if self.gate == "none":
            return NoneGate()
        if self.gate == "random":
            return RandomGate(self.q)
        if self.gate == "first-n":
            return FirstNGate(self.first_n)
        return OnlineRatioGate(self.ratio, self.tau)

    def describe(self) -> str:
        """One line, like llama.cpp's sampler-chain print."""
        entropy = {"top-k": "entropy", "full": "full-entropy", "top2": "top2-ratio"}[self.entropy_over]
        return (f"logits -> top-k({self.top_k}) -> {entropy} -> {self.build_gate().describe()} -> "
                f"value(w={self.weight:g}) -> sample(T={self.temperature:g})")


def _check(ok: bool, message: str, value) -> None:
    if not ok:
        raise InvalidSettingError(f"{message}, got {value!r}")
