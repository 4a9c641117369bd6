"""`sia-edge vm distill`: the provocative prompt set, sampling cache, reward checks, training (real Gemma)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PROMPTS = REPO / "tools" / "prompts"


def _lines(name: str) -> list[str]:
    return (PROMPTS / f"provocative-{name}.txt").read_text(encoding="utf-8").splitlines()


def test_provocative_prompt_splits_are_disjoint_and_large_enough():
    splits = {name: _lines(name) for name in ("train", "train-extra", "train-extra2", "calibration", "dev")}
    assert len(splits["train"]) >= 200 and len(splits["calibration"]) >= 30 and len(splits["dev"]) >= 100
    assert len(splits["train-extra"]) >= 190 and len(splits["train-extra2"]) >= 190
    for name, lines in splits.items():
        assert all(line.strip() == line and line for line in lines), f"{name}: blank or padded line"
        assert len(set(lines)) == len(lines), f"{name} repeats a prompt"
    normalised = {name: {" ".join(line.lower().split()) for line in lines} for name, lines in splits.items()}
    for a, b in itertools.combinations(splits, 2):
        assert not normalised[a] & normalised[b], f"{a} and {b} share a prompt"


# --- distillation on real Gemma samples ------------------------------------------------------------------------

import json  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402

import numpy as np  # noqa: E402
from click.testing import CliRunner  # noqa: E402

from sia_edge.errors import PromptError, TrainingDataError  # noqa: E402
from sia_edge.rewards import RewardError  # noqa: E402

TINY_PROMPTS = ["The referee tonight was", "My neighbour parked his van", "The bus driver shouted at"]


class LetterShare:
    """A cheap, real reward: the share of the letter 'e' among the text's characters."""

    name = "letter-e"

    def score(self, texts):
        return [text.count("e") / max(1, len(text)) for text in texts]


class Constant:
    name = "constant"

    def score(self, texts):
        return [0.5] * len(texts)


class NanOnThird:
    name = "nan-on-third"

    def score(self, texts):
        return [math.nan if i == 2 else 0.1 * i for i in range(len(texts))]


def _config(folder: Path, gemma_path: Path, **overrides):
    from sia_edge.train.distill import DistillConfig

    prompts = folder / "prompts.txt"
    if not prompts.exists():
        prompts.write_text("\n".join(TINY_PROMPTS) + "\n", encoding="utf-8")
    settings = dict(prompts=prompts, reward="tests:letter-e", out=folder / "vm.onnx", model=gemma_path,
                    samples_per_prompt=2, max_tokens=8, holdout=0.34, epochs=1, dim=8, hidden=8, min_count=1,
                    seed=3, sample_batch_size=6, llama_threads=1)
    settings.update(overrides)
    return DistillConfig(**settings)


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def distilled(tmp_path_factory, gemma_path):
    """One real run: 3 prompts x 2 samples x 8 tokens from Gemma, reward letter-e, 1 epoch."""
    from sia_edge.train.distill import distill_value_model

    folder = tmp_path_factory.mktemp("distill")
    config = _config(folder, gemma_path)
    report = distill_value_model(config, progress=lambda _: None, progress_bar=False, reward=LetterShare())
    return folder, config, report


def _copy_cache(distilled, folder: Path) -> Path:
    source_folder, config, _ = distilled
    shutil.copy(config.cache_path, folder / "vm.samples.jsonl")
    return folder / "vm.samples.jsonl"


