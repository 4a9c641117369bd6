"""The exact look-ahead: the base model's hidden state after each candidate token, read at a junction."""

from __future__ import annotations

import numpy as np

from ..errors import PromptError
from .layers import TensorTap, layer_tensor
from .native import _llama, common_prefix, decode_rows, own_context


class LookAhead:
    """What the base model's state would be after each of k candidate tokens, for a look-ahead value model
    (contract 3, `sia_edge.scoring = look-ahead`): the value of a candidate is then read from the state the text
    would really be in, not guessed from the candidate's embedding row.

    A llama.cpp context of its own that mirrors one generation's text as sequence 0. At a junction one decode feeds
    the tokens the text gained since the last junction (no outputs, each in every sequence) and the k candidates,
    each as sequence j = 1..k borrowing the text's cells (`llama_memory_seq_cp` only tags cells, one KV stream); the
    candidates' sequences are dropped again after it. The generation's own context is untouched, so an unsteered or
    token-model generation decodes exactly as before; the price is decoding the text a second time here, at
    junctions only.

    Only hidden states are read here, never logits: llama.cpp's graph-evaluation callback copies the state of the
    layer read (the final normed state, or a block's output: base_model.layers) and ends each decode there, before
    the output layer (for Gemma, 262k rows per candidate: half the decode) and, for a middle layer, before the
    blocks above it, in the mirror's decodes too (their KV cells above that layer are never needed).
    """

    def __init__(self, base, k: int, n_ctx: int, layer: int | None = None) -> None:
        llama_cpp = _llama()
        self.base, self.k = base, k
        self.layer = block_read(base, layer)
        self.n_batch = max(64, k)
        self._name = layer_tensor(self.layer, base.n_layer)
        self._tap = TensorTap([self._name], base.n_embd)  # kept here: llama.cpp holds only a pointer to it
        self._ctx, self._batch = own_context(base, self.n_batch, k + 1, n_ctx=n_ctx, n_seq_max=k + 1,
                                             kv_unified=True, embeddings=False, cb_eval=self._tap.callback,
                                             cb_eval_user_data=None)
        self.n_ctx = min(int(llama_cpp.llama_n_ctx(self._ctx.ctx)), n_ctx)
        self._memory = llama_cpp.llama_get_memory(self._ctx.ctx)
        self._held: list[int] = []  # the text sequence 0's cells hold
        self.decode_seconds = 0.0
        self.decoded_tokens = 0  # text and candidate tokens fed to llama.cpp here (the look-ahead's extra work)

    def states(self, tokens: list[int], candidates: np.ndarray) -> np.ndarray:
        """The hidden state after `tokens + [c]` for each candidate c (BOS first, as the base model reads the text).
        -> (len(candidates), n_embd) float32, a copy."""
        import time

        if len(candidates) > self.k:
            raise ValueError(f"this look-ahead reads at most {self.k} candidates, got {len(candidates)}")
        if not tokens or len(tokens) + 1 > self.n_ctx:
            raise PromptError(f"{len(tokens)} tokens and a candidate do not fit a look-ahead context of {self.n_ctx}")
        llama_cpp = _llama()
        start = time.perf_counter()
        n, count = len(tokens), len(candidates)
        # The text's newest tokens share the candidates' decode (each in every sequence: one weight pass instead of
        # two); older new tokens that do not fit beside them are mirrored first.
        tail = max(self._trim(tokens), n - (self.n_batch - count))
        self._mirror(tokens[:tail])
        sequences = tuple(range(count + 1))
        for seq in sequences[1:]:
            llama_cpp.llama_memory_seq_cp(self._memory, 0, seq, 0, tail)
        try:  # every candidate an output: the last block and the final norm keep only output rows
            shared = [(t, tail + i, sequences, False) for i, t in enumerate(tokens[tail:])]
            decode_rows(self._ctx, self._batch, shared + [(int(c), n, j + 1, True) for j, c in enumerate(candidates)],
                        "reading the candidates' states")
            rows = self._tap.take()[self._name]
            out = rows[len(rows) - count:]  # a middle block keeps every row: the candidates come last
            self._held = list(tokens)
        except BaseException:
            llama_cpp.llama_memory_seq_rm(self._memory, 0, tail, -1)  # the shared tokens may be half-written
            raise  # (self._held still holds tokens[:tail]: it is set only after a whole decode)
        finally:
            for seq in sequences[1:]:
                llama_cpp.llama_memory_seq_rm(self._memory, seq, -1, -1)
        self.decode_seconds += time.perf_counter() - start
        self.decoded_tokens += n - tail + count
        return out

    def forget(self) -> None:
        """Hold nothing: a new generation that does not reuse its context's prefix starts its mirror afresh too, so
        its first junction decodes the same batch as on a fresh engine (exact seeded replay)."""
        _llama().llama_memory_seq_rm(self._memory, -1, -1, -1)
        self._held.clear()

    def _trim(self, tokens: list[int]) -> int:
        """Drop what sequence 0 holds beyond its common prefix with `tokens`; -> how many tokens it still holds."""
        llama_cpp = _llama()
        keep = common_prefix(self._held, tokens)
        if keep < len(self._held) and not llama_cpp.llama_memory_seq_rm(self._memory, 0, keep, -1):
            llama_cpp.llama_memory_seq_rm(self._memory, -1, -1, -1)  # a cache that cannot cut: start afresh
            keep = 0
        del self._held[keep:]
        return keep

    def _mirror(self, tokens: list[int]) -> None:
        """Extend sequence 0 (a prefix of `tokens` after _trim) to hold `tokens`, decoded without outputs."""
        keep = len(self._held)
        rest = tokens[keep:]
        for offset in range(0, len(rest), self.n_batch):
            chunk = rest[offset:offset + self.n_batch]
            decode_rows(self._ctx, self._batch, [(t, keep + offset + i, 0, False) for i, t in enumerate(chunk)],
                        "mirroring the text for the look-ahead")
            self._tap.take()  # the text's own states are not wanted
            self._held.extend(chunk)
        self.decoded_tokens += len(rest)

    def close(self) -> None:
        self._batch.close()
        self._ctx.close()


def block_read(base, layer: int | None) -> int:
    """The block whose output a look-ahead reads: `layer`, or with None the last one (the final state)."""
    return base.n_layer if layer is None else layer


def reuse_look_ahead(current: LookAhead | None, base, k: int, n_ctx: int, layer: int | None = None) -> LookAhead:
    """`current` if it reads k candidates or more at this layer, else a new one (the old one closed)."""
    if current is not None and current.k >= k and current.layer == block_read(base, layer):
        return current
    if current is not None:
        current.close()
    return LookAhead(base, k, n_ctx, layer)
