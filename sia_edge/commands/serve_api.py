"""The server's request and response bodies and its error shape: OpenAI's fields plus SIA's, as pydantic models.

FastAPI validates request bodies against these models and /openapi.json documents every body, the 200 shapes and
the 400/404/503 errors from them. Response models allow extra fields, so a field added later is passed through.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from ..gate import GATE_HELP, PARAMETERS
from .serve_logprobs import LOGPROB_FLOOR, MAX_COMPLETION_LOGPROBS, MAX_TOP_LOGPROBS


class ApiError(Exception):
    """An OpenAI-style error: {"error": {"message", "type", "param", "code"}} with an HTTP status (and headers,
    e.g. Retry-After on a 503)."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error", headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type
        self.headers = headers

    def body(self) -> dict:
        return {"error": {"message": _encodable(self.message), "type": self.type,
                          "param": None if self.param is None else _encodable(self.param), "code": self.code}}


def generation_failed(exc: BaseException) -> ApiError:
    """A request that passed every check failed while generating (e.g. the model produced NaN logits): the
    server's fault, so a 500 `server_error` (which clients may retry), streamed or not."""
    return ApiError(500, f"generation failed: {exc}", type="server_error")


def _encodable(text: str) -> str:
    """`text` with lone surrogates (which a JSON request may carry) escaped, so the error body can be sent."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def validation_error(errors) -> ApiError:
    """FastAPI's validation errors of a request body as one 400 in OpenAI's shape (the first error names the
    field)."""
    first = errors[0] if errors else {"loc": ("body",), "msg": "invalid", "type": "invalid"}
    loc = [str(part) for part in first.get("loc", ())]
    if loc[:1] == ["body"]:
        loc = loc[1:]
    param = ".".join(loc) or None
    if first.get("type") == "json_invalid":
        error = (first.get("ctx") or {}).get("error", first.get("msg"))
        return ApiError(400, f"the request body is not valid JSON: {error}", None, "invalid_json")
    if param is None and isinstance(first.get("input"), (bytes, bytearray)):  # not read as JSON
        return ApiError(400, "the request body must be a JSON object sent with Content-Type: application/json",
                        None, "invalid_json")
    if param is None:
        return ApiError(400, "the request body must be a JSON object", None, "invalid_json")
    return ApiError(400, f"invalid request: {param}: {first.get('msg')}", param, "invalid_value")


# --- request bodies ----------------------------------------------------------------------------------------------


# One optional request field per gate parameter of the registry (tau, ratio, q, first_n), typed as it says.
GateFields = create_model("GateFields", **{
    name: (parameter.kind | None, Field(None, description=parameter.help)) for name, parameter in PARAMETERS.items()})
MAX_BEST_OF = 20  # OpenAI's bound too: one request cannot hold the model for thousands of samples
REQUEST_SETTINGS = ("gate", *PARAMETERS, "weight", "reward_norm", "top_k", "temperature", "seed")


class SiaRequest(GateFields):
    """Fields both endpoints share: OpenAI's sampling fields plus SIA's steering fields. Unknown fields are ignored;
    known ones must have their JSON type (strict: `"stream": "yes"` or `"weight": false` is a 400, not a guess)."""

    model_config = ConfigDict(extra="ignore", strict=True)
    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0)
    n: int = 1
    stream: bool = False
    gate: str | None = Field(None, description=GATE_HELP)
    objective: str | None = Field(None, description="What to steer toward: a shipped value model's objective "
                                                    "(GET /v1/models lists them); default: the server's")
    weight: float | None = None
    reward_norm: str | None = Field(None, description="none | center | zscore: the k rewards per junction, before w")
    top_k: int | None = None
    best_of: int | None = Field(None, ge=1, le=MAX_BEST_OF, description="Draw this many samples and return the one "
                                "the value model scores highest (not with stream); at most 20, as OpenAI")


class CompletionRequest(SiaRequest):
    prompt: str | list[str] | list[int]
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=MAX_COMPLETION_LOGPROBS, description=(
        "Return each token's log-probability and this many likeliest alternatives (0-5), plus sia-edge's `sia` "
        "facts per token; the base model's log-probabilities at T = 1, before steering"))


class TextPart(BaseModel):
    model_config = ConfigDict(strict=True)
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(strict=True)
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None

    def as_dict(self) -> dict:
        content = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content or [])
        return {"role": "system" if self.role == "developer" else self.role, "content": content}


class ChatRequest(SiaRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = Field(False, description="Return each token's log-probability (the base model's, at T = 1, "
                                              "before steering) and sia-edge's `sia` facts per token")
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS, description=(
        "With logprobs: this many likeliest tokens at each position (0-20)"))


# --- response bodies ---------------------------------------------------------------------------------------------


class Reply(BaseModel):
    """A response body: the declared fields are documented, anything else is passed through."""

    model_config = ConfigDict(extra="allow")


class ErrorDetail(Reply):
    message: str
    type: str = Field(description="invalid_request_error, or server_error")
    param: str | None = Field(description="The request field at fault, if one is")
    code: str | None = Field(description="e.g. model_not_found, context_length_exceeded, invalid_json, "
                                         "invalid_value, invalid_prompt, unsupported, no_value_model")


class ErrorResponse(Reply):
    """OpenAI's error body."""

    error: ErrorDetail