@pytest.mark.slow  # samples from the real GGUF and/or trains a value model
def test_distill_samples_with_the_runtime_and_regresses_onto_the_standardised_reward(distilled, gemma_path):
    from sia_edge.base_model import BaseModel
    from sia_edge.decoder import value_model_tokens
    from sia_edge.train.distill import sample_seed, split_prompts
    from sia_edge.value_model import ValueModel

    folder, config, report = distilled
    header, *samples = _records(config.cache_path)
    assert header["type"] == "header" and header["max_tokens"] == 8 and header["seed"] == 3
    assert sorted((r["prompt_index"], r["sample_index"]) for r in samples) == [(p, s) for p in range(3) for s in range(2)]
    tokenizer = BaseModel(gemma_path, vocab_only=True)
    reward = LetterShare()
    for record in samples:
        assert record["seed"] == sample_seed(3, record["prompt_index"], record["sample_index"])
        assert record["prompt"] == TINY_PROMPTS[record["prompt_index"]]
        assert record["steered"] is False and record["junctions"] == 0  # gate none
        # The value model reads prompt tokens without BOS, then the generated ids: as the runtime feeds it.
        assert record["prompt_tokens"] == value_model_tokens(tokenizer.tokenize(record["prompt"]), (), tokenizer.bos_id)
        assert 1 <= len(record["token_ids"]) <= 8
        assert tokenizer.detokenize(record["token_ids"]) == record["continuation"]
        full = record["prompt"] + record["continuation"]
        assert record["rewards"]["tests:letter-e|full"] == pytest.approx(reward.score([full])[0])
    assert report.sampled_now == 6 and report.scored_now == 6 and report.samples == 6
    assert report.n_holdout_prompts == 1 and report.n_train == 4 and report.n_holdout == 2

    # The standardisation comes from the training samples and is stored in the model.
    model = ValueModel(config.out)
    held_prompt = set(split_prompts(3, 0.34, 3).tolist())
    assert len(held_prompt) == report.n_holdout_prompts == 1
    train_rewards = np.array([r["rewards"]["tests:letter-e|full"] for r in samples
                              if r["prompt_index"] not in held_prompt])
    assert float(model.metadata["reward_mean"]) == pytest.approx(train_rewards.mean())
    assert float(model.metadata["reward_sd"]) == pytest.approx(train_rewards.std())
    assert model.metadata["reward"] == "letter-e" and model.metadata["objective"] == "letter-e"
    assert model.fingerprint == tokenizer.fingerprint
    training = json.loads(model.metadata["training"])
    assert training["method"] == "distillation" and training["settings"]["loss"] == "prefix"
    assert [row["fraction"] for row in report.holdout_metrics] == [0.25, 0.5, 0.75, 1.0]
    scores = model.score_sequences([r["prompt_tokens"] + r["token_ids"] for r in samples])
    assert np.all(np.isfinite(scores)) and np.ptp(scores) > 0


@pytest.mark.slow  # samples from the real GGUF and/or trains a value model
def test_rerun_resumes_from_the_cache_without_resampling(distilled, gemma_path, tmp_path, monkeypatch):
    from sia_edge.train import distill

    _, _, first = distilled
    cache = _copy_cache(distilled, tmp_path)
    before = cache.read_text(encoding="utf-8")
    monkeypatch.setattr("sia_edge.engine.Engine", _no_engine)  # loading the model would mean resampling
    report = distill.distill_value_model(_config(tmp_path, gemma_path), progress=lambda _: None,
                                         progress_bar=False, reward=LetterShare())
    assert report.sampled_now == 0 and report.scored_now == 0
    assert cache.read_text(encoding="utf-8") == before
    # Same samples, same seed: the same model as the first run.
    np.testing.assert_array_equal([list(row.values()) for row in report.holdout_metrics],
                                  [list(row.values()) for row in first.holdout_metrics])


def _no_engine(*args, **kwargs):
    raise AssertionError("the cache held every sample: nothing should be sampled")


@pytest.mark.slow  # samples from the real GGUF and/or trains a value model
def test_more_samples_per_prompt_draws_only_the_new_ones(distilled, gemma_path, tmp_path):
    from sia_edge.train.distill import distill_value_model

    cache = _copy_cache(distilled, tmp_path)
    old = {(r["prompt_index"], r["sample_index"]): r for r in _records(cache)[1:]}
    report = distill_value_model(_config(tmp_path, gemma_path, samples_per_prompt=3), progress=lambda _: None,
                                 progress_bar=False, reward=LetterShare())
    assert report.sampled_now == 3 and report.scored_now == 3 and report.samples == 9
    new = {(r["prompt_index"], r["sample_index"]): r for r in _records(cache)[1:]}
    assert {k: v for k, v in new.items() if k in old} == old


