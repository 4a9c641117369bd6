"""A bounded property-based fuzz of the documented API: schemathesis generates requests from /openapi.json (bodies
that fit the schema and bodies that do not) against the in-process app on the real default model, and checks that
no response is a 5xx, every status and body is the documented one, and invalid bodies are refused with a 4xx."""

import os

import pytest

schemathesis = pytest.importorskip("schemathesis")
pytest.importorskip("fastapi")
from hypothesis import HealthCheck, given, settings  # noqa: E402  (hypothesis comes with schemathesis)

pytestmark = pytest.mark.slow
# examples per operation and generation mode: CI-sized; SIA_EDGE_FUZZ_EXAMPLES=400 for a longer fuzz
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


def keep_it_short(case) -> None:
    """Bound the work a valid request asks for; values a check could hinge on (too big, negative, not numbers)
    are left as generated."""
    body = case.body
    if not isinstance(body, dict):
        return
    for key, most in (("max_tokens", MAX_TOKENS), ("max_completion_tokens", MAX_TOKENS), ("best_of", 2)):
        value = body.get(key)
        whole = isinstance(value, (int, float)) and not isinstance(value, bool) and float(value).is_integer()
        if whole and most < value <= 2048:  # more than the context is a 400 to keep
            body[key] = most


def test_the_document_declares_bodies_and_errors(api):
    document = api.raw_schema
    for path in ("/v1/completions", "/v1/chat/completions"):
        operation = document["paths"][path]["post"]
        assert "requestBody" in operation
        assert {"200", "400", "404", "503"} == set(operation["responses"])
        assert "Retry-After" in operation["responses"]["503"]["headers"]
        assert "text/event-stream" in operation["responses"]["200"]["content"]
    for path in ("/health", "/v1/models"):
        assert "application/json" in document["paths"][path]["get"]["responses"]["200"]["content"]
    assert {"ErrorResponse", "CompletionChunk", "ChatCompletionChunk"} <= set(document["components"]["schemas"])


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_fuzz_finds_no_server_error_and_no_undocumented_status(api, mode):
    from schemathesis.specs.openapi.checks import positive_data_acceptance

    seen = {}
    for result in api.get_all_operations():
        operation = result.ok()
        if mode == "negative" and operation.method.upper() == "GET":
            continue  # no parameters: nothing to make invalid

        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(generation_mode=schemathesis.GenerationMode(mode)))
        def run(case):
            keep_it_short(case)
            # a body that fits the schema may still be refused (an unknown model, a prompt that does not fit):
            # that is a documented 400/404, not a failure
            response = case.call_and_validate(excluded_checks=[positive_data_acceptance], timeout=300)
            seen.setdefault(operation.label, set()).add(response.status_code)

        run()
    assert seen and all(status < 500 for statuses in seen.values() for status in statuses), seen
