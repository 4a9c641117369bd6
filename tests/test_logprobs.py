"""Per-token facts: TokenEvent's log-probabilities and junction details, and the server's OpenAI `logprobs` with the
sia-edge `sia` object per token, which must equal Engine.stream's events for the same seed (real Gemma model,
real shipped value model; the server in-process on the session's engine)."""

import json
import math

import numpy as np
import pytest

from sia_edge.decoder import log_partition

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

PROMPT = "The movie was"
# an entropy gate low enough that a short reply has junctions and plain steps both
STEERING = {"gate": "entropy", "tau": 0.8, "seed": 7, "max_tokens": 12}


def test_log_partition_is_log_sum_exp():
    logits = np.array([0.0, math.log(3.0), -np.inf], dtype=np.float32)  # softmax: 1/4, 3/4, 0
    assert log_partition(logits) == pytest.approx(math.log(4.0))
    assert log_partition(logits + 1000.0) == pytest.approx(1000.0 + math.log(4.0))  # no overflow


@pytest.mark.slow
def test_events_carry_log_probabilities_and_how_steering_moved_the_candidates(engine):
    stream = engine.stream(PROMPT, top_log_probs=3, **STEERING)
    events = [e for e in stream if e.token_id >= 0]
    junctions = [e for e in events if e.junction]
    assert junctions and len(junctions) < len(events), "the test needs junctions and plain steps"
    w, temperature = stream.result.settings["weight"], stream.result.settings["temperature"]
    for event in events:
        ids, logprobs = zip(*event.top_log_probs)
        assert len(ids) == 3 and list(logprobs) == sorted(logprobs, reverse=True) and logprobs[0] <= 0
        if event.rank < 3:  # the chosen token is the rank-th likeliest
            assert ids[event.rank] == event.token_id and logprobs[event.rank] == pytest.approx(event.log_prob)
    for event in junctions:
        assert event.candidates[event.rank] == event.token_id
        assert event.candidate_log_probs[event.rank] == pytest.approx(event.log_prob)
        base = np.exp(np.array(event.candidate_log_probs) / temperature)
        steered = np.exp((np.array(event.candidate_log_probs) + w * np.array(event.rewards)) / temperature)
        np.testing.assert_allclose(event.base_probs, base / base.sum(), rtol=1e-9)
        np.testing.assert_allclose(event.steered_probs, steered / steered.sum(), rtol=1e-9)
    plain = next(e for e in events if not e.junction)
    assert plain.candidate_log_probs is None and plain.steered_probs is None


@pytest.mark.slow
def test_log_probs_are_off_unless_asked(engine):
    event = next(iter(engine.stream(PROMPT, gate="dense", max_tokens=1, seed=1)))
    assert (event.log_prob, event.top_log_probs, event.steered_probs) == (None, None, None)
    with pytest.raises(Exception, match="top_log_probs must be >= 0, got -1"):
        engine.stream(PROMPT, top_log_probs=-1)


# --- the API -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def api(engine):
    from fastapi.testclient import TestClient

    from sia_edge.commands.serve import Server
    from sia_edge.settings import GenerationSettings

    server = Server([engine], GenerationSettings(), notify=lambda message: None)
    with TestClient(server.app()) as client:
        yield server, client


def reference_events(engine, prompt_tokens, top_n, **settings):
    """What Engine.stream yields for the request: the tokens the API lists (not end-of-text)."""
    return [e for e in engine.stream(prompt_tokens, top_log_probs=top_n, **settings) if e.token_id >= 0 and not e.end]


def expected_sia(engine, event) -> dict:
    """The `sia` object the API must report for an event, built from the event alone."""
    out = {"token_id": event.token_id, "signal": event.entropy, "junction": event.junction, "rank": event.rank,
           "candidates": None}
    if event.junction:
        out["candidates"] = [
            {"token": piece(engine, c), "bytes": list(engine.base.token_bytes(c, special=True)), "token_id": c,
             "logprob": lp, "reward": r, "probability": p, "steered_probability": q, "chosen": i == event.rank}
            for i, (c, lp, r, p, q) in enumerate(zip(event.candidates, event.candidate_log_probs, event.rewards,
                                                      event.base_probs, event.steered_probs))]
    return out


def piece(engine, token_id) -> str:
    return engine.base.token_bytes(token_id, special=True).decode("utf-8", errors="replace")