@pytest.mark.slow  # samples from the real GGUF and/or trains a value model
def test_same_seed_same_samples_and_model(distilled, gemma_path, tmp_path):
    from sia_edge.train.distill import distill_value_model
    from sia_edge.value_model import ValueModel

    _, config, _ = distilled
    again = _config(tmp_path, gemma_path)
    distill_value_model(again, progress=lambda _: None, progress_bar=False, reward=LetterShare())
    first = {(r["prompt_index"], r["sample_index"]): r["token_ids"] for r in _records(config.cache_path)[1:]}
    second = {(r["prompt_index"], r["sample_index"]): r["token_ids"] for r in _records(again.cache_path)[1:]}
    assert first == second
    sequences = [[818, 55226, 580], [236764, 840, 506, 55226]]
    assert ValueModel(config.out).score_sequences(sequences).tolist() == \
        ValueModel(again.out).score_sequences(sequences).tolist()


@pytest.mark.slow  # samples from the real GGUF and/or trains a value model
def test_bad_reward_is_one_line_and_keeps_the_samples(distilled, gemma_path, tmp_path):
    from sia_edge.train.distill import distill_value_model

    cache = _copy_cache(distilled, tmp_path)
    before = cache.read_text(encoding="utf-8")
    with pytest.raises(RewardError) as caught:
        distill_value_model(_config(tmp_path, gemma_path, reward="tests:nan"), progress=lambda _: None,
                            progress_bar=False, reward=NanOnThird())
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("reward 'nan-on-third' returned nan for text 2 (prompt 1, sample 0)")
    assert f"the 6 samples drawn so far stay in {cache}" in message
    assert _records(cache)[1:] == _records_of(before)[1:]  # nothing lost, nothing half-scored


