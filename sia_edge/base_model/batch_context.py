"""Several sequences decoded together: a BatchContext and its slots."""

from __future__ import annotations

import numpy as np

from ..errors import PromptError
from .native import _llama, _quiet_stderr

# Fewer queued tokens than this are decoded one by one. llama.cpp's single-token path (matrix-vector) is much faster
# per token than its small-batch path: Gemma 3 270M Q4_K_M, 1 thread, tokens/s of 48-token generations decoded
# together, batched / one by one: 2 sequences 42 / 69, 3: 40 / 68, 4: 66 / 69, 5: 57 / 70, 6: 80 / 72, 8: 109 / 72
# (2 threads: 2 sequences 60 / 62, 4: 89 / 63). Batching pays from about 4-6 sequences on.
BATCH_FROM = 4


class BatchContext:
    """Several sequences decoded together: one extra llama.cpp context with `n_slots` sequence ids.

    Each slot is one sequence with its own KV cells. A slot's `step` only queues its token; `flush()` then feeds
    every queued token to llama.cpp in one decode. The weights (Gemma's 262k-row output layer above all) are read
    once per step for all slots instead of once per sequence, so on 2 cores 8-16 slots give ~2.5x the tokens/s of
    one sequence. Batched logits match single-sequence logits only to float tolerance (other matmul shapes), so a
    seeded batched sample can differ from the same seed through `Engine.generate`.

    Each slot keeps its own copy of its logits row (1 MB for Gemma), so one slot's prefill, which is a decode
    of its own, never clobbers the rows other slots have not read yet.
    """

    def __init__(self, base, n_slots: int, n_ctx_per_slot: int) -> None:
        if base.vocab_only:
            raise ValueError("a vocab-only model cannot decode")
        llama_cpp = _llama()
        from llama_cpp import _internals

        self.base = base
        self.n_batch = max(64, n_slots)
        # start from the single-sequence context's parameters so both decode alike (flash attention, KV types, ...)
        params = llama_cpp.llama_context_params.from_buffer_copy(base._llm.context_params)
        params.n_ctx = n_slots * n_ctx_per_slot
        params.n_batch = params.n_ubatch = self.n_batch
        params.n_seq_max = n_slots
        params.kv_unified = False  # one KV stream per sequence: each slot gets n_ctx_per_slot cells of its own
        params.n_threads = params.n_threads_batch = base.n_threads
        params.no_perf = True
        with _quiet_stderr():
            self._ctx = _internals.LlamaContext(model=base._llm._model, params=params, verbose=False)
            self._batch = _internals.LlamaBatch(n_tokens=self.n_batch, embd=0, n_seq_max=1, verbose=False)
        # llama.cpp may round a slot up; a slot holds what was asked for, as BaseModel.n_ctx does
        self.n_ctx_per_slot = min(int(llama_cpp.llama_n_ctx_seq(self._ctx.ctx)), n_ctx_per_slot)
        self.slots = [SequenceSlot(self, seq_id) for seq_id in range(n_slots)]
        self._embeddings = False

    def flush(self) -> None:
        """Decode every slot's queued token in one batch; each such slot then holds its next logits (and its hidden
        state, if it reads them)."""
        queued = [slot for slot in self.slots if slot._queued is not None]
        if not queued:
            return
        if len(queued) < BATCH_FROM:  # a few tokens: one decode each is faster than one batched decode
            for slot in queued:
                self._decode([(slot, [slot._queued])], hidden=slot.reads_hidden)
        else:  # every token of a step is an output anyway, so hidden states for some slots cost the others nothing
            self._decode([(slot, [slot._queued]) for slot in queued], hidden=any(s.reads_hidden for s in queued))
        for slot in queued:
            slot._queued = None

    def _decode(self, work: list[tuple["SequenceSlot", list[int]]], hidden: bool = False) -> None:
        """One llama_decode over several slots' tokens (a prompt, or one token each); keeps each slot's last
        logits row (and hidden state, with `hidden`) and charges the wall time to every slot in the batch."""
        import time

        llama_cpp = _llama()
        if hidden != self._embeddings:
            llama_cpp.llama_set_embeddings(self._ctx.ctx, hidden)
            self._embeddings = hidden
        batch = self._batch.batch
        n = 0
        last_rows = []
        for slot, tokens in work:
            for offset, token in enumerate(tokens):
                batch.token[n] = token
                batch.pos[n] = len(slot._tokens) + offset
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = slot.seq_id
                batch.logits[n] = offset == len(tokens) - 1
                n += 1
            last_rows.append(n - 1)
        batch.n_tokens = n
        start = time.perf_counter()
        status = llama_cpp.llama_decode(self._ctx.ctx, batch)
        if status != 0:
            raise RuntimeError(f"llama_decode failed with status {status} in a batch of {n} tokens")
        seconds = time.perf_counter() - start
        for (slot, tokens), row in zip(work, last_rows):
            pointer = llama_cpp.llama_get_logits_ith(self._ctx.ctx, row)
            slot._logits[:] = np.ctypeslib.as_array(pointer, shape=(self.base.n_vocab,))
            if hidden and slot.reads_hidden:
                pointer = llama_cpp.llama_get_embeddings_ith(self._ctx.ctx, row)
                slot._hidden[:] = np.ctypeslib.as_array(pointer, shape=(self.base.n_embd,))
            slot._tokens += tokens
            slot.decode_seconds += seconds

    def close(self) -> None:
        self._batch.close()
        self._ctx.close()


