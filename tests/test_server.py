"""`sia-edge serve`: a real uvicorn server subprocess with the real Gemma model, driven by the official openai client."""

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(gemma_path, log: Path, *options: str):
    """A real `sia-edge serve` subprocess on a free port; -> (process, base URL) once /health answers."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with log.open("w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "sia_edge", "serve", "--model", str(gemma_path), "--threads", "1",
                                 "--port", str(port), *options], env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while True:
        assert proc.poll() is None, f"server exited: {log.read_text()}"
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        assert time.time() < deadline, "server did not come up"
        time.sleep(0.3)


@pytest.fixture(scope="module")
def server(gemma_path, tmp_path_factory):
    proc, base = start_server(gemma_path, tmp_path_factory.mktemp("server") / "stderr.txt")
    yield base
    proc.terminate()
    proc.wait(timeout=20)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="not-needed", max_retries=0, timeout=120)


def test_models_and_health(server, client, gemma_path):
    ids = {m.id for m in client.models.list()}
    assert {"sia-edge-default", gemma_path.stem} <= ids
    before = httpx.get(server + "/health").json()
    assert before["status"] == "ok" and before["active"] == 0
    client.completions.create(model="sia-edge-default", prompt="Hello", max_tokens=2, seed=1)
    after = httpx.get(server + "/health").json()
    assert after["generations"] == before["generations"] + 1 and after["cancelled"] == before["cancelled"]


def test_completion_reports_sia_settings_and_replays_by_seed(client):
    args = dict(model="sia-edge-default", prompt="The movie was", max_tokens=8, seed=11,
                extra_body={"gate": "dense", "top_k": 5})
    first = client.completions.create(**args)
    again = client.completions.create(**args)
    assert first.choices[0].text and first.choices[0].text == again.choices[0].text
    assert first.choices[0].finish_reason in ("stop", "length")
    assert 1 <= first.usage.completion_tokens <= 8 and first.usage.prompt_tokens == 4
    sia = first.model_extra["sia"]
    assert sia["gate"] == "dense" and sia["junction_ratio"] == 1.0 and sia["seed"] == 11
    assert sia["stop_reason"] in ("eos", "length", "stop")


def test_stop_and_unsteered_gate(client):
    out = client.completions.create(model="sia-edge-default", prompt="Once upon a time", max_tokens=24, seed=5,
                                    stop=["e"], extra_body={"gate": "none"})
    assert "e" not in out.choices[0].text
    assert out.model_extra["sia"]["stop_reason"] == "stop" and out.choices[0].finish_reason == "stop"
    assert out.model_extra["sia"]["junctions"] == 0


def test_streaming_completion_matches_non_streaming(client):
    args = dict(model="sia-edge-default", prompt="My weekend was", max_tokens=10, seed=3)
    whole = client.completions.create(**args)
    chunks = list(client.completions.create(stream=True, **args))
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert chunks[-1].model_extra["sia"]["seed"] == 3


def test_chat_completion_and_stream(client):
    messages = [{"role": "system", "content": "A friendly chat."}, {"role": "user", "content": "How was your day?"}]
    args = dict(model="sia-edge-default", messages=messages, max_tokens=12, seed=2)
    reply = client.chat.completions.create(**args)
    assert reply.choices[0].message.role == "assistant"
    text = reply.choices[0].message.content
    assert text and text == text.strip() and "User:" not in text
    streamed = list(client.chat.completions.create(stream=True, **args))
    assert streamed[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == text
    assert streamed[-1].choices[0].finish_reason == reply.choices[0].finish_reason
    assert streamed[-1].model_extra["sia"]["junctions"] == reply.model_extra["sia"]["junctions"]


def test_best_of_in_request(client):
    out = client.completions.create(model="sia-edge-default", prompt="The movie was", max_tokens=6, seed=4,
                                    extra_body={"best_of": 3})
    best = out.model_extra["sia"]["best_of"]
    assert best["n"] == 3 and best["seeds"] == [4, 5, 6]
    assert best["best"] == max(range(3), key=best["scores"].__getitem__)


def test_errors_are_openai_shaped(server, client):
    with pytest.raises(openai.NotFoundError) as err:
        client.completions.create(model="no-such-model", prompt="Hi", max_tokens=4)
    assert err.value.body["code"] == "model_not_found" and err.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="sia-edge-default", prompt="Hi " * 2100, max_tokens=4)
    assert err.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="sia-edge-default", prompt="Hi", max_tokens=4, n=2)
    assert err.value.body["param"] == "n"
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="sia-edge-default", prompt="Hi", max_tokens=4, extra_body={"gate": "bogus"})
    assert err.value.body["param"] == "gate"
    for body in (b"{not json", b"[1, 2]", json.dumps({"model": "sia-edge-default"}).encode(),
                 json.dumps({"messages": "hello"}).encode()):
        path = "/v1/chat/completions" if b"messages" in body else "/v1/completions"
        response = httpx.post(server + path, content=body, headers={"content-type": "application/json"})
        assert response.status_code == 400, body
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert httpx.get(server + "/v1/nothing-here").json()["error"]["message"]
    response = httpx.post(server + "/v1/completions", content=b'{"prompt": "caf\\ud800", "max_tokens": 2}',
                          headers={"content-type": "application/json"})  # a lone surrogate: not text
    assert response.status_code == 400 and "UTF-8" in response.json()["error"]["message"]
    response = httpx.post(server + "/v1/completions", content=b'{"prompt": "caf\xe9", "max_tokens": 2}',
                          headers={"content-type": "application/json"})  # bytes that are not UTF-8 at all
    assert response.status_code == 400 and "UTF-8" in response.json()["error"]["message"]
    response = httpx.post(server + "/v1/completions", content=b'{"prompt": "Hi"}')  # no Content-Type
    assert response.status_code == 400 and "Content-Type" in response.json()["error"]["message"]
    response = httpx.get(server + "/v1/completions")
    assert response.status_code == 405 and response.headers["allow"] == "POST"


def test_disconnect_mid_stream_stops_generation(server, client):
    before = httpx.get(server + "/health").json()["cancelled"]
    body = {"model": "sia-edge-default", "prompt": "Chapter One\n\nIt was a dark and stormy night", "max_tokens": 1500,
            "seed": 1, "stream": True, "gate": "none"}
    with httpx.Client(timeout=60) as http:
        with http.stream("POST", server + "/v1/completions", json=body) as response:
            lines = response.iter_lines()
            got = [line for _, line in zip(range(6), (l for l in lines if l.startswith("data:")))]
            assert len(got) == 6  # generation is under way; now hang up
    wait_for_counter(server, "cancelled", before + 1)
    health = httpx.get(server + "/health").json()
    assert health["active"] == 0  # the 1500-token generation no longer holds the model
    out = client.completions.create(model="sia-edge-default", prompt="Hello", max_tokens=4, seed=1)
    assert 1 <= out.usage.completion_tokens <= 4 and out.model_extra["sia"]["stop_reason"] != "cancelled"


def wait_for_counter(server, name, value, polls=600):
    """Poll /health until a counter reaches `value`: a bounded number of polls, not a wall-clock deadline that a
    busy 2-core machine may miss."""
    for _ in range(polls):
        if httpx.get(server + "/health", timeout=30).json()[name] >= value:
            return
        time.sleep(0.2)
    pytest.fail(f"/health {name} never reached {value}")


def test_disconnect_during_a_non_streaming_request_stops_generation(server):
    before = httpx.get(server + "/health").json()["cancelled"]
    body = {"model": "sia-edge-default", "prompt": "Chapter Two\n\nThe rain had not stopped", "max_tokens": 1500,
            "seed": 2, "gate": "none"}
    with pytest.raises(httpx.TimeoutException):  # the client gives up and hangs up mid-generation
        httpx.post(server + "/v1/completions", json=body, timeout=httpx.Timeout(60, read=2.0))
    wait_for_counter(server, "cancelled", before + 1)
    assert httpx.get(server + "/health").json()["active"] == 0


def test_tau_with_ratio_is_refused_and_a_ratio_takes_the_calibrated_tau(client):
    from sia_edge.calibration import tau_from_calibration
    from sia_edge.settings import TAU_AND_RATIO

    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="sia-edge-default", prompt="Hi", max_tokens=4,
                                  extra_body={"tau": 1.0, "ratio": 0.2})
    assert err.value.body["message"] == TAU_AND_RATIO  # the same message as the Python API
    out = client.completions.create(model="sia-edge-default", prompt="The movie was", max_tokens=8, seed=3,
                                    extra_body={"ratio": 0.2})
    sia = out.model_extra["sia"]
    calibration = json.loads(next((REPO / "sia_edge" / "models").glob("calibration-*-top-k.json")).read_text())
    assert sia["ratio"] == 0.2 and sia["tau"] == pytest.approx(tau_from_calibration(calibration, 0.2))
    assert sia["pipeline"].count(f"tau={sia['tau']:g}") == 1


@pytest.fixture(scope="module")
def whole_prompt_server(gemma_path, tmp_path_factory):
    """A batching server that reads each prompt whole, alone, from an empty slot (--prefill-chunk 0
    --no-prefix-reuse)."""
    proc, base = start_server(gemma_path, tmp_path_factory.mktemp("whole") / "stderr.txt", "--prefill-chunk", "0",
                              "--no-prefix-reuse")
    yield base
    proc.terminate()
    proc.wait(timeout=20)


def test_two_concurrent_clients_get_their_own_answers(whole_prompt_server):
    """No cross-talk: each of two concurrent requests gets exactly the answer it gets alone. Exactly, because this
    server reads every prompt whole, alone, from an empty slot, and decodes fewer than 4 slots' steps one by one.
    With the defaults (a prompt's cached prefix kept, prompts read in chunks beside other slots' steps) the logits
    equal a lone fresh read's to float tolerance only (tests/test_prefix_reuse.py), which can flip a greedy
    near-tie: a batching server promises no exact replay (docs/chat-and-serve.md)."""
    server = whole_prompt_server
    client = openai.OpenAI(base_url=server + "/v1", api_key="not-needed", max_retries=0, timeout=120)
    chat_args = dict(model="sia-edge-default", messages=[{"role": "user", "content": "Tell me about cats."}],
                     max_tokens=16, seed=7, temperature=0)
    text_args = dict(model="sia-edge-default", prompt="The recipe calls for", max_tokens=16, seed=8, temperature=0)
    reference_chat = client.chat.completions.create(**chat_args).choices[0].message.content
    reference_text = client.completions.create(**text_args).choices[0].text
    results = {}

    def streamed_chat():
        pieces = client.chat.completions.create(stream=True, **chat_args)
        results["chat"] = "".join(c.choices[0].delta.content or "" for c in pieces)

    def plain_completion():
        results["text"] = client.completions.create(**text_args).choices[0].text

    threads = [threading.Thread(target=streamed_chat), threading.Thread(target=plain_completion)]
    for t in threads:
        t.start()
    for _ in range(300):  # the event loop answers while a generation is under way
        health = httpx.get(server + "/health", timeout=30).json()
        if health["active"] >= 1:
            break
        time.sleep(0.05)
    assert health["status"] == "ok" and health["active"] >= 1
    for t in threads:
        t.join(timeout=120)
    assert results == {"chat": reference_chat, "text": reference_text}


def test_request_fields_follow_the_settings_rules(engine):
    """In-process: a request's tau replaces a --ratio default (it used to be silently overridden by it), a
    request naming another gate starts from that gate's defaults, and both at once is a 400."""
    from sia_edge.commands.serve import ApiError, CompletionRequest, Server
    from sia_edge.settings import GenerationSettings

    server = Server([engine], GenerationSettings(ratio=0.2), notify=lambda message: None)
    served = server.served(None)
    settings = server.settings(served, CompletionRequest(prompt="x", tau=0.9), max_tokens=8)
    assert (settings.tau, settings.ratio, settings.build_gate().tau) == (0.9, None, 0.9)
    settings = server.settings(served, CompletionRequest(prompt="x", gate="random"), max_tokens=8)
    assert (settings.gate, settings.ratio, settings.q) == ("random", None, 0.2)
    with pytest.raises(ApiError) as err:
        server.settings(served, CompletionRequest(prompt="x", tau=0.9, ratio=0.3), max_tokens=8)
    assert err.value.status == 400 and "not both" in err.value.message


