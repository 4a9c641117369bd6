"""Continuous batching in Engine (sia_edge/scheduler.py), on the real Gemma model and the shipped value models.

Concurrent requests each keep their own settings, seed, value model and cancellation; junctions of all slots that
share a value model cost at most two value-model calls per step; a full queue turns away with QueueTimeoutError.
"""

import threading

import numpy as np
import pytest

from sia_edge.junctions import Junction, ValueView, score_junctions
from sia_edge.errors import InvalidSettingError, QueueTimeoutError

PROMPTS = ["The movie was", "My flight to Chicago was", "The new phone arrived and", "Yesterday at the park"]


def in_threads(work, items):
    """Run work(item) for every item in its own thread, all at once; results in item order."""
    results, errors = [None] * len(items), []
    start = threading.Barrier(len(items))

    def run(i, item):
        try:
            start.wait()
            results[i] = work(item)
        except Exception as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i, item)) for i, item in enumerate(items)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return results


def wait_idle(engine, seconds=120):
    """Cancellation takes effect at the worker's next step: wait (bounded) until no slot is busy."""
    import time

    deadline = time.monotonic() + seconds
    while engine.load()["busy"] and time.monotonic() < deadline:
        time.sleep(0.01)
    return engine.load()


def consistent(stream_events, result, max_tokens):
    steps = [e for e in stream_events if e.token_id >= 0]
    assert "".join(e.text for e in stream_events) == result.text
    assert len(steps) == result.stats.tokens <= max_tokens
    assert sum(e.junction for e in steps) == result.stats.junctions
    assert [e.token_id for e in steps if not e.end] == result.token_ids


def test_concurrent_requests_keep_their_own_settings(parallel_engine):
    """Four threads at once, each with another gate, seed and length: every one gets a whole, self-consistent
    generation with its own gate's bookkeeping."""
    asks = [dict(gate="dense", max_tokens=12, seed=1), dict(gate="none", max_tokens=20, seed=2),
            dict(gate="entropy", tau=1.0, max_tokens=16, seed=3), dict(gate="first-n", first_n=3, max_tokens=9, seed=4)]

    def work(i):
        stream = parallel_engine.stream(PROMPTS[i], **asks[i])
        return list(stream), stream.result

    for ask, (events, result) in zip(asks, in_threads(work, range(4))):
        consistent(events, result, ask["max_tokens"])
        assert result.stats.seed == ask["seed"] and result.stop_reason in ("length", "eos")
        steps = [e for e in events if e.token_id >= 0]
        if ask["gate"] == "dense":
            assert all(e.junction and len(e.rewards) == 10 for e in steps)
        if ask["gate"] == "none":
            assert result.stats.junctions == 0 and result.stats.value_model_calls == 0
        if ask["gate"] == "first-n":
            assert [e.junction for e in steps] == [True] * 3 + [False] * (len(steps) - 3)


def test_a_lone_request_replays_its_seed(parallel_engine):
    first = parallel_engine.generate(PROMPTS[0], gate="dense", max_tokens=12, seed=7)
    again = parallel_engine.generate(PROMPTS[0], gate="dense", max_tokens=12, seed=7)
    assert first.token_ids == again.token_ids and first.text == again.text


def test_value_model_work_is_merged_across_slots(parallel_engine):
    """Dense steering in four slots at once: each request is charged the one call per junction it would make alone,
    while the engine made one value-model call per round, whatever the number of slots at a junction."""
    before = parallel_engine.load()

    def work(i):
        return parallel_engine.generate(PROMPTS[i], gate="dense", max_tokens=10, seed=20 + i)

    results = in_threads(work, range(4))
    after = parallel_engine.load()
    rounds = after["rounds"] - before["rounds"]
    calls = after["value_model_calls"] - before["value_model_calls"]
    charged = sum(r.stats.value_model_calls for r in results)
    assert all(r.stats.value_model_calls == r.stats.tokens for r in results)
    assert 0 < calls <= rounds
    assert calls < charged  # merged: fewer real calls than the requests would have made alone
    assert after["served"] - before["served"] == 4


def one_unit_at_a_time(vm, state: np.ndarray, tokens) -> tuple[np.ndarray, float | None]:
    """Reference for the batched value-model paths: read `tokens` from `state` one unit per call (batch 1, no
    padding, no repeated states) -> (state after them, the score after the last one)."""
    score = None
    for unit in list(vm._units(tokens)):
        state, scores = vm._run(state, np.array([[unit]], dtype=np.int64), np.ones((1, 1), dtype=np.float32))
        score = float(scores[0])
    return state, score


