"""The ONNX value model: loading, contract checks, tokenizer check, incremental prefix state, batched scoring.

This is the only module that imports onnxruntime. The contract is written down in models/README.md:

    inputs   state  float32 [batch, S]   summary of the prefix so far (all zeros = empty prefix)
             tokens int64   [batch, n]   base-model token ids to append to the prefix
             mask   float32 [batch, n]   1 for a real token, 0 for padding
    outputs  new_state float32 [batch, S]  summary of prefix + tokens
             score     float32 [batch]     value of prefix + tokens; higher = more aligned (a logit)

Because the prefix is carried as a state, a junction costs one call to fold in the tokens generated since the
previous junction and one batched call for the k one-token extensions: flat in the prefix length.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import TokenizerMismatchError, ValueModelError

CONTRACT_VERSION = "1"
META_PREFIX = "sia_edge."
_INPUTS = {"state": "tensor(float)", "tokens": "tensor(int64)", "mask": "tensor(float)"}
_OUTPUTS = {"new_state": "tensor(float)", "score": "tensor(float)"}


@dataclass
class PrefixState:
    """The value model's view of the current text: its state vector and how many tokens it has folded in."""

    vector: np.ndarray  # (S,) float32
    n_tokens: int = 0


class ValueModel:
    """A loaded value model. Build once; `score_candidates` is the per-junction call."""

    def __init__(self, path: str | os.PathLike, threads: int = 1) -> None:
        self.path = Path(path)
        self.session = _open_session(self.path, threads)
        self._check_signature()
        meta = self.session.get_modelmeta().custom_metadata_map
        self.metadata = {k[len(META_PREFIX):]: v for k, v in meta.items() if k.startswith(META_PREFIX)}
        if self.metadata.get("contract") != CONTRACT_VERSION:
            raise ValueModelError(
                f"{self.path}: metadata 'sia_edge.contract' is {self.metadata.get('contract')!r}, "
                f"expected {CONTRACT_VERSION!r}; rebuild it with `sia-edge vm train`"
            )
        self.fingerprint = self.metadata.get("tokenizer_fingerprint", "")
        if not self.fingerprint:
            raise ValueModelError(f"{self.path}: metadata 'sia_edge.tokenizer_fingerprint' is missing")
        self.state_size = int(self.session.get_inputs()[0].shape[1])
        self.calls = 0
        self.seconds = 0.0

    @property
    def description(self) -> str:
        return self.metadata.get("description", self.path.name)

    def check_tokenizer(self, base_fingerprint: str, base_name: str) -> None:
        """Refuse to steer a base model whose tokenizer differs from the one this value model was trained on."""
        if base_fingerprint != self.fingerprint:
            raise TokenizerMismatchError(
                f"value model {self.path.name} was built for tokenizer {self.fingerprint[:16]} but base model "
                f"{base_name} has tokenizer {base_fingerprint[:16]}; train a value model for this base model "
                f"with `sia-edge vm train` or pick the matching --value-model"
            )

    def empty_prefix(self) -> PrefixState:
        return PrefixState(np.zeros(self.state_size, dtype=np.float32), 0)

    def extend(self, prefix: PrefixState, tokens: list[int]) -> PrefixState:
        """Fold `tokens` into the prefix state (one call, batch 1). Returns a new state; the old one is kept."""
        if not tokens:
            return prefix
        ids = np.asarray([tokens], dtype=np.int64)  # (1, n)
        new_state, _ = self._run(prefix.vector[None, :], ids, np.ones(ids.shape, dtype=np.float32))
        return PrefixState(new_state[0], prefix.n_tokens + len(tokens))

    def score_candidates(self, prefix: PrefixState, candidate_ids: np.ndarray) -> np.ndarray:
        """Scores of the k one-token extensions of the prefix, in one batched call.  # (k,) float64"""
        k = len(candidate_ids)
        states = np.broadcast_to(prefix.vector, (k, self.state_size))
        ids = np.asarray(candidate_ids, dtype=np.int64).reshape(k, 1)
        _, scores = self._run(states, ids, np.ones((k, 1), dtype=np.float32))
        return scores.astype(np.float64)

    def score_sequences(self, sequences: list[list[int]]) -> np.ndarray:
        """Scores of whole token sequences from the empty prefix (Best-of-N, evaluation).  # (n,) float64"""
        ids, mask = pad_sequences(sequences)
        states = np.zeros((len(sequences), self.state_size), dtype=np.float32)
        _, scores = self._run(states, ids, mask)
        return scores.astype(np.float64)

    def _run(self, states: np.ndarray, ids: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import time

        start = time.perf_counter()
        new_state, score = self.session.run(
            ["new_state", "score"],
            {"state": np.ascontiguousarray(states, dtype=np.float32), "tokens": ids, "mask": mask},
        )
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return new_state, score.reshape(-1)

    def _check_signature(self) -> None:
        got_in = {i.name: i.type for i in self.session.get_inputs()}
        got_out = {o.name: o.type for o in self.session.get_outputs()}
        if got_in != _INPUTS or got_out != _OUTPUTS:
            raise ValueModelError(
                f"{self.path} does not follow the sia-edge value-model contract: inputs {got_in}, outputs "
                f"{got_out}; expected inputs {_INPUTS} and outputs {_OUTPUTS} (see models/README.md)"
            )
        state_shape = self.session.get_inputs()[0].shape
        if len(state_shape) != 2 or not isinstance(state_shape[1], int):
            raise ValueModelError(f"{self.path}: input 'state' must have a fixed size S, got shape {state_shape}")


def pad_sequences(sequences) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad token sequences for the contract's `tokens` and `mask` inputs.  -> (B, L) int64, (B, L) float32"""
    width = max(1, max(len(s) for s in sequences))
    ids = np.zeros((len(sequences), width), dtype=np.int64)
    mask = np.zeros((len(sequences), width), dtype=np.float32)
    for row, sequence in enumerate(sequences):
        ids[row, : len(sequence)] = sequence
        mask[row, : len(sequence)] = 1.0
    return ids, mask


def _open_session(path: Path, threads: int):
    import onnxruntime as ort

    if not path.is_file():
        raise ValueModelError(f"value model not found: {path}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Idle onnxruntime threads must not spin: llama.cpp needs both cores between junctions.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped errors for corrupt files
        raise ValueModelError(f"cannot load value model {path}: {str(exc).splitlines()[0]}") from exc
