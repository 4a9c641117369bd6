"""Value models that read the text itself (contracts 1 and 2, models/README.md): contract checks, binding to a base
model, incremental prefix state, scoring.

    inputs   state  float32 [batch, S]   summary of the prefix so far (all zeros = empty prefix)
             tokens int64   [batch, n]   what to append: base-model token ids, or byte values 0-255 when the
                                         metadata says `sia_edge.input = bytes` (contract 2)
             mask   float32 [batch, n]   1 for a real token (byte), 0 for padding
    outputs  new_state float32 [batch, S]  summary of prefix + tokens
             score     float32 [batch]     value of prefix + tokens; higher = more aligned (a logit)

Because the prefix is carried as a state, a junction costs one batched call: row j reads the tokens generated since
the previous junction followed by candidate j, from the previous state; the chosen row's new state is the next
prefix state. The cost is flat in the prefix length (a long stretch of new text is folded first, in one more call).

The decoder always speaks base-model token ids. A token-level model receives them as they are (after a tokenizer
fingerprint check); a byte-level model receives each token's bytes (`BaseModel.token_bytes`: exactly the bytes
the text is made of; control tokens such as BOS, EOS and chat-turn markers give none), so one byte model serves
every GGUF.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import TokenizerMismatchError, ValueModelError
from ..steering import weight_scale
from .session import by_name, metadata_of, open_session

CONTRACT_VERSION = "2"  # what `sia-edge vm train` writes for tokens and bytes
CONTRACT_VERSIONS = ("1", "2")  # what ValueModel reads: 1 = token ids only; 2 adds `sia_edge.input`
INPUT_KINDS = ("tokens", "bytes")
_INPUTS = {"state": "tensor(float)", "tokens": "tensor(int64)", "mask": "tensor(float)"}
_OUTPUTS = {"new_state": "tensor(float)", "score": "tensor(float)"}
# At a junction, new text up to this many units (tokens, or bytes) rides along in the k candidate rows; longer text
# (a prompt, a long stretch between junctions) is folded into the state first, in a call of its own.
FOLD_INLINE_MAX = 64


@dataclass
class PrefixState:
    """The value model's view of the current text: its state vector and how many tokens it has folded in."""

    vector: np.ndarray  # (S,) float32
    n_tokens: int = 0


