"""`sia-edge serve`: a local OpenAI-compatible HTTP server on the ordinary decoding loop.

Endpoints: POST /v1/completions, POST /v1/chat/completions (both with `"stream": true` server-sent events and
OpenAI's `logprobs`, each token with a `sia` object: serve_logprobs.py), GET /v1/models, GET /health, and a chat
page at GET / (serve_page.py). SIA settings ride along as extra request fields (gate, tau, ratio, q, first_n,
weight, top_k, best_of, seed, objective) and come back in an extra `sia` object of every response.

One Engine per model with `--parallel` slots: concurrent requests are decoded together (continuous batching in
the engine's scheduler; requests beyond the slots queue, and one queued longer than `--queue-timeout` gets 503
with Retry-After). Generation runs in worker threads so the event loop keeps answering; a client that disconnects
stops its generation, and frees its slot, at the next step.
"""


import asyncio
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import click

from ..chat import Trimmed, chat_format, render_tokens
from ..engine import DEFAULT_CACHE_RAM_MB, DEFAULT_PARALLEL, DEFAULT_PREFILL_CHUNK, MAX_PARALLEL
from ..errors import InvalidSettingError, PromptError, QueueTimeoutError, SiaError
from ..gate import GATES
from ..models import OBJECTIVES
from ..settings import GenerationSettings
from .common import build_engine, generation_options, model_options, settings_from
from .serve_api import (REQUEST_SETTINGS, ApiError, ChatCompletionChunk, ChatCompletionResponse, ChatRequest,
                        CompletionChunk, CompletionRequest, CompletionResponse, Health, ModelList, SiaRequest,
                        generation_failed, generation_responses, openapi_document, validation_error)
from .serve_logprobs import TokenFacts
from .serve_page import add_page_routes
from .serve_report import sia_object, usage, with_final_fields
from .serve_stream import FINISH_REASONS, streaming_response, watch_disconnect

DEFAULT_ALIAS = "sia-edge-default"


# --- the server --------------------------------------------------------------------------------------------------


