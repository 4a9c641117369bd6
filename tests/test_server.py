"""`sia-edge serve`: a real uvicorn server subprocess with the real Gemma model, driven by the official openai client."""

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

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


@pytest.fixture(scope="module")
def server(gemma_path, tmp_path_factory):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    log = tmp_path_factory.mktemp("server") / "stderr.txt"
    with log.open("w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "sia_edge", "serve", "--model", str(gemma_path), "--threads", "1",
                                 "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while True:
        assert proc.poll() is None, f"server exited: {log.read_text()}"
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.time() < deadline, "server did not come up"
        time.sleep(0.3)
    yield base
    proc.terminate()
    proc.wait(timeout=20)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="not-needed", max_retries=0, timeout=120)


def test_models_and_health(server, client, gemma_path):
    ids = {m.id for m in client.models.list()}
    assert {"sia-edge-default", gemma_path.stem} <= ids
    health = httpx.get(server + "/health").json()
    assert health["status"] == "ok" and "cancelled" in health


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


def test_disconnect_mid_stream_stops_generation(server, client):
    before = httpx.get(server + "/health").json()["cancelled"]
    body = {"model": "sia-edge-default", "prompt": "Chapter One\n\nIt was a dark and stormy night", "max_tokens": 1500,
            "seed": 1, "stream": True, "gate": "none"}
    with httpx.Client(timeout=60) as http:
        with http.stream("POST", server + "/v1/completions", json=body) as response:
            lines = response.iter_lines()
            got = [line for _, line in zip(range(6), (l for l in lines if l.startswith("data:")))]
            assert len(got) == 6  # generation is under way; now hang up
    deadline = time.time() + 15
    while httpx.get(server + "/health").json()["cancelled"] == before:
        assert time.time() < deadline, "the abandoned generation was not cancelled"
        time.sleep(0.2)
    health = httpx.get(server + "/health").json()
    assert health["active"] == 0  # the 1500-token generation no longer holds the model
    out = client.completions.create(model="sia-edge-default", prompt="Hello", max_tokens=4, seed=1)
    assert out.choices[0].text is not None


def test_two_concurrent_clients_get_their_own_answers(server, client):
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
    time.sleep(0.3)
    health = httpx.get(server + "/health", timeout=30).json()  # the event loop answers while generating
    assert health["status"] == "ok"
    for t in threads:
        t.join(timeout=120)
    assert results == {"chat": reference_chat, "text": reference_text}