class PromptTokensDetails(Reply):
    cached_tokens: int = Field(description="Prompt tokens already in a slot's KV cache (an earlier turn of the "
                                           "conversation), so not decoded again (with best_of: summed over samples)")


class Usage(Reply):
    prompt_tokens: int
    completion_tokens: int = Field(description="Tokens generated (with best_of: summed over all samples)")
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None


class BestOfReport(Reply):
    n: int
    best: int = Field(description="Index of the returned sample")
    scores: list[float]
    seeds: list[int]


class SiaStats(Reply):
    """What a response reports about steering (the `sia` field)."""

    gate: str | None
    tau: float | None
    ratio: float | None
    junctions: int = Field(description="Steps the value model steered")
    junction_ratio: float
    tokens: int
    seed: int
    stop_reason: str = Field(description="eos | stop | length | context | cancelled")
    value_model_calls: int
    tokens_per_second: float
    pipeline: str
    value_model: str | None = Field(description="File name of the value model that steered, if one did")
    best_of: BestOfReport | None = None


FinishReason = Literal["stop", "length"]


class TopLogprob(Reply):
    token: str = Field(description="The token as text (a special token by its name, e.g. <eos>)")
    logprob: float = Field(description="Its log-probability under the base model (T = 1, full vocabulary); "
                                       f"{LOGPROB_FLOOR:g} for a token the model rules out")
    bytes: list[int] | None = Field(description="Its bytes (a token may hold part of a UTF-8 character)")


class SiaCandidate(Reply):
    """One of the k candidates at a junction, and how steering moved it."""

    token: str
    bytes: list[int]
    token_id: int
    logprob: float = Field(description="Base model log-probability (T = 1, full vocabulary)")
    reward: float = Field(description="The value model's score of the text with this candidate appended")
    probability: float = Field(description="Its sampling probability over the k candidates without steering "
                                           "(softmax(l / T))")
    steered_probability: float = Field(description="Its sampling probability after steering (softmax((l + w r) / "
                                                   "T)): what the token was drawn from")
    chosen: bool


class SiaToken(Reply):
    """sia-edge's facts of one generated token."""

    token_id: int
    signal: float = Field(description="The gate's uncertainty signal at this step: entropy in nats of the top-k "
                                      "(signal top-k) or of the vocabulary (full), or p2/p1 (top2)")
    junction: bool = Field(description="Whether the gate sent this step to the value model")
    rank: int = Field(description="Rank of the chosen token among the top-k by base logit (0 = the favourite)")
    candidates: list[SiaCandidate] | None = Field(description="At a junction: the k candidates, best base logit "
                                                              "first; null elsewhere (and when w = 0)")


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(description="The top_logprobs likeliest tokens at this position")
    sia: SiaToken


class ChatLogprobs(Reply):
    content: list[ChatTokenLogprob] | None
    refusal: list[ChatTokenLogprob] | None = None


class CompletionLogprobs(Reply):
    """The legacy completions shape (parallel lists, one entry per token), plus `sia` beside them."""

    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]] = Field(description="Per token: the `logprobs` likeliest tokens and the "
                                                             "sampled one")
    text_offset: list[int] = Field(description="Per token: the character offset in the text where it starts")
    sia: list[SiaToken]


class CompletionChoice(Reply):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: FinishReason | None = Field(description="null in stream chunks before the last")


class CompletionResponse(Reply):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    sia: SiaStats


