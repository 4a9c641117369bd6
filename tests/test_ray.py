"""Generations on Ray actors (`--ray`): the same samples as in-process for the same batches, retries after a
crashed actor, and the same for calibration and distillation sampling. Ray is started once, locally, on 2 CPUs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

REPO = Path(__file__).resolve().parent.parent
PROMPTS = ["The movie was", "My neighbour asked me whether", "The train to the coast"]
TIMING = ("ms_per_token",)  # the only fields that may differ between two runs of the same samples


def test_a_missing_ray_is_one_line_with_the_install_command(monkeypatch):
    from sia_edge.distributed import RAY_MISSING, EngineSpec, RayPool
    from sia_edge.errors import SiaError

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(SiaError) as error:
        RayPool(EngineSpec(), None, 2)
    assert str(error.value) == RAY_MISSING == "Ray is not installed: pip install 'sia-edge[ray]'"


def test_cli_ray_without_ray_is_one_line_and_exit_2_before_loading_models(monkeypatch, tmp_path):
    from sia_edge.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.setattr("sia_edge.engine.Engine", None)  # loading models would fail differently
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("The movie was\n", encoding="utf-8")
    for command in (["eval", "--arms", "none"], ["calibrate"]):
        result = CliRunner().invoke(main, [*command, "--prompts", str(prompts), "--ray"])
        assert result.exit_code == 2
        assert result.stderr == "sia-edge: error: Ray is not installed: pip install 'sia-edge[ray]'\n"


@pytest.fixture(scope="session")
def ray_session():
    ray = pytest.importorskip("ray")
    # the workers import sia_edge from this checkout, whatever is installed
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning", object_store_memory=100 * 2**20,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def one_thread_engine(gemma_path):
    """In-process engine with the actors' thread count."""
    from sia_edge.engine import Engine

    return Engine(model=gemma_path, threads=1)


def _config(arms: str):
    from sia_edge.evaluation.arms import parse_arms
    from sia_edge.evaluation.run import EvalConfig

    # 3 prompts in batches of 2: two batches per arm (one short), so both actors work
    return EvalConfig(prompt_file="inline", prompts=PROMPTS, seeds=1, max_tokens=8, arms=parse_arms(arms),
                      batch_size=2)


def _samples(folder: Path) -> dict:
    from sia_edge.evaluation.run import read_samples

    samples = read_samples(folder / "samples.jsonl")
    keyed = {(s["arm"], s["prompt_index"], s["seed"]): {k: v for k, v in s.items() if k not in TIMING}
             for s in samples}
    assert len(keyed) == len(samples), "a sample was written twice"
    return keyed


@pytest.fixture(scope="module")
def in_process(one_thread_engine, tmp_path_factory):
    pytest.importorskip("vaderSentiment")
    from sia_edge.evaluation.run import run_evaluation

    folder = tmp_path_factory.mktemp("in-process")
    run_evaluation(one_thread_engine, _config("none,entropy@0.2,random@0.2"), folder, progress=False)
    return _samples(folder)


@pytest.mark.slow  # loads the real GGUF in the driver and in two actors
def test_eval_on_ray_gives_the_in_process_samples(ray_session, one_thread_engine, in_process, gemma_path, tmp_path):
    from sia_edge.distributed import EngineSpec, RayPool, engine_identity
    from sia_edge.evaluation.run import run_evaluation

    with RayPool(EngineSpec.of(gemma_path, threads=1), actors=2, expect=engine_identity(one_thread_engine)) as pool:
        run_evaluation(one_thread_engine, _config("none,entropy@0.2,random@0.2"), tmp_path, progress=False,
                       pool=pool)
        assert pool.retries == 0
    on_ray = _samples(tmp_path)
    assert len(on_ray) == 9 and on_ray.keys() == in_process.keys()
    assert on_ray == in_process  # texts, scores, entropies, junction steps: identical
    # the matched arm read the entropy arm's samples, which therefore came back before it ran
    assert {s["settings"]["q"] for k, s in on_ray.items() if k[0] == "random@0.2"} == \
        {s["settings"]["q"] for k, s in in_process.items() if k[0] == "random@0.2"}


