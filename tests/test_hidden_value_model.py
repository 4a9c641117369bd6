"""Contract 3 (hidden-state value models): the checks at load and bind on small hand-built graphs, and the real
shipped model on the real GGUF: a junction's scores equal `vm score` of prefix + candidate, it steers through the
scheduler next to other kinds of value model, and the feature cache never mixes weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from sia_edge.errors import TokenizerMismatchError, ValueModelError

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "sia_edge" / "models"
GEMMA_HIDDEN = SHIPPED / "gemma3-270m-hidden-sentiment.onnx"


def write_tiny_hidden_model(path: Path, d: int = 8, n_vocab: int = 32, metadata: dict | None = None,
                            graph_width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """scores[b, j] = hidden[b] . w + table[candidates[b, j]]: a contract-3 graph built node by node."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.normal(size=(graph_width or d, 1)).astype(np.float32)
    table = rng.normal(size=(n_vocab,)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["hidden", "w"], ["value"]),
             helper.make_node("Gather", ["table", "candidates"], ["bias"], axis=0),
             helper.make_node("Add", ["value", "bias"], ["scores"])]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["batch", graph_width or d]),
         helper.make_tensor_value_info("candidates", TensorProto.INT64, ["batch", "k"])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", "k"])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(table, "table")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = {"contract": "3", "input": "hidden", "hidden_size": str(d), "weights_fingerprint": "ab" * 32,
            **(metadata or {})}
    for key, value in meta.items():
        if value is not None:
            entry = model.metadata_props.add()
            entry.key, entry.value = f"sia_edge.{key}", value
    onnx.save(model, str(path))
    return w, table


def test_a_junction_call_scores_each_rows_candidates(tmp_path):
    from sia_edge.value_model import HiddenValueModel, open_value_model

    w, table = write_tiny_hidden_model(tmp_path / "tiny.onnx")
    model = open_value_model(tmp_path / "tiny.onnx")
    assert isinstance(model, HiddenValueModel)
    model.bind("ab" * 32, "tiny.gguf", 8, 32)
    hidden = np.arange(16, dtype=np.float32).reshape(2, 8) / 10
    rows = model.score_hidden(hidden, [np.array([3, 5, 7]), np.array([1, 2])])  # ragged k: one call
    assert model.calls == 1
    want = [(hidden[0].astype(np.float64) @ w[:, 0]) + table[[3, 5, 7]], (hidden[1] @ w[:, 0]) + table[[1, 2]]]
    for got, expected in zip(rows, want):
        np.testing.assert_allclose(got, expected, rtol=1e-5)


@pytest.mark.parametrize("metadata, graph_width, message", [
    ({"hidden_size": "9"}, None, "hidden_size 9 but the graph's 'hidden' input has 8"),
    ({"hidden_size": "many"}, None, "must be an integer"),
    ({"weights_fingerprint": None}, None, "weights_fingerprint' is missing"),
    ({"contract": "2"}, None, "contract' = 3"),
])
def test_a_graph_that_disagrees_with_its_metadata_is_refused_at_load(tmp_path, metadata, graph_width, message):
    from sia_edge.value_model import open_value_model

    write_tiny_hidden_model(tmp_path / "bad.onnx", metadata=metadata, graph_width=graph_width)
    with pytest.raises(ValueModelError, match=message):
        open_value_model(tmp_path / "bad.onnx")


def test_other_weights_or_another_hidden_size_are_refused_at_bind(tmp_path):
    from sia_edge.value_model import open_value_model

    write_tiny_hidden_model(tmp_path / "tiny.onnx")
    model = open_value_model(tmp_path / "tiny.onnx")
    with pytest.raises(TokenizerMismatchError, match="vm train --input hidden --model other.gguf"):
        model.bind("cd" * 32, "other.gguf", 8, 32)
    with pytest.raises(TokenizerMismatchError, match="hidden states of size 8 but tiny.gguf has 640"):
        model.bind("ab" * 32, "tiny.gguf", 640, 32)
    with pytest.raises(ValueModelError, match="fails on token id 99"):  # a table shorter than the vocabulary
        model.bind("ab" * 32, "tiny.gguf", 8, 100)


