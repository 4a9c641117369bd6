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
                            graph_width: int | None = None, pooled: bool = False,
                            remembers: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """scores[b, j] = hidden[b] . w + table[candidates[b, j]] (+ pooled[b] . w with a `pooled` input; + the sum of
    table[continuation[b]] where continuation_mask[b] is 1, with `remembers`): a contract-3 graph built node by
    node."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.normal(size=(graph_width or d, 1)).astype(np.float32)
    table = rng.normal(size=(n_vocab,)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["hidden", "w"], ["value"]),
             helper.make_node("Gather", ["table", "candidates"], ["bias"], axis=0),
             helper.make_node("Add", ["value", "bias"], ["scores" if not pooled else "unpooled"])]
    inputs = [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["batch", graph_width or d]),
              helper.make_tensor_value_info("candidates", TensorProto.INT64, ["batch", "k"])]
    if pooled:
        nodes += [helper.make_node("MatMul", ["pooled", "w"], ["pool_value"]),
                  helper.make_node("Add", ["unpooled", "pool_value"], ["scores"])]
        inputs.append(helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["batch", graph_width or d]))
    initializers = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(table, "table")]
    if remembers:
        nodes[-1].output[0] = "unremembered"
        nodes += [helper.make_node("Gather", ["table", "continuation"], ["written"], axis=0),
                  helper.make_node("Mul", ["written", "continuation_mask"], ["kept"]),
                  helper.make_node("ReduceSum", ["kept", "axis1"], ["memory"], keepdims=1),
                  helper.make_node("Add", ["unremembered", "memory"], ["scores"])]
        inputs += [helper.make_tensor_value_info("continuation", TensorProto.INT64, ["batch", "n"]),
                   helper.make_tensor_value_info("continuation_mask", TensorProto.FLOAT, ["batch", "n"])]
        initializers.append(numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"))
    graph = helper.make_graph(
        nodes, "tiny", inputs,
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", "k"])], initializers)
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


def test_a_pooling_model_reads_the_mean_state_too(tmp_path):
    from sia_edge.value_model import open_value_model

    w, table = write_tiny_hidden_model(tmp_path / "pool.onnx", metadata={"pooling": "mean"}, pooled=True)
    model = open_value_model(tmp_path / "pool.onnx")
    model.bind("ab" * 32, "tiny.gguf", 8, 32)
    assert model.pools
    hidden, pooled = np.ones((1, 8), np.float32), np.full((1, 8), 0.5, np.float32)
    got = model.score_hidden(hidden, [np.array([3, 4])], pooled)[0]
    np.testing.assert_allclose(got, 1.5 * w[:, 0].sum() + table[[3, 4]], rtol=1e-5)
    with pytest.raises(ValueModelError, match="pass `pooled`"):
        model.score_hidden(hidden, [np.array([3, 4])])


def test_a_token_memory_model_reads_the_tokens_written_so_far(tmp_path):
    """pooling mean+tokens: each row also gets the tokens generated so far, right-padded with a mask (ragged rows,
    an empty one included), checked against the graph's sum computed in float64."""
    from sia_edge.value_model import open_value_model

    w, table = write_tiny_hidden_model(tmp_path / "memory.onnx", metadata={"pooling": "mean+tokens"}, pooled=True,
                                       remembers=True)
    model = open_value_model(tmp_path / "memory.onnx")
    model.bind("ab" * 32, "tiny.gguf", 8, 32)
    assert model.pools and model.reads_continuation
    hidden, pooled = np.ones((2, 8), np.float32), np.full((2, 8), 0.5, np.float32)
    written = [[5, 6, 31], []]
    got = model.score_hidden(hidden, [np.array([3, 4]), np.array([7])], pooled, written)
    ref = table.astype(np.float64)
    np.testing.assert_allclose(got[0], 1.5 * w[:, 0].sum() + ref[[3, 4]] + ref[[5, 6, 31]].sum(), rtol=1e-5)
    np.testing.assert_allclose(got[1], 1.5 * w[:, 0].sum() + ref[[7]], rtol=1e-5)
    with pytest.raises(ValueModelError, match="pass `continuations`"):
        model.score_hidden(hidden, [np.array([3, 4]), np.array([7])], pooled)


