"""Rewards for `vm distill` (sia_edge/rewards.py) and the profanity judge: real packages, real value model."""

from __future__ import annotations

import math
import sys
import types
from pathlib import Path

import pytest

from sia_edge.errors import InvalidSettingError, SiaError
from sia_edge.rewards import CheckedReward, RewardError, checked, load_reward

REPO = Path(__file__).resolve().parent.parent
SHIPPED_GEMMA = REPO / "sia_edge" / "models" / "gemma3-270m-sentiment.onnx"


class ListReward:
    """A reward that returns whatever it was given (to drive the checks)."""

    def __init__(self, name: str, make):
        self.name = name
        self._make = make

    def score(self, texts):
        return self._make(texts)


def test_clean_reward_ranks_insults_below_polite_text():
    pytest.importorskip("profanity_check")
    reward = load_reward("clean")
    polite, rude = checked(reward).score(["Thank you, that was very kind of you.", "Shut up, you stupid fucking idiot."])
    assert reward.name == "clean"
    assert 0.0 <= rude < 0.5 < polite <= 1.0


def test_word_list_judge_scores_clean_text_higher():
    pytest.importorskip("better_profanity")
    from sia_edge.judges import load_judge

    judge = load_judge("word-list-clean")
    assert judge.score(["What a lovely afternoon.", "What a load of sh1t.", "Damn it!"]) == [1.0, 0.0, 0.0]


def test_missing_clean_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "profanity_check", None)  # import now raises ImportError
    with pytest.raises(RewardError, match=r"pip install 'sia-edge\[clean\]'"):
        load_reward("clean")


def test_module_callable_reward(monkeypatch):
    module = types.ModuleType("my_rewards")
    module.make = lambda: ListReward("length", lambda texts: [float(len(t)) for t in texts])
    module.not_a_reward = lambda: object()
    monkeypatch.setitem(sys.modules, "my_rewards", module)
    assert checked(load_reward("my_rewards:make")).score(["ab", "abcd"]) == [2.0, 4.0]
    with pytest.raises(InvalidSettingError, match="must return an object with a `name` and `score"):
        load_reward("my_rewards:not_a_reward")
    with pytest.raises(InvalidSettingError, match="cannot load reward 'my_rewards:missing'"):
        load_reward("my_rewards:missing")
    with pytest.raises(InvalidSettingError, match="clean, value-model:PATH or module:callable"):
        load_reward("no-such-reward")


def test_value_model_reward_matches_the_runtime_score(gemma_path):
    from sia_edge.base_model import BaseModel
    from sia_edge.value_model import ValueModel

    tokenizer = BaseModel(gemma_path, vocab_only=True)
    reward = load_reward(f"value-model:{SHIPPED_GEMMA}", tokenizer)
    texts = ["I love this wonderful place, the staff were great", "This was the worst, most awful service ever"]
    scores = checked(reward).score(texts)
    direct = ValueModel(SHIPPED_GEMMA).score_sequences([tokenizer.tokenize(t, add_bos=False) for t in texts])
    assert reward.name == "value-model:gemma3-270m-sentiment.onnx"
    assert scores == pytest.approx(direct.tolist(), abs=1e-6)
    assert scores[0] > scores[1]
    with pytest.raises(InvalidSettingError, match="give the value model's path"):
        load_reward("value-model:", tokenizer)
    with pytest.raises(SiaError, match="value model not found"):
        load_reward("value-model:/nowhere/vm.onnx", tokenizer)


@pytest.mark.parametrize("make, message", [
    (lambda texts: [1.0] * (len(texts) - 1), r"reward 'bad' returned 2 scores for 3 texts \(texts 10..12\)"),
    (lambda texts: [0.0, math.nan, 1.0], r"reward 'bad' returned nan for text 11; scores must be finite"),
    (lambda texts: [0.0, 1.0, math.inf], r"reward 'bad' returned inf for text 12"),
    (lambda texts: [0.0, "high", 1.0], r"reward 'bad' returned 'high' for text 11, not a number"),
    (lambda texts: None, r"reward 'bad' returned NoneType, not a list"),
])
def test_bad_scores_are_one_line_errors_naming_reward_and_text(make, message):
    with pytest.raises(RewardError, match=message) as caught:
        CheckedReward(ListReward("bad", make)).score(["a", "b", "c"], first_index=10)
    assert "\n" not in str(caught.value)


def test_a_raising_reward_is_reported_at_the_text_that_fails():
    def fails_on_b(texts):
        if "b" in texts:
            raise ValueError("cannot score 'b'\nsecond line of detail")
        return [1.0] * len(texts)

    with pytest.raises(RewardError) as caught:
        CheckedReward(ListReward("picky", fails_on_b)).score(["a", "b", "c"], first_index=5)
    assert str(caught.value) == "reward 'picky' failed on text 6: ValueError: cannot score 'b'"


def test_a_reward_that_fails_only_on_batches_names_the_batch():
    def no_batches(texts):
        if len(texts) > 1:
            raise RuntimeError("out of memory")
        return [0.5]

    with pytest.raises(RewardError, match=r"failed on a batch of texts 0..2 \(none fails alone\): RuntimeError"):
        CheckedReward(ListReward("big", no_batches)).score(["a", "b", "c"])
