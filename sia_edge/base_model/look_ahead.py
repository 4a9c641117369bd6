"""The exact look-ahead: the base model's hidden state after each candidate token, read at a junction."""

from __future__ import annotations

import ctypes

import numpy as np

from ..errors import PromptError
from .native import _llama, common_prefix, decode_rows, own_context


class LookAhead:
    """What the base model's state would be after each of k candidate tokens, for a look-ahead value model
    (contract 3, `sia_edge.scoring = look-ahead`): the value of a candidate is then read from the state the text
    would really be in, not guessed from the candidate's embedding row.

    A llama.cpp context of its own that mirrors one generation's text as sequence 0. At a junction it first decodes
    the tokens the text gained since the last junction (no outputs), then the k candidates together, each as
    sequence j = 1..k borrowing the text's cells (`llama_memory_seq_cp` only tags cells, one KV stream), and drops
    them again. The generation's own context is untouched, so an unsteered or token-model generation decodes
    exactly as before; the price is decoding the text a second time here, in batches, at junctions only.

    Only hidden states are read here, never logits: llama.cpp's graph-evaluation callback stops each decode once the
    hidden states are computed, before the output layer (for Gemma, 262k rows per candidate: half the decode).
    """

    def __init__(self, base, k: int, n_ctx: int) -> None:
        llama_cpp = _llama()
        self.base, self.k = base, k
        self.n_batch = max(64, k)
        self._stop = stop_after_hidden_states()  # kept here: llama.cpp holds only a pointer to it
        self._ctx, self._batch = own_context(base, self.n_batch, n_ctx=n_ctx, n_seq_max=k + 1, kv_unified=True,
                                             embeddings=False, pooling_type=llama_cpp.LLAMA_POOLING_TYPE_NONE,
                                             cb_eval=self._stop, cb_eval_user_data=None)
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
        self._sync(tokens)
        n = len(tokens)
        for seq in range(1, len(candidates) + 1):
            llama_cpp.llama_memory_seq_cp(self._memory, 0, seq, 0, n)
        llama_cpp.llama_set_embeddings(self._ctx.ctx, True)
        try:
            decode_rows(self._ctx, self._batch, [(int(c), n, j + 1, True) for j, c in enumerate(candidates)],
                        "reading the candidates' states")
            pointer = llama_cpp.llama_get_embeddings(self._ctx.ctx)
            out = np.ctypeslib.as_array(pointer, shape=(len(candidates), self.base.n_embd)).copy()
        finally:
            llama_cpp.llama_set_embeddings(self._ctx.ctx, False)
            for seq in range(1, len(candidates) + 1):
                llama_cpp.llama_memory_seq_rm(self._memory, seq, -1, -1)
        self.decode_seconds += time.perf_counter() - start
        self.decoded_tokens += len(candidates)
        return out

    def _sync(self, tokens: list[int]) -> None:
        """Make sequence 0 hold exactly `tokens`: keep the common prefix, decode the rest without outputs."""
        llama_cpp = _llama()
        keep = common_prefix(self._held, tokens)
        if keep < len(self._held) and not llama_cpp.llama_memory_seq_rm(self._memory, 0, keep, -1):
            llama_cpp.llama_memory_seq_rm(self._memory, -1, -1, -1)  # a cache that cannot cut: start afresh
            keep = 0
        del self._held[keep:]
        rest = tokens[keep:]
        for offset in range(0, len(rest), self.n_batch):
            chunk = rest[offset:offset + self.n_batch]
            decode_rows(self._ctx, self._batch, [(t, keep + offset + i, 0, False) for i, t in enumerate(chunk)],
                        "mirroring the text for the look-ahead")
            self._held.extend(chunk)
        self.decoded_tokens += len(rest)

    def close(self) -> None:
        self._batch.close()
        self._ctx.close()


HIDDEN_STATES_TENSOR = b"result_embd_pooled"  # llama.cpp's name for the per-token embeddings (pooling NONE)


def stop_after_hidden_states():
    """A graph-evaluation callback for llama.cpp's scheduler: asked about each node, it wants only the hidden-state
    tensor; told that it is computed, it returns False, which ends the graph's computation there (the logits that
    follow are left unwritten: nothing may read them)."""
    from llama_cpp import _ggml

    name_of = _ggml.libggml.ggml_get_name
    name_of.restype, name_of.argtypes = ctypes.c_char_p, [ctypes.c_void_p]

    @_llama().ggml_backend_sched_eval_callback
    def callback(tensor, ask, _user_data):
        if ask:
            return name_of(tensor) == HIDDEN_STATES_TENSOR
        callback.stops += 1  # how many decodes ended early (a test checks that this llama.cpp names it so)
        return False

    callback.stops = 0
    return callback


def reuse_look_ahead(current: LookAhead | None, base, k: int, n_ctx: int) -> LookAhead:
    """`current` if it reads k candidates or more, else a new one (the old one closed)."""
    if current is not None and current.k >= k:
        return current
    if current is not None:
        current.close()
    return LookAhead(base, k, n_ctx)