class Counters:
    """What /health reports; updated from worker threads. They add up: every accepted generation request is
    active (generating or queued for a slot), or ended as served, cancelled (its client went away), errors, or
    rejected (queued longer than --queue-timeout: 503). A Best-of-N request counts once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.values = dict.fromkeys(("accepted", "active", "served", "cancelled", "errors", "rejected",
                                     "generations"), 0)  # generations = served + cancelled (finished ones)

    def add(self, **deltas: int) -> None:
        with self._lock:
            for key, delta in deltas.items():
                self.values[key] += delta

    def snapshot(self) -> dict:
        with self._lock:
            return dict(self.values)


@dataclass
class ServedModel:
    name: str  # the GGUF file stem
    engine: object
    defaults: GenerationSettings
    format: object = None  # chat format
    aliases: list[str] = field(default_factory=list)


class Server:
    """Holds the engines and builds the FastAPI app. `models[0]` also answers to the name sia-edge-default."""

    def __init__(self, engines: list, defaults: GenerationSettings | None = None,
                 notify=lambda m: print(f"sia-edge: {m}", file=sys.stderr, flush=True),
                 queue_timeout: float | None = None) -> None:
        defaults = defaults or GenerationSettings()
        self.queue_timeout = queue_timeout  # seconds a request may wait for a slot before 503
        self.models: dict[str, ServedModel] = {}
        for i, engine in enumerate(engines):
            own = defaults
            if defaults.steers and engine.value_model is None:
                notify(f"no value model for {engine.base.name}: serving it unsteered unless a request names a gate")
                own = defaults.with_gate("none")
            engine.settings(own)  # defaults no request could use (a tau its signal never reaches): refused now
            served = ServedModel(Path(engine.base.name).stem, engine, own, chat_format(engine.base),
                                 [DEFAULT_ALIAS] if i == 0 else [])
            for name in [served.name, *served.aliases]:
                self.models.setdefault(name, served)
        self.counters = Counters()
        self.started = int(time.time())

    # -- request -> generation --

    def served(self, name: str | None) -> ServedModel:
        if not name:
            return self.models[DEFAULT_ALIAS]
        if name not in self.models:
            raise ApiError(404, f"The model '{name}' does not exist; GET /v1/models lists the models served here",
                           "model", "model_not_found")
        return self.models[name]

    def settings(self, served: ServedModel, req: SiaRequest, max_tokens: int, extra_stops: tuple = ()) -> GenerationSettings:
        stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        changes = {k: getattr(req, k) for k in REQUEST_SETTINGS}
        stop = tuple(dict.fromkeys([*extra_stops, *served.defaults.stop, *stops]))
        try:  # the same rules as everywhere: another gate resets gate parameters; tau with ratio is refused
            settings = served.defaults.updated(max_tokens=max_tokens, stop=stop, **changes)
        except InvalidSettingError as exc:
            raise ApiError(400, str(exc), _param_of(str(exc)), "invalid_value") from exc
        steering = settings.steers
        if req.objective is not None and req.objective not in OBJECTIVES:
            raise ApiError(400, f"unknown objective {req.objective!r}: one of {', '.join(OBJECTIVES)}", "objective",
                           "invalid_value")
        try:
            scorer = served.engine.value_model_for(req.objective)
        except SiaError as exc:  # this objective does not serve this model
            raise ApiError(400, str(exc), "objective", "no_value_model") from exc
        if (steering or (req.best_of or 1) > 1) and scorer is None:
            raise ApiError(400, f"no value model is loaded for {served.name}: steering and best_of need one; "
                                f"send gate='none'", "gate" if steering else "best_of", "no_value_model")
        return settings

    def check_length(self, served: ServedModel, tokens: list[int], max_tokens: int | None, default: int,
                     param: str) -> int:
        """The max_tokens to use; a request that cannot fit is refused like OpenAI does."""
        n_ctx = served.engine.base.n_ctx
        if not tokens:
            raise ApiError(400, "the prompt is empty", param, "invalid_prompt")
        if max_tokens is None:  # not asked for: whatever fits, up to the server default
            max_tokens = min(default, n_ctx - len(tokens))
        if len(tokens) + max_tokens > n_ctx or max_tokens < 1:
            raise ApiError(400, f"This model's maximum context length is {n_ctx} tokens. However, you requested "
                                f"{len(tokens) + max_tokens} tokens ({len(tokens)} in the prompt, {max_tokens} for "
                                f"the completion). Please reduce the prompt or the completion length.",
                           param, "context_length_exceeded")
        return max_tokens

    def completion_prompt(self, served: ServedModel, req: CompletionRequest) -> list[int]:
        prompt = req.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            if len(prompt) != 1:
                raise ApiError(400, "only one prompt per request is supported", "prompt", "unsupported")
            prompt = prompt[0]
        if isinstance(prompt, str):
            if not prompt.strip():
                raise ApiError(400, "the prompt is empty", "prompt", "invalid_prompt")
            try:
                return served.engine.tokenize(prompt)
            except PromptError as exc:  # e.g. a lone surrogate: not text
                raise ApiError(400, str(exc), "prompt", "invalid_prompt") from exc
        if any(not 0 <= t < served.engine.base.n_vocab for t in prompt):
            raise ApiError(400, "a prompt token id is outside the vocabulary", "prompt", "invalid_prompt")
        return list(prompt)

    def chat_prompt(self, served: ServedModel, req: ChatRequest) -> list[int]:
        messages = [m.as_dict() for m in req.messages]
        try:
            text = served.format.render(messages, add_generation_prompt=True)
        except PromptError as exc:
            raise ApiError(400, str(exc), "messages", "invalid_messages") from exc
        try:
            return render_tokens(served.engine.base, served.format, text, whole=True)
        except PromptError as exc:
            raise ApiError(400, str(exc), "messages", "invalid_messages") from exc

    def check_common(self, req: SiaRequest, top_n: int | None = None) -> None:
        """Checks both endpoints make; `top_n`: the log-probabilities asked for (None: none)."""
        if req.n != 1:
            raise ApiError(400, "only n=1 is supported (use best_of to draw several samples)", "n", "unsupported")
        if req.stream and (req.best_of or 1) > 1:
            raise ApiError(400, "best_of cannot be combined with stream", "best_of", "unsupported")
        if top_n is not None and (req.best_of or 1) > 1:
            raise ApiError(400, "best_of cannot be combined with logprobs", "logprobs", "unsupported")

    def open_stream(self, served: ServedModel, tokens: list[int], settings: GenerationSettings,
                    cancel: threading.Event, objective: str | None = None, top_n: int | None = None):
        """The Stream for this request, checked now (prompt, settings) so errors go out as 400 before any text.
        `top_n`: log-probabilities and that many likeliest tokens per step (None: none asked)."""
        try:
            return served.engine.stream(tokens, settings, cancel=cancel, value_model=objective,
                                        queue_timeout=self.queue_timeout, log_probs=top_n is not None,
                                        top_log_probs=top_n or 0)
        except SiaError as exc:
            raise ApiError(400, str(exc), None, "invalid_request") from exc

    def start(self, stream) -> None:
        """Blocking: wait for the request's slot; a queue timeout becomes 503 with Retry-After. The request is
        counted as ended whatever stops it here (a timeout, or e.g. an engine closed under it)."""
        try:
            stream.start()
        except QueueTimeoutError as exc:
            raise self.busy(exc) from exc
        except BaseException:
            self.finished(None)
            raise

    def busy(self, exc: QueueTimeoutError) -> ApiError:
        """The 503 for a request that waited longer than --queue-timeout; it is counted as rejected."""
        self.counters.add(rejected=1, active=-1)
        return ApiError(503, f"the server is busy: {exc}", None, "server_busy", type="server_error",
                        headers={"Retry-After": str(max(1, round(self.queue_timeout or 1)))})

    def generate(self, served: ServedModel, stream, tokens: list[int], settings: GenerationSettings, n: int,
                 cancel: threading.Event, objective: str | None = None):
        """Blocking, in a worker thread: drain `stream`, or draw Best-of-N. Returns (result, BestOfResult or None,
        the stream's TokenEvents)."""
        if n > 1:
            return *self.best_of(served, tokens, settings, n, cancel, objective), []
        result = None
        self.start(stream)
        try:
            events = list(stream)
            result = stream.result
            return result, None, events
        finally:
            self.finished(result)

    def best_of(self, served: ServedModel, tokens: list[int], settings: GenerationSettings, n: int,
                cancel: threading.Event, objective: str | None):
        """Blocking: Best-of-N, whose samples wait for slots and take them like any request (a queue timeout is a
        503). Counted once: cancelled if the client's going away cut a sample short."""
        from ..best_of import best_of

        try:
            chosen = best_of(served.engine, tokens, n, settings, cancel=cancel, value_model=objective,
                             queue_timeout=self.queue_timeout)
        except QueueTimeoutError as exc:
            raise self.busy(exc) from exc
        except BaseException:
            self.finished(None)
            raise
        cut = [r for r in chosen.results if r.stop_reason == "cancelled"]
        self.finished(cut[0] if cut else chosen.best_result)
        return chosen.best_result, chosen

    def finished(self, result) -> None:
        """A generation request ended: served, cancelled, or (no result) failed."""
        if result is None:
            self.counters.add(errors=1, active=-1)
        elif result.stop_reason == "cancelled":
            self.counters.add(generations=1, cancelled=1, active=-1)
        else:
            self.counters.add(generations=1, served=1, active=-1)

    def health(self) -> dict:
        """GET /health: the server's request counters and each engine's slots (busy, queued now)."""
        engines = {name: s.engine.load() for name, s in self.models.items() if name != DEFAULT_ALIAS}
        slots = {key: sum(e[key] or 0 for e in engines.values())
                 for key in ("parallel", "busy", "queued", "rounds", "value_model_calls", "prompt_tokens",
                             "cached_tokens")}  # rounds: batched steps
        return {"status": "ok", "models": sorted(self.models), **self.counters.snapshot(), **slots}

    def app(self):
        """The FastAPI app: thin routes over the module-level handlers below."""
        from fastapi import FastAPI, Request
        from fastapi.exceptions import RequestValidationError
        from fastapi.responses import JSONResponse
        from starlette.exceptions import HTTPException

        app = FastAPI(title="sia-edge", version="0.1.0",
                      description="OpenAI-compatible completions with sparse inference-time alignment (SIA) fields.")

        def openapi():
            if app.openapi_schema is None:
                app.openapi_schema = openapi_document(app)
            return app.openapi_schema

        app.openapi = openapi

        @app.exception_handler(ApiError)
        async def api_error(request, exc: ApiError):
            return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

        @app.exception_handler(RequestValidationError)
        async def invalid_body(request, exc: RequestValidationError):
            return JSONResponse(validation_error(exc.errors()).body(), status_code=400)

        @app.exception_handler(HTTPException)
        async def http_error(request, exc: HTTPException):
            error = ApiError(exc.status_code, str(exc.detail), code=None)
            if isinstance(exc.__cause__, UnicodeDecodeError):  # FastAPI could not read the body as text
                error = ApiError(400, f"the request body is not valid UTF-8: {exc.__cause__}", None, "invalid_json")
            return JSONResponse(error.body(), status_code=error.status, headers=getattr(exc, "headers", None))

        @app.exception_handler(Exception)
        async def unexpected(request, exc: Exception):
            return JSONResponse(ApiError(500, f"internal error: {exc}", type="server_error").body(), status_code=500)

        @app.get("/health", response_model=Health, response_model_exclude_unset=True)
        async def health():
            return self.health()

        @app.get("/v1/models", response_model=ModelList, response_model_exclude_unset=True)
        async def models():
            return list_models(self)

        @app.post("/v1/completions", response_model=CompletionResponse, response_model_exclude_unset=True,
                  responses=generation_responses(CompletionChunk))
        async def completions(body: CompletionRequest, request: Request):
            return await complete(self, request, body)

        @app.post("/v1/chat/completions", response_model=ChatCompletionResponse, response_model_exclude_unset=True,
                  responses=generation_responses(ChatCompletionChunk))
        async def chat_completions(body: ChatRequest, request: Request):
            return await chat_complete(self, request, body)

        add_page_routes(app)
        return app


# --- the handlers --------------------------------------------------------------------------------------------------


def list_models(server: Server) -> dict:
    return {"object": "list", "data": [
        {"id": name, "object": "model", "created": server.started, "owned_by": "sia-edge",
         "sia": {"file": str(s.engine.base.path), "n_ctx": s.engine.base.n_ctx,
                 "value_model": str(s.engine.value_model.path) if s.engine.value_model else None,
                 "objectives": OBJECTIVES, "chat_template": s.engine.base.chat_template is not None,
                 "gates": list(GATES), "defaults": model_defaults(s.defaults, s.engine.value_model)}}
        for name, s in server.models.items()]}


def model_defaults(settings: GenerationSettings, value_model=None) -> dict:
    """What a request gets for the fields it leaves out (the chat page shows them in its controls); the weight is
    the one the default value model steers with (its weight scale applied)."""
    return {"gate": settings.gate, "tau": settings.tau, "ratio": settings.ratio, "signal": settings.signal,
            "weight": settings.with_value_model(value_model).w,
            "temperature": settings.temperature, "top_k": settings.top_k, "max_tokens": settings.max_tokens}


async def complete(server: Server, request, req: CompletionRequest):
    """POST /v1/completions (`req` validated by FastAPI)."""
    if req.echo:
        raise ApiError(400, "echo is not supported", "echo", "unsupported")
    served = server.served(req.model)
    top_n = req.logprobs
    server.check_common(req, top_n)
    tokens = server.completion_prompt(served, req)
    max_tokens = server.check_length(served, tokens, req.max_tokens, served.defaults.max_tokens, "prompt")
    settings = server.settings(served, req, max_tokens)
    meta = {"id": f"cmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": req.model or served.name}
    facts = TokenFacts(served.engine.base, top_n) if top_n is not None else None

    def logprobs(events):
        return facts.completion(events) if facts is not None else None

    if req.stream:
        def chunk(text, finish=None, result=None, events=()):
            out = {**meta, "object": "text_completion",
                   "choices": [{"index": 0, "text": text, "logprobs": logprobs(events), "finish_reason": finish}]}
            return with_final_fields(out, tokens, result)

        return await streaming_response(server, request, served, tokens, settings, chunk, None, req.objective, top_n)
    result, chosen, events = await run_cancellable(server, request, served, tokens, settings, req.best_of or 1,
                                                   req.objective, top_n)
    return {**meta, "object": "text_completion",
            "choices": [{"index": 0, "text": result.text, "logprobs": logprobs(events),
                         "finish_reason": FINISH_REASONS[result.stop_reason]}],
            "usage": usage(len(tokens), result, chosen), "sia": sia_object(result, chosen)}


async def chat_complete(server: Server, request, req: ChatRequest):
    """POST /v1/chat/completions (`req` validated by FastAPI)."""
    served = server.served(req.model)
    if req.top_logprobs is not None and not req.logprobs:
        raise ApiError(400, "top_logprobs needs logprobs: true", "top_logprobs", "invalid_value")
    top_n = (req.top_logprobs or 0) if req.logprobs else None
    server.check_common(req, top_n)
    tokens = server.chat_prompt(served, req)
    asked = req.max_completion_tokens or req.max_tokens
    max_tokens = server.check_length(served, tokens, asked, served.defaults.max_tokens, "messages")
    settings = server.settings(served, req, max_tokens, served.format.stops)
    meta = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": req.model or served.name}
    facts = TokenFacts(served.engine.base, top_n) if top_n is not None else None

    def logprobs(events):
        return facts.chat(events) if facts is not None else None

    if req.stream:
        trim = Trimmed()

        def chunk(text, finish=None, result=None, events=()):
            delta = {"role": "assistant", "content": ""} if text is None else {"content": trim.push(text)}
            if finish is not None:
                delta = {}
            elif delta["content"] == "" and text is not None:
                return None  # only whitespace so far: nothing to send yet (its tokens go with the next chunk)
            listing = logprobs(events) if text is not None else None  # not in the role chunk
            out = {**meta, "object": "chat.completion.chunk",
                   "choices": [{"index": 0, "delta": delta, "logprobs": listing, "finish_reason": finish}]}
            return with_final_fields(out, tokens, result)

        return await streaming_response(server, request, served, tokens, settings, chunk, chunk(None),
                                        req.objective, top_n)
    result, chosen, events = await run_cancellable(server, request, served, tokens, settings, req.best_of or 1,
                                                   req.objective, top_n)
    return {**meta, "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text.strip()},
                         "logprobs": logprobs(events), "finish_reason": FINISH_REASONS[result.stop_reason]}],
            "usage": usage(len(tokens), result, chosen), "sia": sia_object(result, chosen)}