def test_defaults_no_request_could_use_stop_the_server_at_once(engine):
    """`serve --signal top2` without a tau (the default 2.02 is out of top2's [0, 1]) would answer every request
    with a 400; it is refused when the server is built, with the reason."""
    from sia_edge.commands.serve import Server
    from sia_edge.errors import InvalidSettingError
    from sia_edge.settings import GenerationSettings

    with pytest.raises(InvalidSettingError, match="never steer"):
        Server([engine], GenerationSettings(signal="top2"), notify=lambda message: None)
    Server([engine], GenerationSettings(signal="top2", ratio=0.2), notify=lambda message: None)


def test_health_counters_add_up(server, client):
    client.completions.create(model="sia-edge-default", prompt="Hello", max_tokens=2, seed=1)
    health = httpx.get(server + "/health").json()
    assert health["parallel"] == 4 and health["busy"] == health["queued"] == 0  # the default slots, all idle
    ended = health["served"] + health["cancelled"] + health["errors"] + health["rejected"]
    assert health["accepted"] == health["active"] + ended and health["served"] >= 1
    assert health["generations"] == health["served"] + health["cancelled"]


def test_a_request_queued_past_the_timeout_gets_503_with_retry_after(gemma_path, tmp_path):
    proc, base = start_server(gemma_path, tmp_path / "stderr.txt", "--parallel", "1", "--queue-timeout", "0.2")
    try:
        long = {"model": "sia-edge-default", "prompt": "Chapter One\n\nIt was a dark and stormy night",
                "max_tokens": 1500, "seed": 1, "stream": True, "gate": "none"}
        with httpx.Client(timeout=60) as http:
            with http.stream("POST", base + "/v1/completions", json=long) as response:
                lines = response.iter_lines()  # kept: closing this iterator would hang up
                assert next(lines).startswith("data:")  # the long generation holds the one slot
                busy = http.post(base + "/v1/completions", json={"prompt": "Hello", "max_tokens": 2})
                assert busy.status_code == 503 and busy.headers["Retry-After"] == "1"
                assert busy.json()["error"]["code"] == "server_busy" and "busy" in busy.json()["error"]["message"]
        wait_for_counter(base, "cancelled", 1)
        health = httpx.get(base + "/health").json()
        assert health["rejected"] == 1 and health["parallel"] == 1 and health["active"] == 0
        assert health["accepted"] == health["served"] + health["cancelled"] + health["errors"] + health["rejected"]
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.fixture
def nan_after(monkeypatch):
    """Set `.tokens`: once the context holds more than that many tokens, the base model (alone or in a batch slot)
    returns NaN logits."""
    from types import SimpleNamespace

    from sia_edge.base_model import BaseModel, SequenceSlot

    limit = SimpleNamespace(tokens=10**9)

    def broken(original):
        def logits(self):
            row = original(self)
            return row if self.n_past <= limit.tokens else np.full_like(row, np.nan)
        return logits

    for cls in (BaseModel, SequenceSlot):
        monkeypatch.setattr(cls, "logits", broken(cls.logits))
    return limit


