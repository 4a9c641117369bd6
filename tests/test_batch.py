"""Batched generation: the decode loop run in lockstep over the slots of one llama.cpp context (real model)."""

import math
import threading

import numpy as np
import pytest

from sia_edge.base_model import BatchContext
from sia_edge.errors import InvalidSettingError

PROMPTS = ["The movie was", "My flight to Chicago was", "The new phone arrived and", "Yesterday at the park",
           "The soup tasted"]


def run(engine, prompts, seeds, **kwargs):
    """All outputs of one batched call, back in request order."""
    outputs = list(engine.generate_many(prompts, seeds=seeds, **kwargs))
    assert sorted(o.index for o in outputs) == list(range(len(prompts)))
    return sorted(outputs, key=lambda o: o.index)


def stepwise_log_probs(base, prompt_tokens, tokens):
    """Float64 reference: re-read the text one token at a time in the engine's own (single-sequence) context."""
    base.reset()  # no reused KV prefix: decode the prompt in one piece, as a slot does
    base.prefill(prompt_tokens)
    out = []
    for token in tokens:
        logits = base.logits().astype(np.float64)
        out.append(logits[token] - logits.max() - math.log(np.exp(logits - logits.max()).sum()))
        base.step(token)
    return np.array(out)


def test_eval_perplexity_is_the_log_probability_the_loop_records(engine):
    """The perplexity of an eval sample is the unsteered model's: the log-probabilities the loop records while it
    steers equal those of a stepwise re-read of the finished text, computed in float64."""
    prompt = "My neighbour asked me whether"
    output = next(engine.generate_many([prompt], gate="dense", seeds=[3], max_tokens=12, log_probs=True))
    recorded = np.array([e.log_prob for e in output.events if e.token_id >= 0])
    reread = stepwise_log_probs(engine.base, engine.tokenize(prompt), output.result.token_ids)
    assert recorded.shape == (12,) and np.all(recorded <= 0)
    assert recorded == pytest.approx(reread, abs=1e-4)  # one sequence decodes exactly like `generate`


def test_one_slot_draws_exactly_what_generate_draws(engine):
    settings = dict(gate="entropy", tau=1.5, max_tokens=20)
    [output] = run(engine, [PROMPTS[1]], [11], batch_size=1, **settings)
    engine.base.reset()  # no KV prefix to reuse: `generate` decodes the whole prompt in one piece, as a slot does
    single = engine.generate(PROMPTS[1], seed=11, **settings)
    assert output.result.token_ids == single.token_ids
    assert output.result.stats.junctions == single.stats.junctions > 0


def test_batched_requests_all_finish_with_their_own_bookkeeping(engine):
    # 5 requests through 3 slots: two slots are refilled when their first occupant finishes
    outputs = run(engine, PROMPTS, list(range(5)), batch_size=3, gate="dense", max_tokens=10, log_probs=True)
    for output in outputs:
        stats = output.result.stats
        steps = [e for e in output.events if e.token_id >= 0]
        assert stats.seed == output.index
        assert output.result.stop_reason in ("length", "eos")
        assert len(steps) == len(output.result.token_ids) <= 10
        # dense: every step steers, with one call to fold the text in and one to score the candidates; counted
        # per sequence even though the sequences interleave on one value model
        assert stats.junctions == stats.tokens and stats.value_model_calls == stats.junctions
        assert all(e.junction and len(e.candidates) == 10 and e.log_prob <= 0 for e in steps)


def test_batched_logits_match_single_sequence_decoding_to_float_tolerance(engine):
    """Each slot's log-probabilities agree with a stepwise single-sequence re-read of its text (KV cells are not
    shared across slots); llama.cpp's batched matmuls round differently, hence the tolerance (its own prompt
    prefill differs from stepwise decoding by as much)."""
    outputs = run(engine, PROMPTS[:4], [7, 8, 9, 10], batch_size=4, gate="none", max_tokens=16, log_probs=True)
    for output, prompt in zip(outputs, PROMPTS):
        recorded = np.array([e.log_prob for e in output.events if e.token_id >= 0])
        reference = stepwise_log_probs(engine.base, engine.tokenize(prompt), output.result.token_ids)
        assert recorded.shape == reference.shape
        assert abs(recorded.mean() - reference.mean()) < 0.05
        assert np.median(np.abs(recorded - reference)) < 0.05


