"""Calibration: tau(r) = quantile_{1-r} of unsteered entropies, its lookup, and the online ratio controller."""

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from sia_edge.commands.calibrate import calibrate_command
from sia_edge.calibration import (build_calibration, cache_calibration_path, parse_ratios,
                                  read_prompt_file, resolve_ratio, tau_for_ratio, tau_from_calibration,
                                taus_from_entropies, write_json)
from sia_edge.errors import CalibrationError, InvalidSettingError, PromptError
from sia_edge.settings import GenerationSettings

PROMPTS = Path(__file__).parent.parent / "tools" / "prompts"
FAKE_FINGERPRINT = "0" * 64


# --- pure ------------------------------------------------------------------------------------------------


def test_tau_is_the_upper_quantile_of_the_entropies():
    taus = taus_from_entropies(np.linspace(0.0, 2.0, 101), [0.2, 0.5])
    assert taus == pytest.approx({"0.2": 1.6, "0.5": 1.0})


def test_tau_from_calibration_interpolates_inside_and_refuses_outside():
    calibration = {"taus": {"0.2": 2.0, "0.5": 1.5}}
    assert tau_from_calibration(calibration, 0.2) == 2.0
    assert tau_from_calibration(calibration, 0.35) == pytest.approx(1.75)
    with pytest.raises(CalibrationError, match="outside the calibrated range"):
        tau_from_calibration(calibration, 0.9)


def test_bad_inputs_raise_typed_errors(tmp_path):
    with pytest.raises(PromptError, match="not found"):
        read_prompt_file(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("\n  \n")
    with pytest.raises(PromptError, match="no prompts"):
        read_prompt_file(tmp_path / "empty.txt")
    for bad in ("0.2,x", "", "0.2,1.5"):
        with pytest.raises(InvalidSettingError):
            parse_ratios(bad)
    assert parse_ratios("0.5,0.2,0.5") == [0.2, 0.5]
    result = CliRunner().invoke(calibrate_command, ["--prompts", str(tmp_path / "missing.txt")])
    assert isinstance(result.exception, PromptError)


def test_shipped_prompt_sets_are_large_and_disjoint():
    dev, calibration = read_prompt_file(PROMPTS / "dev.txt"), read_prompt_file(PROMPTS / "calibration.txt")
    assert len(dev) >= 150 and len(calibration) >= 50
    assert len(set(dev)) == len(dev) and not set(dev) & set(calibration)


# --- real model ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def calibration_file(engine, tmp_path_factory):
    prompts = read_prompt_file(PROMPTS / "calibration.txt")[:4]
    settings = GenerationSettings(gate="none", max_tokens=24)
    calibration = build_calibration(engine, prompts, "calibration.txt", settings, [0.1, 0.2, 0.5, 0.8], seeds=1)
    path = tmp_path_factory.mktemp("calibration") / "calibration.json"
    write_json(path, calibration)
    return path


def test_calibration_is_well_formed_and_monotone(calibration_file, engine):
    calibration = json.loads(calibration_file.read_text())
    assert calibration["format"] == 1
    assert calibration["model_fingerprint"] == engine.fingerprint
    assert (calibration["top_k"], calibration["temperature"], calibration["entropy_over"]) == (10, 1.0, "top-k")
    assert calibration["prompts"] == 4 and calibration["tokens"] > 40
    taus = [calibration["taus"][r] for r in ("0.1", "0.2", "0.5", "0.8")]
    assert taus == sorted(taus, reverse=True) and taus[0] > taus[-1]  # higher ratio -> lower threshold
    assert all(0.0 <= tau <= np.log(10) + 1e-9 for tau in taus)


def test_resolve_ratio_takes_tau_from_the_calibration(calibration_file, engine):
    taus = json.loads(calibration_file.read_text())["taus"]
    entropy = resolve_ratio(GenerationSettings(ratio=0.2), engine.fingerprint, calibration_file)
    assert entropy.threshold == pytest.approx(taus["0.2"])
    online = resolve_ratio(GenerationSettings(gate="online", ratio=0.5), engine.fingerprint, calibration_file)
    assert (online.ratio, online.threshold) == (0.5, pytest.approx(taus["0.5"]))
    plain = GenerationSettings(tau=1.1)
    assert resolve_ratio(plain, engine.fingerprint) is plain  # no ratio asked: nothing to look up


def test_resolve_ratio_errors_clearly_without_calibration(calibration_file, tmp_path, monkeypatch):
    monkeypatch.setenv("SIA_EDGE_CACHE_DIR", str(tmp_path))
    with pytest.raises(CalibrationError, match=r"no calibration for .*sia-edge calibrate --prompts FILE"):
        resolve_ratio(GenerationSettings(ratio=0.2), FAKE_FINGERPRINT)
    with pytest.raises(CalibrationError, match="does not match"):  # an explicit file for another model
        resolve_ratio(GenerationSettings(ratio=0.2), FAKE_FINGERPRINT, calibration_file)
    # the online gate adapts on its own, so it may run without a calibration
    online = GenerationSettings(gate="online", ratio=0.3)
    assert resolve_ratio(online, FAKE_FINGERPRINT) == online


def test_calibration_is_found_in_the_cache(calibration_file, engine, tmp_path, monkeypatch):
    monkeypatch.setenv("SIA_EDGE_CACHE_DIR", str(tmp_path))
    calibration = json.loads(calibration_file.read_text())
    calibration["taus"]["0.2"] = 1.234  # distinguishable from any shipped calibration
    write_json(cache_calibration_path(engine.fingerprint, 10, 1.0, "top-k"), calibration)
    assert tau_for_ratio(0.2, engine.fingerprint, 10, 1.0, "top-k") == 1.234
    with pytest.raises(CalibrationError):  # k=5 was never calibrated
        tau_for_ratio(0.2, FAKE_FINGERPRINT, 5, 1.0, "top-k")


def test_online_gate_holds_the_ratio_on_every_prompt(calibration_file, engine):
    target = 0.3
    settings = resolve_ratio(GenerationSettings(gate="online", ratio=target, max_tokens=48),
                                  engine.fingerprint, calibration_file)
    for seed, prompt in enumerate(read_prompt_file(PROMPTS / "dev.txt")[:3]):
        stats = engine.generate(prompt, settings, seed=seed).stats
        assert stats.tokens >= 24, "too short a generation to measure a ratio"
        assert abs(stats.junction_ratio - target) <= 0.1, (prompt, stats.junction_ratio)


def test_calibrate_command_writes_the_file(gemma_path, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("The weather today\nMy favourite book\n")
    out = tmp_path / "cal.json"
    result = CliRunner().invoke(calibrate_command, ["--prompts", str(prompts), "-n", "6", "--ratios", "0.3,0.6",
                                                    "--model", str(gemma_path), "--threads", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    calibration = json.loads(out.read_text())
    assert set(calibration["taus"]) == {"0.3", "0.6"} and calibration["value_model"] is None
    assert json.loads(result.stdout) == calibration["taus"]