def sse_chunks(response) -> list[dict]:
    lines = [line[len("data: "):] for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


@pytest.mark.slow
def test_completion_logprobs_equal_the_engines_events_streamed_or_not(engine, api):
    server, client = api
    body = {"prompt": PROMPT, "logprobs": 2, **STEERING}
    whole = client.post("/v1/completions", json=body)
    assert whole.status_code == 200, whole.text
    streamed = client.post("/v1/completions", json={**body, "stream": True})
    chunks = sse_chunks(streamed)
    events = reference_events(engine, engine.tokenize(PROMPT), 2, **STEERING)
    assert any(e.junction for e in events) and not all(e.junction for e in events)

    listing = whole.json()["choices"][0]["logprobs"]
    assert listing["tokens"] == [piece(engine, e.token_id) for e in events]
    assert listing["token_logprobs"] == [e.log_prob for e in events]
    assert listing["sia"] == [expected_sia(engine, e) for e in events]
    for top, event in zip(listing["top_logprobs"], events):
        asked = {piece(engine, i): lp for i, lp in event.top_log_probs}
        assert top == {**asked, piece(engine, event.token_id): event.log_prob}  # OpenAI: the sampled one too
    text = whole.json()["choices"][0]["text"]
    starts = listing["text_offset"]
    assert starts[0] == 0 and starts == sorted(starts) and starts[-1] < len(text)

    joined = {key: [x for c in chunks for x in c["choices"][0]["logprobs"][key]] for key in listing}
    assert joined == listing
    assert "".join(c["choices"][0]["text"] for c in chunks) == text


@pytest.mark.slow
def test_chat_logprobs_equal_the_engines_events_streamed_or_not(engine, api):
    from sia_edge.commands.serve import ChatRequest

    server, client = api
    messages = [{"role": "user", "content": "Tell me about your day."}]
    body = {"messages": messages, "logprobs": True, "top_logprobs": 4, **STEERING}
    whole = client.post("/v1/chat/completions", json=body)
    assert whole.status_code == 200, whole.text
    chunks = sse_chunks(client.post("/v1/chat/completions", json={**body, "stream": True}))
    served = server.served(None)
    tokens = server.chat_prompt(served, ChatRequest(messages=messages))
    events = reference_events(engine, tokens, 4, stop=served.format.stops, **STEERING)
    assert any(e.junction for e in events)

    content = whole.json()["choices"][0]["logprobs"]["content"]
    assert [c["token"] for c in content] == [piece(engine, e.token_id) for e in events]
    assert [c["logprob"] for c in content] == [e.log_prob for e in events]
    assert [c["bytes"] for c in content] == [list(engine.base.token_bytes(e.token_id, special=True)) for e in events]
    assert [c["sia"] for c in content] == [expected_sia(engine, e) for e in events]
    assert [[(t["token"], t["logprob"]) for t in c["top_logprobs"]] for c in content] == \
        [[(piece(engine, i), lp) for i, lp in e.top_log_probs] for e in events]

    assert chunks[0]["choices"][0]["logprobs"] is None  # the role chunk carries no token
    assert [entry for c in chunks[1:] for entry in c["choices"][0]["logprobs"]["content"]] == content
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == \
        whole.json()["choices"][0]["message"]["content"]


@pytest.mark.slow
def test_logprobs_are_absent_unless_asked(api):
    server, client = api
    out = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}],
                                                    "max_tokens": 2, "seed": 1})
    assert out.status_code == 200 and out.json()["choices"][0]["logprobs"] is None


@pytest.mark.slow
@pytest.mark.parametrize("path, extra, param", [
    ("/v1/completions", {"logprobs": 6}, "logprobs"),
    ("/v1/completions", {"logprobs": -1}, "logprobs"),
    ("/v1/completions", {"logprobs": 1, "best_of": 2}, "logprobs"),
    ("/v1/chat/completions", {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ("/v1/chat/completions", {"top_logprobs": 2}, "top_logprobs"),
    ("/v1/chat/completions", {"logprobs": 3}, "logprobs"),
])
def test_bad_logprobs_requests_are_400s_naming_the_field(api, path, extra, param):
    server, client = api
    body = {"prompt": "Hi"} if path == "/v1/completions" else {"messages": [{"role": "user", "content": "Hi"}]}
    out = client.post(path, json={**body, "max_tokens": 2, **extra})
    assert out.status_code == 400, out.text
    assert out.json()["error"]["param"] == param


@pytest.mark.slow
def test_models_list_gates_and_defaults_for_clients_like_the_chat_page(api):
    server, client = api
    info = client.get("/v1/models").json()["data"][0]["sia"]
    assert "entropy" in info["gates"] and "none" in info["gates"]
    assert info["defaults"]["gate"] == "entropy" and info["defaults"]["top_k"] == 10
