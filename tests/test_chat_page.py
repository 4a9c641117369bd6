"""The chat page at GET / in a real headless Chromium (Debian's, driven by Playwright), against a real `sia-edge
serve` (real Gemma model, the shipped value models): a reply streams in, its junctions show the same facts the API
gives for the same seed, Stop cuts a reply short, and the objective switch steers with the other value model.

Without chromium (or playwright) these tests skip on a developer's machine; under CI (the CI variable set) they
fail instead, so a missing browser cannot pass CI silently: .ci/run installs Debian's chromium."""

import os
import shutil
import time

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
MESSAGE = "What did you think of the film?"
# a seeded reply with junctions and plain steps both (checked below), short enough to stay quick
STEERED = {"seed": "5", "tau": "1.5", "max-tokens": "24"}
# with this seed the reply runs to max_tokens (checked through the API first): long enough to stop mid-way
LONG = {"seed": "2", "temperature": "1.8", "max-tokens": "100"}
LONG_MESSAGE = "Tell me a long story about a dragon and a village."


def need(what: str, reason: str):
    if os.environ.get("CI"):
        pytest.fail(f"{what} is missing and CI is set, so the chat page is untested: {reason}")
    pytest.skip(f"{what} is missing: {reason}")


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        need("chromium", "install Debian's chromium (apt-get install -y chromium; .ci/run does it)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        need("playwright", "pip install -c constraints.txt '.[test]'")
    # Debian's browser, never Playwright's own download (not reachable offline)
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def server(gemma_path, tmp_path_factory):
    from test_server import start_server

    # one slot: a seed replays exactly, so the page's reply can be checked against the API's
    proc, base = start_server(gemma_path, tmp_path_factory.mktemp("page") / "stderr.txt", "--parallel", "1")
    yield base
    proc.terminate()
    proc.wait(timeout=20)


@pytest.fixture
def page(browser, server):
    page = browser.new_page(viewport={"width": 1200, "height": 860})
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(server + "/")
    page.wait_for_function("document.querySelector('#gate').options.length > 0")  # /v1/models read
    yield page
    page.close()
    assert not errors, f"the page's scripts failed: {errors}"


def fill(page, fields: dict) -> None:
    for name, value in fields.items():
        page.fill(f"#{name}", value)


def send(page, text: str) -> None:
    page.fill("#message", text)
    page.press("#message", "Enter")


def reply_tokens(page) -> list[dict]:
    """The per-token facts the page holds for the last reply, as it got them from the API."""
    return page.evaluate("""() => [...document.querySelectorAll('.message.assistant:last-of-type .tok')]
                                   .flatMap((span) => span.tokens)""")


def api_reply(server, text: str, fields: dict, **extra) -> dict:
    """The API's answer to the request the page makes: the same message and settings, not streamed."""
    names = {"seed": "seed", "tau": "tau", "max-tokens": "max_tokens", "temperature": "temperature"}
    body = {"messages": [{"role": "user", "content": text}], "logprobs": True, "top_logprobs": 5, **extra}
    for name, value in fields.items():
        body[names[name]] = float(value) if name in ("tau", "temperature") else int(value)
    response = httpx.post(server + "/v1/chat/completions", json=body, timeout=300)
    assert response.status_code == 200, response.text
    return response.json()


def test_a_reply_streams_in_and_its_junctions_show_what_the_api_reports(page, server):
    fill(page, STEERED)
    send(page, MESSAGE)
    # some tokens are on the page while the reply is still streaming, and meanwhile Send is off and Stop on (read in
    # the same frame: a short reply can end between two separate reads)
    page.wait_for_function("""() => {
        const reply = document.querySelector('.message.assistant');
        return reply && reply.classList.contains('streaming') && reply.querySelectorAll('.tok').length >= 2
            && document.querySelector('#send').disabled && !document.querySelector('#stop').disabled;
    }""", polling="raf", timeout=120_000)
    page.wait_for_selector(".message.assistant .stats", timeout=120_000)
    assert page.get_attribute(".message.assistant .stats", "data-seed") == STEERED["seed"]

    api = api_reply(server, MESSAGE, STEERED)
    assert reply_tokens(page) == api["choices"][0]["logprobs"]["content"]  # every fact, to the last digit
    assert page.inner_text(".message.assistant .reply") == api["choices"][0]["message"]["content"]
    stats = page.inner_text(".message.assistant .stats")
    sia = api["sia"]
    assert f"{sia['tokens']} tokens · {sia['junctions']} junctions" in stats and "value-model calls" in stats

    # each junction is highlighted, and only junctions
    spans = page.evaluate("""() => [...document.querySelectorAll('.message.assistant .tok')]
                             .map((s) => [s.classList.contains('junction'), s.tokens.some((t) => t.sia.junction)])""")
    assert [shown for shown, _ in spans] == [junction for _, junction in spans]
    assert any(junction for _, junction in spans) and not all(junction for _, junction in spans)

    # its details, reached by keyboard: the candidates, their rewards and the chosen one, as the API gave them
    junction = page.locator(".message.assistant .tok.junction").first
    junction.focus()
    assert page.is_visible("#details")
    facts = junction.evaluate("(span) => span.tokens.find((t) => t.sia.junction).sia")
    rows = page.locator("#details tbody tr[data-token-id]")
    assert [int(i) for i in rows.evaluate_all("(rows) => rows.map((r) => r.dataset.tokenId)")] == \
        [c["token_id"] for c in facts["candidates"]]
    chosen = next(c for c in facts["candidates"] if c["chosen"])
    chosen_row = page.locator("#details tr.chosen")
    assert chosen_row.get_attribute("data-token-id") == str(chosen["token_id"])
    assert f"{chosen['reward']:.3f}" in chosen_row.inner_text()
    assert f"{100 * chosen['steered_probability']:.1f}%" in chosen_row.inner_text()
    page.keyboard.press("ArrowRight")  # arrow keys walk the tokens, the details follow
    assert page.evaluate("document.activeElement.classList.contains('tok')")
    page.keyboard.press("Escape")
    assert page.is_hidden("#details")


def test_stop_cuts_a_reply_short_and_the_server_stops_generating(page, server):
    full = api_reply(server, LONG_MESSAGE, LONG)
    assert full["choices"][0]["finish_reason"] == "length", "this seed's reply must be long enough to stop"
    cancelled = httpx.get(server + "/health").json()["cancelled"]
    fill(page, LONG)
    send(page, LONG_MESSAGE)
    page.wait_for_function("() => document.querySelectorAll('.message.assistant.streaming .tok').length >= 3",
                           polling="raf", timeout=120_000)
    page.click("#stop")
    page.wait_for_function("() => !document.querySelector('.message.assistant.streaming')", timeout=30_000)
    assert page.inner_text(".message.assistant .stats") == "stopped"
    shown = len(reply_tokens(page))
    assert 3 <= shown < int(LONG["max-tokens"])
    assert page.is_enabled("#send") and page.is_disabled("#stop")
    deadline = time.time() + 60  # the server notices the closed connection and cancels the generation
    while httpx.get(server + "/health").json()["cancelled"] == cancelled:
        assert time.time() < deadline, "the server did not cancel the stopped reply"
        time.sleep(0.2)
    assert httpx.get(server + "/health").json()["active"] == 0


def test_the_objective_switch_steers_with_the_other_value_model_and_new_chat_clears(page, server):
    fill(page, {"seed": "2", "max-tokens": "8", "tau": "0.5"})
    send(page, MESSAGE)
    page.wait_for_selector(".message.assistant .stats", timeout=120_000)
    assert "sentiment" in page.inner_text(".message.assistant .stats")
    options = page.locator("#objective option").evaluate_all("(options) => options.map((o) => o.value)")
    assert "clean" in options
    page.select_option("#objective", "clean")
    with page.expect_request("**/v1/chat/completions") as sent:
        send(page, "And the music?")
    assert sent.value.post_data_json["objective"] == "clean"
    assert len(sent.value.post_data_json["messages"]) == 3  # the conversation so far goes along
    page.wait_for_selector(".message.assistant:last-of-type .stats", timeout=120_000)
    assert "gemma3-270m-hidden-clean.onnx" in page.inner_text(".message.assistant:last-of-type .stats")
    page.click("#new-chat")
    assert page.locator("#conversation .message").count() == 0


def test_a_refused_request_shows_the_servers_error(page):
    fill(page, {"tau": "1", "ratio": "0.2"})  # tau and ratio together: refused
    send(page, MESSAGE)
    page.wait_for_selector("#error:not([hidden])", timeout=30_000)
    assert "tau or ratio" in page.inner_text("#error")
    assert page.locator(".message.assistant").count() == 0 and page.is_enabled("#send")


def test_the_page_fits_a_phone(page):
    page.set_viewport_size({"width": 390, "height": 800})
    page.reload()
    page.wait_for_function("document.querySelector('#gate').options.length > 0")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # no sideways scrolling
    assert page.evaluate("!document.querySelector('#settings').open")  # settings folded: the conversation first
    for control in ("objective", "gate", "tau", "ratio", "weight", "temperature", "max-tokens", "seed", "message"):
        assert page.locator(f"label[for='{control}']").count() == 1, control