PROMPT = "The movie was"


@pytest.mark.parametrize("path", ["alone", "parallel"])
def test_a_failure_while_generating_is_a_server_error(request, path, nan_after):
    """NaN logits at step 2 are the server's fault: a 500 `server_error` in OpenAI's shape, not a 400 a client
    would never retry, for a plain, a best_of and a streamed request alike; /health counts them as errors."""
    from fastapi.testclient import TestClient

    from sia_edge.commands.serve import Server

    engine = request.getfixturevalue("engine" if path == "alone" else "parallel_engine")
    nan_after.tokens = len(engine.tokenize(PROMPT))  # NaN from the second step on
    server = Server([engine], notify=lambda message: None)
    body = {"prompt": PROMPT, "max_tokens": 8, "seed": 1, "gate": "none"}
    with TestClient(server.app()) as http:
        for extra in ({}, {"best_of": 2}):
            response = http.post("/v1/completions", json={**body, **extra})
            assert response.status_code == 500, (extra, response.text)
            error = response.json()["error"]
            assert set(error) == {"message", "type", "param", "code"} and error["type"] == "server_error"
            assert "step 1" in error["message"] and "non-finite logits" in error["message"]
        streamed = http.post("/v1/completions", json={**body, "stream": True})
        events = [json.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: {")]
        assert events[-1]["error"]["type"] == "server_error" and "non-finite logits" in events[-1]["error"]["message"]
        health = http.get("/health").json()
    assert health["errors"] == 3 and health["active"] == 0 and health["accepted"] == 3


def test_a_request_whose_start_fails_is_not_left_active(engine, monkeypatch):
    """Whatever stops a request before it has a slot (here an engine closed under it), /health counts it as an
    error: `active` used to stay up for anything but a queue timeout."""
    from fastapi.testclient import TestClient

    from sia_edge.commands.serve import Server

    class ClosedUnderIt:
        result = None

        def start(self):
            raise RuntimeError("the engine is closed")

    server = Server([engine], notify=lambda message: None)
    monkeypatch.setattr(engine, "stream", lambda *args, **kwargs: ClosedUnderIt())
    with TestClient(server.app(), raise_server_exceptions=False) as http:
        for stream in (False, True):
            response = http.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 4, "stream": stream})
            assert response.status_code == 500 and response.json()["error"]["type"] == "server_error"
            assert "the engine is closed" in response.json()["error"]["message"]
        health = http.get("/health").json()
    assert health["accepted"] == 2 and health["active"] == 0 and health["errors"] == 2