class SequenceSlot:
    """One sequence of a BatchContext, with the decoding interface of BaseModel that the decode loop uses
    (prefill, step, logits, n_past, n_ctx, decode_seconds and the vocabulary helpers)."""

    def __init__(self, context: BatchContext, seq_id: int) -> None:
        self.context = context
        self.seq_id = seq_id
        base = context.base
        self.n_vocab = base.n_vocab
        self.bos_id = base.bos_id
        self.is_end_of_generation = base.is_end_of_generation
        self.token_bytes = base.token_bytes
        self._logits = np.zeros(base.n_vocab, dtype=np.float32)
        self._hidden = np.zeros(base.n_embd, dtype=np.float32)
        self.reads_hidden = False  # set by prefill(hidden=True): this slot's decodes also return hidden states
        self._tokens: list[int] = []
        self._queued: int | None = None
        self.decode_seconds = 0.0

    @property
    def n_ctx(self) -> int:
        return self.context.n_ctx_per_slot

    @property
    def n_past(self) -> int:
        return len(self._tokens) + (self._queued is not None)

    def prefill(self, tokens: list[int], reuse: bool = False, hidden: bool = False) -> None:
        """Clear this slot and decode `tokens` now (in chunks of the batch size), alone. `hidden` as in
        BaseModel.prefill: the last prompt token is decoded alone with hidden states on, as is every step after.
        `reuse` is accepted for the decode loop's sake; a slot always starts afresh."""
        if not tokens:
            raise PromptError("the prompt is empty: give some text to continue")
        if len(tokens) >= self.n_ctx:
            raise PromptError(f"the prompt is {len(tokens)} tokens but a batch slot holds {self.n_ctx}")
        self.clear()
        self.reads_hidden = hidden
        body, last = (tokens[:-1], tokens[-1:]) if hidden else (tokens, [])
        for start in range(0, len(body), self.context.n_batch):
            self.context._decode([(self, body[start:start + self.context.n_batch])])
        if last:
            self.context._decode([(self, last)], hidden=True)

    def step(self, token: int) -> None:
        """Queue one token; its logits are ready after the context's next `flush()`."""
        if self._queued is not None:
            raise RuntimeError("this slot already has a token waiting for flush()")
        if self.n_past + 1 > self.n_ctx:
            raise PromptError(f"context full: {self.n_past} + 1 tokens > {self.n_ctx}")
        self._queued = token

    def logits(self) -> np.ndarray:
        """This slot's logits for its next position (a copy owned by the slot)."""
        if self._queued is not None:
            raise RuntimeError("logits read before flush(): the queued token has not been decoded yet")
        return self._logits

    def hidden(self) -> np.ndarray:
        """This slot's hidden state at its last decoded position (a copy owned by the slot)."""
        if not self.reads_hidden or self._queued is not None:
            raise RuntimeError("hidden state read before flush(), or this slot was not prefilled with hidden=True")
        return self._hidden

    def clear(self) -> None:
        _llama().llama_memory_seq_rm(_llama().llama_get_memory(self.context._ctx.ctx), self.seq_id, -1, -1)
        self._tokens = []
        self._queued = None
        self.reads_hidden = False
