"""The decoding loop's bookkeeping on a tiny scripted base model (the same behaviours run end to end on the real
GGUF in test_generate.py, test_batch.py and test_cli.py)."""

import numpy as np
import pytest

from sia_edge.decoder import Decoding, value_model_tokens
from sia_edge.errors import ModelOutputError
from sia_edge.gate import DEFAULT_TAU, SPARSE_WEIGHT
from sia_edge.settings import GenerationSettings

EOS = 1


class ScriptedBase:
    """A base model whose logits at step i put almost all mass on script[i]; it can break on purpose."""

    n_vocab, bos_id = 32, 2
    prefilled = True  # the prompt is in at once (a batch slot may take rounds)

    def __init__(self, script, n_ctx=64, nan_at=None, interrupt_at=None):
        self.script, self.n_ctx = script, n_ctx
        self.nan_at, self.interrupt_at = nan_at, interrupt_at
        self.fed: list[int] = []
        self.decode_seconds = 0.0

    @property
    def n_past(self):
        return len(self.fed)

    def prefill(self, tokens, reuse=False, hidden=False):
        self.fed = list(tokens)
        self.prompt = len(tokens)
        return 0  # nothing kept from a cache

    def step(self, token):
        self.fed.append(token)

    def logits(self):
        i = len(self.fed) - self.prompt
        if i == self.interrupt_at:
            raise KeyboardInterrupt
        row = np.full(self.n_vocab, -5.0, dtype=np.float32)
        row[self.script[i]] = 20.0
        if i == self.nan_at:
            row[5] = np.nan
        return row

    def is_end_of_generation(self, token):
        return token == EOS

    def token_bytes(self, token):
        return b"" if token in (EOS, self.bos_id) else bytes([ord("a") + token % 26])


def run(base, **settings):
    decoding = Decoding(base, None, [2, 7, 8], GenerationSettings(gate="none", **settings), seed=1)
    return list(decoding), decoding.result


def test_the_end_of_generation_step_has_an_event_and_every_count_agrees():
    events, result = run(ScriptedBase([3, 4, 5, EOS, 6]), max_tokens=10)
    assert result.stop_reason == "eos"
    assert [e.token_id for e in events] == [3, 4, 5, EOS]
    assert [e.end for e in events] == [False, False, False, True] and events[-1].text == ""
    assert result.stats.tokens == len(events) == 4  # one step, one event, one count
    assert result.token_ids == [3, 4, 5] and result.text == "def"


def test_non_finite_logits_name_the_step():
    with pytest.raises(ModelOutputError, match="step 2: .*non-finite"):
        run(ScriptedBase([3, 4, 5, 6], nan_at=2), max_tokens=10)


def test_ctrl_c_inside_the_loop_ends_the_generation_cleanly():
    events, result = run(ScriptedBase([3, 4, 5, 6, 7], interrupt_at=3), max_tokens=10)
    assert result.stop_reason == "cancelled"
    assert result.token_ids == [3, 4, 5] and result.text == "def" == "".join(e.text for e in events)


def test_context_and_length_stops():
    _, full = run(ScriptedBase([3] * 20, n_ctx=6), max_tokens=10)
    assert full.stop_reason == "context" and len(full.token_ids) == 6 - 3 + 1
    _, short = run(ScriptedBase([3] * 20), max_tokens=4)
    assert short.stop_reason == "length" and len(short.token_ids) == 4


def test_the_result_reports_the_settings_that_ran_not_none_for_a_default():
    """Bug: `--json` said "tau": null, "weight": null while the pipeline line said tau=2.02 and w=4."""
    decoding = Decoding(ScriptedBase([3, 4]), None, [2, 7, 8], GenerationSettings(max_tokens=2), seed=1)
    list(decoding)
    ran = decoding.result.settings
    assert (ran["gate"], ran["tau"], ran["weight"]) == ("entropy", DEFAULT_TAU, SPARSE_WEIGHT)
    assert ran["value_model"] is None  # no value model steered this one
    assert f"tau={DEFAULT_TAU:g}" in decoding.result.pipeline and f"w={SPARSE_WEIGHT:g}" in decoding.result.pipeline


def test_value_model_tokens_drops_only_a_leading_bos():
    assert value_model_tokens([2, 7, 2, 8], [9], bos_id=2) == [7, 2, 8, 9]
    assert value_model_tokens([7, 8], [], bos_id=2) == [7, 8]
    prompt = [2, 7]
    value_model_tokens(prompt, [1], bos_id=2)
    assert prompt == [2, 7]  # its input is not mutated
