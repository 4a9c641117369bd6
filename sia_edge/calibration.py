"""Calibration: from a target junction ratio to an entropy threshold tau, the paper's way.

Run the base model unsteered (gate none, same k, T and entropy measure as steering will use) over a prompt set,
collect every step's entropy H, and set tau(r) = quantile_{1-r}(H): the entropy gate H >= tau then steers a share r
of unsteered steps. Steering changes the text, so the *realised* ratio drifts from r; always report it.

A calibration is one JSON file, valid for one (tokenizer fingerprint, top_k, temperature, signal). Its key for the
signal is `entropy_over`, the name of the option before `top2` joined (kept so shipped and cached files stay valid).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from .batch import DEFAULT_BATCH_SIZE, fixed_batches, run_batches
from .errors import CalibrationError, InvalidSettingError, PromptError
from .progress import progress_bar
from .settings import GenerationSettings

FORMAT = 1
DEFAULT_RATIOS = (0.1, 0.2, 0.5, 0.8)
# Every calibration also stores tau on this grid, so that any ratio in [0.05, 0.95] can be interpolated finely.
CURVE_RATIOS = tuple(round(0.05 * i, 2) for i in range(1, 20))


# --- prompt files ------------------------------------------------------------------------------------------


def read_prompt_file(path: str | os.PathLike) -> list[str]:
    """Non-empty lines of a UTF-8 text file, one prompt each (a literal backslash-n becomes a newline)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PromptError(f"prompt file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PromptError(f"cannot read prompt file {path}: {exc}") from None
    prompts = [line.replace("\\n", "\n") for line in text.splitlines() if line.strip()]
    if not prompts:
        raise PromptError(f"prompt file {path} has no prompts (one per line)")
    return prompts


def parse_ratios(text: str) -> list[float]:
    """'0.1,0.2,0.5' -> [0.1, 0.2, 0.5]; each ratio strictly between 0 and 1."""
    try:
        ratios = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InvalidSettingError(f"ratios must be comma-separated numbers like 0.2,0.5, got {text!r}") from None
    if not ratios:
        raise InvalidSettingError(f"no ratios given, got {text!r}")
    bad = [r for r in ratios if not 0.0 < r < 1.0]
    if bad:
        raise InvalidSettingError(f"ratios must be strictly between 0 and 1, got {bad}")
    return sorted(set(ratios))


# --- computing a calibration -------------------------------------------------------------------------------


def collect_entropies(engine, prompts: list[str], settings: GenerationSettings, seeds: int,
                      progress: bool = False, batch_size: int = DEFAULT_BATCH_SIZE, pool=None) -> list[float]:
    """Every step's gate signal over unsteered generations: each prompt with seeds 0..seeds-1, decoded in fixed
    batches of `batch_size`, here or on `pool` (Ray actors); the values come back in job order either way."""
    unsteered = settings.with_(gate="none")
    jobs = [(prompt, seed) for prompt in prompts for seed in range(seeds)]
    batches = [(chunk, unsteered) for chunk in fixed_batches(jobs, batch_size)]
    per_batch: dict[int, list[float]] = {}
    with progress_bar(total=len(jobs), desc="calibrate", unit="gen", disable=not progress, leave=False) as bar:
        for index, values in run_batches(engine, batch_entropies, batches, pool):
            per_batch[index] = values
            bar.update(len(batches[index][0]))
    return [value for index in range(len(batches)) for value in per_batch[index]]


def batch_entropies(engine, batch) -> list[float]:
    """The gate signal of every decoding step of one batch of (prompt, seed) jobs, in job order."""
    jobs, settings = batch
    outputs = sorted(engine.generate_many([prompt for prompt, _ in jobs], settings, seeds=[seed for _, seed in jobs],
                                          batch_size=len(jobs)), key=lambda output: output.index)
    # token_id -1 is a held-back stop-string tail, not a decoding step
    return [float(event.entropy) for output in outputs for event in output.events if event.token_id >= 0]


def taus_from_entropies(entropies, ratios) -> dict[str, float]:
    """tau(r) = quantile_{1-r}(H) for each ratio, keyed by the ratio written as text ('0.2')."""
    values = np.asarray(entropies, dtype=np.float64)
    if values.size == 0:
        raise CalibrationError("no entropies collected: the generations produced no tokens")
    return {ratio_key(r): float(np.quantile(values, 1.0 - r)) for r in ratios}


def ratio_key(ratio: float) -> str:
    return f"{ratio:g}"


def build_calibration(engine, prompts: list[str], prompt_file: str | None, settings: GenerationSettings,
                      ratios, seeds: int, progress: bool = False, pool=None) -> dict:
    """Run the unsteered generations (here, or on `pool`'s Ray actors) and return the calibration as a JSON-ready
    dict."""
    entropies = collect_entropies(engine, prompts, settings, seeds, progress, pool=pool)
    values = np.asarray(entropies)
    taus = taus_from_entropies(values, ratios)
    return {
        "format": FORMAT,
        "model_fingerprint": engine.fingerprint,
        "model": engine.base.name,
        "value_model": str(engine.value_model.path) if engine.value_model is not None else None,
        "top_k": settings.top_k,
        "temperature": settings.temperature,
        "entropy_over": settings.signal,
        "prompts": len(prompts),
        "prompt_file": prompt_file,
        "seeds": seeds,
        "max_tokens": settings.max_tokens,
        "tokens": int(values.size),
        "taus": taus,
        # share of the calibration steps each tau steers (a check on ties; should be ~ the ratio)
        "steered_share": {key: float(np.mean(values >= tau)) for key, tau in taus.items()},
        "curve": taus_from_entropies(values, CURVE_RATIOS),
        "entropy_mean": float(values.mean()),
    }


# --- finding a calibration ---------------------------------------------------------------------------------


def calibration_name(fingerprint: str, top_k: int, temperature: float, signal: str) -> str:
    return f"{fingerprint[:16]}-k{top_k}-T{temperature:g}-{signal}.json"


def cache_calibration_path(fingerprint: str, top_k: int, temperature: float, signal: str) -> Path:
    from .models import cache_dir

    return cache_dir() / "calibrations" / calibration_name(fingerprint, top_k, temperature, signal)


def shipped_calibration_path(fingerprint: str, top_k: int, temperature: float, signal: str) -> Path:
    from .models import shipped_value_model_dir

    return shipped_value_model_dir() / ("calibration-" + calibration_name(fingerprint, top_k, temperature,
                                                                          signal))


def load_calibration(fingerprint: str, top_k: int, temperature: float, signal: str,
                     path: str | os.PathLike | None = None) -> dict:
    """The calibration for these settings: the explicit path, else the cache, else the one shipped for the model."""
    wanted = f"tokenizer {fingerprint[:16]}, k={top_k}, T={temperature:g}, signal {signal}"
    if path is not None:
        calibration = _read_calibration(Path(path))
        mismatch = _mismatch(calibration, fingerprint, top_k, temperature, signal)
        if mismatch:
            raise CalibrationError(f"calibration {path} does not match ({mismatch}); it must be for {wanted}; "
                                   f"run `sia-edge calibrate --prompts FILE` with these settings")
        return calibration
    for candidate in (cache_calibration_path(fingerprint, top_k, temperature, signal),
                      shipped_calibration_path(fingerprint, top_k, temperature, signal)):
        if candidate.is_file():
            calibration = _read_calibration(candidate)
            if not _mismatch(calibration, fingerprint, top_k, temperature, signal):
                return calibration
    raise CalibrationError(f"no calibration for {wanted}; run `sia-edge calibrate --prompts FILE` "
                           f"with the same --top-k, --temperature and --entropy-over")


def _read_calibration(path: Path) -> dict:
    try:
        calibration = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CalibrationError(f"calibration file not found: {path}") from None
    except (OSError, ValueError) as exc:
        raise CalibrationError(f"cannot read calibration {path}: {exc}") from None
    if not isinstance(calibration, dict) or calibration.get("format") != FORMAT or "taus" not in calibration:
        raise CalibrationError(f"{path} is not a sia-edge calibration (format {FORMAT})")
    return calibration


def _mismatch(calibration: dict, fingerprint: str, top_k: int, temperature: float, signal: str) -> str:
    """'' if the calibration fits these settings, else what differs."""
    problems = []
    if calibration.get("model_fingerprint") != fingerprint:
        problems.append(f"tokenizer {str(calibration.get('model_fingerprint'))[:16]}")
    if calibration.get("top_k") != top_k:
        problems.append(f"k={calibration.get('top_k')}")
    if not math.isclose(float(calibration.get("temperature", math.nan)), temperature, abs_tol=1e-9):
        problems.append(f"T={calibration.get('temperature')}")
    if calibration.get("entropy_over") != signal:
        problems.append(f"signal {calibration.get('entropy_over')}")
    return ", ".join(problems)


def tau_from_calibration(calibration: dict, ratio: float) -> float:
    """tau for `ratio`: exact if calibrated, else linear interpolation between the nearest calibrated ratios.

    Outside the calibrated range there is nothing to interpolate from: that is an error, not an extrapolation.
    """
    points = {float(k): float(v) for k, v in {**calibration.get("curve", {}), **calibration["taus"]}.items()}
    for calibrated, tau in points.items():
        if math.isclose(calibrated, ratio, abs_tol=1e-9):
            return tau
    ratios = sorted(points)
    if not ratios[0] < ratio < ratios[-1]:
        raise CalibrationError(f"ratio {ratio:g} is outside the calibrated range {ratios[0]:g}..{ratios[-1]:g}; "
                               f"run `sia-edge calibrate --prompts FILE --ratios ...` including it")
    return float(np.interp(ratio, ratios, [points[r] for r in ratios]))


def tau_for_ratio(ratio: float, fingerprint: str, top_k: int, temperature: float, signal: str,
                  path: str | os.PathLike | None = None) -> float:
    """The entropy threshold that steers a share `ratio` of unsteered steps (see load_calibration for lookup)."""
    return tau_from_calibration(load_calibration(fingerprint, top_k, temperature, signal, path), ratio)


def resolve_ratio(settings: GenerationSettings, fingerprint: str,
                  path: str | os.PathLike | None = None) -> GenerationSettings:
    """Turn a target ratio into the tau the gate thresholds (settings.calibrated_tau), for `--ratio R`.

    - gate entropy: tau from the calibration (CalibrationError if there is none).
    - gates that hold the ratio online: the calibrated tau is their prior; without a calibration they still work
      (they adapt), so they keep the default prior rather than fail, unless an explicit calibration file does not fit.
    - other gates, or no ratio: unchanged (the ratio means nothing to them).
    An entropy gate whose tau its signal can never reach is refused (GenerationSettings.check_threshold).
    """
    return _looked_up(settings, fingerprint, path).check_threshold()


def _looked_up(settings: GenerationSettings, fingerprint: str, path) -> GenerationSettings:
    if not settings.needs_calibration or settings.calibrated_tau is not None:
        return settings  # nothing to look up, or already looked up (settings.updated drops a stale lookup)
    try:
        tau = tau_for_ratio(settings.ratio, fingerprint, settings.top_k, settings.temperature, settings.signal, path)
    except CalibrationError:
        # the entropy gate has no tau without it; an explicit calibration that does not fit is a mistake worth
        # reporting; an online gate without one adapts from the default prior
        if settings.gate == "entropy" or path is not None:
            raise
        return settings
    return settings.with_(calibrated_tau=tau)


def write_json(path: Path, payload: dict) -> None:
    """Write atomically: a crash never leaves half a calibration where a reader would find it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(path.name + ".tmp")
    scratch.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    scratch.replace(path)