def test_the_weights_fingerprint_changes_with_any_byte_of_the_file(tmp_path, monkeypatch):
    from sia_edge.models import weights_fingerprint

    monkeypatch.setenv("SIA_EDGE_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF" + bytes(range(256)) * 64)
    first = weights_fingerprint(path)
    data = bytearray(path.read_bytes())
    data[5000] ^= 1  # one bit of "tensor data"
    path.write_bytes(bytes(data))
    assert weights_fingerprint(path) != first


def test_a_feature_cache_from_other_weights_is_never_reused(tmp_path):
    from sia_edge.train.features import FeatureCache, text_key

    first = FeatureCache(tmp_path, "ab" * 32, 4)
    key = text_key([2, 5, 7])
    first.add(key, np.ones((3, 4), np.float32))
    first.flush()
    assert key in FeatureCache(tmp_path, "ab" * 32, 4)  # resumed for the same weights
    assert key not in FeatureCache(tmp_path, "cd" * 32, 4)  # another model: its own folder, nothing shared
    with pytest.raises(ValueError, match="holds features of"):
        FeatureCache(tmp_path, "ab" * 32, 8)  # same weights, another hidden size: a corrupt or foreign folder


# --- the shipped hidden-state model on the real GGUF ------------------------------------------------------------

pytest_real = pytest.mark.slow


@pytest.fixture(scope="module")
def hidden_engine(gemma_path):
    from sia_edge.engine import Engine

    if not GEMMA_HIDDEN.exists():
        pytest.fail(f"{GEMMA_HIDDEN} must ship (tools/build_hidden_value_models.py)")
    engine = Engine(model=gemma_path, parallel=1)
    yield engine
    engine.close()


@pytest_real
def test_the_default_for_gemma_is_the_hidden_state_model(hidden_engine):
    assert hidden_engine.value_model.path.name == GEMMA_HIDDEN.name
    assert "hidden-state model for these exact weights" in hidden_engine.value_model_reason


@pytest_real
def test_a_junctions_scores_equal_vm_score_of_prefix_plus_candidate(hidden_engine):
    """A text's value is defined one way: the score a junction gives candidate j is `vm score` of the prefix plus
    candidate j (the hidden state at the junction comes from step-by-step decoding, vm score's from a prefill of
    the same tokens, so they agree to float tolerance, not bit for bit)."""
    from sia_edge.decoder import value_model_tokens

    stream = hidden_engine.stream("The service at the hotel was", gate="dense", max_tokens=6, seed=4)
    events = list(stream)
    prompt = hidden_engine.tokenize("The service at the hotel was")
    vm = hidden_engine.value_model
    for event in events[:4]:
        prefix = value_model_tokens(prompt, [e.token_id for e in events[:event.index]], hidden_engine.base.bos_id)
        direct = vm.score_sequences([prefix + [c] for c in event.candidates])
        np.testing.assert_allclose(event.rewards, direct, atol=0.15)
        assert np.argsort(event.rewards)[-1] == np.argsort(direct)[-1]


