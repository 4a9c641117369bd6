"""Best-of-N: draw N generations (seeds seed, seed+1, ...), score each full text with the value model, keep the best.

It composes with SIA: the N samples are drawn with whatever gate the settings name (`none` = plain Best-of-N).
On an engine with one generation at a time (`parallel=1`, the CLI's) the samples are decoded as one batch under
the engine's lock, so sample i reproduces for the same N and seed, but need not equal `generate --seed seed+i`
token for token (batched logits differ in the last float digits). On a batching engine (the server's) each sample
is a request in the engine's slots like any other: `--parallel`, the queue timeout and /health cover them, and
they share rounds with whatever else runs, so they replay only as well as any batched request does.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

from .decoder import value_model_tokens
from .errors import InvalidSettingError, ValueModelError
from .settings import GenerationSettings

MAX_BATCH = 8  # samples decoded together; more gain little on 2 cores (docs/results.md)


@dataclass
class BestOfResult:
    results: list  # the N GenerationResults, sample i drawn with seed + i
    scores: list[float]  # value-model score of prompt + continuation (no BOS), one per sample
    best: int  # index of the highest score
    base_steps: int  # base-model decoding steps over all samples
    value_model_calls: int  # steering calls of all samples + the final scoring call
    seconds: float  # wall time
    seed: int  # seed of sample 0

    @property
    def best_result(self):
        return self.results[self.best]

    @property
    def text(self) -> str:
        return self.best_result.text

    def as_dict(self) -> dict:
        return {
            "type": "best_of",
            "text": self.text,
            "best": self.best,
            "n": len(self.results),
            "seed": self.seed,
            "scores": self.scores,
            "samples": [{"text": r.text, "score": s, "seed": r.stats.seed, "stop_reason": r.stop_reason,
                         "tokens": r.stats.tokens, "junctions": r.stats.junctions,
                         "junction_ratio": r.stats.junction_ratio}
                        for r, s in zip(self.results, self.scores)],
            "base_steps": self.base_steps,
            "value_model_calls": self.value_model_calls,
            "seconds": self.seconds,
            "settings": self.best_result.settings,
            "pipeline": self.best_result.pipeline,
        }


def scored_tokens(engine, prompt_tokens: list[int], result) -> list[int]:
    """What the value model scores: the prompt without BOS, then the tokens that spell the returned text."""
    from .chat import kept_tokens

    return value_model_tokens(prompt_tokens, kept_tokens(engine.base, result.token_ids, result.text),
                              engine.base.bos_id)


def final_values(engine, scorer, prompt_tokens: list[int], results) -> tuple[list[float], int]:
    """The value model's score of each finished sample, and the value-model calls that took. A hidden-state model's
    score comes with the result (one call at the end of its decode: the hidden state before the last token) unless
    a stop string trimmed the text; the others are scored together in one call."""
    scored = [scored_tokens(engine, prompt_tokens, r) for r in results]
    values = [r.value if r.value is not None and s == value_model_tokens(prompt_tokens, r.token_ids, engine.base.bos_id)
              else None for r, s in zip(results, scored)]
    missing = [i for i, v in enumerate(values) if v is None]
    if missing:
        prompt_length = len(value_model_tokens(prompt_tokens, [], engine.base.bos_id))
        for i, value in zip(missing, scorer.score_sequences([scored[i] for i in missing],
                                                            [prompt_length] * len(missing))):
            values[i] = value
    return [float(v) for v in values], len(results) - len(missing) + bool(missing)


def best_of(engine, prompt: str | list[int], n: int, settings: GenerationSettings | None = None,
            cancel=None, value_model=None, queue_timeout: float | None = None) -> BestOfResult:
    """N generations with seeds seed+i; the best is the argmax of the value model's score of each full text.
    `value_model` (an objective name or ONNX file) ranks and steers instead of the engine's current one;
    `queue_timeout`: seconds the samples may wait for a slot (parallel=1: for the engine) before QueueTimeoutError
    [default: wait]; once one has a slot, the others wait their turn."""
    if n < 1:
        raise InvalidSettingError(f"best_of must be >= 1, got {n}")
    scorer = engine.value_model_for(value_model)
    if scorer is None:
        raise ValueModelError(f"Best-of-N needs a value model to rank the samples and none is loaded for "
                              f"{engine.base.name}; pass --value-model")
    settings = engine.settings(settings)
    seed = settings.seed if settings.seed is not None else secrets.randbits(32)
    start = time.perf_counter()
    seeds = [(seed + i) % 2**63 for i in range(n)]
    results = draw_samples(engine, prompt, settings, seeds, cancel, value_model, queue_timeout)
    prompt_tokens = engine.tokenize(prompt) if isinstance(prompt, str) else list(prompt)
    scores, scoring_calls = final_values(engine, scorer, prompt_tokens, results)
    best = max(range(len(scores)), key=scores.__getitem__)
    # each sample's own calls, not the scorer's running total: other requests share it on a batching engine
    calls = sum(r.stats.value_model_calls for r in results) + scoring_calls
    return BestOfResult(results, scores, best, sum(r.stats.tokens for r in results), calls,
                        time.perf_counter() - start, seed)


def draw_samples(engine, prompt, settings: GenerationSettings, seeds: list[int], cancel, value_model,
                 queue_timeout: float | None) -> list:
    """One GenerationResult per seed, in seed order."""
    if engine.parallel == 1:  # one generation at a time: the samples decoded together, ~2x faster on 2 cores
        outputs = engine.generate_many([prompt] * len(seeds), settings, seeds=seeds,
                                       batch_size=min(len(seeds), MAX_BATCH), cancel=cancel, value_model=value_model,
                                       queue_timeout=queue_timeout)
        return [output.result for output in sorted(outputs, key=lambda output: output.index)]
    # a batching engine: every sample takes a slot through the scheduler, like any request, so the slots, the
    # queue timeout, /health and the merged value-model calls cover them. The queue timeout is the first
    # sample's: once it has a slot the request is under way, and the others queue behind it.
    streams = [engine.stream(prompt, settings.with_(seed=s), cancel=cancel, value_model=value_model,
                             queue_timeout=queue_timeout if i == 0 else None) for i, s in enumerate(seeds)]
    try:
        for stream in streams:
            stream.start()  # in line now; each runs whether or not it is read yet
        for stream in streams:
            for _ in stream:
                pass
    finally:
        for stream in streams:  # after a failure or timeout: the others leave their slots or the line
            stream.close()
    return [stream.result for stream in streams]
