"""Hidden states of whole texts, read in a llama.cpp context of their own."""

from __future__ import annotations

import numpy as np

from ..errors import PromptError
from .native import _llama, _quiet_stderr


class HiddenStates:
    """Hidden states of whole texts, for scoring finished text and for training: a llama.cpp context of its own
    (one sequence, hidden states always on), so reading a text never disturbs a generation's KV cache. Each call
    decodes from an empty cache. Thread-safe (one text at a time)."""

    def __init__(self, base, n_ctx: int | None = None) -> None:
        import threading

        llama_cpp = _llama()
        from llama_cpp import _internals

        self.base = base
        params = llama_cpp.llama_context_params.from_buffer_copy(base._llm.context_params)
        params.n_ctx = n_ctx or base.n_ctx
        # every position of a chunk is an output, with its full-vocabulary logits row (1 MB for Gemma): small chunks
        params.n_batch = params.n_ubatch = min(64, params.n_ctx)
        params.n_seq_max = 1
        params.embeddings = True
        params.pooling_type = llama_cpp.LLAMA_POOLING_TYPE_NONE
        params.no_perf = True
        with _quiet_stderr():
            self._ctx = _internals.LlamaContext(model=base._llm._model, params=params, verbose=False)
            self._batch = _internals.LlamaBatch(n_tokens=params.n_batch, embd=0, n_seq_max=1, verbose=False)
        self.n_batch = params.n_batch
        self.n_ctx = min(int(llama_cpp.llama_n_ctx(self._ctx.ctx)), params.n_ctx)
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
        llama_cpp = _llama()
        batch = self._batch.batch
        for offset in range(0, len(tokens), self.n_batch):
            chunk = tokens[offset:offset + self.n_batch]
            for i, token in enumerate(chunk):
                batch.token[i] = token
                batch.pos[i] = start + offset + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = outputs or offset + i == len(tokens) - 1
            batch.n_tokens = len(chunk)
            status = llama_cpp.llama_decode(self._ctx.ctx, batch)
            if status != 0:
                raise RuntimeError(f"llama_decode failed with status {status} reading hidden states")

    def close(self) -> None:
        self._batch.close()
        self._ctx.close()
