"""End to end on the real Gemma 3 270M GGUF and the real shipped ONNX value model."""

import threading

import numpy as np
import pytest

from sia_edge.errors import InvalidSettingError, PromptError
from sia_edge.signals import softmax_entropy
from sia_edge.steering import choose

PROMPT = "The movie was"
GATES = [
    dict(gate="entropy", tau=1.0),
    dict(gate="dense"),
    dict(gate="none"),
    dict(gate="random", q=0.5),
    dict(gate="first-n", first_n=4),
    dict(gate="online", ratio=0.5),
]


@pytest.mark.parametrize("gate", GATES, ids=[g["gate"] for g in GATES])
def test_every_gate_generates(any_engine, gate):
    stream = any_engine.stream(PROMPT, max_tokens=12, seed=3, **gate)
    events = list(stream)
    result = stream.result
    assert result.stop_reason in ("length", "eos")
    assert 1 <= result.stats.tokens <= 12
    assert "".join(e.text for e in events) == result.text
    assert result.text.strip()
    # every step has an event, the end-of-generation one too: the counts are the events
    assert sum(e.junction for e in events) == result.stats.junctions
    assert len(events) == result.stats.tokens and events[-1].end == (result.stop_reason == "eos")
    steered = [e for e in events if e.junction]
    for event in steered:  # steered events carry the candidates and their rewards
        assert len(event.candidates) == 10 and len(event.rewards) == 10
        assert event.token_id == event.candidates[event.rank]
    if gate["gate"] == "first-n":
        assert [e.junction for e in events][:4] == [True] * 4
        assert not any(e.junction for e in events[4:])


def test_dense_and_none_ratios(any_engine):
    dense = any_engine.generate(PROMPT, gate="dense", max_tokens=10, seed=5)
    none = any_engine.generate(PROMPT, gate="none", max_tokens=10, seed=5)
    assert dense.stats.junction_ratio == 1.0
    assert dense.stats.value_model_calls == dense.stats.tokens  # one call per junction: new text + each candidate
    assert none.stats.junction_ratio == 0.0
    assert none.stats.value_model_calls == 0


def test_entropy_gate_ratio_is_strictly_between(engine):
    result = engine.generate(PROMPT, gate="entropy", tau=1.0, max_tokens=40, seed=11)
    assert 0.0 < result.stats.junction_ratio < 1.0


def test_same_seed_same_text(any_engine):
    first = any_engine.generate(PROMPT, max_tokens=16, seed=42)
    second = any_engine.generate(PROMPT, max_tokens=16, seed=42)
    other = any_engine.generate(PROMPT, max_tokens=16, seed=43)
    assert first.token_ids == second.token_ids and first.text == second.text
    assert first.token_ids != other.token_ids


def test_unseeded_generation_reports_its_seed_and_replays(any_engine):
    first = any_engine.generate(PROMPT, max_tokens=8)
    replay = any_engine.generate(PROMPT, max_tokens=8, seed=first.stats.seed)
    assert replay.token_ids == first.token_ids


def hand_decode(engine, prompt_tokens, n, seed, steer, weight=1.0, temperature=1.0, k=10):
    """The SIA step written out independently: argsort top-k, value model on each full prefix from scratch."""
    base, value_model = engine.base, engine.value_model
    rng = np.random.default_rng(seed)
    base.prefill(prompt_tokens)
    text_tokens = list(prompt_tokens[1:] if prompt_tokens[0] == base.bos_id else prompt_tokens)
    chosen = []
    for _ in range(n):
        logits = base.logits().astype(np.float64)
        ids = np.argsort(-logits, kind="stable")[:k]
        scores = logits[ids]
        if steer:
            rewards = value_model.score_sequences([text_tokens + [int(c)] for c in ids])
            scores = scores + weight * rewards
        token = int(ids[choose(scores, temperature, rng.random())])
        if base.is_end_of_generation(token):
            break
        chosen.append(token)
        text_tokens.append(token)
        base.step(token)
    return chosen


@pytest.mark.parametrize("gate, steer", [("none", False), ("dense", True)])
def test_generation_matches_hand_computed_choices(engine, gate, steer):
    result = engine.generate(PROMPT, gate=gate, max_tokens=12, seed=7, weight=2.0)
    expected = hand_decode(engine, engine.tokenize(PROMPT), 12, seed=7, steer=steer, weight=2.0)
    assert result.token_ids == expected


def test_greedy_none_is_base_argmax(engine):
    result = engine.generate(PROMPT, gate="none", temperature=0.0, max_tokens=8, seed=1)
    engine.base.prefill(engine.tokenize(PROMPT))
    argmax = []
    for _ in range(8):
        token = int(np.argmax(engine.base.logits()))
        argmax.append(token)
        engine.base.step(token)
    assert result.token_ids == argmax


def test_event_entropy_is_top_k_entropy_of_the_base_logits(engine):
    stream = engine.stream(PROMPT, gate="none", max_tokens=1, seed=2)
    events = list(stream)
    engine.base.prefill(engine.tokenize(PROMPT))
    logits = engine.base.logits().astype(np.float64)
    top = np.sort(logits)[::-1][:10]
    assert events[0].entropy == pytest.approx(softmax_entropy(top), abs=1e-9)


@pytest.mark.parametrize("norm", ["none", "zscore"])
def test_huge_weight_picks_the_value_models_favourite(engine, norm):
    stream = engine.stream(PROMPT, gate="dense", weight=1e6, reward_norm=norm, max_tokens=10, seed=9)
    events = list(stream)
    for event in events:
        assert event.rank == int(np.argmax(event.rewards))  # events carry the raw rewards; the order is the same
    assert ("norm=zscore" in stream.result.pipeline) == (norm == "zscore")