@pytest_real
def test_vm_score_orders_a_minimal_pair_and_prints_json(gemma_path):
    from sia_edge.cli import main

    result = CliRunner().invoke(main, ["vm", "score", "--model", str(gemma_path), "--json",
                                       "the food was good", "the food was not good"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert [r["text"] for r in rows] == ["the food was good", "the food was not good"]
    assert rows[0]["value_model"] == GEMMA_HIDDEN.name
    assert rows[0]["score"] > rows[1]["score"]


@pytest_real
def test_hidden_and_token_models_steer_side_by_side_in_one_scheduler_step(gemma_path):
    from sia_edge.engine import Engine

    engine = Engine(model=gemma_path, parallel=3)
    try:
        token_model = str(SHIPPED / "gemma3-270m-sentiment.onnx")
        streams = [engine.stream("My weekend was", gate="dense", max_tokens=6, seed=1),
                   engine.stream("My weekend was", gate="dense", max_tokens=6, seed=1, value_model=token_model),
                   engine.stream("Our hotel was", gate="dense", max_tokens=6, seed=2)]
        for s in streams:
            s.start()
        events = [list(s) for s in streams]
        assert all(len(e) == 6 and all(ev.junction and ev.rewards for ev in e) for e in events)
        assert streams[0].result.value_model == GEMMA_HIDDEN.name
        assert streams[1].result.value_model == "gemma3-270m-sentiment.onnx"
        # each slot got its own model's scores: checked at the first junction against each model alone
        hidden_vm, token_vm = engine.value_model, engine.value_model_for(token_model)
        prompt = engine.tokenize("My weekend was")
        first_hidden, first_token = events[0][0], events[1][0]
        alone = hidden_vm.score_hidden(engine.base.hidden_states().after(prompt)[None, :],
                                       [np.array(first_hidden.candidates)])[0]
        np.testing.assert_allclose(first_hidden.rewards, alone, atol=0.05)
        state = token_vm.extend(token_vm.empty_prefix(), prompt[1:])
        np.testing.assert_allclose(first_token.rewards, token_vm.score_candidates(state,
                                                                                  np.array(first_token.candidates)),
                                   atol=1e-4)
    finally:
        engine.close()


def _small_labelled_csv(path: Path) -> Path:
    """80 short reviews, half positive: enough for a head to learn something, small enough to read in seconds."""
    import csv

    good = ["great", "lovely", "excellent", "wonderful", "friendly", "amazing", "perfect", "fantastic"]
    bad = ["awful", "terrible", "rude", "horrible", "broken", "disgusting", "useless", "dreadful"]
    things = ["The hotel was", "Our flight was", "The food was", "The staff were", "My new phone is"]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for i, thing in enumerate(things):
            for word in good:
                writer.writerow([f"{thing} {word} today", 1])
            for word in bad:
                writer.writerow([f"{thing} {word} today", 0])
    return path


@pytest_real
def test_vm_train_input_hidden_builds_a_model_that_steers(tmp_path, gemma_path, monkeypatch):
    from sia_edge.cli import main
    from sia_edge.engine import Engine

    monkeypatch.setenv("SIA_EDGE_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "hidden.onnx"
    args = ["vm", "train", "--input", "hidden", "--model", str(gemma_path), "--data",
            str(_small_labelled_csv(tmp_path / "reviews.csv")), "--epochs", "6", "--rank", "4",
            "--holdout", "0.25", "--json"]
    result = CliRunner().invoke(main, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)  # progress goes to stderr
    assert report["input"] == "hidden" and report["hidden_size"] == 640 and out.exists()
    assert report["prefix_metrics"][-1]["accuracy"] >= 0.7  # 20 held-out reviews; chance is 0.5
    features = list((tmp_path / "cache" / "hidden-features").glob("*/shard-*.npz"))
    assert features, "the hidden states must be cached on disk"
    # a second run reads them back instead of decoding again (no new shard) and gives the same model
    again = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "again.onnx")])
    assert again.exit_code == 0, again.output
    assert sorted((tmp_path / "cache" / "hidden-features").glob("*/shard-*.npz")) == sorted(features)
    assert (tmp_path / "again.onnx").read_bytes() == out.read_bytes()
    engine = Engine(model=gemma_path, value_model=str(out), parallel=1)
    try:
        steered = engine.generate("The hotel was", gate="dense", max_tokens=8, seed=3)
        assert steered.value_model == out.name and steered.stats.junctions == 8
    finally:
        engine.close()


@pytest_real
def test_vm_distill_input_hidden_regresses_a_reward(tmp_path, gemma_path, monkeypatch):
    from sia_edge.cli import main

    monkeypatch.setenv("SIA_EDGE_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "distilled.onnx"
    reward = f"value-model:{SHIPPED / 'gemma3-270m-sentiment.onnx'}"
    result = CliRunner().invoke(main, ["vm", "distill", "--input", "hidden", "--model", str(gemma_path),
                                       "--texts", str(_small_labelled_csv(tmp_path / "reviews.csv")),
                                       "--reward", reward, "--out", str(out), "--epochs", "3", "--rank", "4",
                                       "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["input"] == "hidden"
    assert report["holdout_metrics"][-1]["correlation"] > 0.5  # the shipped token model's scores, read back
    from sia_edge.value_model import open_value_model

    model = open_value_model(out)
    assert model.reads_hidden and model.metadata["reward"].startswith("value-model:")
