"""Hidden states from the base model (the base side of contract 3), on both real GGUFs, and seeded replay.

References are independent of the path under test: a separate llama.cpp context (BaseModel.hidden_states) fed the
same tokens, and logits decoded with hidden states off.
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.slow

PROMPT = "The movie was not good, and the popcorn"


@pytest.fixture(scope="module", params=["gemma", "smollm2"])
def base(request, gemma_path, smollm_path):
    from sia_edge.base_model import BaseModel

    model = BaseModel(gemma_path if request.param == "gemma" else smollm_path, n_ctx=512)
    yield model
    model.close()


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_the_hidden_state_after_a_prompt_equals_a_separate_contexts(base):
    tokens = base.tokenize(PROMPT)
    base.prefill(tokens, hidden=True)
    mine = base.hidden().copy()
    reader = base.hidden_states()
    # decoded the same way (all but the last token, then the last alone): the same numbers
    np.testing.assert_array_equal(mine, reader.after(tokens))
    # every position as an output (how training reads texts): other matrix shapes (llama.cpp quantises the
    # activations of a batch differently), measured 5% of the norm on Gemma: within 10%
    assert mine.shape == (base.n_embd,) and np.isfinite(mine).all()
    assert _relative(reader.of(tokens)[-1], mine) < 0.1


def test_hidden_states_at_each_step_follow_the_text(base):
    tokens = base.tokenize(PROMPT)
    base.prefill(tokens, hidden=True)
    continuation = base.tokenize(" was stale and cold", add_bos=False)
    reader = base.hidden_states()
    for i, token in enumerate(continuation):
        base.step(token)
        reference = reader.of(tokens + continuation[:i + 1])[-1]
        assert _relative(base.hidden(), reference) < 0.1
        # and far from the state one token earlier: the step really moved it
        assert _relative(reader.of(tokens + continuation[:i])[-1], reference) > 0.1


def test_logits_with_hidden_states_on_equal_logits_with_them_off(base):
    tokens = base.tokenize(PROMPT)
    base.prefill(tokens, hidden=True)
    base.step(tokens[1])
    on = base.logits().copy()
    base.prefill(tokens[:-1])  # hidden states off; the same decode shapes as the hidden prefill
    base.step(tokens[-1])
    base.step(tokens[1])
    np.testing.assert_array_equal(on, base.logits())


def test_batch_slots_return_the_single_paths_hidden_states(base):
    from sia_edge.base_model import BatchContext

    tokens = base.tokenize(PROMPT)
    base.prefill(tokens, hidden=True)
    alone = base.hidden().copy()
    context = BatchContext(base, 2, 128)
    try:
        context.slots[0].prefill(tokens, hidden=True)
        context.slots[1].prefill(base.tokenize("Something else entirely"))  # a slot that reads no hidden state
        np.testing.assert_array_equal(context.slots[0].hidden(), alone)
        with pytest.raises(RuntimeError):
            context.slots[1].hidden()
        for slot in context.slots:
            slot.step(tokens[1])
        context.flush()
        base.step(tokens[1])
        assert _relative(context.slots[0].hidden(), base.hidden()) < 0.1
    finally:
        context.close()


def test_look_ahead_states_equal_a_separate_context_fed_each_candidate(base):
    from sia_edge.base_model import CandidateStates

    tokens = base.tokenize(PROMPT)
    reader, look_ahead = base.hidden_states(), CandidateStates(base, k=4, n_ctx=64)
    try:
        where = [2, 5, len(tokens)]
        ids, states = look_ahead.at(tokens, where)
        assert ids.shape == (3, 4) and states.shape == (3, 4, base.n_embd)
        for row, p in enumerate(where):
            base.prefill(tokens[:p])
            logits = base.logits()
            # the base model's 4 most likely next tokens, most likely first (a near-tie may swap neighbours)
            assert ids[row, 0] == int(np.argmax(logits))
            assert set(ids[row]) <= set(np.argsort(-logits)[:5].tolist())
            for j, candidate in enumerate(ids[row]):
                reference = reader.of(tokens[:p] + [int(candidate)])[-1]
                assert _relative(states[row, j], reference) < 0.1  # batched kernels, as above
            # four different continuations, four different states: no candidate saw another one's cell
            assert min(_relative(states[row, 0], states[row, j]) for j in range(1, 4)) > 0.1
        # reading again after another text gives the same numbers: nothing of the first text is left behind
        look_ahead.at(base.tokenize("Completely unrelated words here"), [3])
        np.testing.assert_array_equal(look_ahead.at(tokens, where)[1], states)
    finally:
        look_ahead.close()


@pytest.mark.parametrize("parallel", [1, 2])
def test_a_look_ahead_models_seed_replays_after_other_prompts(gemma_path, parallel):
    """A look-ahead model's mirror (a context of its own, kept between generations) keeps a prefix only when the
    generation's own context does: the same prompt and seed steered by it give the same tokens on a fresh engine
    and after prompts that share a prefix, on the single path and in a batch slot (without prefix reuse, which
    promises no exact replay: docs/chat-and-serve.md)."""
    from pathlib import Path

    import sia_edge
    from sia_edge.engine import Engine

    model = Path(sia_edge.__file__).parent / "models" / "gemma3-270m-lookahead-l8-sentiment.onnx"
    prompt = "The weather today was"

    def run(engine: Engine) -> list:
        stream = engine.stream(prompt, max_tokens=16, seed=123, gate="dense")
        return [(event.token_id, event.rewards) for event in stream]  # the junction scores too, bit for bit

    fresh = Engine(model=gemma_path, value_model=model, parallel=parallel, prefix_reuse=False)
    try:
        first = run(fresh)
    finally:
        fresh.close()
    busy = Engine(model=gemma_path, value_model=model, parallel=parallel, prefix_reuse=False)
    try:
        busy.generate("The weather today was awful and", max_tokens=6, seed=5, gate="dense")  # shares a prefix
        again = run(busy)
        busy.generate("Something unrelated", max_tokens=6, seed=6, gate="dense")
        third = run(busy)
    finally:
        busy.close()
    assert first == again == third


def test_reading_hidden_states_is_refused_when_they_are_off(base):
    base.prefill(base.tokenize(PROMPT))
    with pytest.raises(RuntimeError, match="hidden states are off"):
        base.hidden()


def test_a_seed_replays_on_a_fresh_engine_and_after_other_prompts(gemma_path):
    """parallel=1: the same prompt and seed give the same tokens whatever the engine decoded before (bug 1: a
    prompt sharing a prefix with the previous request used to reuse its KV cache and drift)."""
    from sia_edge.engine import Engine

    prompt = "The weather today was"
    fresh = Engine(model=gemma_path, parallel=1)
    try:
        first = fresh.generate(prompt, max_tokens=24, seed=123, gate="dense").token_ids
    finally:
        fresh.close()
    busy = Engine(model=gemma_path, parallel=1)
    try:
        busy.generate("The weather today was awful and", max_tokens=8, seed=5)  # shares a prefix
        again = busy.generate(prompt, max_tokens=24, seed=123, gate="dense").token_ids
        busy.generate("Something unrelated", max_tokens=8, seed=6)
        third = busy.generate(prompt, max_tokens=24, seed=123, gate="dense").token_ids
    finally:
        busy.close()
    assert first == again == third


def test_a_generations_look_ahead_equals_a_separate_context_fed_each_candidate(base):
    """LookAhead (a look-ahead value model's junctions): the state after the text so far plus each candidate, as a
    separate context reads it; then the text grows and shrinks (the mirror keeps its common prefix) and the
    numbers stay those of a fresh read."""
    from sia_edge.base_model import LookAhead

    tokens = base.tokenize(PROMPT)
    reader, look_ahead = base.hidden_states(), LookAhead(base, k=4, n_ctx=64)
    try:
        def check(text: list[int]) -> np.ndarray:
            candidates = first_candidates(base, text)
            states = look_ahead.states(text, candidates)
            assert states.shape == (4, base.n_embd)
            for j, candidate in enumerate(candidates):
                assert _relative(states[j], reader.of(text + [int(candidate)])[-1]) < 0.1  # batched kernels
            # four candidates, four states: none saw another one's cell
            assert min(_relative(states[0], states[j]) for j in range(1, 4)) > 0.1
            return states

        first = check(tokens[:4])
        check(tokens)  # grown: only the new tokens are decoded
        held = look_ahead.decoded_tokens
        check(tokens[:6])  # shrunk: the mirror cuts back to the common prefix
        assert look_ahead.decoded_tokens == held + 4  # nothing re-read but the 4 candidates
        look_ahead.forget()  # a new generation without prefix reuse: the same decode as the first, bit for bit
        np.testing.assert_array_equal(look_ahead.states(tokens[:4], first_candidates(base, tokens[:4])), first)
        assert look_ahead._held == tokens[:4]
        assert look_ahead._tap.stops > 0  # each decode stopped before the output layer (this llama.cpp's names)
        with pytest.raises(ValueError, match="at most 4 candidates"):
            look_ahead.states(tokens, np.arange(5))
    finally:
        look_ahead.close()


def first_candidates(base, text: list[int]) -> np.ndarray:
    """The base model's 4 most likely next tokens after `text`."""
    base.prefill(text)
    return np.argsort(-base.logits())[:4]


def test_a_middle_layer_is_read_where_llama_cpp_computes_it(base):
    """LayerStates (base_model.layers): the final state it copies from llama.cpp's graph is exactly the one
    `embeddings` returns; a middle layer reads the same alone or with others, holds every position (causal: a
    text's row i is the last row of its first i + 1 tokens), and is not the final state."""
    from sia_edge.base_model import LayerStates

    tokens = base.tokenize(PROMPT)
    middle = base.n_layer // 2
    both = LayerStates(base, [middle, base.n_layer], n_ctx=64)
    alone = base.hidden_states(middle)
    try:
        states = both.all(tokens)
        np.testing.assert_array_equal(states[base.n_layer], base.hidden_states().of(tokens))
        assert states[middle].shape == (len(tokens), base.n_embd) and np.isfinite(states[middle]).all()
        np.testing.assert_array_equal(alone.of(tokens), states[middle])
        assert _relative(alone.after(tokens[:5]), states[middle][4]) < 0.1  # other batch shapes round differently
        assert _relative(states[middle][-1], states[base.n_layer][-1]) > 0.5
        assert both._tap.stops == 1  # one decode, ended at the final norm: the output layer never ran
        with pytest.raises(ValueError, match="outside 0"):
            LayerStates(base, [base.n_layer + 1])
    finally:
        both.close()


def test_a_look_ahead_at_a_middle_layer_equals_a_separate_context_fed_each_candidate(base):
    """A look-ahead value model that reads block L: the state after the text plus each candidate at L, as a
    separate context reads it, while the mirror grows and shrinks; the text's new tokens share the candidates'
    decode (one decode per junction) unless they outgrow the batch (then the oldest are mirrored first); every
    decode ended at L."""
    from sia_edge.base_model import LookAhead

    tokens = base.tokenize(PROMPT)
    long_text = base.tokenize(" ".join([PROMPT] * 12))[:90]  # 90 new tokens: more than a 64-token batch
    layer = base.n_layer // 2
    reader, look_ahead = base.hidden_states(layer), LookAhead(base, k=4, n_ctx=128, layer=layer)
    try:
        for text in (tokens[:4], tokens, tokens[:6], long_text):
            candidates = first_candidates(base, text)
            states = look_ahead.states(text, candidates)
            assert states.shape == (4, base.n_embd)
            for j, candidate in enumerate(candidates):
                assert _relative(states[j], reader.of(text + [int(candidate)])[-1]) < 0.1
            assert min(_relative(states[0], states[j]) for j in range(1, 4)) > 0.01
        # one decode per junction (the text's new tokens with the candidates), and one to mirror the long text's
        # oldest tokens: each stopped at L
        assert look_ahead._tap.stops == 5
        assert look_ahead._held == long_text
    finally:
        look_ahead.close()
