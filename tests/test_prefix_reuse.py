"""Prompt-prefix reuse across requests and chunked prefill in the scheduler's round (issue 21), on the real Gemma.

What llama.cpp was fed is counted by the slots themselves (`SequenceSlot.decoded_tokens`, incremented in the one
place that builds a llama_batch), so "decodes only the difference" is checked against what was decoded, not
against the scheduler's own bookkeeping.

Tolerance: a prompt read in other chunks, or whose first part was decoded step by step by an earlier request,
meets other matmul shapes in llama.cpp (its CPU kernels quantize activations per batch shape), so its next-token
distribution agrees with a whole-prompt read closely but not bit for bit. Measured on the two-turn prompt below,
against the single context reading it whole: reading it whole in a slot, or in chunks of 16 or 64, is exact;
chunks of 7 give total variation 0.050 (KL 0.009 nats); the first turn and reply decoded step by step and then
reused give 0.037 (KL 0.004), exactly what `sia-edge chat` has always had with BaseModel's own prefix reuse. The
tests require the same likeliest token, total variation < 0.1 and KL < 0.02 nats.
"""

from __future__ import annotations


import numpy as np
import pytest

from sia_edge.base_model import BatchContext, common_prefix
from sia_edge.base_model.batch_context import MIN_TAIL
from sia_edge.engine import Engine
from tests.conftest import TOKEN_MODEL

pytestmark = pytest.mark.slow

TURN_1 = "<start_of_turn>user\nI just got back from the beach. How was your weekend?<end_of_turn>\n<start_of_turn>model\n"
TURN_2 = "<end_of_turn>\n<start_of_turn>user\nAnd what are you cooking tonight?<end_of_turn>\n<start_of_turn>model\n"
TV_TOLERANCE, KL_TOLERANCE = 0.1, 0.02


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x = x - x.max()
    return x - np.log(np.exp(x).sum())


def assert_same_distribution(a: np.ndarray, b: np.ndarray) -> None:
    """`a` against the reference `b`: the same likeliest token, total variation distance and KL(b || a) within
    the tolerances above."""
    la, lb = log_softmax(a), log_softmax(b)
    p, q = np.exp(lb), np.exp(la)
    assert la.argmax() == lb.argmax()
    assert 0.5 * np.abs(p - q).sum() < TV_TOLERANCE
    assert (p * (lb - la)).sum() < KL_TOLERANCE


def read(context: BatchContext, slot, tokens: list[int], reuse: bool = True, hidden: bool = False) -> tuple[int, int]:
    """Prefill `slot` and flush until its prompt is in; returns (tokens kept from the cache, rounds it took)."""
    kept = slot.prefill(tokens, reuse=reuse, hidden=hidden)
    rounds = 0
    while not slot.prefilled:
        context.flush()
        rounds += 1
    return kept, rounds


def reference_logits(engine, tokens: list[int]) -> np.ndarray:
    """The single-sequence context reading the whole prompt from an empty cache."""
    engine.base.prefill(tokens)
    return engine.base.logits().copy()


@pytest.fixture(scope="module")
def tokens(engine):
    first = engine.tokenize(TURN_1)
    reply = engine.tokenize("It was lovely, thanks: I went hiking with my sister.", add_bos=False)
    second = first + reply + engine.tokenize(TURN_2, add_bos=False)
    return first, reply, second


