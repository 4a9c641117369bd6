"""Best-of-N on the real Gemma model and the shipped value model."""

import io
import json

import numpy as np
import pytest

from sia_edge.best_of import best_of
from sia_edge.commands.common import run_best_of_cli
from sia_edge.errors import ValueModelError
from sia_edge.settings import GenerationSettings

pytestmark = pytest.mark.slow
PROMPT = "The movie was"


@pytest.fixture(scope="module")
def gemma(engine):
    return engine  # the session's real Gemma engine with its shipped value model (tests/conftest.py)


def test_best_is_the_argmax_of_independent_scores(gemma):
    settings = GenerationSettings(max_tokens=8, seed=21)
    out = best_of(gemma, PROMPT, 3, settings)
    assert [r.stats.seed for r in out.results] == [21, 22, 23]
    prompt = [t for t in gemma.tokenize(PROMPT) if t != gemma.base.bos_id]
    independent = gemma.value_model.score_sequences([prompt + r.token_ids for r in out.results])
    np.testing.assert_allclose(out.scores, independent, rtol=1e-5, atol=1e-5)
    assert out.best == int(np.argmax(independent)) and out.text == out.results[out.best].text
    assert out.base_steps == sum(r.stats.tokens for r in out.results)
    assert out.value_model_calls == sum(r.stats.value_model_calls for r in out.results) + 1
    reported = out.as_dict()  # what --json prints carries the same facts
    assert (reported["best"], reported["scores"], [s["seed"] for s in reported["samples"]]) == (out.best, out.scores,
                                                                                                [21, 22, 23])
    # the same N and seed draw the same samples again; another seed draws others
    assert [r.token_ids for r in best_of(gemma, PROMPT, 3, settings).results] == [r.token_ids for r in out.results]
    assert [r.token_ids for r in best_of(gemma, PROMPT, 3, settings.with_(seed=5)).results] != \
        [r.token_ids for r in out.results]


def test_plain_best_of_n_and_stop_strings(gemma):
    out = best_of(gemma, PROMPT, 3, GenerationSettings(gate="none", max_tokens=12, seed=3, stop=(" the",)))
    assert all(r.stats.junctions == 0 for r in out.results)
    assert any(r.stop_reason == "stop" for r in out.results)
    # the score is of the returned text, not of the tokens generated past the stop string
    prompt = [t for t in gemma.tokenize(PROMPT) if t != gemma.base.bos_id]
    texts = [prompt + gemma.tokenize(r.text, add_bos=False) for r in out.results]
    np.testing.assert_allclose(out.scores, gemma.value_model.score_sequences(texts), rtol=1e-5, atol=1e-5)


def test_cli_output(gemma):
    buffer = io.StringIO()
    out = run_best_of_cli(gemma, PROMPT, GenerationSettings(max_tokens=6, seed=9), 2, True, buffer)
    payload = json.loads(buffer.getvalue())
    assert payload["text"] == out.text and payload["best"] == out.best and len(payload["samples"]) == 2
    assert [s["score"] for s in payload["samples"]] == out.scores
    buffer = io.StringIO()
    run_best_of_cli(gemma, PROMPT, GenerationSettings(max_tokens=6, seed=9), 2, False, buffer)
    assert buffer.getvalue() == out.text + "\n"


def test_needs_a_value_model(smollm_path):
    from sia_edge.engine import Engine

    engine = Engine(model=smollm_path, threads=1, n_ctx=256, use_value_model=False)
    try:
        with pytest.raises(ValueModelError):
            best_of(engine, "Hello", 2, GenerationSettings(gate="none", max_tokens=4))
    finally:
        engine.close()


def test_samples_take_the_engines_slots(parallel_engine):
    """On a batching engine (the server's) the N samples are requests in its slots: the scheduler serves them
    (its counters and /health see them; they used to run in a second context beside it), and the result is the
    same kind: seeds seed+i, the argmax of independent scores, every value-model call counted once."""
    before = parallel_engine.load()
    out = best_of(parallel_engine, PROMPT, 3, GenerationSettings(max_tokens=8, seed=21))
    after = parallel_engine.load()
    assert after["served"] - before["served"] == 3 and after["rounds"] > before["rounds"]
    assert [r.stats.seed for r in out.results] == [21, 22, 23]
    prompt = [t for t in parallel_engine.tokenize(PROMPT) if t != parallel_engine.base.bos_id]
    independent = parallel_engine.value_model.score_sequences([prompt + r.token_ids for r in out.results])
    np.testing.assert_allclose(out.scores, independent, rtol=1e-5, atol=1e-5)
    assert out.best == int(np.argmax(independent))
    assert out.value_model_calls == sum(r.stats.value_model_calls for r in out.results) + 1


def test_samples_obey_the_queue_timeout(engine, parallel_engine):
    """Best-of-N waits for a slot (parallel > 1) or for the engine (parallel = 1) no longer than the queue timeout,
    like any request; before, it waited without limit."""
    from sia_edge.errors import QueueTimeoutError

    settings = GenerationSettings(gate="none", max_tokens=4, seed=1)
    for busy_engine, slots in ((engine, 1), (parallel_engine, parallel_engine.parallel)):
        holders = [busy_engine.stream(PROMPT, gate="none", max_tokens=500, seed=i).start() for i in range(slots)]
        try:
            with pytest.raises(QueueTimeoutError):
                best_of(busy_engine, PROMPT, 2, settings, queue_timeout=0.05)
        finally:
            for stream in holders:
                stream.close()
    assert len(best_of(engine, PROMPT, 2, settings, queue_timeout=30).results) == 2  # the engine is free again
