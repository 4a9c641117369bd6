"""Many generations at once: the same decoding loop, run in lockstep over the slots of one BatchContext.

Each request is an ordinary `Decoding` whose base model is a slot. One round advances every active decoding by one
token (each reads its logits, gates, steers, samples and queues its next token), then one llama.cpp decode feeds
all queued tokens together. A finished request frees its slot for the next one (continuous batching), so short
and long generations mix without waiting for each other. Used by `sia-edge eval`, `calibrate` and `--best-of`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Sequence

from .decoder import Decoding, GenerationResult, TokenEvent

DEFAULT_BATCH_SIZE = 8
SLOT_CONTEXT_MARGIN = 8  # spare cells per slot beyond prompt + max_tokens


@dataclass
class BatchRequest:
    prompt_tokens: list[int]
    settings: object  # GenerationSettings, already validated by the engine
    seed: int


@dataclass
class BatchOutput:
    index: int  # position of the request in the input
    result: GenerationResult
    events: list[TokenEvent] = field(default_factory=list)


@dataclass
class _Active:
    index: int
    decoding: Decoding
    steps: Iterator[TokenEvent]
    events: list[TokenEvent] = field(default_factory=list)


def run_batched(base, value_model, requests: Iterable[BatchRequest], batch_size: int = DEFAULT_BATCH_SIZE,
                cancel: Callable[[], bool] | None = None, log_probs: bool = False,
                max_context: int | None = None) -> Iterator[BatchOutput]:
    """Yield one BatchOutput per request, in the order they finish. `base` is a BaseModel (not used for anything
    else meanwhile); `cancel` stops every request (each ends with stop_reason 'cancelled'). A slot holds at most
    `max_context` tokens (the engine's context size), so a generation that would outgrow it stops with
    'context' exactly as `Engine.generate` does."""
    from .base_model import BatchContext

    waiting = deque(enumerate(requests))
    if not waiting:
        return
    longest = max(len(r.prompt_tokens) + r.settings.max_tokens for _, r in waiting) + SLOT_CONTEXT_MARGIN
    context = BatchContext(base, min(batch_size, len(waiting)), min(longest, max_context or longest))
    active: dict[int, _Active] = {}  # seq_id -> the decoding in that slot
    try:
        while waiting or active:
            for slot in context.slots:
                if slot.seq_id not in active and waiting:
                    index, request = waiting.popleft()
                    decoding = Decoding(slot, value_model, request.prompt_tokens, request.settings, request.seed,
                                        cancel, log_probs)
                    active[slot.seq_id] = _Active(index, decoding, iter(decoding))
            for seq_id, item in list(active.items()):
                try:
                    item.events.append(next(item.steps))
                except StopIteration:
                    del active[seq_id]
                    context.slots[seq_id].clear()
                    yield BatchOutput(item.index, item.decoding.result, item.events)
            context.flush()
    finally:
        context.close()


def fixed_batches(items: Sequence, size: int) -> list[list]:
    """`items` cut into consecutive chunks of `size` (the last may be shorter).

    Batched logits depend (in the last float digits) on which sequences share a decode, so a seeded sample is
    reproducible for a given batch composition. Evaluation, calibration and distillation therefore decode work in
    these fixed chunks, in this process and on Ray actors alike (sia_edge/distributed.py): the same chunks give the
    same samples wherever they run."""
    if size < 1:
        raise ValueError(f"batch size must be >= 1, got {size}")
    return [list(items[start : start + size]) for start in range(0, len(items), size)]


def run_batches(engine, work: Callable, batches: list, pool=None) -> Iterator[tuple[int, object]]:
    """(index, work(engine, batch)) for every batch: one after another on `engine` in this process, or on `pool`
    (a sia_edge.distributed.RayPool, whose actors each hold an engine), as they finish. `work` must be a module-level
    function (it is sent to the actors by name) and must decode each batch as one `generate_many` call."""
    if pool is not None:
        yield from pool.map(work, batches)
        return
    for index, batch in enumerate(batches):
        yield index, work(engine, batch)