def test_max_tokens_and_stop_string(any_engine):
    limited = any_engine.generate(PROMPT, gate="none", max_tokens=5, seed=4)
    assert limited.stop_reason == "length" and len(limited.token_ids) == 5
    free = any_engine.generate(PROMPT, gate="none", max_tokens=30, seed=4)
    words = free.text.split()
    assert len(words) > 3
    stop = words[2]
    stopped = any_engine.generate(PROMPT, gate="none", max_tokens=30, seed=4, stop=[stop])
    assert stopped.stop_reason == "stop"
    assert stop not in stopped.text
    assert free.text.startswith(stopped.text)


def test_cancellation_keeps_what_was_generated(engine):
    cancel = threading.Event()
    stream = engine.stream(PROMPT, max_tokens=50, seed=1, cancel=cancel)
    texts = []
    for event in stream:
        texts.append(event.text)
        if len(texts) == 3:
            cancel.set()
    assert stream.result.stop_reason == "cancelled"
    assert len(stream.result.token_ids) == 3
    assert stream.result.text == "".join(texts)


def test_generation_from_worker_threads_is_serialised(engine):
    results = {}

    def work(seed):
        results[seed] = engine.generate(PROMPT, max_tokens=8, seed=seed).token_ids

    threads = [threading.Thread(target=work, args=(s,)) for s in (21, 22)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results[21] == engine.generate(PROMPT, max_tokens=8, seed=21).token_ids
    assert results[22] == engine.generate(PROMPT, max_tokens=8, seed=22).token_ids


def test_context_overflow_stops_cleanly(gemma_path):
    from sia_edge.engine import Engine

    small = Engine(model=gemma_path, n_ctx=24)
    n_ctx = small.base.n_ctx
    assert n_ctx == 24
    prompt = "Once upon a time"
    results = [small.generate(prompt, max_tokens=n_ctx + 10, seed=s, gate="none", temperature=0.7)
               for s in range(1, 4)]
    assert {r.stop_reason for r in results} <= {"context", "eos"}
    assert any(r.stop_reason == "context" for r in results)
    for result in results:
        if result.stop_reason == "context":  # the context is full; the last token was chosen but never decoded
            assert len(small.tokenize(prompt)) + len(result.token_ids) - 1 == n_ctx
    with pytest.raises(PromptError, match=f"context holds {n_ctx}"):
        small.generate("word " * (n_ctx + 5), max_tokens=4)


def test_out_of_range_prompt_ids_are_refused_by_the_api(engine):
    for bad in ([5, engine.base.n_vocab], [-1, 5]):
        with pytest.raises(PromptError, match="outside the vocabulary"):
            engine.generate(bad, max_tokens=2)


def test_tau_and_ratio_together_are_refused_by_the_api(engine):
    with pytest.raises(InvalidSettingError, match="give tau or ratio, not both"):
        engine.generate(PROMPT, tau=1.0, ratio=0.2, max_tokens=2)


@pytest.mark.parametrize("signal, tau", [("top-k", 1.2), ("full", 2.5), ("top2", 0.3)])
def test_the_entropy_gate_steers_exactly_where_the_signal_reaches_tau(engine, signal, tau):
    """On the real model, for each signal the decoder can threshold: junction == (signal >= tau) at every step."""
    stream = engine.stream(PROMPT, gate="entropy", tau=tau, signal=signal, max_tokens=24, seed=4)
    events = list(stream)
    assert 0 < sum(e.junction for e in events) < len(events)
    for event in events:
        assert event.junction == (event.entropy >= tau)
        if signal == "top2":
            assert 0.0 <= event.entropy <= 1.0
    assert f"tau={tau:g}" in stream.result.pipeline


def test_a_tau_the_signal_never_reaches_is_refused_before_generating(engine):
    """top2 lies in [0, 1]: with the default tau 2.02 the entropy gate used to steer nothing, silently. It is
    refused, naming the fix; a ratio takes top2's own calibrated tau and steers."""
    with pytest.raises(InvalidSettingError, match=r"default tau 2.02 .* top2-ratio signal .* never steer"):
        engine.stream(PROMPT, signal="top2", max_tokens=4)
    with pytest.raises(InvalidSettingError, match=r"tau 1.5 is above .* top2-ratio"):
        engine.generate(PROMPT, signal="top2", tau=1.5, max_tokens=4)
    result = engine.generate(PROMPT, signal="top2", ratio=0.5, max_tokens=24, seed=4)
    assert result.stats.junctions > 0 and result.settings["calibrated_tau"] < 1.0


@pytest.mark.parametrize("prompt", ["", "   \n"])
def test_empty_prompt_is_refused(engine, prompt):
    with pytest.raises(PromptError, match="empty"):
        engine.generate(prompt)


@pytest.mark.parametrize("overrides, message", [
    (dict(tau=-1.0), "tau"),
    (dict(top_k=0), "top_k must be >= 1"),
    (dict(top_k=300_000), "top_k must be <= the vocabulary size 262144"),
    (dict(temperature=-1.0), "temperature"),
    (dict(gate="random", q=1.5), "q must be in"),
])
def test_invalid_numbers_are_refused(engine, overrides, message):
    with pytest.raises(InvalidSettingError, match=message):
        engine.generate(PROMPT, **overrides)


def test_a_closed_model_refuses_instead_of_reading_freed_memory(gemma_path):
    from sia_edge.base_model import BaseModel

    base = BaseModel(gemma_path, n_ctx=32)
    assert base.token_bytes(base.tokenize("Hi", add_bos=False)[0]) == b"Hi"
    base.close()
    with pytest.raises(RuntimeError, match="is closed"):
        base.token_bytes(5)
