"""Look-ahead value models (contract 3 with `sia_edge.scoring = look-ahead`): each candidate's value is read from
the base model's state after it, decoded at the junction. Checks on small hand-built graphs (metadata, how a merged
call splits back into junctions, against float64 sums), then the real thing on the real GGUF: trained with
`vm train --scoring look-ahead`, it steers on the single path and through the scheduler, and a junction's scores
equal `vm score` of the prefix plus each candidate."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner

from sia_edge.errors import ValueModelError
from test_hidden_value_model import _small_labelled_csv, write_tiny_hidden_model


def test_scoring_metadata_is_read_and_an_unknown_one_refused(tmp_path):
    from sia_edge.value_model import open_value_model

    write_tiny_hidden_model(tmp_path / "ahead.onnx", metadata={"scoring": "look-ahead"})
    assert open_value_model(tmp_path / "ahead.onnx").looks_ahead
    write_tiny_hidden_model(tmp_path / "plain.onnx")
    assert not open_value_model(tmp_path / "plain.onnx").looks_ahead  # no key: scores candidates, as before
    write_tiny_hidden_model(tmp_path / "bad.onnx", metadata={"scoring": "psychic"})
    with pytest.raises(ValueModelError, match="'sia_edge.scoring' must be one of candidate, look-ahead"):
        open_value_model(tmp_path / "bad.onnx")


def test_layer_metadata_is_read_and_refused_where_it_cannot_apply(tmp_path):
    """`sia_edge.layer`: which block's output a look-ahead model reads; a candidate-scoring or pooling model reads
    the generation's own (final) state, so a layer there is refused, as is a layer the base model does not have."""
    from sia_edge.errors import TokenizerMismatchError
    from sia_edge.value_model import open_value_model

    write_tiny_hidden_model(tmp_path / "l6.onnx", metadata={"scoring": "look-ahead", "layer": "6"})
    model = open_value_model(tmp_path / "l6.onnx")
    assert model.layer == 6 and model.looks_ahead
    assert open_value_model(tmp_path / "l6.onnx").layer == 6
    with pytest.raises(TokenizerMismatchError, match="reads layer 6 but tiny.gguf has 4"):
        model.bind("ab" * 32, "tiny.gguf", 8, 32, n_layer=4)
    model.bind("ab" * 32, "tiny.gguf", 8, 32, n_layer=6)  # layer n_layer is the final state: allowed
    write_tiny_hidden_model(tmp_path / "plain.onnx", metadata={"scoring": "look-ahead"})
    assert open_value_model(tmp_path / "plain.onnx").layer is None  # no key: the final state
    for bad in ({"layer": "6"}, {"scoring": "look-ahead", "layer": "six"},
                {"scoring": "look-ahead", "pooling": "mean", "layer": "6"}):
        write_tiny_hidden_model(tmp_path / "bad.onnx", metadata=bad, pooled="pooling" in bad)
        with pytest.raises(ValueModelError, match="'sia_edge.layer' must be an integer >= 0, with scoring look-ahead"):
            open_value_model(tmp_path / "bad.onnx")


def test_merged_look_ahead_junctions_get_each_candidates_own_score(tmp_path):
    """Two generations' junctions (3 and 2 candidates) in one call: candidate j of junction i is scored from its own
    state row, and the scores come back split per junction."""
    from sia_edge.junctions import Junction, score_junctions
    from sia_edge.value_model import open_value_model

    w, table = write_tiny_hidden_model(tmp_path / "ahead.onnx", metadata={"scoring": "look-ahead"})
    model = open_value_model(tmp_path / "ahead.onnx")
    model.bind("ab" * 32, "tiny.gguf", 8, 32)
    view = SimpleNamespace(value_model=model)
    rng = np.random.default_rng(3)
    states = [rng.normal(size=(3, 8)).astype(np.float32), rng.normal(size=(2, 8)).astype(np.float32)]
    ids = [np.array([4, 9, 1]), np.array([30, 2])]
    junctions = [Junction(view, c, s) for c, s in zip(ids, states)]
    rewards = score_junctions(junctions)
    assert model.calls == 1 and [len(r) for r in rewards] == [3, 2]
    for got, s, c in zip(rewards, states, ids):
        want = s.astype(np.float64) @ w[:, 0].astype(np.float64) + table[c].astype(np.float64)
        np.testing.assert_allclose(got, want, rtol=1e-5)
    assert all(j.calls == 1 for j in junctions)


