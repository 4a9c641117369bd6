"""The decoding loop. It owns no policy: it wires BaseModel, the gate, the value model and the sampler together,
yields one event per token, enforces stop conditions, counts statistics and honours cancellation."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator

import numpy as np

from .gate import step_stats
from .settings import GenerationSettings
from .steering import choose, steered_scores
from .text_stream import Utf8Stream

STOP_REASONS = ("eos", "length", "stop", "context", "cancelled")


@dataclass
class TokenEvent:
    """One generated token."""

    index: int  # position in the continuation, from 0
    token_id: int
    text: str  # the text this token releases (may be "" while a stop string or a split character is pending)
    entropy: float  # nats, as the gate saw it
    junction: bool
    candidates: list[int] | None = None  # top-k ids, steered steps only
    rewards: list[float] | None = None  # value-model scores of those candidates
    rank: int = 0  # rank of the chosen token among the top-k (0 = the base model's favourite)
    seconds: float = 0.0  # wall time of this step
    log_prob: float | None = None  # log p(token) under the unsteered base model (T = 1, full vocabulary), if asked

    def as_dict(self) -> dict:
        return {"type": "token", **asdict(self)}


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    tokens: int = 0
    junctions: int = 0
    value_model_calls: int = 0
    value_model_seconds: float = 0.0
    base_model_seconds: float = 0.0  # prefill + decode steps inside llama.cpp
    prefill_seconds: float = 0.0
    gate_seconds: float = 0.0  # top-k + entropy + gate decision
    sample_seconds: float = 0.0
    total_seconds: float = 0.0
    seed: int = 0

    @property
    def junction_ratio(self) -> float:
        return self.junctions / self.tokens if self.tokens else 0.0

    @property
    def tokens_per_second(self) -> float:
        decode = self.total_seconds - self.prefill_seconds
        return self.tokens / decode if decode > 0 else 0.0

    def as_dict(self) -> dict:
        out = asdict(self)
        out["junction_ratio"] = self.junction_ratio
        out["tokens_per_second"] = self.tokens_per_second
        return out


@dataclass
class GenerationResult:
    text: str
    stop_reason: str  # one of STOP_REASONS
    stats: GenerationStats
    token_ids: list[int] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    pipeline: str = ""

    def as_dict(self) -> dict:
        return {
            "type": "result",
            "text": self.text,
            "stop_reason": self.stop_reason,
            "stats": self.stats.as_dict(),
            "settings": self.settings,
            "pipeline": self.pipeline,
            "token_ids": self.token_ids,
        }


class Decoding:
    """One generation. Iterate it for TokenEvents; `result` is set when the iteration ends."""

    def __init__(self, base, value_model, prompt_tokens: list[int], settings: GenerationSettings, seed: int,
                 cancel: Callable[[], bool] | None = None, log_probs: bool = False) -> None:
        """`base` is a BaseModel or a SequenceSlot of a BatchContext; `log_probs` fills TokenEvent.log_prob
        (one log-sum-exp over the vocabulary per step, ~0.3 ms for Gemma, so it is off unless asked)."""
        self.base = base
        self.log_probs = log_probs
        self.value_model = value_model
        self.prompt_tokens = prompt_tokens
        self.settings = settings
        self.seed = seed
        self.cancel = cancel or (lambda: False)
        self.result: GenerationResult | None = None

    def __iter__(self) -> Iterator[TokenEvent]:
        s = self.settings
        stats = GenerationStats(prompt_tokens=len(self.prompt_tokens), seed=self.seed)
        start = time.perf_counter()
        base_before = self.base.decode_seconds
        self.base.prefill(self.prompt_tokens)
        stats.prefill_seconds = time.perf_counter() - start
        gate = s.build_gate()
        gate.reset(self.seed)
        rng = np.random.default_rng(self.seed)
        steer = self.value_model is not None and s.weight != 0.0
        value_prefix = self.value_model.empty_prefix() if steer else None
        # The value model sees prompt + continuation without BOS; it folds them in lazily, at junctions only.
        unscored = without_leading_bos(self.prompt_tokens, self.base.bos_id)
        utf8 = Utf8Stream()
        stops = StopMatcher(s.stop)
        scratch = np.empty(self.base.n_vocab, dtype=bool)  # the top-k pre-filter's mask, reused every step
        generated: list[int] = []
        stop_reason = "length"
        try:
            for index in range(s.max_tokens):
                if self.cancel():
                    stop_reason = "cancelled"
                    break
                t0 = time.perf_counter()
                logits = self.base.logits()
                step = step_stats(logits, s.top_k, s.entropy_over, scratch)
                junction = gate.decide(index, step.entropy)
                t1 = time.perf_counter()
                rewards = None
                if junction and steer:
                    # counted here, not as a difference of the value model's totals: batched decodings interleave
                    calls_before, seconds_before = self.value_model.calls, self.value_model.seconds
                    value_prefix = self.value_model.extend(value_prefix, unscored)
                    unscored = []
                    rewards = self.value_model.score_candidates(value_prefix, step.candidate_ids)
                    stats.value_model_calls += self.value_model.calls - calls_before
                    stats.value_model_seconds += self.value_model.seconds - seconds_before
                t2 = time.perf_counter()
                scores = steered_scores(step.candidate_logits, rewards, s.weight)
                rank = choose(scores, s.temperature, rng.random())
                token = int(step.candidate_ids[rank])
                t3 = time.perf_counter()
                stats.gate_seconds += t1 - t0
                stats.sample_seconds += t3 - t2
                stats.tokens += 1
                stats.junctions += junction
                if self.base.is_end_of_generation(token):
                    stop_reason = "eos"
                    break
                generated.append(token)
                unscored.append(token)
                released, hit = stops.push(utf8.push(self.base.token_bytes(token)))
                event = TokenEvent(index, token, released, step.entropy, junction,
                                   step.candidate_ids.tolist() if junction else None,
                                   rewards.tolist() if rewards is not None else None, rank, 0.0,
                                   base_log_prob(logits, token) if self.log_probs else None)
                if hit:
                    stop_reason = "stop"
                    event.seconds = time.perf_counter() - t0
                    yield event
                    break
                if index + 1 < s.max_tokens:
                    if self.base.n_past + 1 > self.base.n_ctx:
                        stop_reason = "context"
                        event.seconds = time.perf_counter() - t0
                        yield event
                        break
                    self.base.step(token)
                event.seconds = time.perf_counter() - t0
                yield event
        except KeyboardInterrupt:
            stop_reason = "cancelled"
        text = stops.finish(utf8.flush() if stop_reason != "stop" else "")
        stats.total_seconds = time.perf_counter() - start
        stats.base_model_seconds = self.base.decode_seconds - base_before
        self.result = GenerationResult(text, stop_reason, stats, generated, s.as_dict(), s.describe())
        if stops.tail:  # text held back for a possible stop string that never completed
            yield TokenEvent(len(generated), -1, stops.tail, 0.0, False)


def base_log_prob(logits: np.ndarray, token: int) -> float:
    """log softmax(logits)[token] at T = 1 over the full vocabulary; the sum accumulates in float64."""
    peak = float(logits.max())
    return float(logits[token]) - peak - math.log(float(np.exp(logits - peak).sum(dtype=np.float64)))


def without_leading_bos(tokens: list[int], bos_id: int) -> list[int]:
    """The tokens the value model sees (models/README.md): the text without the BOS the tokenizer put first.

    Only a leading BOS goes: for chat models the BOS id can be a turn marker that appears again later.
    """
    return list(tokens[1:] if tokens and tokens[0] == bos_id else tokens)


class StopMatcher:
    """Finds stop strings in streamed text, holding back any tail that could still become one."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self.text = ""
        self.released = 0  # characters of self.text already handed out
        self.tail = ""

    def push(self, piece: str) -> tuple[str, bool]:
        """Add text; return (text safe to release now, whether a stop string was hit)."""
        self.text += piece
        if not self.stops:
            out = self.text[self.released:]
            self.released = len(self.text)
            return out, False
        search_from = max(0, self.released - max(len(s) for s in self.stops))
        hits = [i for i in (self.text.find(s, search_from) for s in self.stops) if i >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            out = self.text[self.released:]
            self.released = len(self.text)
            return out, True
        safe = len(self.text) - self._pending_prefix_length()
        out = self.text[self.released:safe]
        self.released = max(self.released, safe)
        return out, False

    def finish(self, piece: str) -> str:
        """The final text; any held-back tail (a stop string that never completed) becomes `tail`."""
        self.text += piece
        self.tail = self.text[self.released:]
        self.released = len(self.text)
        return self.text

    def _pending_prefix_length(self) -> int:
        """Length of the longest end of the text that is the start of some stop string."""
        longest = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(self.text)), longest, -1):
                if self.text.endswith(stop[:n]):
                    longest = n
                    break
        return longest