class ValueModel:
    """A loaded value model. Build once; `score_junctions` is the per-junction call."""

    reads_hidden = False

    def __init__(self, path: str | os.PathLike, threads: int = 1, session=None) -> None:
        self.path = Path(path)
        self.session = session or open_session(self.path, threads)
        self.metadata = metadata_of(self.session)
        if self.metadata.get("input") == "hidden":
            raise ValueModelError(f"{self.path} reads the base model's hidden state (contract 3): load it with "
                                  f"open_value_model()")
        self._check_signature()
        contract = self.metadata.get("contract")
        if contract not in CONTRACT_VERSIONS:
            raise ValueModelError(f"{self.path}: metadata 'sia_edge.contract' is {contract!r}, expected one of "
                                  f"{', '.join(map(repr, CONTRACT_VERSIONS))}; rebuild it with `sia-edge vm train`")
        self.input = self.metadata.get("input", "tokens")
        if self.input not in INPUT_KINDS or (contract == "1" and self.input != "tokens"):
            raise ValueModelError(f"{self.path}: metadata 'sia_edge.input' is {self.input!r}; contract {contract} "
                                  f"allows {'tokens' if contract == '1' else 'tokens or bytes'}")
        self.fingerprint = self.metadata.get("tokenizer_fingerprint", "")
        if self.input == "tokens" and not self.fingerprint:
            raise ValueModelError(f"{self.path}: metadata 'sia_edge.tokenizer_fingerprint' is missing "
                                  f"(a token-level model must name the tokenizer it reads)")
        if self.input == "bytes" and self.fingerprint:
            raise ValueModelError(f"{self.path}: metadata says it reads bytes but also names a tokenizer "
                                  f"fingerprint; a byte-level model must not carry one")
        self.state_size = int(by_name(self.session.get_inputs(), "state").shape[1])
        self.weight_scale = weight_scale(self.metadata.get("weight_scale"), self.path)  # of the gates' default w
        self.calls = 0
        self.seconds = 0.0
        self._token_bytes: Callable[[int], bytes] | None = None
        self._pieces: dict[int, bytes] = {}  # token id -> its bytes, filled as tokens are met
        self._n_vocab: int | None = None
        if self.input == "bytes":
            self._check_reads_bytes()

    @property
    def description(self) -> str:
        return self.metadata.get("description", self.path.name)

    @property
    def reads_bytes(self) -> bool:
        return self.input == "bytes"

    def bind(self, base_fingerprint: str, base_name: str, token_bytes: Callable[[int], bytes],
             n_vocab: int | None = None) -> None:
        """Attach to a base model before scoring its token ids.

        A token-level model refuses a base model whose tokenizer differs from the one it was trained on (and, given
        `n_vocab`, checks that its graph reads that vocabulary's largest id). A byte-level model serves any base
        model: it keeps `token_bytes` (token id -> the bytes it renders as, b"" for control tokens) to turn the
        decoder's token ids into bytes.
        """
        if self.reads_bytes:
            self._token_bytes = token_bytes
            self._n_vocab = n_vocab
            self._pieces = {}
            return
        if base_fingerprint != self.fingerprint:
            from ..models import shipped_byte_value_model

            raise TokenizerMismatchError(
                f"value model {self.path.name} was built for tokenizer {self.fingerprint[:16]} but base model "
                f"{base_name} has tokenizer {base_fingerprint[:16]}; the byte-level value model "
                f"{shipped_byte_value_model()} reads any tokenizer (omit --value-model to use it), or train one "
                f"for this base model with `sia-edge vm train`"
            )
        if n_vocab is not None:
            self._check_reads_ids(n_vocab)

    def empty_prefix(self) -> PrefixState:
        return PrefixState(np.zeros(self.state_size, dtype=np.float32), 0)

    def extend(self, prefix: PrefixState, tokens: list[int]) -> PrefixState:
        """Fold base-model `tokens` into the prefix state (one call, batch 1). Returns a new state; the old one is
        kept. A byte model folds their bytes; tokens without bytes (control tokens) leave the state as it was."""
        units = self._units(tokens)
        vector = self._fold([prefix.vector], [units])[0] if len(units) else prefix.vector
        return PrefixState(vector, prefix.n_tokens + len(tokens))

    def score_candidates(self, prefix: PrefixState, candidate_ids: np.ndarray) -> np.ndarray:
        """Scores of the k one-token extensions of the prefix, in one batched call.  # (k,) float64

        A byte model gets k byte strings of different lengths, right-padded with the mask (a candidate without
        bytes, such as EOS, scores as the prefix itself)."""
        return self.score_junctions([prefix], [[]], [candidate_ids])[0][0]

    def score_junctions(self, prefixes: list[PrefixState], token_lists: list[list[int]],
                        candidate_lists: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray], list[bool]]:
        """Several generations' junctions, usually in ONE call: row j of junction i is "the tokens generated since
        its prefix state, then candidate j", run from that state, so the call yields every candidate's score and
        also the state after each candidate: the chosen one's is the next prefix state, and nothing is folded
        separately. New text longer than FOLD_INLINE_MAX units is folded first (one more call for all such
        junctions), so k rows never repeat a long prompt.
        -> rewards (k,) float64, states after each candidate (k, S), and whether a separate fold was needed"""
        units = [self._units(tokens) for tokens in token_lists]
        states = [prefix.vector for prefix in prefixes]
        long = [i for i, u in enumerate(units) if len(u) > FOLD_INLINE_MAX]
        if long:
            for i, state in zip(long, self._fold([states[i] for i in long], [units[i] for i in long])):
                states[i], units[i] = state, units[i][:0]
        counts = [len(c) for c in candidate_lists]
        rows = [units[i] + self._units([c]) for i, cands in enumerate(candidate_lists) for c in cands]
        ids, mask = pad_sequences(rows)
        new_states, scores = self._run(np.repeat(np.stack(states), counts, axis=0), ids, mask)
        cuts = np.cumsum(counts)[:-1]
        return (np.split(scores.astype(np.float64), cuts), np.split(new_states, cuts),
                [i in long for i in range(len(units))])

    def _fold(self, vectors: list[np.ndarray], unit_lists: list) -> np.ndarray:
        """States after reading each row's units (ids or bytes) from its state, all rows padded into one call."""
        ids, mask = pad_sequences(unit_lists)
        new_states, _ = self._run(np.stack(vectors), ids, mask)
        return new_states

    def score_sequences(self, sequences: list[list[int]], prompt_lengths: list[int] | None = None) -> np.ndarray:
        """Scores of whole token sequences from the empty prefix (Best-of-N, evaluation).  # (n,) float64
        `prompt_lengths` only matters to a pooling hidden-state model; this kind reads the whole text alike."""
        ids, mask = pad_sequences([self._units(s) for s in sequences])
        states = np.zeros((len(sequences), self.state_size), dtype=np.float32)
        _, scores = self._run(states, ids, mask)
        return scores.astype(np.float64)

    def token_bytes(self, token: int) -> bytes:
        """The bytes a byte-level model reads for one base-model token (cached per id)."""
        piece = self._pieces.get(token)
        if piece is None:
            if self._token_bytes is None:
                raise ValueModelError(f"byte-level value model {self.path.name} is not bound to a base model; "
                                      f"call bind() with the base model's token_bytes first")
            if self._n_vocab is not None and not 0 <= token < self._n_vocab:
                raise ValueModelError(f"token id {token} is outside the base model's vocabulary of {self._n_vocab}")
            piece = self._pieces[token] = bytes(self._token_bytes(token))
        return piece

    def _units(self, tokens) -> list[int] | bytes:
        """What the graph reads for these base-model tokens: the ids themselves, or their bytes concatenated."""
        if not self.reads_bytes:
            return list(tokens)
        return b"".join([self.token_bytes(int(t)) for t in tokens])

    def _run(self, states: np.ndarray, ids: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        start = time.perf_counter()
        new_state, score = self.session.run(
            ["new_state", "score"],
            {"state": np.ascontiguousarray(states, dtype=np.float32), "tokens": ids, "mask": mask},
        )
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return new_state, score.reshape(-1)

    def _check_reads_bytes(self) -> None:
        """A byte model's graph must read every byte value, in one call or in pieces, with padding: one probe."""
        every_byte = np.arange(256, dtype=np.int64)
        try:
            whole = self._probe(np.zeros((1, self.state_size), np.float32), every_byte[None, :],
                                np.ones((1, 256), np.float32))
            first = self._probe(np.zeros((2, self.state_size), np.float32),
                                np.stack([every_byte[:128], np.zeros(128, np.int64)]),
                                np.stack([np.ones(128, np.float32), np.zeros(128, np.float32)]))
            second = self._probe(first[0][:1], every_byte[None, 128:], np.ones((1, 128), np.float32))
        except ValueModelError:
            raise
        except Exception as exc:  # onnxruntime's own errors (e.g. an embedding table without 256 rows)
            raise ValueModelError(f"{self.path}: metadata says it reads bytes but its graph fails on byte values "
                                  f"0-255: {str(exc).splitlines()[0]}") from exc
        if not np.allclose(first[0][1], 0.0, atol=1e-6) or not np.allclose(second[0], whole[0], atol=1e-4):
            raise ValueModelError(f"{self.path}: metadata says it reads bytes but its graph does not carry their "
                                  f"state (padding changed the state, or two chunks differ from one pass)")

    def _check_reads_ids(self, n_vocab: int) -> None:
        try:
            self._probe(np.zeros((1, self.state_size), np.float32), np.array([[0, n_vocab - 1]], np.int64),
                        np.ones((1, 2), np.float32))
        except ValueModelError:
            raise
        except Exception as exc:
            raise ValueModelError(f"{self.path}: metadata says it reads token ids but its graph fails on id "
                                  f"{n_vocab - 1} of this vocabulary: {str(exc).splitlines()[0]}") from exc

    def _probe(self, states, ids, mask) -> tuple[np.ndarray, np.ndarray]:
        new_state, score = self.session.run(["new_state", "score"], {"state": states, "tokens": ids, "mask": mask})
        batch = states.shape[0]
        if new_state.shape != (batch, self.state_size) or score.size != batch or not (
                np.isfinite(new_state).all() and np.isfinite(score).all()):
            raise ValueModelError(f"{self.path}: outputs of shapes {new_state.shape} and {score.shape} (or not "
                                  f"finite) for a batch of {batch}; the contract wants [{batch}, {self.state_size}] "
                                  f"and [{batch}]")
        return new_state, score

    def _check_signature(self) -> None:
        got_in = {i.name: i.type for i in self.session.get_inputs()}
        got_out = {o.name: o.type for o in self.session.get_outputs()}
        if got_in != _INPUTS or got_out != _OUTPUTS:
            raise ValueModelError(
                f"{self.path} does not follow the sia-edge value-model contract: inputs {got_in}, outputs "
                f"{got_out}; expected inputs {_INPUTS} and outputs {_OUTPUTS} (see models/README.md)"
            )
        state_shape = by_name(self.session.get_inputs(), "state").shape
        if len(state_shape) != 2 or not isinstance(state_shape[1], int):
            raise ValueModelError(f"{self.path}: input 'state' must have a fixed size S, got shape {state_shape}")


def pad_sequences(sequences) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad token sequences (or byte strings) for the contract's `tokens` and `mask` inputs. -> (B, L) x 2"""
    width = max(1, max(len(s) for s in sequences))
    ids = np.zeros((len(sequences), width), dtype=np.int64)
    mask = np.zeros((len(sequences), width), dtype=np.float32)
    for row, sequence in enumerate(sequences):
        ids[row, : len(sequence)] = _as_ids(sequence)
        mask[row, : len(sequence)] = 1.0
    return ids, mask


def _as_ids(units) -> np.ndarray:
    """Token ids or a byte string as the contract's int64 `tokens` row."""
    if isinstance(units, (bytes, bytearray)):
        return np.frombuffer(units, dtype=np.uint8).astype(np.int64)
    return np.asarray(units, dtype=np.int64)


