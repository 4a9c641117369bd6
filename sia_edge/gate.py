"""The junction policies ("gates") and their registry (pure numpy).

Shaped like llama.cpp's samplers: each gate is a small class with a name, one `decide(step, signal)` call per
step and `reset(seed)` per generation. GATES is the one table of gates: each entry names the settings field the
gate reads (tau, q, first_n or ratio), how an evaluation arm parameterises it, and its help text. The settings,
the CLI, chat's /gate, the server's request fields and eval's arm parser all read it, so a new gate is one class
and one entry. The uncertainty signals the gates threshold live in signals.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np

from .errors import InvalidSettingError

# Calibrated on Gemma 3 270M base (sia_edge/models/calibration-*.json): with k=10, T=1 this threshold steers 20% of
# the steps of unsteered 64-token text (tau(0.2) = 2.021), the operating point the default weight was chosen at
# (docs/results.md, "Weight, length and normalisation"; at 50% of the steps w = 8 made texts repeat as much as dense
# at w = 4). Other models should calibrate: `sia-edge calibrate`, then `generate --ratio R`.
DEFAULT_TAU = 2.02


class Gate(Protocol):
    name: str

    def reset(self, seed: int) -> None: ...

    def decide(self, step: int, signal: float) -> bool: ...

    def describe(self) -> str: ...


# --- the parameters gates read -----------------------------------------------------------------------------


@dataclass(frozen=True)
class GateParameter:
    """A GenerationSettings field that parameterises a gate, with its range and help text."""

    name: str
    kind: type  # float or int
    low: float
    high: float  # inclusive bounds; math.inf for none
    help: str

    def check(self, value) -> None:
        """InvalidSettingError naming the parameter and echoing the value, unless it is in range."""
        if self.kind is int:
            ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
            ok = ok and self.low <= value <= self.high
        else:
            ok = isinstance(value, (int, float, np.number)) and not isinstance(value, bool)
            ok = ok and math.isfinite(value) and self.low <= value <= self.high
        if not ok:
            bounds = f">= {self.low:g}" if self.high == math.inf else f"in [{self.low:g}, {self.high:g}]"
            kind = " (a whole number)" if self.kind is int else ""
            raise InvalidSettingError(f"{self.name} must be {bounds}{kind}, got {value!r}")

    def parse(self, text: str):
        """A value typed by a person ('0.3', '12'); a fraction for a whole-number parameter is refused."""
        try:
            number = float(text)
        except ValueError:
            raise InvalidSettingError(f"{self.name} must be a number, got {text!r}") from None
        if self.kind is int:
            if not number.is_integer():
                raise InvalidSettingError(f"{self.name} must be a whole number, got {text!r}")
            number = int(number)
        self.check(number)
        return number


PARAMETERS: dict[str, GateParameter] = {p.name: p for p in (
    GateParameter("tau", float, 0.0, math.inf, f"threshold on the signal (nats for entropy) [default: {DEFAULT_TAU}]"),
    GateParameter("ratio", float, 0.0, 1.0, "target share of steered tokens; tau comes from the model's calibration"),
    GateParameter("q", float, 0.0, 1.0, "steering probability per token"),
    GateParameter("first_n", int, 0, math.inf, "number of leading tokens to steer"),
)}


# --- the gates ---------------------------------------------------------------------------------------------


@dataclass
class EntropyGate:
    """SIA's gate (Hu et al. 2026, arXiv 2602.21215): steer iff the step's signal H >= tau.

    tau = inf never steers; tau = 0 steers every step.
    """

    tau: float
    name: str = field(default="entropy", init=False)

    def __post_init__(self) -> None:
        if self.tau != math.inf:
            PARAMETERS["tau"].check(self.tau)

    def reset(self, seed: int) -> None:
        pass

    def decide(self, step: int, signal: float) -> bool:
        return signal >= self.tau

    def describe(self) -> str:
        return f"entropy-gate(tau={self.tau:g})"


@dataclass
class DenseGate:
    """Steer every step: ARGS (Khanov et al. 2024) with the same k, w and T."""

    name: str = field(default="dense", init=False)

    def reset(self, seed: int) -> None:
        pass

    def decide(self, step: int, signal: float) -> bool:
        return True

    def describe(self) -> str:
        return "dense-gate"


@dataclass
class NoneGate:
    """Never steer: the fair base arm (same top-k sampler and temperature, w = 0)."""

    name: str = field(default="none", init=False)

    def reset(self, seed: int) -> None:
        pass

    def decide(self, step: int, signal: float) -> bool:
        return False

    def describe(self) -> str:
        return "no-gate"


@dataclass
class RandomGate:
    """Steer each step with probability q, independent of the signal: the matched-sparsity control.

    Its random stream is derived from the generation seed but separate from the sampler's, so switching the
    gate never changes which uniform numbers the sampler draws.
    """

    q: float
    name: str = field(default="random", init=False)

    def __post_init__(self) -> None:
        PARAMETERS["q"].check(self.q)
        self._rng = np.random.default_rng(0)

    def reset(self, seed: int) -> None:
        self._rng = np.random.default_rng([seed, 0x5EED])

    def decide(self, step: int, signal: float) -> bool:
        return bool(self._rng.random() < self.q)

    def describe(self) -> str:
        return f"random-gate(q={self.q:g})"


@dataclass
class FirstNGate:
    """Steer the first n generated tokens only: the positional control."""

    n: int
    name: str = field(default="first-n", init=False)

    def __post_init__(self) -> None:
        PARAMETERS["first_n"].check(self.n)

    def reset(self, seed: int) -> None:
        pass

    def decide(self, step: int, signal: float) -> bool:
        return step < self.n

    def describe(self) -> str:
        return f"first-n-gate(n={self.n})"


@dataclass
class OnlineRatioGate:
    """Hold the realised junction ratio near a target on every prompt (an improvement over the paper).

    The threshold is a running quantile of the signals seen so far in this generation, seeded with a prior
    threshold (e.g. from calibration) so that the first steps behave like the fixed gate. A small integral
    correction keeps the realised ratio itself on target as the text drifts: more than one junction behind, it
    takes a step in the upper 2r of this text's signals (never in its lowest quarter, nor, for a target above one
    half, in its lowest (1 - r)^2); more than one ahead, none. Ratio 0 never steers, ratio 1 steers every step.
    Replayed on 60 unsteered Gemma 3 270M texts (the calibration prompts, top-k entropy, the calibrated prior;
    replays leave out steering's feedback) it realises the target to within 0.008 from 0.1 to 0.95 at 128 tokens
    and within 0.012 at 64, a little under it (it tolerates being one junction behind).
    """

    ratio: float
    prior_tau: float
    name: str = field(default="online", init=False)

    def __post_init__(self) -> None:
        PARAMETERS["ratio"].check(self.ratio)
        PARAMETERS["tau"].check(self.prior_tau)
        self.reset(0)

    def reset(self, seed: int) -> None:
        self._seen: list[float] = []
        self._steered = 0

    def threshold(self) -> float:
        if len(self._seen) < 8:
            return self.prior_tau
        return float(np.quantile(self._seen, 1.0 - self.ratio))

    def catch_up_threshold(self) -> float:
        """When behind, a step is taken if it ranks in the upper 2r of this text's signals so far, and never in
        its lowest quarter (strictly above that quantile): catching up does not spend a junction on a step the
        text itself finds certain. (It used to take any step with a signal above 0.) Above a target of one half
        that floor falls to the (1 - r)^2 quantile: with the floor at a quarter, catch-up had almost no room above
        the running threshold (the 1 - r quantile), none above 0.75, and the gate fell short of high targets
        (replayed as in the class docstring, 128 tokens: 0.65 at 0.7, 0.73 at 0.8, 0.85 at 0.9, 0.97 at 1.0;
        now 0.696, 0.800, 0.901 and 1)."""
        if not self._seen:
            return math.inf
        return float(np.quantile(self._seen, max(1.0 - 2.0 * self.ratio, min(0.25, (1.0 - self.ratio) ** 2))))

    def decide(self, step: int, signal: float) -> bool:
        tau, floor = self.threshold(), self.catch_up_threshold()
        self._seen.append(signal)
        if self.ratio == 0.0:  # nothing to hold: without this the +-1 slack below still let two junctions through
            return False
        if self.ratio == 1.0:  # every step: a quantile can only fall short (the prior's first steps, new minima)
            self._steered += 1
            return True
        n = len(self._seen)
        behind = self._steered < self.ratio * n - 1.0  # steered too little so far: take this one if uncertain
        ahead = self._steered > self.ratio * n + 1.0
        junction = (signal >= tau and not ahead) or (behind and signal > floor)
        self._steered += junction
        return junction

    def describe(self) -> str:
        return f"online-ratio-gate(r={self.ratio:g}, prior_tau={self.prior_tau:g})"


# --- the registry ------------------------------------------------------------------------------------------

# How an evaluation arm `NAME@R` sets a gate's parameter:
#   fixed       the arm takes no @R (none, dense)
#   calibrated  R is a target ratio; tau comes from the calibration (entropy; the online gates' prior)
#   matched     the arm copies the realised behaviour of entropy@R in the same run (random: q, first-n: N)
ARM_KINDS = ("fixed", "calibrated", "matched")


@dataclass(frozen=True)
class GateSpec:
    name: str
    help: str  # one line: what it steers, for --help, /gate and the docs
    parameter: str | None  # the settings field it reads (a key of PARAMETERS), or None
    build: Callable[[object], Gate]  # GenerationSettings -> a fresh gate
    arm: str  # one of ARM_KINDS
    steers: bool = True  # False only for the gate that never steers
    weight: float = 1.0  # its default w (GenerationSettings.weight None): sparse gates may steer each step harder


# Sparse gates steer each junction harder by default. Measured (docs/results.md, "Weight"): at 128 tokens, entropy@0.2
# recovers 0.56 of dense's (w = 1) judge gain at w = 1, 0.70 at w = 2 and 0.90 at w = 4, with a log-perplexity shift
# of +0.009 nats/token at w = 4. The matched controls (random, first-n) share it so comparisons stay like for like.
SPARSE_WEIGHT = 4.0

GATES: dict[str, GateSpec] = {spec.name: spec for spec in (
    GateSpec("entropy", "steps whose signal H >= --tau, the paper's SIA", "tau", lambda s: EntropyGate(s.threshold),
             "calibrated", weight=SPARSE_WEIGHT),
    GateSpec("dense", "every step, ARGS", None, lambda s: DenseGate(), "fixed"),
    GateSpec("none", "no step, the unsteered arm with the same sampler", None, lambda s: NoneGate(), "fixed",
             steers=False),
    GateSpec("random", "each step with probability --q, the matched-sparsity control", "q",
             lambda s: RandomGate(s.q), "matched", weight=SPARSE_WEIGHT),
    GateSpec("first-n", "the first --first-n tokens, the positional control", "first_n",
             lambda s: FirstNGate(s.first_n), "matched", weight=SPARSE_WEIGHT),
    GateSpec("online", "holds --ratio on every prompt", "ratio",
             lambda s: OnlineRatioGate(s.ratio, s.threshold), "calibrated", weight=SPARSE_WEIGHT),
)}
GATE_NAMES = tuple(GATES)
GATE_HELP = "When to steer: " + "; ".join(f"{spec.name}: {spec.help}" for spec in GATES.values()) + "."


def default_weights_text() -> str:
    """'1 for dense, none; 2 for entropy, ...': each default w and its gates, for help texts."""
    by_weight: dict[float, list[str]] = {}
    for spec in GATES.values():
        if spec.steers:
            by_weight.setdefault(spec.weight, []).append(spec.name)
    return "; ".join(f"{w:g} for {', '.join(names)}" for w, names in by_weight.items())