@pytest.fixture(scope="module")
def look_ahead_models(tmp_path_factory, gemma_path):
    """Look-ahead models trained on 80 short reviews: plain, pooling the mean state over the continuation, the same
    with a non-linear value term (--value-width), and reading the output of block 6 instead of the final state."""
    from sia_edge.cli import main

    folder = tmp_path_factory.mktemp("look-ahead")
    data = str(_small_labelled_csv(folder / "reviews.csv"))
    out = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SIA_EDGE_CACHE_DIR", str(folder / "cache"))
        for name, extra in (("plain", []), ("pooled", ["--pooling", "mean"]), ("layer", ["--layer", "6"]),
                            ("mlp", ["--pooling", "mean", "--value-width", "8"])):
            path = folder / f"{name}.onnx"
            result = CliRunner().invoke(main, ["vm", "train", "--input", "hidden", "--model", str(gemma_path),
                                               "--data", data, "--epochs", "6", "--rank", "4", "--holdout", "0.25",
                                               "--scoring", "look-ahead", "--json", "--out", str(path), *extra])
            assert result.exit_code == 0, result.output
            out[name] = (path, json.loads(result.stdout))
    return out


@pytest.mark.slow
def test_vm_train_scoring_look_ahead_exports_the_value_of_a_state(look_ahead_models):
    from sia_edge.value_model import open_value_model

    path, report = look_ahead_models["plain"]
    assert report["arch"] == "look-ahead-linear"
    assert report["prefix_metrics"][-1]["accuracy"] >= 0.7  # 20 held-out reviews, read after their last token
    model = open_value_model(path)
    assert model.looks_ahead and model.metadata["scoring"] == "look-ahead" and not model.pools
    assert path.stat().st_size < 100_000  # a linear value of the state: no candidate table
    assert look_ahead_models["pooled"][1]["arch"] == "look-ahead-linear-mean-pool"
    mlp_path, mlp_report = look_ahead_models["mlp"]
    assert mlp_report["arch"] == "look-ahead-mlp8-mean-pool"
    mlp = open_value_model(mlp_path)
    assert mlp.pools and mlp.metadata["architecture"] == "look-ahead-mlp8-mean-pool"
    assert json.loads(mlp.metadata["training"])["fit"]["value_width"] == 8
    layered = open_value_model(look_ahead_models["layer"][0])
    assert layered.layer == 6 and layered.metadata["layer"] == "6"
    assert look_ahead_models["layer"][1]["prefix_metrics"][-1]["accuracy"] >= 0.7


