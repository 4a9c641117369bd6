"""A generation's per-token facts in OpenAI's `logprobs` shapes, each token with sia-edge's own `sia` object.

Which log-probability is reported: the base model's, at T = 1 over its full vocabulary, before steering (what
OpenAI's servers report: the model's distribution, not the sampler's). What steering did is the `sia` object's:
the gate's signal, whether the step was a junction and, at a junction, the k candidates with their base
log-probability, the value model's reward and their sampling probability before and after steering.

Listed are the tokens of the continuation (usage.completion_tokens of them): not the step that chose end-of-text.
"""

from __future__ import annotations

import math

from ..text_stream import Utf8Stream

MAX_COMPLETION_LOGPROBS = 5  # /v1/completions' `logprobs`: OpenAI's bound
MAX_TOP_LOGPROBS = 20  # /v1/chat/completions' `top_logprobs`: OpenAI's bound
LOGPROB_FLOOR = -9999.0  # a token the model rules out (-inf) is reported as this, as OpenAI does: JSON has no -inf


def listed(event) -> bool:
    """Whether an event is a token of the continuation (not end-of-text, not a held-back stop-string tail)."""
    return event.token_id >= 0 and not event.end


def finite(logprob: float) -> float:
    return logprob if math.isfinite(logprob) else LOGPROB_FLOOR


class TokenFacts:
    """Turns one generation's TokenEvents into logprobs entries; `top_n` likeliest tokens per position."""

    def __init__(self, base, top_n: int) -> None:
        self.base = base
        self.top_n = top_n
        self._pieces: dict[int, bytes] = {}
        self._utf8 = Utf8Stream()
        self.offset = 0  # characters of the text before the next token (completions' text_offset)

    def piece(self, token_id: int) -> bytes:
        """The token as it is shown: its text, or a special token's name (b"<eos>")."""
        if token_id not in self._pieces:
            self._pieces[token_id] = self.base.token_bytes(token_id, special=True)
        return self._pieces[token_id]

    def token(self, token_id: int) -> str:
        return self.piece(token_id).decode("utf-8", errors="replace")  # the exact bytes go in `bytes`

    def top(self, event) -> list[dict]:
        return [{"token": self.token(i), "logprob": finite(lp), "bytes": list(self.piece(i))}
                for i, lp in (event.top_log_probs or [])[:self.top_n]]

    def sia(self, event) -> dict:
        """sia-edge's facts of one step: signal, junction and, at a junction, how steering moved the candidates."""
        out = {"token_id": event.token_id, "signal": event.entropy, "junction": event.junction, "rank": event.rank,
               "candidates": None}
        if event.junction and event.rewards is not None:
            out["candidates"] = [
                {"token": self.token(c), "bytes": list(self.piece(c)), "token_id": c, "logprob": finite(lp),
                 "reward": r, "probability": p, "steered_probability": q, "chosen": i == event.rank}
                for i, (c, lp, r, p, q) in enumerate(zip(event.candidates, event.candidate_log_probs, event.rewards,
                                                          event.base_probs, event.steered_probs))]
        return out

    def chat_entry(self, event) -> dict:
        """One entry of chat's `logprobs.content`."""
        return {"token": self.token(event.token_id), "logprob": finite(event.log_prob),
                "bytes": list(self.piece(event.token_id)), "top_logprobs": self.top(event), "sia": self.sia(event)}

    def chat(self, events) -> dict:
        return {"content": [self.chat_entry(e) for e in events if listed(e)], "refusal": None}

    def completion(self, events) -> dict:
        """Completions' legacy shape: parallel lists, plus `sia` (one object per token) beside them."""
        out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": [], "sia": []}
        for event in filter(listed, events):
            token = self.token(event.token_id)
            top = {entry["token"]: entry["logprob"] for entry in reversed(self.top(event))}  # a clash keeps the best
            top = dict(sorted(top.items(), key=lambda item: -item[1]))
            top.setdefault(token, finite(event.log_prob))  # as OpenAI: the sampled token is always among them
            out["tokens"].append(token)
            out["token_logprobs"].append(finite(event.log_prob))
            out["top_logprobs"].append(top)
            out["text_offset"].append(self.offset)
            out["sia"].append(self.sia(event))
            self.offset += len(self._utf8.push(self.base.token_bytes(event.token_id)))  # as the text decodes it
        return out