class CompletionChunk(Reply):
    """One server-sent event of a streamed completion; the last one carries usage and sia."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    sia: SiaStats | None = None


class AssistantMessage(Reply):
    role: Literal["assistant"]
    content: str


class ChatChoice(Reply):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: FinishReason


class ChatCompletionResponse(Reply):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    sia: SiaStats


class ChatDelta(Reply):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(Reply):
    index: int
    delta: ChatDelta
    logprobs: ChatLogprobs | None = Field(None, description="The tokens whose text this chunk carries (with a "
                                                           "token still pending, e.g. half a character, they come "
                                                           "with a later chunk; the last chunk lists any left)")
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(Reply):
    """One server-sent event of a streamed chat completion; the last one carries usage and sia."""

    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
    sia: SiaStats | None = None


class ModelDefaults(Reply):
    """The settings a request gets for the fields it leaves out."""

    gate: str
    tau: float | None
    ratio: float | None
    signal: str = Field(description="What the gate thresholds (the per-token `sia.signal`): top-k, full or top2")
    weight: float = Field(description="w: the weight the default gate steers with")
    temperature: float
    top_k: int
    max_tokens: int


class ModelInfo(Reply):
    file: str
    n_ctx: int
    value_model: str | None
    objectives: list[str]
    chat_template: bool
    gates: list[str] = Field(description="What the `gate` field takes")
    defaults: ModelDefaults


class ModelCard(Reply):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    sia: ModelInfo


class ModelList(Reply):
    object: Literal["list"]
    data: list[ModelCard]


class Health(Reply):
    """Server state. The request counters add up: accepted = active + served + cancelled + errors + rejected."""

    status: str
    models: list[str]
    accepted: int = Field(description="Generation requests accepted (a best_of request counts once)")
    active: int = Field(description="Of which generating or waiting for a slot now")
    served: int = Field(description="Of which answered")
    cancelled: int = Field(description="Of which stopped because their client went away")
    errors: int = Field(description="Of which ended in an error")
    rejected: int = Field(description="Of which waited longer than --queue-timeout: 503")
    generations: int = Field(description="Finished generations: served + cancelled")
    parallel: int = Field(description="Slots: requests decoded together")
    busy: int = Field(description="Slots generating now")
    queued: int = Field(description="Requests waiting for a slot now")
    rounds: int = Field(description="Batched decoding steps so far")
    value_model_calls: int = Field(description="Value-model calls those steps made (all slots' junctions merged)")
    prompt_tokens: int = Field(description="Prompt tokens of the generations that ended (--parallel > 1)")
    cached_tokens: int = Field(description="Of which found in a slot's KV cache, so not decoded again")


# --- the OpenAPI declarations of each route ----------------------------------------------------------------------


def _error(description: str, headers: dict | None = None) -> dict:
    out = {"model": ErrorResponse, "description": description}
    if headers:
        out["headers"] = headers
    return out


BAD_REQUEST = {400: _error("Invalid request: not JSON, a field fails validation, the prompt does not fit")}
NOT_FOUND = {404: _error("Unknown model")}
BUSY = {503: _error("The request waited in the queue longer than the server's --queue-timeout", {
    "Retry-After": {"description": "Seconds to wait before retrying", "schema": {"type": "integer"}}})}
FAILED = {500: _error("The generation failed on the server's side (e.g. the model produced NaN logits, or its value "
                      "model failed): error type server_error, the request itself was fine and may be retried")}
STREAM_NOTE = ("With `\"stream\": true` the response is `text/event-stream`: one `data: <{chunk} JSON>` event per "
               "piece of text, the last chunk with finish_reason, usage and sia, then `data: [DONE]`.")
CHUNKS = (CompletionChunk, ChatCompletionChunk)


def generation_responses(chunk: type[BaseModel]) -> dict:
    """`responses=` for a generation route: the event stream beside the JSON body, and the error shapes."""
    event = {"type": "object", "required": ["data"], "properties": {"data": {"anyOf": [
        {"type": "string", "contentMediaType": "application/json",
         "contentSchema": {"$ref": f"#/components/schemas/{chunk.__name__}"}, "description": "A chunk as JSON"},
        {"type": "string", "const": "[DONE]", "description": "After the last chunk"}]}}}
    return {200: {"description": STREAM_NOTE.format(chunk=chunk.__name__),
                  "content": {"text/event-stream": {"itemSchema": event}}},
            **BAD_REQUEST, **NOT_FOUND, **BUSY, **FAILED}


def openapi_document(app) -> dict:
    """The app's OpenAPI document with the chunk models in its components and without FastAPI's 422 (this
    server answers a body that fails validation with 400 in OpenAI's error shape)."""
    from fastapi.openapi.utils import get_openapi

    document = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    for path in document.get("paths", {}).values():
        for operation in path.values():
            operation.get("responses", {}).pop("422", None)
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    for model in CHUNKS:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}", mode="serialization")
        for name, definition in schema.pop("$defs", {}).items():
            schemas.setdefault(name, definition)
        schemas[model.__name__] = schema
    return document