def test_merged_scores_equal_scores_alone(parallel_engine):
    """score_junctions over several views (different prefix states, new text of different lengths) gives each
    junction the scores of reading its text and then each candidate one unit at a time, in one call."""
    vm = parallel_engine.value_model
    bos = parallel_engine.base.bos_id
    tokens = [parallel_engine.tokenize(p)[1:] for p in PROMPTS]
    words = (" good bad great terrible love hate fine awful nice boring happy sad fun dull warm cold lovely grim"
             " calm angry").split(" ")[1:]
    ids = [parallel_engine.tokenize(" " + w, add_bos=False)[0] for w in words]
    candidates = [np.array(ids[2 * i: 2 * i + 10]) for i in range(4)]  # overlapping sets
    views = [ValueView(vm, [bos] + t, bos) for t in tokens]
    for view, t in zip(views[2:], tokens[2:]):  # two of them already hold part of their text in their state
        view.prefix, view.unscored = vm.extend(vm.empty_prefix(), t[:2]), list(t[2:])
    empty = np.zeros((1, vm.state_size), dtype=np.float32)
    reference = []
    for t, c in zip(tokens, candidates):
        after_text, _ = one_unit_at_a_time(vm, empty, t)
        reference.append([one_unit_at_a_time(vm, after_text, [int(token)])[1] for token in c])
    calls = vm.calls
    merged = score_junctions([Junction(v, c) for v, c in zip(views, candidates)])
    assert vm.calls - calls == 1
    for m, r in zip(merged, reference):
        np.testing.assert_allclose(m, r, rtol=1e-4, atol=1e-5)
        assert np.ptp(r) > 1e-3  # the candidates score differently: a comparison that can fail


def test_each_request_steers_toward_its_own_objective(parallel_engine):
    def work(objective):
        return parallel_engine.generate(PROMPTS[1], gate="dense", max_tokens=8, seed=5, value_model=objective)

    sentiment, clean = in_threads(work, ["sentiment", "clean"])
    assert sentiment.value_model == "gemma3-270m-hidden-sentiment.onnx"  # the objective's model for these weights
    assert clean.value_model == "gemma3-270m-hidden-clean.onnx"  # also a hidden-state model for these weights
    assert sentiment.stats.value_model_calls == clean.stats.value_model_calls == 8


def test_cancelling_one_request_leaves_the_others_running(parallel_engine):
    cancel = threading.Event()
    before = parallel_engine.load()

    def work(i):
        if i == 0:
            stream = parallel_engine.stream(PROMPTS[0], gate="none", max_tokens=200, seed=1, cancel=cancel)
            events = []
            for event in stream:
                events.append(event)
                if len(events) == 3:
                    cancel.set()
            return events, stream.result
        stream = parallel_engine.stream(PROMPTS[i], gate="none", max_tokens=12, seed=i)
        return list(stream), stream.result

    outcomes = in_threads(work, range(3))
    events, result = outcomes[0]
    assert result.stop_reason == "cancelled" and 3 <= len(result.token_ids) < 200
    assert "".join(e.text for e in events) == result.text  # everything generated reached the caller
    for events, result in outcomes[1:]:
        consistent(events, result, 12)
        assert result.stop_reason in ("length", "eos")
    after = parallel_engine.load()
    assert after["cancelled"] - before["cancelled"] == 1 and after["served"] - before["served"] == 2


def test_a_caller_that_stops_reading_frees_its_slot(parallel_engine):
    before = parallel_engine.load()
    stream = parallel_engine.stream(PROMPTS[2], gate="none", max_tokens=500, seed=3)
    for event in stream:
        break
    stream.close()
    after = wait_idle(parallel_engine)
    assert after["busy"] == 0  # its slot is free again
    assert after["cancelled"] - before["cancelled"] == 1


def test_a_full_queue_turns_requests_away(gemma_path):
    from sia_edge.engine import Engine

    engine = Engine(model=gemma_path, n_ctx=256, parallel=2, use_value_model=False)
    try:
        busy = [engine.stream(PROMPTS[i], gate="none", max_tokens=240, seed=i).start() for i in range(2)]
        assert engine.load()["busy"] == 2
        with pytest.raises(QueueTimeoutError, match=r"no slot came free .* \(2 of 2 slots busy, 0 other requests"):
            engine.stream(PROMPTS[2], gate="none", max_tokens=4, queue_timeout=0.05).start()
        for stream in busy:
            stream.close()
        load = wait_idle(engine)
        assert load["rejected"] == 1 and load["cancelled"] == 2 and load["queued"] == 0
        assert engine.generate(PROMPTS[3], gate="none", max_tokens=3, seed=1, queue_timeout=30).stats.tokens == 3
        with pytest.raises(InvalidSettingError, match="queue_timeout"):
            engine.stream(PROMPTS[0], queue_timeout=-1)
    finally:
        engine.close()


