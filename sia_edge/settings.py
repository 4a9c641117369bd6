"""One settings object behind the CLI options, the Python API, the server and the docs. Defaults and checks live
here once; the gates and signals it names come from their registries (gate.GATES, signals.SIGNALS)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace

from .errors import InvalidSettingError
from .gate import DEFAULT_TAU, GATES, PARAMETERS
from .signals import SIGNALS
from .steering import REWARD_NORMS

TAU_AND_RATIO = ("give tau or ratio, not both: a ratio takes tau from the model's calibration "
                 "(the online gate uses it as its prior)")


@dataclass(frozen=True)
class GenerationSettings:
    """How to generate: sampling, gate, steering and stop conditions. Validated on construction."""

    gate: str = "entropy"  # a name in gate.GATES
    tau: float | None = None  # threshold on the signal (entropy gate; the online gate's prior); None: DEFAULT_TAU
    ratio: float | None = None  # target junction ratio: the online gate holds it; the entropy gate looks tau up
    q: float = 0.2  # steering probability of the random gate
    first_n: int = 32  # steered positions of the first-n gate
    top_k: int = 10  # candidates per step (the paper's k)
    weight: float | None = None  # w in s = l + w * r; None: the gate's default (gate.GATES[...].weight)
    reward_norm: str = "none"  # steering.REWARD_NORMS: the k rewards as they are, centred, or z-scored per junction
    temperature: float = 1.0  # T; 0 means greedy
    signal: str = "top-k"  # what the gate thresholds: a name in signals.SIGNALS
    max_tokens: int = 128
    stop: tuple[str, ...] = field(default_factory=tuple)
    seed: int | None = None  # None: a fresh one is drawn and reported
    calibrated_tau: float | None = None  # tau the Engine looked up for `ratio`; not for users to set
    weight_scale: float = 1.0  # the value model's sia_edge.weight_scale, set by the Engine: scales the default w

    def __post_init__(self) -> None:
        if self.gate not in GATES:
            known = ", ".join(GATES)
            raise InvalidSettingError(f"gate must be one of {known}, got {self.gate!r}")
        for name, parameter in PARAMETERS.items():
            value = getattr(self, name)
            if value is not None:
                parameter.check(value)
        if self.tau is not None and self.ratio is not None:
            raise InvalidSettingError(TAU_AND_RATIO)
        _check(isinstance(self.top_k, int) and self.top_k >= 1, "top_k must be >= 1", self.top_k)
        _check(self.weight is None or math.isfinite(self.weight), "weight must be a finite number", self.weight)
        _check(math.isfinite(self.weight_scale) and self.weight_scale > 0, "weight_scale must be > 0",
               self.weight_scale)
        _check(math.isfinite(self.temperature) and self.temperature >= 0, "temperature must be >= 0",
               self.temperature)
        _check(self.signal in SIGNALS, f"signal must be one of {', '.join(SIGNALS)}", self.signal)
        _check(self.reward_norm in REWARD_NORMS, f"reward_norm must be one of {', '.join(REWARD_NORMS)}",
               self.reward_norm)
        _check(isinstance(self.max_tokens, int) and self.max_tokens >= 1, "max_tokens must be >= 1", self.max_tokens)
        _check(self.seed is None or 0 <= self.seed < 2**63, "seed must be in [0, 2**63)", self.seed)
        _check(all(isinstance(s, str) and s for s in self.stop), "stop strings must be non-empty", self.stop)
        if GATES[self.gate].parameter == "ratio" and self.ratio is None:
            raise InvalidSettingError(f"the {self.gate} gate needs a target ratio, got ratio=None")

    # --- derived facts, asked everywhere -----------------------------------------------------------------

    @property
    def steers(self) -> bool:
        """Whether this generation can call the value model at all."""
        return GATES[self.gate].steers and self.w != 0.0

    @property
    def w(self) -> float:
        """The weight steering uses: the one given, else this gate's default times the value model's weight scale."""
        return self.weight if self.weight is not None else default_weight(self.gate, self.weight_scale)

    @property
    def needs_calibration(self) -> bool:
        """A ratio on a gate that thresholds the signal: tau must be looked up (Engine.settings does it)."""
        return self.ratio is not None and GATES[self.gate].arm == "calibrated"

    @property
    def threshold(self) -> float:
        """The tau the gate uses: looked up for the ratio, else the given tau, else DEFAULT_TAU."""
        if self.calibrated_tau is not None:
            return self.calibrated_tau
        return self.tau if self.tau is not None else DEFAULT_TAU

    def check_threshold(self) -> "GenerationSettings":
        """These settings, unless their entropy gate's tau is above anything the signal can take (top2's p2/p1 is
        at most 1, the top-k entropy at most ln k): such a gate would silently never steer, so it is an
        InvalidSettingError that says what to give instead. Engine.settings asks once tau is known; constructing
        settings does not, since a ratio or tau may still come."""
        if self.gate != "entropy" or (self.ratio is not None and self.calibrated_tau is None):
            return self
        most = SIGNALS[self.signal].most(self.top_k)
        if most is None or self.threshold <= most:
            return self
        if self.tau is not None or self.calibrated_tau is not None:
            given = f"tau {self.threshold:g}"
        else:
            given = f"the default tau {DEFAULT_TAU:g} (the top-k entropy's 20% threshold at k = 10)"
        raise InvalidSettingError(
            f"{given} is above the most the {SIGNALS[self.signal].label} signal can reach with top_k={self.top_k} "
            f"({most:.3g}), so the entropy gate would never steer: give a tau at most {most:.3g}, or a ratio to take "
            f"tau from the calibration for this signal")

    # --- changes -----------------------------------------------------------------------------------------

    def with_(self, **changes) -> "GenerationSettings":
        return replace(self, **changes)

    def with_value_model(self, model) -> "GenerationSettings":
        """These settings as they steer with `model` (None: none loaded): its weight scale applies to a default w."""
        return replace(self, weight_scale=model.weight_scale if model is not None else 1.0)

    def updated(self, **changes) -> "GenerationSettings":
        """These settings with the given (non-None) changes, as a person means them: naming another gate resets
        every gate parameter to its default; naming tau drops an inherited ratio and naming ratio drops an
        inherited tau (both at once is refused). A calibration lookup made for other settings is dropped."""
        changes = {key: value for key, value in changes.items() if value is not None}
        if "stop" in changes:
            changes["stop"] = tuple(changes["stop"])
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        if "gate" in changes and changes["gate"] != self.gate:
            values.update({name: _DEFAULTS[name] for name in PARAMETERS})
        if "tau" in changes and "ratio" not in changes:
            values["ratio"] = None
        if "ratio" in changes and "tau" not in changes:
            values["tau"] = None
        if any(name in changes for name in _CALIBRATION_KEY):
            values["calibrated_tau"] = None  # looked up for other settings: stale
        return GenerationSettings(**{**values, **changes})

    def with_gate(self, name: str, value=None) -> "GenerationSettings":
        """Switch to gate `name`, with its parameter set to `value` if given (chat's `/gate NAME X`)."""
        if name not in GATES:
            raise InvalidSettingError(f"gate must be one of {', '.join(GATES)}, got {name!r}")
        parameter = GATES[name].parameter
        if value is not None and parameter is None:
            raise InvalidSettingError(f"gate {name} takes no parameter")
        return self.updated(gate=name, **({parameter: value} if value is not None else {}))

    def as_dict(self) -> dict:
        """Every field as given: GenerationSettings(**d) rebuilds these settings."""
        return asdict(self)

    def as_ran(self, value_model: str | None = None) -> dict:
        """What a result reports (GenerationResult.settings, `--json`): the fields, with `tau` and `weight` the
        values that ran instead of None for "the default", and the value model that steered (a file name, None if
        none did). `tau` is None for gates that threshold no signal; `ratio` and `calibrated_tau` still say where
        a looked-up tau came from. `from_ran` reads it back."""
        ran = asdict(self)
        ran["tau"] = self.threshold if GATES[self.gate].arm == "calibrated" else None  # entropy, online
        ran["weight"] = self.w
        ran["value_model"] = value_model
        return ran

    @classmethod
    def from_ran(cls, ran: dict) -> "GenerationSettings":
        """Settings that run as the ones `as_ran` reported. With a ratio, tau was looked up (calibrated_tau), so
        it is dropped: tau and ratio together are refused."""
        given = {f.name: ran[f.name] for f in fields(cls) if f.name != "weight_scale"}
        given["weight_scale"] = ran.get("weight_scale", 1.0)  # absent from results reported before it existed
        given["stop"] = tuple(given["stop"])
        if given["ratio"] is not None:
            given["tau"] = None
        return cls(**given)

    def build_gate(self):
        """The junction policy these settings describe."""
        if self.needs_calibration and self.calibrated_tau is None and self.gate == "entropy":
            raise InvalidSettingError(f"ratio {self.ratio:g} needs the model's calibration to become a tau: "
                                      "build the settings through Engine.settings(...)")
        return GATES[self.gate].build(self)

    def describe(self) -> str:
        """One line, like llama.cpp's sampler-chain print."""
        norm = "" if self.reward_norm == "none" else f", norm={self.reward_norm}"
        return (f"logits -> top-k({self.top_k}) -> {SIGNALS[self.signal].label} -> {self.build_gate().describe()} -> "
                f"value(w={self.w:g}{norm}) -> sample(T={self.temperature:g})")


# what a calibrated tau depends on: changing any of these makes a looked-up tau stale
_CALIBRATION_KEY = ("gate", "tau", "ratio", "top_k", "temperature", "signal")
_DEFAULTS = {f.name: f.default for f in fields(GenerationSettings) if f.name in PARAMETERS}


def default_weight(gate: str, weight_scale: float = 1.0) -> float:
    """The w a gate steers with when none is given: its own default times the value model's weight scale."""
    return GATES[gate].weight * weight_scale


def _check(ok: bool, message: str, value) -> None:
    if not ok:
        raise InvalidSettingError(f"{message}, got {value!r}")
