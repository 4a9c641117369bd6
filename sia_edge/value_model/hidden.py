"""Contract 3: value models that read the base model's own hidden state (models/README.md)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from ..errors import TokenizerMismatchError, ValueModelError
from ..steering import weight_scale
from .session import by_name, metadata_of, open_session
from .text import pad_sequences

HIDDEN_CONTRACT = "3"  # HiddenValueModel: `sia_edge.input = hidden`, scores candidates from the base model's state

_HIDDEN_INPUTS = {"hidden": "tensor(float)", "candidates": "tensor(int64)"}
_POOLED_INPUT = {"pooled": "tensor(float)"}  # optional: with metadata pooling = mean or mean+tokens
_CONTINUATION_INPUTS = {"continuation": "tensor(int64)", "continuation_mask": "tensor(float)"}  # mean+tokens only
_HIDDEN_OUTPUTS = {"scores": "tensor(float)"}
POOLINGS = ("none", "mean", "mean+tokens")
STATE_POOLINGS = ("mean", "mean+tokens")  # the poolings that read the `pooled` input
SCORINGS = ("candidate", "look-ahead")  # metadata `scoring`: what a row's `hidden` is (models/README.md)


class HiddenValueModel:
    """Contract 3: a head on the base model's own last-layer hidden state (models/README.md).

        inputs   hidden     float32 [batch, d]  the base model's hidden state after the text so far
                 candidates int64   [batch, k]  token ids
                 pooled     float32 [batch, d]  only with metadata pooling = mean or mean+tokens: the mean of the
                                                hidden states over the continuation so far (the state after the
                                                prompt, after each token)
                 continuation      int64   [batch, n]  only with pooling = mean+tokens: the token ids generated
                 continuation_mask float32 [batch, n]  so far (after the prompt), right-padded; mask 1 = a token
        output   scores     float32 [batch, k]  value of the text with candidate j appended (a logit)

    With metadata scoring = look-ahead, each row's `hidden` (and `pooled`) is the state *after* the text with its
    candidate appended, read by decoding that candidate (base_model.LookAhead): one row per candidate, k = 1.

    Stateless, so a junction is one call whatever the length of the text, and junctions of several generations
    stack into one call. It serves only the base model whose weights it was trained on: its metadata names their
    fingerprint (models.weights_fingerprint), checked by `bind`.
    """

    reads_hidden = True
    reads_bytes = False
    input = "hidden"

    def __init__(self, path: str | os.PathLike, threads: int = 1, session=None) -> None:
        self.path = Path(path)
        self.session = session or open_session(self.path, threads)
        self.metadata = metadata_of(self.session)
        if self.metadata.get("contract") != HIDDEN_CONTRACT or self.metadata.get("input") != "hidden":
            raise ValueModelError(f"{self.path}: a hidden-state value model needs metadata 'sia_edge.contract' = 3 "
                                  f"and 'sia_edge.input' = hidden, got {self.metadata.get('contract')!r} and "
                                  f"{self.metadata.get('input')!r}")
        self._check_signature()
        self.weights = self.metadata.get("weights_fingerprint", "")
        self.fingerprint = self.metadata.get("tokenizer_fingerprint", "")
        if not self.weights:
            raise ValueModelError(f"{self.path}: metadata 'sia_edge.weights_fingerprint' is missing (a hidden-state "
                                  f"model must name the base model whose states it reads)")
        graph_size = by_name(self.session.get_inputs(), "hidden").shape[1]
        try:
            self.hidden_size = int(self.metadata.get("hidden_size", ""))
        except ValueError:
            raise ValueModelError(f"{self.path}: metadata 'sia_edge.hidden_size' must be an integer, got "
                                  f"{self.metadata.get('hidden_size')!r}") from None
        if graph_size != self.hidden_size:
            raise ValueModelError(f"{self.path}: metadata says hidden_size {self.hidden_size} but the graph's "
                                  f"'hidden' input has {graph_size} columns")
        self.pooling = self.metadata.get("pooling", "none")
        names = {i.name for i in self.session.get_inputs()}
        if (self.pooling not in POOLINGS or ("pooled" in names) != self.pools
                or ("continuation" in names) != self.reads_continuation):
            raise ValueModelError(f"{self.path}: metadata 'sia_edge.pooling' is {self.pooling!r} but the graph's "
                                  f"inputs are {sorted(names)} (pooling 'mean' adds 'pooled', 'mean+tokens' adds "
                                  f"'pooled' and 'continuation'; 'none', or no key, neither)")
        if self.pools and by_name(self.session.get_inputs(), "pooled").shape[1] != self.hidden_size:
            raise ValueModelError(f"{self.path}: the graph's 'pooled' input must have hidden_size "
                                  f"{self.hidden_size} columns")
        self.scoring = self.metadata.get("scoring", "candidate")
        if self.scoring not in SCORINGS or (self.reads_continuation and self.scoring != "candidate"):
            raise ValueModelError(f"{self.path}: metadata 'sia_edge.scoring' must be one of {', '.join(SCORINGS)} "
                                  f"(candidate with pooling mean+tokens), got {self.scoring!r}")
        self.layer = self._read_layer()
        self.weight_scale = weight_scale(self.metadata.get("weight_scale"), self.path)  # of the gates' default w
        self.calls = 0
        self.seconds = 0.0
        self._texts = None  # the bound base model's HiddenStates, for scoring whole texts

    def _read_layer(self) -> int | None:
        """Metadata `layer`: the block whose output a look-ahead model reads (none: the final normed state)."""
        layer = self.metadata.get("layer")
        if layer is not None and (not layer.isdigit() or self.scoring != "look-ahead" or self.pooling != "none"):
            raise ValueModelError(f"{self.path}: metadata 'sia_edge.layer' must be an integer >= 0, with scoring "
                                  f"look-ahead and no pooling (a generation's own state is the final one); got "
                                  f"{layer!r}, scoring {self.scoring}, pooling {self.pooling}")
        return None if layer is None else int(layer)

    @property
    def description(self) -> str:
        return self.metadata.get("description", self.path.name)

    @property
    def pools(self) -> bool:
        """Whether its junctions also need the mean hidden state over the continuation (the `pooled` input)."""
        return self.pooling in STATE_POOLINGS

    @property
    def reads_continuation(self) -> bool:
        """Whether its junctions also need the tokens generated so far (the `continuation` input)."""
        return self.pooling == "mean+tokens"

    @property
    def looks_ahead(self) -> bool:
        """Whether it scores the state after each candidate (the runtime decodes the k candidates at a junction)."""
        return self.scoring == "look-ahead"

    def bind(self, weights_fingerprint: str, base_name: str, hidden_size: int, n_vocab: int, texts=None,
             n_layer: int | None = None) -> None:
        """Attach to a base model: refuse other weights, another hidden size or too few blocks for `layer`, then
        probe the graph on this vocabulary's largest id. `texts(layer)` (BaseModel.hidden_states) reads whole texts."""
        if self.layer is not None and n_layer is not None and self.layer > n_layer:
            raise TokenizerMismatchError(f"value model {self.path.name} reads layer {self.layer} but {base_name} "
                                         f"has {n_layer} (layer {n_layer} is its final state)")
        if weights_fingerprint != self.weights:
            raise TokenizerMismatchError(
                f"value model {self.path.name} reads the hidden states of base model weights "
                f"{self.weights[:16]} but {base_name} has weights {weights_fingerprint[:16]}; train one for this "
                f"model with `sia-edge vm train --input hidden --model {base_name}` (or `vm distill --input hidden`)")
        if hidden_size != self.hidden_size:
            raise TokenizerMismatchError(f"value model {self.path.name} reads hidden states of size "
                                         f"{self.hidden_size} but {base_name} has {hidden_size}")
        try:
            zeros = np.zeros((1, hidden_size), np.float32)
            scores = self._run(zeros, np.array([[0, n_vocab - 1]], np.int64), zeros if self.pools else None,
                               pad_sequences([[n_vocab - 1]]) if self.reads_continuation else None)
        except Exception as exc:
            raise ValueModelError(f"{self.path}: its graph fails on token id {n_vocab - 1} of this vocabulary: "
                                  f"{str(exc).splitlines()[0]}") from exc
        finally:
            self.calls, self.seconds = 0, 0.0
        if scores.shape != (1, 2) or not np.isfinite(scores).all():
            raise ValueModelError(f"{self.path}: scores of shape {scores.shape} (or not finite) for 1 x 2 "
                                  f"candidates; the contract wants [batch, k]")
        self._texts = texts

    def score_hidden(self, hidden: np.ndarray, candidate_lists: list[np.ndarray], pooled: np.ndarray | None = None,
                     continuations: list[list[int]] | None = None) -> list[np.ndarray]:
        """Scores of each row's candidates from its hidden state (and, for a pooling model, its `pooled` row; for a
        mean+tokens model, the tokens generated before them), in one call. -> [(k_i,) float64]"""
        if self.pools and pooled is None:
            raise ValueModelError(f"{self.path.name} pools the hidden states over the continuation: pass `pooled`")
        if self.reads_continuation and continuations is None:
            raise ValueModelError(f"{self.path.name} reads the tokens generated so far: pass `continuations`")
        counts = [len(c) for c in candidate_lists]
        width = max(counts)
        candidates = np.zeros((len(counts), width), dtype=np.int64)
        for row, ids in enumerate(candidate_lists):  # ragged rows repeat their last id; the extra scores are dropped
            candidates[row, :len(ids)] = ids
            candidates[row, len(ids):] = ids[-1] if len(ids) else 0
        scores = self._run(np.ascontiguousarray(hidden, dtype=np.float32), candidates,
                           np.ascontiguousarray(pooled, dtype=np.float32) if self.pools else None,
                           pad_sequences(continuations) if self.reads_continuation else None).astype(np.float64)
        return [scores[row, :n] for row, n in enumerate(counts)]

    def score_sequences(self, sequences: list[list[int]], prompt_lengths: list[int] | None = None) -> np.ndarray:
        """The value of whole texts (value_model_tokens: no BOS), defined as at a junction: the score of the last
        token as a candidate after the hidden state of the text before it (BOS first, as the base model reads it);
        for a look-ahead model, after the state of the whole text (at its layer). A pooling model also reads the mean
        state from the one after the prompt (its first prompt_lengths[i] tokens; default: after BOS), and a
        mean+tokens model the tokens after the prompt, the last excepted (the candidate). -> (n,) float64"""
        if self._texts is None:
            raise ValueModelError(f"hidden-state value model {self.path.name} is not bound to a base model; scoring "
                                  f"text needs the base model's hidden states")
        reader = self._texts(self.layer)
        bos = [reader.base.bos_id] if reader.base.add_bos else []
        rows, pooled, last, continuations = [], [], [], []
        for i, tokens in enumerate(sequences):
            if not tokens:
                raise ValueModelError("cannot score an empty text")
            continuations.append(list(tokens[prompt_lengths[i] if prompt_lengths else 0:-1]))
            context = bos + list(tokens if self.looks_ahead else tokens[:-1])
            last.append(np.array([tokens[-1]], dtype=np.int64))
            if not context:
                rows.append(np.zeros(self.hidden_size, np.float32))
                pooled.append(rows[-1])
            elif self.pools:  # every state of the continuation: each position an output
                states = reader.of(context)
                start = max(0, len(bos) + (prompt_lengths[i] if prompt_lengths else 0) - 1)
                rows.append(states[-1])
                pooled.append(states[min(start, len(states) - 1):].mean(axis=0))
            else:
                rows.append(reader.after(context))
        return np.array([s[0] for s in self.score_hidden(np.stack(rows), last,
                                                         np.stack(pooled) if self.pools else None, continuations)])

    def _run(self, hidden: np.ndarray, candidates: np.ndarray, pooled: np.ndarray | None = None,
             continuation: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """One call of the graph; `continuation` is pad_sequences of the tokens generated so far (ids, mask)."""
        start = time.perf_counter()
        feeds = {"hidden": hidden, "candidates": candidates}
        if pooled is not None:
            feeds["pooled"] = pooled
        if continuation is not None:
            feeds["continuation"], feeds["continuation_mask"] = continuation
        (scores,) = self.session.run(["scores"], feeds)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return scores

    def _check_signature(self) -> None:
        got_in = {i.name: i.type for i in self.session.get_inputs()}
        got_out = {o.name: o.type for o in self.session.get_outputs()}
        allowed = (_HIDDEN_INPUTS, {**_HIDDEN_INPUTS, **_POOLED_INPUT},
                   {**_HIDDEN_INPUTS, **_POOLED_INPUT, **_CONTINUATION_INPUTS})
        if got_in not in allowed or got_out != _HIDDEN_OUTPUTS:
            raise ValueModelError(f"{self.path} does not follow contract 3 (hidden states): inputs {got_in}, outputs "
                                  f"{got_out}; expected inputs {_HIDDEN_INPUTS} (optionally with {_POOLED_INPUT}, "
                                  f"or with both that and {_CONTINUATION_INPUTS}) and outputs {_HIDDEN_OUTPUTS}")
        shape = by_name(self.session.get_inputs(), "hidden").shape
        if len(shape) != 2 or not isinstance(shape[1], int):
            raise ValueModelError(f"{self.path}: input 'hidden' must have a fixed size d, got shape {shape}")