def test_best_of_waits_for_slots_like_any_request(parallel_engine):
    """A best_of request's samples take the engine's slots: with every slot busy it gets the same 503 as any
    request after --queue-timeout, and /health counts it once, as rejected."""
    from fastapi.testclient import TestClient

    from sia_edge.commands.serve import Server

    server = Server([parallel_engine], notify=lambda message: None, queue_timeout=0.05)
    holders = [parallel_engine.stream(PROMPT, gate="none", max_tokens=500, seed=i).start()
               for i in range(parallel_engine.parallel)]
    try:
        with TestClient(server.app()) as http:
            response = http.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 4, "best_of": 2})
            health = http.get("/health").json()
    finally:
        for stream in holders:
            stream.close()
    assert response.status_code == 503 and response.json()["error"]["code"] == "server_busy"
    assert health["rejected"] == 1 and health["active"] == 0 and health["accepted"] == 1
    assert health["busy"] == parallel_engine.parallel  # the slots /health reports are the ones it waited for


def test_a_client_gone_while_its_request_waits_in_line_takes_it_out_of_line(gemma_path, tmp_path):
    """Both slots busy, a streamed and a plain request wait in line and their clients hang up: each leaves the line
    at once, counted as cancelled, while the two generations go on (it used to be admitted later and run its prefill
    inside a round; a streamed one did not even notice its client leaving until it had a slot)."""
    proc, base = start_server(gemma_path, tmp_path / "stderr.txt", "--parallel", "2")
    long = {"prompt": "Chapter One\n\nIt was a dark and stormy night", "max_tokens": 1500, "seed": 1, "stream": True,
            "gate": "none"}
    try:
        with httpx.Client(timeout=60) as http, http.stream("POST", base + "/v1/completions", json=long) as one, \
                http.stream("POST", base + "/v1/completions", json={**long, "seed": 2}) as two:
            holding = [one.iter_lines(), two.iter_lines()]  # kept: closing them would hang up
            assert all(next(lines).startswith("data:") for lines in holding)  # both slots generate
            for stream in (True, False):
                body = {"prompt": "Hello", "max_tokens": 4, "stream": stream}
                with pytest.raises(httpx.ReadTimeout):  # the client gives up while the request waits for a slot
                    httpx.post(base + "/v1/completions", json=body, timeout=httpx.Timeout(60, read=1.0))
            wait_for_counter(base, "cancelled", 2)
            health = httpx.get(base + "/health").json()
            assert health["queued"] == 0 and health["busy"] == 2 and health["served"] == 0
    finally:
        proc.terminate()
        proc.wait(timeout=20)