@pytest.fixture(scope="module")
def two_slots(gemma_path):
    """A small engine of its own (2 slots, no value model): these tests fill its slots and its line."""
    from sia_edge.engine import Engine

    engine = Engine(model=gemma_path, n_ctx=512, parallel=2, use_value_model=False)
    yield engine
    engine.close()


LONG_PROMPT = " ".join(["The film was long, loud and in places rather lovely."] * 30)  # ~360 tokens: a long prefill


def test_a_free_slot_admits_a_request_whatever_its_queue_timeout(two_slots):
    """The queue timeout is for waiting on busy slots: a request a slot is free for is admitted even with a
    timeout of 0 (the worker admits it at its next round), also while another request's prefill fills the round."""
    assert two_slots.generate(PROMPTS[0], gate="none", max_tokens=2, seed=1, queue_timeout=0).stats.tokens == 2
    busy = two_slots.stream(LONG_PROMPT, gate="none", max_tokens=200, seed=2).start()  # its prefill: next round
    try:
        quick = two_slots.generate(PROMPTS[1], gate="none", max_tokens=2, seed=3, queue_timeout=0.001)
        assert quick.stats.tokens == 2 and quick.stop_reason == "length"
    finally:
        busy.close()
    assert wait_idle(two_slots)["rejected"] == 0


def test_a_request_cancelled_in_line_leaves_it_without_running(two_slots):
    """Cancelled while every slot is busy, a request leaves the line at the next round: it is not admitted later
    to run its prefill inside a round, and it ends 'cancelled' with nothing decoded while the others go on."""
    before = wait_idle(two_slots)
    running = [two_slots.stream(PROMPTS[i], gate="none", max_tokens=400, seed=i).start() for i in range(2)]
    cancel, outcome = threading.Event(), {}
    waiter = threading.Thread(target=lambda: outcome.update(
        result=two_slots.generate(LONG_PROMPT, gate="none", max_tokens=4, cancel=cancel)))
    waiter.start()
    while two_slots.load()["queued"] == 0 and waiter.is_alive():  # bounded by the waiter itself
        threading.Event().wait(0.01)
    cancel.set()
    waiter.join(timeout=60)  # before the fix it waited for a 400-token generation to free its slot
    load = two_slots.load()
    for stream in running:
        stream.close()
    assert not waiter.is_alive()
    assert load["busy"] == 2 and load["queued"] == 0  # it left the line while both slots kept generating
    result = outcome["result"]
    assert result.stop_reason == "cancelled" and result.text == "" and result.token_ids == []
    assert result.stats.tokens == 0 and result.stats.prefill_seconds == 0.0  # its prompt was never decoded
    after = wait_idle(two_slots)
    assert after["cancelled"] - before["cancelled"] == 3 and after["served"] == before["served"]


def test_one_at_a_time_a_request_cancelled_while_waiting_decodes_nothing(engine):
    """parallel=1: a generation cancelled while it waits for the engine ends 'cancelled' without its prefill,
    which would only delay whoever waits next."""
    holder = engine.stream(LONG_PROMPT, gate="none", max_tokens=4, seed=1).start()  # holds the engine
    cancel, outcome = threading.Event(), {}
    waiter = threading.Thread(target=lambda: outcome.update(
        result=engine.generate(LONG_PROMPT, gate="none", max_tokens=4, cancel=cancel)))
    waiter.start()
    cancel.set()
    list(holder)  # the holder finishes and lets the waiter in
    waiter.join(timeout=120)
    result = outcome["result"]
    assert result.stop_reason == "cancelled" and result.token_ids == [] and result.stats.prefill_seconds == 0.0


def test_a_slot_that_fills_up_stops_with_context(gemma_path):
    from sia_edge.engine import Engine

    engine = Engine(model=gemma_path, n_ctx=24, parallel=2, use_value_model=False)
    try:
        prompt = "Once upon a time"
        results = in_threads(lambda s: engine.generate(prompt, max_tokens=40, seed=s, gate="none", temperature=0.7),
                             [1, 2, 3, 4])
        assert {r.stop_reason for r in results} <= {"context", "eos"} and any(
            r.stop_reason == "context" for r in results)
        for result in results:
            if result.stop_reason == "context":
                assert len(engine.tokenize(prompt)) + len(result.token_ids) - 1 == 24
    finally:
        engine.close()


def test_parallel_must_be_positive(gemma_path):
    from sia_edge.engine import Engine

    with pytest.raises(InvalidSettingError, match="parallel must be >= 1"):
        Engine(model=gemma_path, parallel=0)