@pytest.mark.slow  # loads the real GGUF in the driver and in two actors
def test_cli_eval_on_ray_retries_the_batch_of_a_crashed_actor(ray_session, in_process, tmp_path, monkeypatch):
    from sia_edge.commands.evaluate import eval_command
    from sia_edge.distributed import CRASH_ENV

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    monkeypatch.setenv(CRASH_ENV, "1")  # the first attempt of batch 1 kills its actor's process
    out = tmp_path / "run"
    result = CliRunner().invoke(eval_command, ["--prompts", str(prompts), "--arms", "none", "--seeds", "1",
                                               "-n", "8", "--batch-size", "2", "--out", str(out), "--ray",
                                               "--ray-actors", "2", "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert "Ray batch 1 failed (attempt 1 of 3)" in result.stderr and "retrying" in result.stderr
    samples = _samples(out)  # nothing lost, nothing twice, the same samples as without a crash
    assert samples == {k: v for k, v in in_process.items() if k[0] == "none"}
    assert len((out / "samples.jsonl").read_text().splitlines()) == 3


@pytest.mark.slow  # loads the real GGUF in two actors
def test_calibration_and_distillation_sampling_on_ray_match_in_process(ray_session, one_thread_engine, gemma_path,
                                                                      tmp_path):
    from sia_edge.calibration import collect_entropies
    from sia_edge.distributed import EngineSpec, RayPool
    from sia_edge.settings import GenerationSettings
    from sia_edge.train.distill import DistillConfig, SampleCache, sample_missing

    settings = GenerationSettings(max_tokens=8)
    config = DistillConfig(prompts=None, reward="unused", out=tmp_path / "vm.onnx", model=gemma_path,
                           samples_per_prompt=2, max_tokens=8, sample_batch_size=4)
    with RayPool(EngineSpec.of(gemma_path, threads=1, use_value_model=False), actors=2,
                 expect={"model_fingerprint": one_thread_engine.fingerprint}) as pool:
        assert collect_entropies(one_thread_engine, PROMPTS, settings, 2, batch_size=2, pool=pool) == \
            collect_entropies(one_thread_engine, PROMPTS, settings, 2, batch_size=2)
        caches = []
        for name, chosen in (("ray", pool), ("here", None)):
            cache = SampleCache(tmp_path / f"{name}.jsonl", {"format": 1})
            assert sample_missing(config, PROMPTS, cache, lambda: one_thread_engine, False, chosen) == 6
            caches.append(cache.samples)
    assert caches[0] == caches[1] and len(caches[0]) == 6
    assert [json.loads(line)["type"] for line in (tmp_path / "ray.jsonl").read_text().splitlines()].count("sample") == 6


@pytest.mark.slow  # samples with the real GGUF in two actors, trains a tiny value model
def test_cli_distill_on_ray_samples_what_the_in_process_loop_samples(ray_session, one_thread_engine, gemma_path,
                                                                    tmp_path):
    from sia_edge.train.cli import vm
    from sia_edge.train.distill import DistillConfig, SampleCache, sample_missing

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    cache = tmp_path / "ray.samples.jsonl"
    result = CliRunner().invoke(vm, [
        "distill", "--prompts", str(prompts), "--reward", "test_distill:LetterShare", "--out", str(tmp_path / "vm.onnx"),
        "--cache", str(cache), "--samples-per-prompt", "2", "-n", "8", "--seed", "3", "--holdout", "0.34",
        "--epochs", "1", "--dim", "8", "--hidden", "8", "--min-count", "1", "--batch-size", "4", "--ray",
        "--ray-actors", "2", "--llama-threads", "1", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout[result.stdout.index("{"):])["sampled_now"] == 6
    config = DistillConfig(prompts=prompts, reward="unused", out=tmp_path / "unused.onnx", model=gemma_path,
                           samples_per_prompt=2, max_tokens=8, seed=3, sample_batch_size=4)
    here = SampleCache(tmp_path / "here.jsonl", {"format": 1})
    sample_missing(config, PROMPTS, here, lambda: one_thread_engine, False)
    on_ray = {(r["prompt_index"], r["sample_index"]): r for r in map(json.loads, cache.read_text().splitlines()[1:])}
    assert {k: (r["seed"], r["token_ids"]) for k, r in on_ray.items()} == \
        {k: (r["seed"], r["token_ids"]) for k, r in here.samples.items()}
