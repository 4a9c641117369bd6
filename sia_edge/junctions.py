"""What a value model sees of one generation (its view), and how junctions are scored: alone, or merged with other
generations' junctions into one value-model call (the scheduler)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .value_model import PrefixState


class HiddenView:
    """What a hidden-state value model (contract 3) sees of a generation: the base model's hidden state after the
    text so far, and for a pooling model the mean of the states since the prompt (the state after the prompt and
    after each generated token: a running sum, one vector add per step), and for a mean+tokens model the tokens
    generated so far. Nothing else to fold or carry.

    For a look-ahead model (scoring = look-ahead) a junction's input is instead the state after each candidate,
    read by decoding the k candidates (the base's `look_ahead`), and its pool counts that state too."""

    def __init__(self, value_model, base, k: int = 10) -> None:
        self.value_model = value_model
        self.base = base
        self.k = k  # candidates per junction, so the look-ahead context is sized once
        self.looks_ahead = getattr(value_model, "looks_ahead", False)
        self._pools = getattr(value_model, "pools", False)
        self._sum: np.ndarray | None = None  # float64, sized by the first state
        self._count = 0
        self.written: list[int] = []  # the tokens generated so far (a mean+tokens model reads them)

    def hidden(self) -> np.ndarray:
        return np.array(self.base.hidden(), dtype=np.float32)  # a copy: the view dies with the next decode

    def observe(self) -> None:
        """Count the state of this step (called once per step, before its junction)."""
        if self._pools:
            state = self.base.hidden()
            self._sum = state.astype(np.float64) if self._sum is None else self._sum + state
            self._count += 1

    def pooled(self) -> np.ndarray | None:
        return None if self._sum is None else (self._sum / self._count).astype(np.float32)

    def pool_state(self) -> tuple[np.ndarray | None, int]:
        """The running sum and count as they are now (to pool a text that ends here later)."""
        return (None if self._sum is None else self._sum.copy()), self._count

    def inputs(self, candidate_ids: np.ndarray, tokens: list[int] | None = None, pool_state=None):
        """A junction's `hidden` and `pooled`: the state here, one row (d,); or, looking ahead, the state after
        `tokens` (default: the text so far) plus each candidate, (k, d), pooled with `pool_state` (default: now).
        -> (hidden, pooled or None)"""
        if not self.looks_ahead:
            return self.hidden(), self.pooled()
        reader = self.base.look_ahead(max(self.k, len(candidate_ids)), self.value_model.layer)
        states = reader.states(self.base.tokens if tokens is None else tokens, candidate_ids)
        if not self._pools:
            return states, None
        total, count = pool_state or (self._sum, self._count)
        return states, ((total + states) / (count + 1)).astype(np.float32)

    def append(self, token: int) -> None:
        self.written.append(token)


class ValueView:
    """The text the value model sees for one generation, folded into its state lazily: only at junctions.

    What it sees is `value_model_tokens(...)`: the prompt without its leading BOS, then every generated token. A
    junction's scoring call also returns the state after each candidate; the token then chosen brings its state.
    """

    def __init__(self, value_model, prompt_tokens: list[int], bos_id: int) -> None:
        self.value_model = value_model
        self.prefix = value_model.empty_prefix()
        self.unscored = value_model_tokens(prompt_tokens, (), bos_id)
        self._after: tuple[np.ndarray, np.ndarray] | None = None  # (candidate ids, state after each)

    def hidden(self) -> None:
        return None  # this kind of value model reads the text, not the base model's state

    def inputs(self, candidate_ids: np.ndarray, tokens=None) -> tuple[None, None]:
        return None, None

    def observe(self) -> None:
        pass

    def pooled(self) -> None:
        return None

    def scored(self, candidate_ids: np.ndarray, states: np.ndarray) -> None:
        """A junction was scored: the next token appended is one of these candidates, with these states."""
        self._after = (candidate_ids, states)

    def append(self, token: int) -> None:
        after, self._after = self._after, None
        if after is not None:
            row = np.flatnonzero(after[0] == token)
            if row.size:  # chosen at a junction: its state already holds every token so far
                self.prefix = PrefixState(after[1][row[0]], self.prefix.n_tokens + len(self.unscored) + 1)
                self.unscored = []
                return
        self.unscored.append(token)


@dataclass
class Junction:
    """A step waiting for the value model's scores of its k candidates. Whoever scores it (alone, or merged with
    other requests' junctions by `score_junctions`) fills in the value-model calls and seconds charged to it."""

    view: ValueView | HiddenView
    candidate_ids: np.ndarray
    hidden: np.ndarray | None = None  # the base model's state here (d,), or after each candidate (k, d) looking ahead
    pooled: np.ndarray | None = None  # and the mean state over the continuation, for one that pools
    calls: int = 0  # value-model calls this junction needed on its own: one, two with a long fold first
    seconds: float = 0.0  # its share of the value-model time

    def score_alone(self) -> np.ndarray:
        return score_junctions([self])[0]


def score_junctions(junctions: list[Junction]) -> list[np.ndarray]:
    """Score junctions that share one value model in one batched call whatever their number (two if some have a
    long stretch of new text to fold first). -> each junction's rewards (k,)"""
    vm = junctions[0].view.value_model
    seconds_before = vm.seconds
    if getattr(vm, "looks_ahead", False):  # one row per candidate, each the state after it
        rows = np.concatenate([j.hidden for j in junctions])
        pooled = np.concatenate([j.pooled for j in junctions]) if vm.pools else None
        flat = vm.score_hidden(rows, [np.array([c]) for j in junctions for c in j.candidate_ids], pooled)
        ends = np.cumsum([len(j.candidate_ids) for j in junctions])[:-1]
        for junction in junctions:
            junction.calls, junction.seconds = 1, (vm.seconds - seconds_before) / len(junctions)
        return np.split(np.array([score[0] for score in flat]), ends)
    if getattr(vm, "reads_hidden", False):  # stateless: one call, nothing to carry
        pooled = np.stack([j.pooled for j in junctions]) if getattr(vm, "pools", False) else None
        written = [j.view.written for j in junctions] if getattr(vm, "reads_continuation", False) else None
        rewards = vm.score_hidden(np.stack([j.hidden for j in junctions]), [j.candidate_ids for j in junctions],
                                  pooled, written)
        for junction in junctions:
            junction.calls, junction.seconds = 1, (vm.seconds - seconds_before) / len(junctions)
        return rewards
    views = [j.view for j in junctions]
    rewards, states, folded = vm.score_junctions([v.prefix for v in views], [v.unscored for v in views],
                                                 [j.candidate_ids for j in junctions])
    share = (vm.seconds - seconds_before) / len(junctions)
    for junction, after, fold in zip(junctions, states, folded):
        junction.view.scored(junction.candidate_ids, after)  # a long fold is inside these states too
        junction.calls, junction.seconds = 1 + fold, share
    return rewards


def value_model_tokens(prompt_tokens, continuation, bos_id: int) -> list[int]:
    """What a value model sees of a text (models/README.md): the prompt without the BOS the tokenizer put first,
    then the continuation. The one definition used by the loop, Best-of-N, evaluation and distillation.

    Only a leading BOS goes: for chat models the BOS id can be a turn marker that appears again later. A byte-level
    value model turns these ids into their bytes itself, so special tokens contribute nothing there.
    """
    prompt = list(prompt_tokens)
    return (prompt[1:] if prompt and prompt[0] == bos_id else prompt) + list(continuation)