def test_parallel_above_what_llama_cpp_decodes_is_refused_up_front(gemma_path):
    """llama.cpp holds at most 256 sequences in one context: 257 slots used to be accepted, then every request
    failed with 'Failed to create llama_context'. The engine and the CLI refuse it at once, in one line."""
    from click.testing import CliRunner

    from sia_edge.cli import main
    from sia_edge.engine import MAX_PARALLEL, Engine

    assert MAX_PARALLEL == 256
    with pytest.raises(InvalidSettingError, match="parallel must be <= 256"):
        Engine(model=gemma_path, parallel=257)
    for command in (["serve"], ["bench", "serve"]):
        result = CliRunner().invoke(main, [*command, "--parallel", "257"])
        assert result.exit_code == 2 and "257 is not in the range" in result.output, result.output


def test_closing_the_engine_fails_running_and_waiting_requests_instead_of_hanging(gemma_path):
    from sia_edge.engine import Engine

    engine = Engine(model=gemma_path, n_ctx=512, parallel=1 + 1, use_value_model=False)
    running = [engine.stream(PROMPTS[i], gate="none", max_tokens=400, seed=i).start() for i in range(2)]
    outcome = {}

    def wait_in_line():
        try:
            engine.generate(PROMPTS[2], gate="none", max_tokens=4)
            outcome["waiting"] = "generated"
        except RuntimeError as exc:
            outcome["waiting"] = str(exc)

    waiter = threading.Thread(target=wait_in_line)
    waiter.start()
    while engine.load()["queued"] == 0 and waiter.is_alive():  # bounded by the waiter itself
        threading.Event().wait(0.01)
    engine.close()
    waiter.join(timeout=120)
    assert not waiter.is_alive() and outcome["waiting"] == "the engine was closed"
    for stream in running:
        with pytest.raises(RuntimeError, match="the engine was closed"):
            list(stream)


_CLOSE_WHILE_GENERATING = """
import sys, threading, time
from sia_edge.engine import Engine
engine = Engine(model=sys.argv[1], n_ctx=1024, parallel=int(sys.argv[2]), use_value_model=False, threads=1)
outcome, started = {}, threading.Event()
def work():
    try:
        for event in engine.stream("Chapter One\\n\\nIt was a dark and stormy night", gate="none", max_tokens=900,
                                   seed=1):
            started.set()
        outcome["stop"] = "generated to the end"
    except RuntimeError as exc:
        outcome["stop"] = str(exc)
thread = threading.Thread(target=work)
thread.start()
started.wait()
engine.close()
thread.join()
print(outcome["stop"])
"""


@pytest.mark.parametrize("parallel", [1, 2])
def test_closing_the_engine_while_it_decodes_stops_the_generation_first(gemma_path, parallel):
    """close() while another thread decodes on the model's own context (parallel=1) used to free llama.cpp's model
    under the decode: a segmentation fault. Now the generation stops at its next step, as in the slots, and the
    model is freed after. (A subprocess, so a crash fails the test instead of the test run.)"""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-c", _CLOSE_WHILE_GENERATING, str(gemma_path), str(parallel)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-2000:]}"
    assert proc.stdout.strip() == "the engine was closed"


@pytest.mark.parametrize("n_new", [5, 100])
def test_a_junction_in_one_call_equals_fold_then_score(parallel_engine, n_new):
    """The one-call junction (new text + each candidate per row) gives the scores of folding first and scoring the
    candidates after, and the chosen row's state is the state of the text grown by that token. New text longer
    than FOLD_INLINE_MAX is folded in a call of its own first (2 calls)."""
    from sia_edge.value_model import FOLD_INLINE_MAX

    vm, bos = parallel_engine.value_model, parallel_engine.base.bos_id
    text = " ".join(["The film was long, loud and in places rather lovely."] * 20)
    tokens = parallel_engine.tokenize(text, add_bos=False)[:n_new]
    candidates = np.array([262, 1401, 5043, 100, 7, 9000, 42, 777, 3000, 15])
    prefix = vm.extend(vm.empty_prefix(), tokens)
    reference = vm.score_candidates(prefix, candidates)
    grown = vm.extend(prefix, [int(candidates[3])])
    view = ValueView(vm, [bos] + tokens, bos)
    junction = Junction(view, candidates)
    rewards = junction.score_alone()
    assert junction.calls == (1 if n_new <= FOLD_INLINE_MAX else 2)
    np.testing.assert_allclose(rewards, reference, rtol=1e-5, atol=1e-5)
    view.append(int(candidates[3]))
    assert view.unscored == [] and view.prefix.n_tokens == n_new + 1
    np.testing.assert_allclose(view.prefix.vector, grown.vector, rtol=1e-5, atol=1e-5)