@pytest.mark.slow
@pytest.mark.parametrize("name", ["plain", "pooled", "layer", "mlp"])
def test_a_look_ahead_models_junctions_equal_vm_score_of_prefix_plus_candidate(look_ahead_models, gemma_path, name):
    """One definition of a text's value: a junction's score for candidate j is `vm score` of the prompt + text so
    far + j (the state after j, and for the pooled model the mean from the state after the prompt), on the single
    path and through the scheduler; the generation's final value is `vm score` of its whole text."""
    from sia_edge.decoder import value_model_tokens
    from sia_edge.engine import Engine

    path, _ = look_ahead_models[name]
    for parallel in (1, 2):
        engine = Engine(model=gemma_path, value_model=str(path), parallel=parallel)
        try:
            vm = engine.value_model
            assert vm.looks_ahead
            prompt_text = "The service at the hotel was"
            stream = engine.stream(prompt_text, gate="dense", max_tokens=5, seed=4)
            events = list(stream)
            assert all(e.junction for e in events)
            prompt = engine.tokenize(prompt_text)
            n_prompt = len(value_model_tokens(prompt, [], engine.base.bos_id))
            for event in events[:4]:
                prefix = value_model_tokens(prompt, [e.token_id for e in events[:event.index]], engine.base.bos_id)
                texts = [prefix + [c] for c in event.candidates]
                direct = vm.score_sequences(texts, [n_prompt] * len(texts))
                np.testing.assert_allclose(event.rewards, direct, atol=0.1)  # batched kernels round differently
                assert len(set(np.round(event.rewards, 4))) > 1  # each candidate its own state, its own score
            result = stream.result
            whole = vm.score_sequences([value_model_tokens(prompt, result.token_ids, engine.base.bos_id)],
                                       [n_prompt])[0]
            assert result.value == pytest.approx(whole, abs=0.1)
            assert result.stats.look_ahead_seconds > 0
        finally:
            engine.close()


@pytest.mark.slow
def test_scoring_is_refused_for_a_value_model_that_reads_tokens(tmp_path):
    from sia_edge.cli import main

    data = str(_small_labelled_csv(tmp_path / "r.csv"))
    for option, value in (("--scoring", "look-ahead"), ("--value-width", "8")):
        result = CliRunner().invoke(main, ["vm", "train", "--data", data, option, value,
                                           "--out", str(tmp_path / "x.onnx")])
        assert result.exit_code == 2 and f"{option} applies to --input hidden only" in result.output


@pytest.mark.slow
def test_layer_is_refused_where_it_cannot_apply(tmp_path, gemma_path):
    from sia_edge.cli import main

    data = str(_small_labelled_csv(tmp_path / "r.csv"))
    common = ["vm", "train", "--data", data, "--input", "hidden", "--model", str(gemma_path),
              "--out", str(tmp_path / "x.onnx"), "--layer", "6"]
    result = CliRunner().invoke(main, common)  # --scoring candidate: a junction reads the generation's own state
    assert result.exit_code == 2 and "--layer applies to --input hidden --scoring look-ahead" in result.output
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SIA_EDGE_CACHE_DIR", str(tmp_path / "cache"))
        result = CliRunner().invoke(main, [*common[:-1], "99", "--scoring", "look-ahead"])
    assert result.exit_code == 2 and "--layer 99" in result.output and "has 18 blocks" in result.output


@pytest.mark.slow
def test_a_token_memory_is_refused_where_it_cannot_apply(tmp_path, gemma_path):
    """pooling mean+tokens scores candidates from the state before them: no look-ahead scoring or examples."""
    from sia_edge.cli import main

    data = str(_small_labelled_csv(tmp_path / "r.csv"))
    common = ["vm", "train", "--data", data, "--input", "hidden", "--model", str(gemma_path),
              "--out", str(tmp_path / "x.onnx"), "--pooling", "mean+tokens"]
    for extra in (["--scoring", "look-ahead"], ["--look-ahead", "2"]):
        result = CliRunner().invoke(main, [*common, *extra])
        assert result.exit_code == 2, result.output
        assert "--pooling mean+tokens works with --scoring candidate and without --look-ahead" in result.output
    result = CliRunner().invoke(main, [*common[:-1], "mean", "--memory-decay", "0.1"])  # no memory to decay
    assert result.exit_code == 2 and "--memory-decay applies to --input hidden --pooling mean+tokens" in result.output
    # a look-ahead model ships the teacher itself, and a token model has none: nothing to pull toward
    for extra in (["--scoring", "look-ahead"], ["--input", "tokens"]):
        result = CliRunner().invoke(main, [*common[:-1], "mean", "--teacher-weight", "1", *extra])
        assert result.exit_code == 2, result.output
        assert "--teacher-weight applies to --input hidden --scoring candidate only" in result.output
    assert not (tmp_path / "x.onnx").exists()
