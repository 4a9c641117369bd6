"""The server's request bodies and its error shape: OpenAI's fields plus SIA's, validated by pydantic."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from ..gate import GATE_HELP, PARAMETERS


class ApiError(Exception):
    """An OpenAI-style error: {"error": {"message", "type", "param", "code"}} with an HTTP status."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error", headers: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type
        self.headers = headers  # e.g. Retry-After on a 503

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# --- request bodies ----------------------------------------------------------------------------------------------


# One optional request field per gate parameter of the registry (tau, ratio, q, first_n), typed as it says.
GateFields = create_model("GateFields", **{
    name: (parameter.kind | None, Field(None, description=parameter.help)) for name, parameter in PARAMETERS.items()})
REQUEST_SETTINGS = ("gate", *PARAMETERS, "weight", "reward_norm", "top_k", "temperature", "seed")


class SiaRequest(GateFields):
    """Fields both endpoints share: OpenAI's sampling fields plus SIA's steering fields. Unknown fields are ignored."""

    model_config = ConfigDict(extra="ignore")
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
    best_of: int | None = Field(None, ge=1)


class CompletionRequest(SiaRequest):
    prompt: str | list[str] | list[int]
    echo: bool = False


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None

    def as_dict(self) -> dict:
        content = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content or [])
        return {"role": "system" if self.role == "developer" else self.role, "content": content}


class ChatRequest(SiaRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
