"""Evaluation: the statistics on known cases, the per-sample measurements, and a tiny real run end to end."""

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from sia_edge.calibrate import CURVE_RATIOS, write_json
from sia_edge.errors import InvalidSettingError, PromptError
from sia_edge.evaluate import (EvalConfig, bootstrap_ci, bootstrap_ratio_ci, distinct_n, eval_command, parse_arms,
                               read_samples, run_evaluation)
from sia_edge.judges import load_judge

# --- statistics ------------------------------------------------------------------------------------------


def test_bootstrap_matches_normal_theory_on_a_large_normal_sample():
    x = np.random.default_rng(1).normal(5.0, 2.0, size=1000)
    mean, low, high = bootstrap_ci(x, n_boot=4000, seed=3)
    half_width = 1.959964 * x.std(ddof=1) / math.sqrt(x.size)  # ~0.124
    assert mean == pytest.approx(x.mean())
    assert low == pytest.approx(mean - half_width, abs=0.015)
    assert high == pytest.approx(mean + half_width, abs=0.015)
    assert bootstrap_ci(x, seed=3) == bootstrap_ci(x, seed=3)  # seeded: reproducible


def test_bootstrap_degenerate_cases():
    assert all(math.isnan(v) for v in bootstrap_ci([]))
    assert all(math.isnan(v) for v in bootstrap_ci([math.nan]))
    assert bootstrap_ci([0.7]) == (0.7, 0.7, 0.7)
    assert bootstrap_ci([2.0] * 5) == (2.0, 2.0, 2.0)
    assert bootstrap_ci([1.0, math.nan, 3.0])[0] == 2.0  # NaNs dropped, not propagated
    assert bootstrap_ratio_ci([2.0, 4.0, 6.0], [1.0, 2.0, 3.0]) == (2.0, 2.0, 2.0)
    assert math.isnan(bootstrap_ratio_ci([1.0, 2.0], [0.0, 0.0])[0])


def test_distinct_n():
    assert distinct_n([1, 2, 1, 2], 1) == 0.5
    assert distinct_n([1, 2, 1, 2], 2) == pytest.approx(2 / 3)
    assert math.isnan(distinct_n([5], 2))


def test_sample_seeds_are_paired_across_arms_but_distinct_across_prompts():
    from sia_edge.evaluate import sample_seed

    seeds = {sample_seed(p, s) for p in range(200) for s in range(3)}
    assert len(seeds) == 600 and sample_seed(4, 1) == sample_seed(4, 1)


def test_parse_arms_runs_matched_arms_after_their_entropy_arm_and_rejects_bad_ones():
    names = [arm.name for arm in parse_arms("random@0.2,none,entropy@0.2,first-n@0.2,dense")]
    assert names == ["none", "entropy@0.2", "random@0.2", "first-n@0.2", "dense"]
    for bad in ("random@0.3,entropy@0.2", "bogus", "entropy", "none@0.2", "entropy@1.5", ""):
        with pytest.raises(InvalidSettingError):
            parse_arms(bad)


def test_judges_load_by_name_or_module_path():
    pytest.importorskip("vaderSentiment")
    vader = load_judge("vader")
    good, bad = vader.score(["What a wonderful, happy day!", "This is terrible and sad."])
    assert good > 0.5 and bad < -0.5
    assert load_judge("sia_edge.judges:VaderJudge").name == "vader"
    for spec in ("nope", "no_such_module:make", "sia_edge.judges:missing"):
        with pytest.raises(InvalidSettingError):
            load_judge(spec)


# --- real model ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic_calibration(engine, tmp_path_factory):
    """Plausible thresholds for the real model; the end-to-end test checks the plumbing, not the values."""
    taus = {f"{r:g}": 2.2 - 1.6 * r for r in CURVE_RATIOS}
    calibration = {"format": 1, "model_fingerprint": engine.fingerprint, "top_k": 10, "temperature": 1.0,
                   "entropy_over": "top-k", "taus": taus}
    path = tmp_path_factory.mktemp("calibration") / "calibration.json"
    write_json(path, calibration)
    return path


def test_eval_end_to_end_and_resume(engine, synthetic_calibration, tmp_path):
    pytest.importorskip("vaderSentiment")
    pytest.importorskip("matplotlib")
    # one arm of every family (the full default set takes too long for a unit test on 2 cores)
    arms = parse_arms("none,dense,entropy@0.2,entropy@0.5,online@0.5,random@0.2,first-n@0.2")
    config = EvalConfig(prompt_file="inline", prompts=["The movie was", "My neighbour asked me whether",
                                                       "The train to the coast"],
                        seeds=1, max_tokens=8, arms=arms, calibration=str(synthetic_calibration))
    out = tmp_path / "run"
    summary = run_evaluation(engine, config, out, progress=False)

    results = json.loads((out / "results.json").read_text())  # strict JSON: no NaN
    assert set(results["arms"]) == {arm.name for arm in arms}
    for name, arm in results["arms"].items():
        assert arm["samples"] == 3
        assert arm["judge"]["low"] <= arm["judge"]["mean"] <= arm["judge"]["high"]
    assert results["arms"]["none"]["junction_ratio"]["mean"] == 0.0
    assert results["arms"]["dense"]["junction_ratio"]["mean"] == 1.0
    assert set(results["entropy_vs_random"]) == set(results["entropy_vs_first_n"]) == {"entropy@0.2"}
    samples = read_samples(out / "samples.jsonl")
    q = [s["settings"]["q"] for s in samples if s["arm"] == "random@0.2"][0]
    entropy = [s for s in samples if s["arm"] == "entropy@0.2"]
    assert q == pytest.approx(sum(s["junctions"] for s in entropy) / sum(s["tokens"] for s in entropy))
    markdown = (out / "results.md").read_text()
    assert "| entropy@0.2 |" in markdown and "## Goals" in markdown
    assert (out / "tradeoff.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert summary["arms"].keys() == results["arms"].keys()

    # resumable: a second run generates nothing new; a cut-off last line is dropped, then redone
    lines = (out / "samples.jsonl").read_text().splitlines()
    run_evaluation(engine, config, out, progress=False)
    assert (out / "samples.jsonl").read_text().splitlines() == lines
    with (out / "samples.jsonl").open("w") as handle:
        handle.write("\n".join(lines[:-1]) + "\n" + lines[-1][:20])
    run_evaluation(engine, config, out, progress=False)
    redone = (out / "samples.jsonl").read_text().splitlines()
    assert len(redone) == len(lines) and all(json.loads(line) for line in redone)

    # other settings in the same directory would mix incomparable samples
    with pytest.raises(InvalidSettingError, match="other settings"):
        run_evaluation(engine, EvalConfig(**{**config.__dict__, "max_tokens": 11}), out, progress=False)


def test_eval_command_rejects_bad_input_before_loading_models(tmp_path):
    runner = CliRunner()
    result = runner.invoke(eval_command, ["--prompts", str(tmp_path / "missing.txt")])
    assert isinstance(result.exception, PromptError)
    prompts = tmp_path / "p.txt"
    prompts.write_text("Hello\n")
    result = runner.invoke(eval_command, ["--prompts", str(prompts), "--arms", "random@0.2"])
    assert isinstance(result.exception, InvalidSettingError)