def test_batched_generation_is_reproducible_and_seeds_matter(engine):
    first = run(engine, PROMPTS[:3], [1, 2, 3], batch_size=3, gate="entropy", tau=1.5, max_tokens=12)
    again = run(engine, PROMPTS[:3], [1, 2, 3], batch_size=3, gate="entropy", tau=1.5, max_tokens=12)
    other = run(engine, PROMPTS[:3], [4, 5, 6], batch_size=3, gate="entropy", tau=1.5, max_tokens=12)
    assert [o.result.token_ids for o in first] == [o.result.token_ids for o in again]
    assert [o.result.token_ids for o in first] != [o.result.token_ids for o in other]


def test_batched_stop_strings_and_cancellation(engine):
    outputs = run(engine, PROMPTS[:3], [1, 2, 3], batch_size=3, gate="none", max_tokens=40, stop=[" the"])
    for output in outputs:
        assert " the" not in output.result.text
    assert any(o.result.stop_reason == "stop" for o in outputs)
    cancel = threading.Event()
    cancel.set()
    outputs = run(engine, PROMPTS[:3], [1, 2, 3], batch_size=2, cancel=cancel, max_tokens=40)
    assert all(o.result.stop_reason == "cancelled" and o.result.token_ids == [] for o in outputs)


def test_slot_contract(engine):
    context = BatchContext(engine.base, 2, 64)
    try:
        slot = context.slots[0]
        assert slot.n_ctx >= 64 and context.slots[1].n_ctx == slot.n_ctx
        slot.prefill(engine.tokenize("The movie was"))
        first = slot.logits().copy()
        slot.step(int(first.argmax()))
        with pytest.raises(RuntimeError, match="flush"):
            slot.logits()
        context.flush()
        after_step = slot.logits().copy()
        assert not np.array_equal(after_step, first)
        context.slots[1].prefill(engine.tokenize("Soup"))  # another slot's prefill leaves this slot's row alone
        assert slot.n_past == len(engine.tokenize("The movie was")) + 1
        assert np.array_equal(slot.logits(), after_step)
        assert not np.array_equal(context.slots[1].logits(), after_step)  # the other slot did get its own row
    finally:
        context.close()


def test_bad_batch_requests_are_refused(engine):
    with pytest.raises(InvalidSettingError, match="batch_size"):
        list(engine.generate_many(PROMPTS[:1], batch_size=0))
    with pytest.raises(InvalidSettingError, match="seeds"):
        list(engine.generate_many(PROMPTS[:2], seeds=[1]))
    assert list(engine.generate_many([], seeds=[])) == []


def test_batched_generation_stops_at_the_engines_context_like_generate(gemma_path):
    """A slot holds no more than the engine's --ctx: a batched run that outgrows it stops with 'context' at the
    same token as `generate`, instead of running on past the context the user asked for."""
    from sia_edge.engine import Engine

    small = Engine(gemma_path, n_ctx=32, use_value_model=False)
    try:
        prompt = "The longest story I ever heard began like this:"
        prompt_tokens = len(small.tokenize(prompt))
        single = small.generate(prompt, gate="none", max_tokens=64, seed=2)
        [output] = run(small, [prompt], [2], batch_size=2, gate="none", max_tokens=64)
        assert single.stop_reason == output.result.stop_reason == "context"
        # the last token is chosen from the last position's logits but no longer fits to be fed back
        assert len(single.token_ids) == len(output.result.token_ids) == small.base.n_ctx - prompt_tokens + 1
    finally:
        small.close()
