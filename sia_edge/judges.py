"""Independent judges for evaluation: anything with a `name` and `score(texts) -> list[float]`.

The value model steers generation, so its own score is the proxy objective being optimised; a judge that played no
part in steering tells whether the gain is real. The default is VADER's compound sentiment in [-1, 1].
Bring your own with `--judge package.module:factory`, where `factory()` returns an object following `Judge`.
"""

from __future__ import annotations

import importlib
from typing import Protocol, runtime_checkable

from .errors import InvalidSettingError, SiaError


@runtime_checkable
class Judge(Protocol):
    name: str

    def score(self, texts: list[str]) -> list[float]:
        """One score per text; higher = more of what the judge measures."""
        ...


class VaderJudge:
    """VADER compound sentiment (Hutto & Gilbert 2014): a lexicon-and-rules scorer, no training, no shared tokenizer."""

    name = "vader"

    def __init__(self) -> None:
        try:
            from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
        except ImportError:
            raise SiaError("the vader judge needs the vaderSentiment package: pip install 'sia-edge[eval]'") from None
        self._analyzer = SentimentIntensityAnalyzer()

    def score(self, texts: list[str]) -> list[float]:
        return [float(self._analyzer.polarity_scores(text)["compound"]) for text in texts]


class WordListCleanJudge:
    """1.0 if better-profanity's word list (with leetspeak variants) finds no swear word in the text, else 0.0.
    Higher = cleaner, like every judge, so eval's gains and verdicts read the right way round; the offensive rate
    of an arm is 1 minus its mean. A word list, unlike the learned model behind the `clean` reward, so it can judge
    what that reward trained."""

    name = "word-list-clean"

    def __init__(self) -> None:
        try:
            from better_profanity import profanity
        except ImportError:
            raise SiaError("the word-list-clean judge needs the better-profanity package: "
                           "pip install 'sia-edge[clean]'") from None
        self._profanity = profanity

    def score(self, texts: list[str]) -> list[float]:
        return [0.0 if self._profanity.contains_profanity(text) else 1.0 for text in texts]


BUILT_IN = {"vader": VaderJudge, "word-list-clean": WordListCleanJudge}


def load_judge(spec: str) -> Judge:
    """'vader', 'word-list-clean', or 'module:callable' where callable() returns a Judge."""
    if spec in BUILT_IN:
        return BUILT_IN[spec]()
    return load_plugin(spec, "judge", BUILT_IN, Judge)


def load_plugin(spec: str, kind: str, built_in, protocol):
    """A scorer named 'module:callable' (a judge or a reward): callable() must return an object following
    `protocol` (a `name` and `score(texts)`). Every failure is an InvalidSettingError naming the spec."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise InvalidSettingError(f"{kind} must be one of {', '.join(built_in)} or module:callable, got {spec!r}")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise InvalidSettingError(f"cannot load {kind} {spec!r}: {exc}") from None
    scorer = factory()
    if not isinstance(scorer, protocol):
        raise InvalidSettingError(f"{kind} {spec!r} must return an object with a `name` and `score(texts)`")
    return scorer
