"""Hidden states of whole texts, read in a llama.cpp context of their own."""

from __future__ import annotations

import numpy as np

from ..errors import PromptError
from .native import _llama, decode_rows, own_context


class HiddenStates:
    """Hidden states of whole texts, for scoring finished text and for training: a llama.cpp context of its own
    (one sequence, hidden states always on), so reading a text never disturbs a generation's KV cache. Each call
    decodes from an empty cache. Thread-safe (one text at a time)."""

    def __init__(self, base, n_ctx: int | None = None) -> None:
        import threading

        llama_cpp = _llama()
        self.base = base
        n_ctx = n_ctx or base.n_ctx
        # every position of a chunk is an output, with its full-vocabulary logits row (1 MB for Gemma): small chunks
        self.n_batch = min(64, n_ctx)
        self._ctx, self._batch = own_context(base, self.n_batch, n_ctx=n_ctx, n_seq_max=1, embeddings=True,
                                             pooling_type=llama_cpp.LLAMA_POOLING_TYPE_NONE)
        self.n_ctx = min(int(llama_cpp.llama_n_ctx(self._ctx.ctx)), n_ctx)
        self._lock = threading.Lock()

    def of(self, tokens: list[int]) -> np.ndarray:
        """The hidden state after each token of `tokens` (BOS included if the text should have one): (n, n_embd).
        Every position is an output, so this also costs each token's full-vocabulary logits."""
        if not tokens:
            raise PromptError("no tokens to read")
        if len(tokens) >= self.n_ctx:
            raise PromptError(f"the text is {len(tokens)} tokens but the context holds {self.n_ctx}")
        out = np.empty((len(tokens), self.base.n_embd), dtype=np.float32)
        llama_cpp = _llama()
        with self._lock:
            llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(self._ctx.ctx), -1, -1, -1)
            for start in range(0, len(tokens), self.n_batch):
                chunk = tokens[start:start + self.n_batch]
                self._decode_chunks(chunk, outputs=True, start=start)
                pointer = llama_cpp.llama_get_embeddings(self._ctx.ctx)
                out[start:start + len(chunk)] = np.ctypeslib.as_array(pointer, shape=(len(chunk), self.base.n_embd))
        return out

    def after(self, tokens: list[int]) -> np.ndarray:
        """The hidden state after the last of `tokens` only (n_embd,): the rest is decoded with hidden states off,
        so it costs what a prompt's prefill costs."""
        if len(tokens) == 1:
            return self.of(tokens)[-1]
        llama_cpp = _llama()
        with self._lock:
            try:
                llama_cpp.llama_set_embeddings(self._ctx.ctx, False)
                llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(self._ctx.ctx), -1, -1, -1)
                self._decode_chunks(tokens[:-1], outputs=False)
            finally:
                llama_cpp.llama_set_embeddings(self._ctx.ctx, True)
            self._decode_chunks(tokens[-1:], outputs=True, start=len(tokens) - 1)
            pointer = llama_cpp.llama_get_embeddings_ith(self._ctx.ctx, -1)
            return np.ctypeslib.as_array(pointer, shape=(self.base.n_embd,)).copy()

    def _decode_chunks(self, tokens: list[int], outputs: bool, start: int = 0) -> None:
        """Decode `tokens` at positions start.. in batches; `outputs`: every token is an output, else the last."""
        for offset in range(0, len(tokens), self.n_batch):
            chunk = tokens[offset:offset + self.n_batch]
            rows = [(token, start + offset + i, 0, outputs or offset + i == len(tokens) - 1)
                    for i, token in enumerate(chunk)]
            decode_rows(self._ctx, self._batch, rows, "reading hidden states")

    def close(self) -> None:
        self._batch.close()
        self._ctx.close()


class CandidateStates:
    """What the base model's state would be after each of its top-k next tokens, at chosen positions of a text:
    the exact look-ahead a contract-3 head learns to guess (training only). One llama.cpp context of its own with
    one KV stream shared by k + 1 sequences: the text is sequence 0; at a position p the k candidates are decoded
    together, each as sequence j = 1..k that borrows the text's first p cells (`llama_memory_seq_cp` only tags
    cells, so a position costs one decode of k tokens, not k copies of the prefix)."""

    def __init__(self, base, k: int, n_ctx: int = 512) -> None:
        llama_cpp = _llama()
        self.base, self.k = base, k
        # kv_unified: one stream, so a candidate's sequence can attend to the text's cells; embeddings on only for
        # the candidates' decode (otherwise every text token would be an output)
        self._ctx, self._batch = own_context(base, n_ctx, n_ctx=n_ctx, n_seq_max=k + 1, kv_unified=True,
                                             embeddings=False, pooling_type=llama_cpp.LLAMA_POOLING_TYPE_NONE)
        self.n_ctx = min(int(llama_cpp.llama_n_ctx(self._ctx.ctx)), n_ctx)
        self._memory = llama_cpp.llama_get_memory(self._ctx.ctx)

    def at(self, tokens: list[int], positions: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """For each position p (1 <= p < len(tokens) + 1): the base model's k most likely tokens after tokens[:p],
        most likely first, and the hidden state after tokens[:p] + [candidate].
        -> ids (P, k) int64, states (P, k, n_embd) float32"""
        positions = sorted(positions)
        if not positions or positions[0] < 1 or positions[-1] > len(tokens):
            raise PromptError(f"positions must lie in 1..{len(tokens)}, got {positions}")
        if positions[-1] + self.k > self.n_ctx:  # the prefix's cells and the k candidates' at once
            raise PromptError(f"{positions[-1]} tokens and {self.k} candidates do not fit a context of {self.n_ctx}")
        llama_cpp = _llama()
        llama_cpp.llama_memory_seq_rm(self._memory, -1, -1, -1)
        llama_cpp.llama_set_embeddings(self._ctx.ctx, False)
        ends = set(positions)  # logits after tokens[:p]: at the prefix's index p - 1
        decode_rows(self._ctx, self._batch, [(t, i, 0, i + 1 in ends) for i, t in enumerate(tokens[:positions[-1]])],
                    "reading a text before its candidates")
        ids = np.empty((len(positions), self.k), dtype=np.int64)
        # the logits rows (asked for at batch index p - 1) are valid until the next decode: read them all first
        for row, p in enumerate(positions):
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self._ctx.ctx, p - 1),
                                           shape=(self.base.n_vocab,))
            top = np.argpartition(-logits, self.k)[:self.k]
            ids[row] = top[np.argsort(-logits[top], kind="stable")]
        states = np.empty((len(positions), self.k, self.base.n_embd), dtype=np.float32)
        llama_cpp.llama_set_embeddings(self._ctx.ctx, True)
        try:
            for row, p in enumerate(positions):
                for seq in range(1, self.k + 1):
                    llama_cpp.llama_memory_seq_cp(self._memory, 0, seq, 0, p)
                decode_rows(self._ctx, self._batch, [(int(c), p, j + 1, True) for j, c in enumerate(ids[row])],
                            "reading candidate states")
                pointer = llama_cpp.llama_get_embeddings(self._ctx.ctx)
                states[row] = np.ctypeslib.as_array(pointer, shape=(self.k, self.base.n_embd))
                for seq in range(1, self.k + 1):
                    llama_cpp.llama_memory_seq_rm(self._memory, seq, -1, -1)
        finally:
            llama_cpp.llama_set_embeddings(self._ctx.ctx, False)
        return ids, states

    def close(self) -> None:
        self._batch.close()
        self._ctx.close()