@pytest.mark.parametrize("metadata, pooled, remembers", [({"pooling": "mean"}, False, False), ({}, True, False),
                                                         ({"pooling": "max"}, True, False),
                                                         ({"pooling": "mean+tokens"}, True, False),
                                                         ({"pooling": "mean"}, True, True)])
def test_pooling_metadata_must_match_the_graphs_inputs(tmp_path, metadata, pooled, remembers):
    from sia_edge.value_model import open_value_model

    write_tiny_hidden_model(tmp_path / "bad.onnx", metadata=metadata, pooled=pooled, remembers=remembers)
    with pytest.raises(ValueModelError, match="'sia_edge.pooling'"):
        open_value_model(tmp_path / "bad.onnx")


def test_pooled_training_examples_hold_the_continuations_running_mean():
    """Checked against float64 means computed one by one: the pool runs from the state before the first scored
    token (the one after the prompt) to the state before (and after) each example's token."""
    from sia_edge.train.hidden_fit import look_aheads, positions, running_means

    rng = np.random.default_rng(1)
    h = rng.normal(size=(7, 3)).astype(np.float16)  # states after each of 7 tokens, BOS first
    tokens = [2, 10, 11, 12, 13, 14, 15]
    first = 3  # tokens 3.. are the continuation; the pool starts at h[2], the state after the prompt
    ref = h.astype(np.float64)
    np.testing.assert_allclose(running_means(h, 2), [ref[2:2 + i + 1].mean(0) for i in range(5)], rtol=1e-5)
    got = positions([h], [tokens], np.array([1.0]), np.array([1.0]), [first], pooling="mean")
    assert list(got.candidates) == tokens[3:]
    for row, j in enumerate(range(3, 7)):
        np.testing.assert_allclose(got.pooled_before[row], ref[2:j].mean(0), atol=2e-3)
        np.testing.assert_allclose(got.pooled_after[row], ref[2:j + 1].mean(0), atol=2e-3)
    assert positions([h], [tokens], np.array([1.0]), np.array([1.0]), [first]).pooled_before is None
    memory = positions([h], [tokens], np.array([1.0]), np.array([1.0]), [first], pooling="mean+tokens")
    np.testing.assert_array_equal(memory.pooled_before, got.pooled_before)  # the mean pool as with "mean"
    ids, mask = memory.written(np.arange(4))
    for row, j in enumerate(range(3, 7)):  # the token memory before token j: the continuation's tokens 3 .. j - 1
        assert ids[row][mask[row] == 1].tolist() == tokens[3:j]
    # counterfactuals at position 5 (after tokens[:5]): the pool before, and with each candidate's state added
    ahead = rng.normal(size=(2, 3)).astype(np.float16)
    entry = {"positions": np.array([5, 5]), "ids": np.array([7, 8]), "states": ahead}
    cf = look_aheads([h], [entry], [first], "mean")
    np.testing.assert_allclose(cf.pooled_before[0], ref[2:5].mean(0), atol=2e-3)
    for j in range(2):
        np.testing.assert_allclose(cf.pooled_after[0, j], np.vstack([ref[2:5], ahead[j:j + 1]]).mean(0),
                                   atol=2e-3)