def test_a_slot_keeps_its_prefix_and_decodes_only_the_difference(engine, tokens):
    first, reply, second = tokens
    context = BatchContext(engine.base, 2, 256, prefill_chunk=16)
    try:
        slot = context.slots[0]
        kept, rounds = read(context, slot, first)
        assert kept == 0 and slot.decoded_tokens == len(first)
        assert rounds == -(-len(first) // 16)  # chunks of 16, one per flush
        for token in reply:  # the reply, decoded step by step as a generation would
            slot.step(token)
            context.flush()
        slot.release()  # the request ends; its KV cells stay
        before = slot.decoded_tokens
        kept, _ = read(context, slot, second)
        assert kept == len(first) + len(reply)  # the whole first turn and the reply were reused
        assert slot.decoded_tokens - before == len(second) - kept  # only the new message was fed to llama.cpp
        assert slot.tokens == second
        assert_same_distribution(slot.logits(), reference_logits(engine, second))
    finally:
        context.close()


def test_an_edited_turn_finds_the_divergence_point(engine, tokens):
    first, reply, second = tokens
    edited = list(second)
    change = len(first) - 5  # a token inside the first user message
    edited[change] = engine.tokenize(" lake", add_bos=False)[0]
    context = BatchContext(engine.base, 1, 256, prefill_chunk=16)
    try:
        slot = context.slots[0]
        read(context, slot, second)
        before = slot.decoded_tokens
        kept, _ = read(context, slot, edited)
        assert kept == change and slot.decoded_tokens - before == len(edited) - change
        assert_same_distribution(slot.logits(), reference_logits(engine, edited))
        # a prompt that is all cached (a prefix of what the slot holds) still decodes its last MIN_TAIL tokens
        before = slot.decoded_tokens
        kept, _ = read(context, slot, edited[:20])
        assert kept == 20 - MIN_TAIL and slot.decoded_tokens - before == MIN_TAIL and slot.tokens == edited[:20]
        assert_same_distribution(slot.logits(), reference_logits(engine, edited[:20]))
    finally:
        context.close()


def test_a_repeated_prompt_rereads_its_tail(engine, tokens):
    """The same prompt sent again to a slot that holds it (and a generation after it): its last MIN_TAIL tokens are
    read again, and the next-token distribution equals the first read's within the tolerance above (bit for bit on
    this prompt, but not on every prompt: llama.cpp's kernels depend on the batch's size)."""
    _, _, second = tokens
    context = BatchContext(engine.base, 2, 256, prefill_chunk=16)
    try:
        slot, other = context.slots
        read(context, other, engine.tokenize("The movie was"))
        read(context, slot, second)
        first = slot.logits().copy()
        for token in (100, 200, 300):  # a generation ran after it
            slot.step(token)
            context.flush()
        slot.release()
        before = slot.decoded_tokens
        slot.prefill(second, reuse=True)
        while not slot.prefilled:
            other.step(int(other.logits().argmax()))  # the other slot's step shares the decode
            context.flush()
        assert slot.decoded_tokens - before == MIN_TAIL
        assert_same_distribution(slot.logits(), first)
    finally:
        context.close()


def test_chunked_prefill_matches_reading_the_prompt_whole(engine, tokens):
    """Chunks of 7 tokens, each in the same decode as another slot's step, against a whole-prompt read: the same
    next-token distribution (tolerance above), and the hidden state a hidden-state value model reads."""
    _, _, second = tokens
    whole = BatchContext(engine.base, 1, 256)
    chunked = BatchContext(engine.base, 2, 256, prefill_chunk=7)
    try:
        whole.slots[0].prefill(second, hidden=True)
        busy = chunked.slots[1]
        read(chunked, busy, engine.tokenize("The movie was"))
        slot = chunked.slots[0]
        slot.prefill(second, hidden=True)
        while not slot.prefilled:
            busy.step(int(busy.logits().argmax()))  # the other slot keeps generating meanwhile
            chunked.flush()
        assert slot.decoded_tokens == len(second) and busy.n_past > 5
        assert_same_distribution(slot.logits(), whole.slots[0].logits())
        a, b = slot.hidden(), whole.slots[0].hidden()
        assert np.linalg.norm(a - b) < 0.1 * np.linalg.norm(b)  # as tests/test_hidden_states.py (measured 0.057 here)
    finally:
        whole.close()
        chunked.close()


def test_a_saved_sequence_restores_exactly_into_another_slot(engine, tokens):
    first, reply, _ = tokens
    context = BatchContext(engine.base, 2, 256, prefill_chunk=16)
    try:
        source, target = context.slots
        read(context, source, first + reply)
        saved = source.save()
        assert saved.tokens == first + reply and saved.nbytes > 1000 * len(saved.tokens)
        assert target.restore(saved) and target.tokens == source.tokens
        for slot in (source, target):  # the same next step on both: bit for bit the same logits
            slot.step(reply[0])
        context.flush()
        assert np.array_equal(source.logits(), target.logits())
    finally:
        context.close()


@pytest.fixture(scope="module", params=[256.0, 0.0], ids=["ram-cache", "no-ram-cache"])
def slots_engine(gemma_path, request):
    """Two slots, prompts read 16 tokens per round; with and without the host-RAM cache of evicted conversations."""
    engine = Engine(model=gemma_path, value_model=str(TOKEN_MODEL), parallel=2, prefill_chunk=16,
                    cache_ram_mb=request.param)
    yield engine
    engine.close()


def generate(engine, prompt: list[int], seed: int = 1, **overrides):
    stream = engine.stream(prompt, max_tokens=8, gate="entropy", tau=1.5, seed=seed, **overrides)
    for _ in stream:
        pass
    return stream.result


def test_the_next_turn_goes_to_its_conversations_slot(slots_engine, tokens):
    """Two conversations in two slots; each second turn finds its own first turn (and reply) cached, wherever the
    other conversation is; a third conversation evicts the least recently used one, whose next turn is then
    restored from host RAM, or (without that cache) read afresh."""
    engine = slots_engine
    first_a = engine.tokenize(TURN_1)
    first_b = engine.tokenize(TURN_1.replace("the beach", "a long train ride through the mountains"))
    a1, b1 = generate(engine, first_a), generate(engine, first_b)
    assert a1.stats.cached_tokens == 0 and b1.stats.cached_tokens == 0  # b took the empty slot, not a's
    follow = engine.tokenize(TURN_2, add_bos=False)
    second_a = first_a + a1.token_ids + follow
    second_b = first_b + b1.token_ids + follow
    b2, a2 = generate(engine, second_b), generate(engine, second_a)
    # a slot holds the prompt and every generated token but the last (never fed back: the generation ended)
    assert a2.stats.cached_tokens == len(first_a) + len(a1.token_ids) - 1
    assert b2.stats.cached_tokens == len(first_b) + len(b1.token_ids) - 1
    # c shares only the opening words with both, too little to be worth a conversation: it takes the least
    # recently used slot (b's), keeping just that shared opening
    c1 = generate(engine, first_c := engine.tokenize(TURN_1.replace("the beach", "my grandmother's party")))
    opening = common_prefix(first_c, first_b)
    assert 5 < opening < len(first_c) // 2 and c1.stats.cached_tokens == opening
    b3 = generate(engine, second_b + b2.token_ids + follow)
    if engine._scheduler._saved.budget > 0:  # b's cells went to host RAM and come back: only the new turn is read
        assert b3.stats.cached_tokens == len(second_b) + len(b2.token_ids) - 1
        assert engine.load()["restored"] == 1
    else:  # read afresh but for the opening, in the slot now least recently used (a's)
        assert b3.stats.cached_tokens == common_prefix(first_a, first_b)
        assert engine.load()["restored"] == 0
    load = engine.load()
    assert load["cached_tokens"] == sum(r.stats.cached_tokens for r in (a1, b1, b2, a2, c1, b3))


def test_cancelling_mid_prefill_frees_the_slot_at_the_next_chunk(slots_engine):
    engine = slots_engine
    long_prompt = engine.tokenize(" ".join(["the quiet river ran past the old mill"] * 20))

    def reading_slots():
        context = engine._scheduler._context
        return [s for s in (context.slots if context else []) if s.tokens[:5] == long_prompt[:5]]

    def cancel() -> bool:  # stop once two chunks of the prompt are in
        return any(len(s.tokens) >= 32 for s in reading_slots())

    result = generate(engine, long_prompt, cancel=cancel)
    assert result.stop_reason == "cancelled" and result.token_ids == []
    assert engine.load()["busy"] == 0
    # the slot it had was freed at the next round, holding only the chunks read before the cancel (after the
    # opening it kept, if any, from an earlier request: one more chunk would have made it 48 or more)
    [held] = [len(s.tokens) for s in reading_slots()]
    assert 32 <= held < 48 and len(long_prompt) > 100
    after = generate(engine, engine.tokenize("The movie was"))  # the engine serves on
    assert after.stop_reason == "length"


def test_without_reuse_or_chunks_every_prompt_is_read_whole(gemma_path, tokens):
    engine = Engine(model=gemma_path, value_model=str(TOKEN_MODEL), parallel=2, prefill_chunk=None,
                    prefix_reuse=False)
    try:
        first, _, _ = tokens
        r1 = generate(engine, first)
        r2 = generate(engine, first + r1.token_ids)
        assert r1.stats.cached_tokens == 0 and r2.stats.cached_tokens == 0
        assert all(not slot.tokens for slot in engine._scheduler._context.slots)  # cleared after each request
    finally:
        engine.close()
