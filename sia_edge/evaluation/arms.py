"""Evaluation arms: a gate at a ratio (`entropy@0.2`), parsed, ordered and turned into generation settings.

Which gates take `@R` and how R sets their parameter comes from the gate registry (gate.GATES, its `arm` kind):
    fixed       none, dense: no @R
    calibrated  entropy@R, online@R: R is the target ratio; tau comes from the calibration through Engine.settings
    matched     random@R: q = the *realised* ratio of entropy@R; first-n@R: N = its mean junction count
A matched arm runs right after the entropy arm it copies, which must be in the same run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InvalidSettingError, SiaError
from ..gate import GATES
from ..settings import GenerationSettings

DEFAULT_ARMS = ("none,dense,entropy@0.2,entropy@0.5,entropy@0.8,online@0.2,online@0.5,"
                "random@0.2,random@0.5,random@0.8,first-n@0.2,first-n@0.5,first-n@0.8")
MATCHED = tuple(name for name, spec in GATES.items() if spec.arm == "matched")  # copy entropy@R's behaviour


@dataclass(frozen=True)
class Arm:
    family: str  # a gate name (gate.GATES)
    ratio: float | None = None  # target (entropy, online) or the entropy arm matched (random, first-n)

    @property
    def name(self) -> str:
        return self.family if self.ratio is None else f"{self.family}@{self.ratio:g}"

    @property
    def matched_to(self) -> str | None:
        return f"entropy@{self.ratio:g}" if self.family in MATCHED else None


def parse_arms(text: str) -> list[Arm]:
    """'none,entropy@0.2,random@0.2' -> Arms in run order: matched arms after the entropy arms they copy."""
    arms = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        family, _, ratio_text = part.partition("@")
        if family not in GATES:
            raise InvalidSettingError(f"unknown arm {part!r}: use {', '.join(GATES)} (with @R where needed)")
        needs_ratio = GATES[family].arm != "fixed"
        if needs_ratio != bool(ratio_text):
            raise InvalidSettingError(f"arm {part!r}: {family} " + ("needs @R, e.g. @0.2" if needs_ratio
                                                                      else "takes no @R"))
        try:
            ratio = float(ratio_text) if ratio_text else None
        except ValueError:
            raise InvalidSettingError(f"arm {part!r}: {ratio_text!r} is not a number") from None
        if ratio is not None and not 0.0 < ratio < 1.0:
            raise InvalidSettingError(f"arm {part!r}: the ratio must be strictly between 0 and 1")
        arm = Arm(family, ratio)
        if arm not in arms:
            arms.append(arm)
    if not arms:
        raise InvalidSettingError(f"no arms given, got {text!r}")
    names = {arm.name for arm in arms}
    for arm in arms:
        if arm.matched_to and arm.matched_to not in names:
            raise InvalidSettingError(f"arm {arm.name} copies the realised ratio of {arm.matched_to}: add that arm")
    return _run_order(arms)


def _run_order(arms: list[Arm]) -> list[Arm]:
    """The given order, except that each matched arm runs right after the entropy arm it copies (so a run cut
    short still has complete entropy-vs-random pairs)."""
    ordered = []
    for arm in arms:
        if arm.family not in MATCHED:
            ordered.append(arm)
            ordered += [m for m in arms if m.matched_to == arm.name]
    return ordered


def arm_settings(arm: Arm, engine, base: GenerationSettings, samples: list[dict],
                 calibration=None) -> GenerationSettings:
    """The generation settings of one arm, through the engine's own ratio -> tau lookup (in `calibration`, else
    where the engine looks); matched arms read the finished samples of their entropy arm."""
    kind = GATES[arm.family].arm
    if kind == "fixed":
        return engine.settings(base.with_gate(arm.family))
    if kind == "calibrated":
        return engine.settings(base.updated(gate=arm.family, ratio=arm.ratio), calibration=calibration)
    source = [s for s in samples if s["arm"] == arm.matched_to]
    if not source:
        raise SiaError(f"arm {arm.name} needs the samples of {arm.matched_to}, and there are none")
    if GATES[arm.family].parameter == "q":  # token-weighted, so the expected junction count matches
        q = sum(s["junctions"] for s in source) / max(1, sum(s["tokens"] for s in source))
        return engine.settings(base.with_gate(arm.family, q))
    count = round(float(np.mean([s["junctions"] for s in source])))
    return engine.settings(base.with_gate(arm.family, count))
