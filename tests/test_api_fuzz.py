"""A bounded property-based fuzz of the documented API: schemathesis reads /openapi.json from the in-process app (on
the real default model) and sends what it derives from it: the schema's boundary values, bodies that fit the
schema, bodies that do not, and methods a path does not declare. Every response must be documented (status,
content type, body schema, headers), no response may be a 5xx, a body that breaks the schema must be refused with
a 4xx, and an undeclared method must get 405 with Allow."""

import os

import pytest

schemathesis = pytest.importorskip("schemathesis")
pytest.importorskip("fastapi")
from hypothesis import HealthCheck, settings  # noqa: E402  (hypothesis comes with schemathesis)

pytestmark = pytest.mark.slow
# generated examples per operation, on top of the boundary cases: CI-sized; SIA_EDGE_FUZZ_EXAMPLES=400 for longer
EXAMPLES = int(os.environ.get("SIA_EDGE_FUZZ_EXAMPLES", 12))
MAX_TOKENS = 3  # what any generated request may generate, so the fuzz stays fast


@pytest.fixture(scope="module")
def api(gemma_path):
    from sia_edge.commands.serve import Server
    from sia_edge.engine import Engine
    from sia_edge.settings import GenerationSettings

    engine = Engine(model=gemma_path, threads=1)  # one llama.cpp thread: steady on a shared 2-core machine
    server = Server([engine], GenerationSettings(max_tokens=MAX_TOKENS), notify=lambda message: None)
    return schemathesis.openapi.from_asgi("/openapi.json", server.app())


# from_fixture renames pytest's Node._nodeid per operation; pytest 9.2 dropped that attribute (AttributeError in
# schemathesis 4.32), so pyproject.toml keeps pytest < 9.2 and constraints.txt pins the pair that passes
schema = schemathesis.pytest.from_fixture("api")


def keep_it_short(case) -> None:
    """Bound the work a valid request asks for; values a check could hinge on (over the context, negative, not
    numbers) are left as generated."""
    body = case.body
    if not isinstance(body, dict):
        return
    for key, most, limit in (("max_tokens", MAX_TOKENS, 2048), ("max_completion_tokens", MAX_TOKENS, 2048),
                             ("best_of", 2, 20)):  # over the limit (the context, MAX_BEST_OF) is a 400 to keep
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and most < value <= limit:
            body[key] = most


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_fuzz_finds_no_server_error_and_no_undocumented_response(case):
    from schemathesis.specs.openapi.checks import positive_data_acceptance

    keep_it_short(case)
    # a body that fits the schema may still be refused (an unknown model, a prompt over the context, tau with
    # ratio): a documented 400/404, so "valid data is accepted" is the one check left out
    response = case.call_and_validate(excluded_checks=[positive_data_acceptance], timeout=300)
    # a 500 is documented (a generation that failed on the server's side: error type server_error, retryable), so
    # the schema checks accept its shape; on a healthy model no request may cause one
    assert response.status_code < 500, response.text


@pytest.mark.parametrize("path, body", [
    ("/v1/completions", {"prompt": "The movie was", "logprobs": 5}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "logprobs": True, "top_logprobs": 20}),
])
def test_logprobs_with_junction_details_fit_the_document(api, path, body):
    """The fuzz may draw few requests that ask for logprobs: one each, with junctions (gate dense), checked against
    the document like any response."""
    case = api[path]["POST"].Case(body={**body, "gate": "dense", "max_tokens": MAX_TOKENS, "seed": 1},
                                  media_type="application/json")
    response = case.call_and_validate()
    choice = response.json()["choices"][0]
    listed = choice["logprobs"]["sia"] if "text" in choice else [t["sia"] for t in choice["logprobs"]["content"]]
    assert listed and all(token["junction"] and token["candidates"] for token in listed)


def test_the_document_declares_bodies_and_errors(api):
    document = api.raw_schema
    for path in ("/v1/completions", "/v1/chat/completions"):
        operation = document["paths"][path]["post"]
        assert "requestBody" in operation
        assert {"200", "400", "404", "500", "503"} == set(operation["responses"])
        assert "Retry-After" in operation["responses"]["503"]["headers"]
        assert {"application/json", "text/event-stream"} == set(operation["responses"]["200"]["content"])
    for path in ("/health", "/v1/models"):
        assert "application/json" in document["paths"][path]["get"]["responses"]["200"]["content"]
    assert {"ErrorResponse", "CompletionChunk", "ChatCompletionChunk", "CompletionLogprobs", "ChatLogprobs",
            "SiaToken", "SiaCandidate"} <= set(document["components"]["schemas"])
    for name, fields in (("CompletionRequest", {"logprobs"}), ("ChatRequest", {"logprobs", "top_logprobs"})):
        assert fields <= set(document["components"]["schemas"][name]["properties"])
