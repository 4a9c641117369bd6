"""The decoding loop. It owns no policy: it wires BaseModel, the gate, the value model and the sampler together,
yields one event per token, enforces stop conditions, counts statistics and honours cancellation."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Generator, Iterator, Protocol

import numpy as np

from .errors import InvalidSettingError, ModelOutputError
from .signals import step_stats, top_k
from .settings import GenerationSettings
from .steering import choose, sampling_probs, steered_scores
from .text_stream import Utf8Stream
from .junctions import HiddenView, Junction, ValueView, value_model_tokens  # value_model_tokens: imported from here too

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
    end: bool = False  # this step chose end-of-generation (the token is not part of the text)
    # With log_probs, how the step looked (for the server's `logprobs`, the chat page, debugging a value model):
    top_log_probs: list[tuple[int, float]] | None = None  # the n likeliest (id, log p) as log_prob, best first
    candidate_log_probs: list[float] | None = None  # junctions: each candidate's log p, as log_prob
    base_probs: list[float] | None = None  # junctions: the k candidates' sampling probabilities without steering
    steered_probs: list[float] | None = None  # junctions: their sampling probabilities after steering (drawn from)

    def as_dict(self) -> dict:
        return {"type": "token", **asdict(self)}


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    cached_tokens: int = 0  # of the prompt tokens, those already in the KV cache (prefix reuse): not decoded again
    tokens: int = 0
    junctions: int = 0
    value_model_calls: int = 0
    value_model_seconds: float = 0.0
    base_model_seconds: float = 0.0  # prefill + decode steps inside llama.cpp
    look_ahead_seconds: float = 0.0  # a look-ahead model's junctions: decoding the candidates (and the text again)
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
    value_model: str | None = None  # file name of the value model that steered, if one did
    # a hidden-state value model's score of prompt + token_ids (its last token after the state before it, or for a
    # look-ahead model the state after it), read from the generation's own states; None for the other kinds (score
    # the text with ValueModel.score_sequences)
    value: float | None = None

    def as_dict(self) -> dict:
        return {
            "type": "result",
            "text": self.text,
            "stop_reason": self.stop_reason,
            "stats": self.stats.as_dict(),
            "settings": self.settings,
            "pipeline": self.pipeline,
            "value_model": self.value_model,
            "token_ids": self.token_ids,
        }


class _Prefilling:
    """What `Decoding.steps` yields while its slot is still reading the prompt: nothing to do this round."""

    def __repr__(self) -> str:
        return "PREFILLING"


PREFILLING = _Prefilling()


class Base(Protocol):
    """What the loop needs of a base model: BaseModel, and each slot of a BatchContext, provide it."""

    n_vocab: int
    n_ctx: int
    n_past: int
    bos_id: int
    decode_seconds: float
    prefilled: bool  # the whole prompt is in (a scheduler's slot reads it over several rounds)

    def prefill(self, tokens: list[int], reuse: bool = False, hidden: bool = False) -> int: ...

    def hidden(self) -> np.ndarray: ...

    def look_ahead(self, k: int, layer: int | None = None): ...  # base_model.LookAhead, for a look-ahead value model

    def step(self, token: int) -> None: ...

    def logits(self) -> np.ndarray: ...

    def is_end_of_generation(self, token: int) -> bool: ...

    def token_bytes(self, token: int) -> bytes: ...


class Decoding:
    """One generation. Iterate it for TokenEvents; `result` is set when the iteration ends.

    Every decoding step yields one event, including the step that chose end-of-generation (its text is "" and
    `end` is set), so the events, `stats.tokens`, calibration and perplexity all count the same steps.
    """

    def __init__(self, base: Base, value_model, prompt_tokens: list[int], settings: GenerationSettings, seed: int,
                 cancel: Callable[[], bool] | None = None, log_probs: bool = False, reuse: bool = False,
                 top_log_probs: int = 0) -> None:
        """`log_probs` fills TokenEvent.log_prob and, at junctions, the candidates' log-probabilities and sampling
        probabilities (one log-sum-exp over the vocabulary per step, ~0.3 ms for Gemma, so it is off unless
        asked); `top_log_probs` > 0 implies it and also lists that many likeliest tokens per step. `reuse`: keep
        the prompt prefix already in the base model's KV cache (chat turns); without it every generation prefills
        from an empty cache, so a seed replays exactly."""
        if top_log_probs < 0:
            raise InvalidSettingError(f"top_log_probs must be >= 0, got {top_log_probs}")
        self.base = base
        self.reuse = reuse
        self.log_probs = log_probs or top_log_probs > 0
        self.top_log_probs = top_log_probs
        self.value_model = value_model
        self.prompt_tokens = prompt_tokens
        self.settings = settings
        self.seed = seed
        self.cancel = cancel or (lambda: False)
        self.result: GenerationResult | None = None

    def __iter__(self) -> Iterator[TokenEvent]:
        """Run alone: each junction's candidates are scored at once by this generation's value model."""
        steps, reply = self.steps(), None
        while True:
            try:
                item = steps.send(reply)
            except StopIteration:
                return
            if isinstance(item, Junction):
                reply = item.score_alone()
            elif item is PREFILLING:
                raise RuntimeError("a slot that reads its prompt in chunks needs a driver that flushes its context")
            else:
                reply = None
                yield item

    def steps(self) -> Generator[TokenEvent | Junction, np.ndarray | None, None]:
        """The loop as a generator that also yields a Junction whenever a step needs value-model scores; the
        driver sends the candidates' rewards back and gets that step's TokenEvent next. `__iter__` scores each
        junction alone; the engine's scheduler gathers the junctions of every active request into one batched
        value-model call per step."""
        s = self.settings
        self.stats = stats = GenerationStats(prompt_tokens=len(self.prompt_tokens), seed=self.seed)
        start, base_before = time.perf_counter(), self.base.decode_seconds
        steering = s.steers and self.value_model is not None
        # only a steered generation reads hidden states, so an unsteered one decodes the same whatever value model
        # is loaded (calibration, distillation sampling, the none arm); its final value is then scored separately
        reads_hidden = steering and getattr(self.value_model, "reads_hidden", False)
        # a look-ahead model reads its states from a context of its own; this one only for the pool it keeps
        looks_ahead = reads_hidden and self.value_model.looks_ahead
        own_states = reads_hidden and (not looks_ahead or self.value_model.pools)
        self._last = None  # (hidden state before the last kept token, the pool there, that token)
        stats.cached_tokens = self.base.prefill(self.prompt_tokens, reuse=self.reuse, hidden=own_states)
        while not self.base.prefilled and not self.cancel():  # a slot reading its prompt between others' steps
            yield PREFILLING
        stats.prefill_seconds = time.perf_counter() - start
        gate, rng = s.build_gate(), np.random.default_rng(self.seed)
        gate.reset(self.seed)
        self._view = None
        if steering:
            self._view = (HiddenView(self.value_model, self.base, s.top_k) if reads_hidden
                          else ValueView(self.value_model, self.prompt_tokens, self.base.bos_id))
        utf8, stops = Utf8Stream(), StopMatcher(s.stop)
        scratch = np.empty(self.base.n_vocab, dtype=bool)  # the top-k pre-filter's mask, reused every step
        generated: list[int] = []
        stop_reason = "length"
        try:
            for index in range(s.max_tokens):
                if self.cancel():
                    stop_reason = "cancelled"
                    break
                t0 = time.perf_counter()
                event = yield from self._step(index, gate, rng, scratch)
                if event.end:
                    stop_reason = "eos"
                else:
                    generated.append(event.token_id)
                    if reads_hidden:  # before the next decode
                        self._last = ((None, self._view.pool_state()) if looks_ahead
                                      else (np.array(self.base.hidden()), self._view.pooled())) + (event.token_id,)
                    event.text, hit = stops.push(utf8.push(self.base.token_bytes(event.token_id)))
                    stop_reason = "stop" if hit else self._advance(index, event.token_id)
                event.seconds = time.perf_counter() - t0
                yield event
                if stop_reason != "length":
                    break
        except KeyboardInterrupt:
            stop_reason = "cancelled"
        text = stops.finish(utf8.flush() if stop_reason != "stop" else "")
        stats.total_seconds = time.perf_counter() - start
        stats.base_model_seconds = self.base.decode_seconds - base_before
        steered_by = self.value_model.path.name if self._view is not None else None
        self.result = GenerationResult(text, stop_reason, stats, generated, s.as_ran(steered_by), s.describe(),
                                       steered_by, self._final_value(generated))
        if stops.tail:  # text held back for a possible stop string that never completed
            yield TokenEvent(len(generated), -1, stops.tail, 0.0, False)

    def _final_value(self, generated: list[int]) -> float | None:
        """The value of the final text, as `vm score` defines it, from the generation's own states."""
        if self._last is None:
            return None
        hidden, pooled, token = self._last
        if hidden is None:  # looking ahead: the state after the last kept token, and the pool as it was before it
            start = time.perf_counter()
            states, pooled = self._view.inputs(np.array([token]), self.prompt_tokens + generated[:-1], pooled)
            self.stats.look_ahead_seconds += time.perf_counter() - start
            return float(self.value_model.score_hidden(states, [np.array([token])], pooled)[0][0])
        return float(self.value_model.score_hidden(hidden[None, :], [np.array([token])],
                                                   None if pooled is None else pooled[None, :],
                                                   [generated[:-1]])[0][0])

    def _step(self, index: int, gate, rng, scratch) -> Generator[Junction, np.ndarray, TokenEvent]:
        """Read the logits, gate, steer if a junction, choose: the event of one step, its text still empty. At a
        junction it yields a Junction and expects the candidates' rewards back."""
        s, stats = self.settings, self.stats
        t0 = time.perf_counter()
        logits = self.base.logits()
        if self._view is not None:
            self._view.observe()  # a pooling model's mean counts every step's state, junction or not
        try:
            step = step_stats(logits, s.top_k, s.signal, scratch)
        except ModelOutputError as exc:
            raise ModelOutputError(f"step {index}: {exc}") from None
        junction = gate.decide(index, step.entropy)
        t1 = time.perf_counter()
        rewards = None
        if junction and self._view is not None:
            request = Junction(self._view, step.candidate_ids, *self._view.inputs(step.candidate_ids))
            stats.look_ahead_seconds += time.perf_counter() - t1
            rewards = yield request
            stats.value_model_calls += request.calls
            stats.value_model_seconds += request.seconds
        t2 = time.perf_counter()
        scores = steered_scores(step.candidate_logits, rewards, s.w, s.reward_norm)
        rank = choose(scores, s.temperature, rng.random())
        token = int(step.candidate_ids[rank])
        stats.gate_seconds += t1 - t0
        stats.sample_seconds += time.perf_counter() - t2
        stats.tokens += 1
        stats.junctions += junction
        if self._view is not None:
            self._view.append(token)
        event = TokenEvent(index, token, "", step.entropy, junction,
                           step.candidate_ids.tolist() if junction else None,
                           rewards.tolist() if rewards is not None else None, rank, 0.0,
                           end=self.base.is_end_of_generation(token))
        if self.log_probs:
            self._describe(event, logits, step, scores)
        return event

    def _describe(self, event: TokenEvent, logits: np.ndarray, step, scores: np.ndarray) -> None:
        """Fill the event's log-probabilities (base model, T = 1, full vocabulary) and, at a junction, the
        candidates' sampling probabilities before and after steering (over the k, at the temperature)."""
        log_z = log_partition(logits)
        event.log_prob = float(logits[event.token_id]) - log_z
        n = self.top_log_probs
        if n:
            if n <= step.candidate_ids.shape[0]:  # the top-k already holds them (same order, same ties)
                ids, values = step.candidate_ids[:n], step.candidate_logits[:n]
            else:
                ids, values = top_k(logits, n)
            event.top_log_probs = [(int(i), float(v) - log_z) for i, v in zip(ids, values)]
        if event.junction:
            T = self.settings.temperature
            event.candidate_log_probs = (step.candidate_logits - log_z).tolist()
            event.base_probs = sampling_probs(step.candidate_logits, T).tolist()
            event.steered_probs = sampling_probs(scores, T).tolist()

    def _advance(self, index: int, token: int) -> str:
        """Feed the chosen token to the base model, unless this was the last step; 'context' if it cannot fit."""
        if index + 1 >= self.settings.max_tokens:
            return "length"
        if self.base.n_past + 1 > self.base.n_ctx:
            return "context"
        self.base.step(token)
        return "length"


def log_partition(logits: np.ndarray) -> float:
    """log sum exp(logits) over the full vocabulary (T = 1); the sum accumulates in float64."""
    peak = float(logits.max())
    return peak + math.log(float(np.exp(logits - peak).sum(dtype=np.float64)))


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