def _records_of(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


@pytest.mark.slow  # samples from the real GGUF and/or trains a value model
def test_all_equal_rewards_are_refused(distilled, gemma_path, tmp_path):
    from sia_edge.train.distill import distill_value_model

    _copy_cache(distilled, tmp_path)
    with pytest.raises(TrainingDataError, match=r"every sample got the same reward \(0.5\) from 'constant': "
                                                r"nothing to learn"):
        distill_value_model(_config(tmp_path, gemma_path, reward="tests:constant"), progress=lambda _: None,
                            progress_bar=False, reward=Constant())
    assert not (tmp_path / "vm.onnx").exists()


@pytest.mark.slow  # samples from the real GGUF and/or trains a value model
def test_changed_sampling_settings_do_not_mix_into_the_cache(distilled, gemma_path, tmp_path):
    from sia_edge.errors import InvalidSettingError
    from sia_edge.train.distill import distill_value_model

    _copy_cache(distilled, tmp_path)
    with pytest.raises(InvalidSettingError, match=r"was drawn with other settings \(max_tokens 8 -> 16\)"):
        distill_value_model(_config(tmp_path, gemma_path, max_tokens=16), progress=lambda _: None,
                            progress_bar=False, reward=LetterShare())


def test_weights_fingerprint_tells_a_file_with_changed_bytes_apart(tmp_path, monkeypatch):
    """Bug: the cache knew a model by its tokenizer, so a GGUF with 1 MB of tensor data zeroed looked the same."""
    import hashlib

    from sia_edge.models import weights_fingerprint

    monkeypatch.setenv("SIA_EDGE_CACHE_DIR", str(tmp_path / "cache"))
    original = tmp_path / "model.gguf"  # stands in for a GGUF: only its bytes matter here
    original.write_bytes(np.random.default_rng(0).bytes(3 << 20))
    same, zeroed = tmp_path / "same.gguf", tmp_path / "zeroed.gguf"
    shutil.copy(original, same)
    data = bytearray(original.read_bytes())
    data[1 << 20 : 2 << 20] = bytes(1 << 20)
    zeroed.write_bytes(bytes(data))
    expected = hashlib.sha256(original.read_bytes()).hexdigest()
    assert weights_fingerprint(original) == weights_fingerprint(same) == expected
    assert weights_fingerprint(zeroed) != expected
    remembered = json.loads((tmp_path / "cache" / "weights-fingerprints.json").read_text())
    assert len(remembered) == 3 and expected in remembered.values()


def test_a_cache_drawn_with_other_weights_or_steering_is_not_reused(tmp_path, monkeypatch):
    """Bug: the header held neither the model's weights nor the steered samples' tau and w (both defaults changed:
    tau 1.67 -> 2.02, sparse w 1 -> 4), so such a cache was silently reused."""
    from dataclasses import replace

    from sia_edge.errors import InvalidSettingError
    from sia_edge.gate import DEFAULT_TAU, GATES
    from sia_edge.train.distill import SampleCache, cache_header

    steered = _config(tmp_path, tmp_path / "model.gguf", steered_share=0.5)
    plain = _config(tmp_path, tmp_path / "model.gguf")
    for config in (steered, plain):
        cache = SampleCache(tmp_path / f"{config.steered_share}.jsonl", cache_header(config, "tok", "w1", "vm"))
        cache.add({"type": "sample", "prompt_index": 0, "sample_index": 0})
    header = cache_header(steered, "tok", "w1", "vm")
    assert (header["steer_gate"], header["steer_tau"], header["steer_weight"]) == ("entropy", DEFAULT_TAU, 4.0)
    assert len(SampleCache(tmp_path / "0.5.jsonl", header).samples) == 1  # the same settings resume

    def reopen(config, weights="w1"):
        return SampleCache(tmp_path / f"{config.steered_share}.jsonl", cache_header(config, "tok", weights, "vm"))

    with pytest.raises(InvalidSettingError, match="model_weights_sha256 'w1' -> 'w2'"):
        reopen(steered, weights="w2")
    monkeypatch.setattr("sia_edge.settings.DEFAULT_TAU", 1.67)
    with pytest.raises(InvalidSettingError, match=f"steer_tau {DEFAULT_TAU} -> 1.67"):
        reopen(steered)
    assert len(reopen(plain).samples) == 1  # unsteered samples do not depend on tau
    monkeypatch.undo()
    monkeypatch.setitem(GATES, "entropy", replace(GATES["entropy"], weight=1.0))
    with pytest.raises(InvalidSettingError, match="steer_weight 4.0 -> 1.0"):
        reopen(steered)

    old = tmp_path / "old.jsonl"  # written before the header recorded any of it
    old.write_text(json.dumps({"type": "header", "format": 1, "model_fingerprint": "tok"}) + "\n")
    with pytest.raises(InvalidSettingError, match="format 1"):
        SampleCache(old, header)


@pytest.mark.slow  # samples from the real GGUF and/or trains a value model
def test_cli_distills_the_clean_reward_from_a_cache(distilled, tmp_path):
    pytest.importorskip("profanity_check")
    from sia_edge.train.cli import vm
    from sia_edge.value_model import ValueModel

    cache = _copy_cache(distilled, tmp_path)
    _, config, _ = distilled
    out = tmp_path / "clean.onnx"
    result = CliRunner().invoke(vm, [
        "distill", "--prompts", str(config.prompts), "--reward", "clean", "--reward-on", "continuation",
        "--out", str(out), "--cache", str(cache), "--samples-per-prompt", "2", "-n", "8", "--seed", "3",
        "--holdout", "0.34", "--epochs", "1", "--dim", "8", "--hidden", "8", "--min-count", "1",
        "--objective", "clean", "--loss", "mean", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout[result.stdout.index("{"):])
    assert report["sampled_now"] == 0 and report["scored_now"] == 6 and report["reward"] == "clean"
    metadata = ValueModel(out).metadata
    assert metadata["objective"] == "clean" and metadata["reward"] == "clean"
    assert json.loads(metadata["training"])["settings"]["loss"] == "mean"
    scored = [r["rewards"] for r in _records(cache)[1:]]
    assert all(set(r) == {"tests:letter-e|full", "clean|continuation"} for r in scored)


@pytest.mark.slow  # samples from the real GGUF and/or trains a value model
def test_empty_prompt_file_and_unknown_reward_fail_before_sampling(gemma_path, tmp_path):
    from sia_edge.errors import InvalidSettingError
    from sia_edge.train.distill import distill_value_model

    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(PromptError, match="has no prompts"):
        distill_value_model(_config(tmp_path, gemma_path, prompts=empty), progress=lambda _: None)
    with pytest.raises(InvalidSettingError, match="reward must be one of clean, value-model:PATH or module:callable"):
        distill_value_model(_config(tmp_path, gemma_path, reward="sentiment"), progress=lambda _: None)
    assert not (tmp_path / "vm.samples.jsonl").exists()


@pytest.mark.slow  # samples from the real GGUF and/or trains a value model
def test_texts_are_used_as_they_are_off_policy(gemma_path, tmp_path, monkeypatch):
    from sia_edge.base_model import BaseModel
    from sia_edge.train.distill import distill_value_model
    from sia_edge.value_model import ValueModel

    texts = tmp_path / "texts.jsonl"
    lines = [f"Sample text number {i}: " + "e" * (i % 5) + " the weather was fine and everyone was there" * (1 + i % 3)
             for i in range(14)]
    texts.write_text("\n".join(json.dumps({"body": line}) for line in lines) + "\n", encoding="utf-8")
    monkeypatch.setattr("sia_edge.engine.Engine", _no_engine)  # nothing is sampled
    config = _config(tmp_path, gemma_path, prompts=None, texts=texts, text_column="body", max_texts=10,
                     max_tokens=12, holdout=0.2)
    report = distill_value_model(config, progress=lambda _: None, progress_bar=False, reward=LetterShare())
    assert report.samples == 10 and report.sampled_now == 10 and report.n_holdout == 2
    tokenizer = BaseModel(gemma_path, vocab_only=True)
    header, *samples = _records(config.cache_path)
    assert header["source"] == "texts"
    for record in samples:
        assert record["text"] in lines and record["prompt"] == "" and record["prompt_tokens"] == []
        assert record["token_ids"] == tokenizer.tokenize(record["text"], add_bos=False)[:12]
        assert record["continuation"] == tokenizer.detokenize(record["token_ids"])
        assert record["rewards"]["tests:letter-e|full"] == pytest.approx(LetterShare().score([record["continuation"]])[0])
    assert json.loads(ValueModel(config.out).metadata["training"])["source"] == "texts"


@pytest.mark.slow  # samples from the real GGUF and/or trains a value model
def test_a_share_of_samples_is_steered_by_the_shipped_value_model(gemma_path, tmp_path):
    import hashlib

    from sia_edge.models import resolve_value_model
    from sia_edge.train.distill import distill_value_model, is_steered

    config = _config(tmp_path, gemma_path, steered_share=0.5, max_tokens=6)
    distill_value_model(config, progress=lambda _: None, progress_bar=False, reward=LetterShare())
    header, *samples = _records(config.cache_path)
    shipped = resolve_value_model(None, header["model_fingerprint"])
    assert header["steer_value_model_sha256"] == hashlib.sha256(shipped.read_bytes()).hexdigest()
    flags = [record["steered"] for record in samples]
    assert flags == [is_steered(3, r["prompt_index"], r["sample_index"], 0.5) for r in samples]
    assert any(flags) and not all(flags)
    assert all(record["junctions"] == 0 for record in samples if not record["steered"])
    assert sum(record["junctions"] for record in samples if record["steered"]) > 0  # the entropy gate steered


@pytest.mark.slow  # trains nothing, but loads the real tokenizer and reads real samples
def test_cli_reports_a_bad_module_reward_on_one_line_and_keeps_the_cache(distilled, tmp_path, monkeypatch):
    from sia_edge.cli import main

    (tmp_path / "my_bad_reward.py").write_text(
        "class Bad:\n    name = 'too-few'\n    def score(self, texts):\n        return [1.0] * (len(texts) - 1)\n\n"
        "def make():\n    return Bad()\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    cache = _copy_cache(distilled, tmp_path)
    before = cache.read_text(encoding="utf-8")
    _, config, _ = distilled
    result = CliRunner().invoke(main, [
        "vm", "distill", "--prompts", str(config.prompts), "--reward", "my_bad_reward:make", "--out",
        str(tmp_path / "bad.onnx"), "--cache", str(cache), "--samples-per-prompt", "2", "-n", "8", "--seed", "3"])
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("sia-edge: error:")]
    assert errors == [f"sia-edge: error: reward 'too-few' returned 5 scores for 6 texts (texts 0..5); it must return "
                      f"one per text; the 6 samples drawn so far stay in {cache}"]
    assert cache.read_text(encoding="utf-8") == before
    assert not (tmp_path / "bad.onnx").exists()


@pytest.mark.slow  # trains a byte-level value model on the real samples
def test_cli_distills_a_byte_level_model_that_reads_the_token_bytes(distilled, gemma_path, tmp_path):
    from sia_edge.base_model import BaseModel
    from sia_edge.train.cli import vm
    from sia_edge.value_model import ValueModel

    cache = _copy_cache(distilled, tmp_path)  # the samples do not depend on what the value model reads
    _, config, _ = distilled
    out = tmp_path / "bytes.onnx"
    result = CliRunner().invoke(vm, [
        "distill", "--prompts", str(config.prompts), "--reward", "test_distill:LetterShare", "--input", "bytes",
        "--out", str(out), "--cache", str(cache), "--samples-per-prompt", "2", "-n", "8", "--seed", "3",
        "--holdout", "0.34", "--epochs", "1", "--dim", "8", "--hidden", "8"])
    assert result.exit_code == 0, result.output
    assert "bytes, gru" in result.stdout and "continuation" in result.stdout
    model = ValueModel(out)
    assert model.reads_bytes and model.fingerprint == "" and model.metadata["architecture"] == "gru"
    assert json.loads(model.metadata["training"])["sampled_by"] == BaseModel(gemma_path, vocab_only=True).name
    # the runtime feeds it the bytes of the ids it decodes: scoring the ids equals scoring their bytes
    tokenizer = BaseModel(gemma_path, vocab_only=True)
    model.bind(tokenizer.fingerprint, tokenizer.name, tokenizer.token_bytes, tokenizer.n_vocab)
    records = _records(cache)[1:]
    ids = [r["prompt_tokens"] + r["token_ids"] for r in records]
    as_bytes = ValueModel(out)
    as_bytes.bind("", "bytes", lambda token: bytes([token]), 256)
    text_bytes = [list((r["prompt"] + r["continuation"]).encode("utf-8")) for r in records]
    np.testing.assert_allclose(model.score_sequences(ids), as_bytes.score_sequences(text_bytes), atol=1e-5)
    assert np.ptp(model.score_sequences(ids)) > 0


@pytest.mark.slow  # samples from the real GGUF and trains a value model
def test_holdout_among_keeps_the_held_out_prompts_when_prompts_are_appended(distilled, gemma_path, tmp_path):
    """--holdout-among 3 with a fourth prompt appended: only the new prompt is sampled, the held-out prompt is the
    one the three-prompt run held out, and the new prompt's samples train (the stored standardisation says so)."""
    from sia_edge.train.distill import distill_value_model, split_prompts
    from sia_edge.value_model import ValueModel

    _copy_cache(distilled, tmp_path)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join([*TINY_PROMPTS, "The weather this weekend will be"]) + "\n", encoding="utf-8")
    report = distill_value_model(_config(tmp_path, gemma_path, holdout_among=3), progress=lambda _: None,
                                 progress_bar=False, reward=LetterShare())
    assert report.sampled_now == 2 and report.samples == 8
    assert (report.n_holdout_prompts, report.n_holdout, report.n_train) == (1, 2, 6)
    held = set(split_prompts(3, 0.34, 3).tolist())
    samples = _records(tmp_path / "vm.samples.jsonl")[1:]
    train_rewards = [r["rewards"]["tests:letter-e|full"] for r in samples if r["prompt_index"] not in held]
    assert len(train_rewards) == 6
    assert float(ValueModel(tmp_path / "vm.onnx").metadata["reward_mean"]) == pytest.approx(np.mean(train_rewards))