def test_the_token_memorys_free_weights_get_their_own_weight_decay():
    from sia_edge.train.hidden_fit import HiddenFitConfig, parameter_groups
    from sia_edge.train.hidden_head import CandidateHead

    stats = (np.zeros(8, np.float32), np.ones(8, np.float32))
    head = CandidateHead(8, 4, 2, 6, *stats, 1.0, stats, 0, memory_vocab=50)
    plain, memory = parameter_groups(head, HiddenFitConfig(pooling="mean+tokens", memory_decay=0.5))
    assert memory == {"params": [head.token_weight.weight], "weight_decay": 0.5}
    assert "weight_decay" not in plain  # the rest keep the optimiser's own
    every = plain["params"] + memory["params"]
    assert len(every) == len(list(head.parameters())) and len({id(q) for q in every}) == len(every)
    no_memory = CandidateHead(8, 4, 2, 6, *stats, 1.0, stats, 0)
    assert len(parameter_groups(no_memory, HiddenFitConfig())) == 1


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


def test_look_ahead_rows_are_cached_with_their_ids_and_positions(tmp_path):
    from sia_edge.train.features import CandidateCache, extract_candidates, look_ahead_positions

    class Reader:  # CandidateStates' shape: (P, k) ids and (P, k, d) states; counts its calls
        calls = 0

        def at(self, tokens, positions):
            Reader.calls += 1
            ids = np.array([[p * 10 + j for j in range(2)] for p in positions])
            return ids, np.ones((len(positions), 2, 4), np.float32) * ids[..., None]

    texts = [[2, 5, 7, 9, 11], [2, 8, 8]]
    cache = CandidateCache(tmp_path, "ab" * 32, 4, k=2)
    entries = extract_candidates(Reader(), texts, [2, 1], 2, cache)
    assert look_ahead_positions(texts[0], 2, 2) == look_ahead_positions(texts[0], 2, 2)  # seeded by the text
    assert set(entries[0]["positions"]) <= {2, 3, 4, 5} and len(entries[0]["ids"]) == 4
    # k consecutive rows per position: its ids, in order, with the states read for them
    np.testing.assert_array_equal(entries[0]["ids"], entries[0]["positions"] * 10 + np.tile([0, 1], 2))
    assert all(entries[0]["states"][r, 0] == entries[0]["ids"][r] for r in range(4))
    again = extract_candidates(Reader(), texts, [2, 1], 2, CandidateCache(tmp_path, "ab" * 32, 4, k=2))
    assert Reader.calls == 2  # the second pass read both texts from disk
    np.testing.assert_array_equal(again[1]["states"], entries[1]["states"])
    with pytest.raises(ValueError, match="holds features of"):
        CandidateCache(tmp_path, "ab" * 32, 4, k=3)  # another k: never mixed


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
        # the shipped model pools the states from the one after the prompt on, as vm score does given the prompt
        direct = vm.score_sequences([prefix + [c] for c in event.candidates], [len(prompt) - 1] * len(event.candidates))
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
        state = engine.base.hidden_states().after(prompt)[None, :]  # at the first junction also the mean state
        alone = hidden_vm.score_hidden(state, [np.array(first_hidden.candidates)],
                                       state if hidden_vm.pools else None)[0]
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
    from sia_edge.value_model import open_value_model

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
    # --teacher-weight reaches the fit (a head fitted to the labels alone differs) and is recorded in the model
    unpulled = CliRunner().invoke(main, [*args, "--teacher-weight", "0", "--out", str(tmp_path / "unpulled.onnx")])
    assert unpulled.exit_code == 0, unpulled.output
    assert (tmp_path / "unpulled.onnx").read_bytes() != out.read_bytes()
    assert [json.loads(open_value_model(p).metadata["training"])["fit"]["teacher"]
            for p in (out, tmp_path / "unpulled.onnx")] == [3.0, 0.0]
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