async def run_cancellable(server: Server, request, served, tokens, settings, n, objective=None, top_n=None):
    """Generate in a worker thread; stop it if the client disconnects before it is done. -> (result, BestOfResult
    or None, TokenEvents)"""
    cancel = threading.Event()
    stream = server.open_stream(served, tokens, settings, cancel, objective, top_n)

    watcher = watch_disconnect(request, cancel)
    server.counters.add(accepted=1, active=1)
    try:
        return await asyncio.to_thread(server.generate, served, stream, tokens, settings, n, cancel, objective)
    except ApiError:
        raise
    except Exception as exc:  # open_stream checked the request: what fails now is the server's fault, not the client's
        raise generation_failed(exc) from exc
    finally:
        watcher.cancel()


def _param_of(message: str) -> str | None:
    first = message.split(" ", 1)[0]
    return first if first.isidentifier() else None


# --- the command -------------------------------------------------------------------------------------------------


@click.command()
@generation_options
@model_options
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; the default accepts local connections only.")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True, help="TCP port.")
@click.option("--parallel", type=click.IntRange(1, MAX_PARALLEL), default=DEFAULT_PARALLEL, show_default=True,
              help="Requests decoded at once (slots of one batched context, like llama.cpp's -np); more wait in "
                   "line. 1 = one at a time, with exact seeded replay. Each slot holds --ctx tokens of KV cache: "
                   "memory grows with parallel x ctx (~150 MB at 4 x 2048 for Gemma 3 270M).")
