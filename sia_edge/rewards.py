"""Sequence-level rewards for `sia-edge vm distill`: anything with a `name` and `score(texts) -> list[float]`.

A reward scores finished text once; the distilled value model then learns to predict it from every prefix (the SIA
paper's Eq. 6). Higher = more aligned. Specs, like judges (judges.py):

    clean               1 - P(offensive) from the alt-profanity-check package (pip install 'sia-edge[clean]')
    value-model:PATH    an existing ONNX value model's score of the whole text (tokenized with the base model)
    module:callable     callable() returns an object with `name` and `score(texts)`

`checked(reward)` wraps any of them so that a wrong number of scores, NaN, infinity or an exception becomes one
line naming the reward and the text. Never imported by the runtime (generate, chat, serve).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable, Protocol, Sequence, runtime_checkable

from .errors import InvalidSettingError, SiaError
from .judges import load_plugin

CLEAN_INSTALL_HINT = "pip install 'sia-edge[clean]'"
VALUE_MODEL_PREFIX = "value-model:"


class RewardError(SiaError):
    """A reward failed or returned unusable scores (names the reward and the text index)."""


@runtime_checkable
class Reward(Protocol):
    name: str

    def score(self, texts: list[str]) -> list[float]:
        """One finite score per text; higher = more aligned."""
        ...


class CleanReward:
    """1 - P(offensive) from alt-profanity-check (a linear model over word n-grams; its training data is not
    shipped, so a value model distilled from it should be judged by something else, e.g. the `profanity` judge)."""

    name = "clean"

    def __init__(self) -> None:
        try:
            from profanity_check import predict_prob
        except ImportError:
            raise RewardError(f"the clean reward needs the alt-profanity-check package: {CLEAN_INSTALL_HINT}") from None
        self._predict_prob = predict_prob

    def score(self, texts: list[str]) -> list[float]:
        if not texts:
            return []
        return [1.0 - float(p) for p in self._predict_prob(list(texts))]


class ValueModelReward:
    """An existing value model's score (its logit) of each whole text, tokenized by `tokenizer` without BOS, as the
    runtime feeds the value model."""

    def __init__(self, path: str | os.PathLike, tokenizer) -> None:
        from .value_model import ValueModel

        self.path = Path(path).expanduser()
        self.name = f"{VALUE_MODEL_PREFIX}{self.path.name}"
        self._model = ValueModel(self.path)
        self._model.bind(tokenizer.fingerprint, tokenizer.name, tokenizer.token_bytes, tokenizer.n_vocab)
        self._tokenizer = tokenizer

    def score(self, texts: list[str]) -> list[float]:
        if not texts:
            return []
        sequences = [self._tokenizer.tokenize(text, add_bos=False) for text in texts]
        return [float(s) for s in self._model.score_sequences(sequences)]


BUILT_IN = ("clean", f"{VALUE_MODEL_PREFIX}PATH")


def load_reward(spec: str, tokenizer=None) -> Reward:
    """'clean', 'value-model:PATH' (needs `tokenizer`, a BaseModel, to tokenize texts) or 'module:callable'."""
    if spec == "clean":
        return CleanReward()
    if spec.startswith(VALUE_MODEL_PREFIX):
        path = spec[len(VALUE_MODEL_PREFIX):]
        if not path:
            raise InvalidSettingError(f"reward {spec!r}: give the value model's path after {VALUE_MODEL_PREFIX!r}")
        if tokenizer is None:
            raise InvalidSettingError(f"reward {spec!r} needs the base model's tokenizer")
        return ValueModelReward(path, tokenizer)
    return load_plugin(spec, "reward", BUILT_IN, Reward)


class CheckedReward:
    """Calls a reward and refuses anything but one finite number per text, with a one-line RewardError."""

    def __init__(self, reward: Reward) -> None:
        self.reward = reward
        self.name = str(getattr(reward, "name", type(reward).__name__))

    def score(self, texts: Sequence[str], first_index: int = 0,
              describe: Callable[[int], str] | None = None) -> list[float]:
        """Scores of `texts`. In errors, text i is called `text {first_index + i}` (its index in the caller's
        list), followed by `describe(first_index + i)` in brackets when given."""
        self._describe = describe
        texts = list(texts)
        if not texts:
            return []
        try:
            scores = self.reward.score(texts)
        except Exception as exc:  # noqa: BLE001 - a user's reward may raise anything; report it on one line
            raise self._failure(texts, first_index, exc) from None
        try:
            scores = list(scores)
        except TypeError:
            raise RewardError(f"reward {self.name!r} returned {type(scores).__name__}, not a list of scores "
                              f"(texts {first_index}..{first_index + len(texts) - 1})") from None
        if len(scores) != len(texts):
            raise RewardError(f"reward {self.name!r} returned {len(scores)} scores for {len(texts)} texts "
                              f"(texts {first_index}..{first_index + len(texts) - 1}); it must return one per text")
        checked = []
        for offset, value in enumerate(scores):
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise RewardError(f"reward {self.name!r} returned {value!r} for {self._text(first_index + offset)}, "
                                  f"not a number") from None
            if not math.isfinite(number):
                raise RewardError(f"reward {self.name!r} returned {number} for {self._text(first_index + offset)}; "
                                  f"scores must be finite numbers")
            checked.append(number)
        return checked

    def _failure(self, texts: list[str], first_index: int, exc: Exception) -> RewardError:
        """The batch raised: find the first text that raises on its own, to name it."""
        index, error = None, exc
        if len(texts) > 1:
            for offset, text in enumerate(texts):
                try:
                    self.reward.score([text])
                except Exception as single:  # noqa: BLE001
                    index, error = first_index + offset, single
                    break
        else:
            index = first_index
        where = (self._text(index) if index is not None
                 else f"a batch of texts {first_index}..{first_index + len(texts) - 1} (none fails alone)")
        message = (str(error).strip().splitlines() or [""])[0]
        return RewardError(f"reward {self.name!r} failed on {where}: {type(error).__name__}: {message}")


    def _text(self, index: int) -> str:
        describe = getattr(self, "_describe", None)
        return f"text {index}" + (f" ({describe(index)})" if describe else "")


def checked(reward: Reward) -> CheckedReward:
    return reward if isinstance(reward, CheckedReward) else CheckedReward(reward)