@pytest_real
def test_vm_train_look_ahead_teaches_every_candidate_and_caches_their_states(tmp_path, gemma_path, monkeypatch):
    from sia_edge.cli import main

    monkeypatch.setenv("SIA_EDGE_CACHE_DIR", str(tmp_path / "cache"))
    data = str(_small_labelled_csv(tmp_path / "reviews.csv"))
    common = ["vm", "train", "--input", "hidden", "--model", str(gemma_path), "--data", data, "--epochs", "4",
              "--rank", "4", "--holdout", "0.25", "--json"]
    result = CliRunner().invoke(main, [*common, "--look-ahead", "2", "--out", str(tmp_path / "a.onnx")])
    assert result.exit_code == 0, result.output
    junctions = json.loads(result.stdout)["junction_agreement"]
    # 2 positions of each of the 20 held-out reviews, each ranking the base model's 10 candidates
    assert junctions["junctions"] == 40 and 0.5 < junctions["pairs_agree"] <= 1.0
    assert list((tmp_path / "cache" / "candidate-features").glob("*/shard-*.npz"))
    training = json.loads(open_value_model_metadata(tmp_path / "a.onnx")["training"])
    assert training["look_ahead_positions"] == 2 and training["holdout_junctions"] == junctions
    # without it nothing is decoded ahead and nothing is reported
    plain = CliRunner().invoke(main, [*common, "--out", str(tmp_path / "b.onnx")])
    assert plain.exit_code == 0 and json.loads(plain.stdout)["junction_agreement"] is None
    refused = CliRunner().invoke(main, ["vm", "train", "--data", data, "--look-ahead", "2", "--out",
                                        str(tmp_path / "c.onnx")])
    assert refused.exit_code == 2 and "--look-ahead applies to --input hidden only" in refused.output


def open_value_model_metadata(path) -> dict:
    from sia_edge.value_model import open_value_model

    return open_value_model(path).metadata


@pytest_real
@pytest.mark.parametrize("pooling, suffix", [("mean", "-mean-pool"), ("mean+tokens", "-mean-pool-token-memory")])
def test_a_pooling_model_steers_and_its_junctions_equal_vm_score_of_prefix_plus_candidate(tmp_path, gemma_path,
                                                                                          monkeypatch, pooling,
                                                                                          suffix):
    """The pooled inputs end to end: trained with `--pooling mean` (or mean+tokens, which also reads the tokens
    generated so far), it steers through the engine (single path and scheduler), and a junction's scores equal the
    scores of the prompt + text so far + each candidate read whole (the pool from the state after the prompt), to
    the tolerance of batched kernels; so does the generation's final value."""
    from sia_edge.cli import main
    from sia_edge.decoder import value_model_tokens
    from sia_edge.engine import Engine

    monkeypatch.setenv("SIA_EDGE_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "pooled.onnx"
    result = CliRunner().invoke(main, ["vm", "train", "--input", "hidden", "--model", str(gemma_path), "--data",
                                       str(_small_labelled_csv(tmp_path / "reviews.csv")), "--epochs", "4",
                                       "--rank", "4", "--holdout", "0.25", "--pooling", pooling, "--json",
                                       "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["arch"].endswith(suffix)
    for parallel in (1, 2):
        engine = Engine(model=gemma_path, value_model=str(out), parallel=parallel)
        try:
            vm = engine.value_model
            assert vm.pools and vm.reads_continuation == (pooling == "mean+tokens")
            prompt_text = "The service at the hotel was"
            stream = engine.stream(prompt_text, gate="dense", max_tokens=5, seed=4)
            events = list(stream)
            prompt = engine.tokenize(prompt_text)
            n_prompt = len(value_model_tokens(prompt, [], engine.base.bos_id))
            for event in events[1:4]:  # from the second step the pool holds more than one state
                prefix = value_model_tokens(prompt, [e.token_id for e in events[:event.index]], engine.base.bos_id)
                texts = [prefix + [c] for c in event.candidates]
                direct = vm.score_sequences(texts, [n_prompt] * len(texts))
                np.testing.assert_allclose(event.rewards, direct, atol=0.15)
                # the pool matters: read as if the prompt were part of the continuation, the scores move
                assert not np.allclose(direct, vm.score_sequences(texts), atol=1e-3)
            whole = value_model_tokens(prompt, stream.result.token_ids, engine.base.bos_id)
            assert stream.result.value == pytest.approx(vm.score_sequences([whole], [n_prompt])[0], abs=0.15)
        finally:
            engine.close()