@click.option("--queue-timeout", type=click.FloatRange(min=0), default=None,
              help="Seconds a request may wait for a free slot before it gets 503 with Retry-After "
                   "[default: wait as long as it takes].")
@click.option("--prefill-chunk", type=click.IntRange(min=0), default=DEFAULT_PREFILL_CHUNK, show_default=True,
              help="With --parallel > 1: prompt tokens read per step, in the same decode as the other slots' next "
                   "tokens, so their streams keep moving while a prompt is read (llama.cpp's -b). 0: each prompt "
                   "is read whole, alone, while the other slots wait.")
@click.option("--prefix-reuse/--no-prefix-reuse", default=True, show_default=True,
              help="With --parallel > 1: a slot keeps its KV cache after a request, and a new request goes to the "
                   "slot that already holds the longest prefix of its prompt (the conversation so far), so only "
                   "the new message is decoded (llama.cpp's cache_prompt). --parallel 1 always reads the whole "
                   "prompt, so a seed replays exactly.")
@click.option("--cache-ram", "cache_ram_mb", type=click.FloatRange(min=0), default=DEFAULT_CACHE_RAM_MB,
              show_default=True,
              help="With --prefix-reuse: MB of host RAM that keep the KV cache of conversations that lost their slot "
                   "to another (more conversations than --parallel), restored at their next turn instead of read "
                   "again (llama.cpp's --cache-ram; ~18 KB per token for Gemma 3 270M). 0: none.")
def serve(model, value_model, n_ctx, threads, gpu_layers, host, port, parallel, queue_timeout, prefill_chunk,
          prefix_reuse, cache_ram_mb, **options):
    """Serve the model over a local OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions), with a chat
    page at / that shows where steering happened.

    The generation options are defaults for requests that do not set the field (e.g. --max-tokens for requests
    without max_tokens). SIA fields in a request body (gate, tau, ratio, q, first_n, weight, top_k, best_of, seed,
    objective) override them and are reported back in the response's `sia` object.
    """
    import uvicorn

    defaults = settings_from(options)
    engine = build_engine(model, value_model, n_ctx, threads, needs_value_model=True,
                          calibration=options["calibration"], gpu_layers=gpu_layers, parallel=parallel,
                          prefill_chunk=prefill_chunk or None, prefix_reuse=prefix_reuse, cache_ram_mb=cache_ram_mb)
    server = Server([engine], defaults, queue_timeout=queue_timeout)
    names = ", ".join(sorted(server.models))
    click.echo(f"sia-edge: serving {names} on http://{host}:{port}/v1 with {parallel} slot"
               f"{'s' if parallel > 1 else ''}, chat page at http://{host}:{port}/ (Ctrl-C stops)", err=True)
    if host not in ("127.0.0.1", "localhost", "::1"):
        click.echo(f"sia-edge: warning: listening on {host} without authentication", err=True)
    uvicorn.run(server.app(), host=host, port=port, log_level="warning")
