"""Several sequences decoded together: a BatchContext and its slots."""

from __future__ import annotations

import itertools

import numpy as np

from ..errors import PromptError
from .look_ahead import reuse_look_ahead
from .native import _llama, common_prefix, own_context

# Fewer queued tokens than this are decoded one by one. llama.cpp's single-token path (matrix-vector) is much faster
# per token than its small-batch path: Gemma 3 270M Q4_K_M, 1 thread, tokens/s of 48-token generations decoded
# together, batched / one by one: 2 sequences 42 / 69, 3: 40 / 68, 4: 66 / 69, 5: 57 / 70, 6: 80 / 72, 8: 109 / 72
# (2 threads: 2 sequences 60 / 62, 4: 89 / 63). Batching pays from about 4-6 sequences on.
BATCH_FROM = 4
# Prompt tokens a round's decode reads for slots still reading their prompt (BatchContext(prefill_chunk=...)).
DEFAULT_PREFILL_CHUNK = 64
# A reused prefix stops at least this many tokens before the prompt's end, and a prompt's last chunk holds at least
# this many tokens, so the prompt's last logits come from a decode of several tokens, as in a fresh read, never from
# a one-token decode (llama.cpp's matrix-vector path, which differs most). It makes a repeated prompt's logits
# closer to its first read's, often bit for bit, but not always: llama.cpp's kernels also depend on the batch size
# (measured on Gemma: a 45-token prompt re-read from 4-32 tokens before its end was exact, a 31-token one re-read
# from 8 before was not).
MIN_TAIL = 8
_ADMISSIONS = itertools.count()  # orders the prompts being read: the longest-waiting first


class BatchContext:
    """Several sequences decoded together: one extra llama.cpp context with `n_slots` sequence ids.

    Each slot is one sequence with its own KV cells. A slot's `step` only queues its token; `flush()` then feeds
    every queued token to llama.cpp in one decode. The weights (Gemma's 262k-row output layer above all) are read
    once per step for all slots instead of once per sequence, so on 2 cores 8-16 slots give ~2.5x the tokens/s of
    one sequence. Batched logits match single-sequence logits only to float tolerance (other matmul shapes), so a
    seeded batched sample can differ from the same seed through `Engine.generate`.

    Each slot keeps its own copy of its logits row (1 MB for Gemma), so one slot's prefill never clobbers the rows
    other slots have not read yet.

    Prompts are read one of two ways. By default a slot's `prefill` decodes its whole prompt at once, alone
    (`run_batched`: every slot starts together). With `prefill_chunk` set (the scheduler), `prefill` only queues
    the prompt, and each `flush()` reads at most `prefill_chunk` prompt tokens in the same decode as the other
    slots' next tokens, so generations already streaming keep moving while a new prompt is read (llama.cpp's
    server does the same with its n_batch); the slot is `prefilled` once its whole prompt is in.
    """

    def __init__(self, base, n_slots: int, n_ctx_per_slot: int, prefill_chunk: int | None = None) -> None:
        if base.vocab_only:
            raise ValueError("a vocab-only model cannot decode")
        llama_cpp = _llama()
        if prefill_chunk is not None and prefill_chunk < 1:
            raise ValueError(f"prefill_chunk must be >= 1, got {prefill_chunk}")
        self.base = base
        self.prefill_chunk = prefill_chunk
        # a round's decode holds every slot's token plus one prompt chunk
        self.n_batch = max(64, n_slots) if prefill_chunk is None else n_slots + prefill_chunk
        # kv_unified off: one KV stream per sequence, so each slot gets n_ctx_per_slot cells of its own
        self._ctx, self._batch = own_context(base, self.n_batch, n_ctx=n_slots * n_ctx_per_slot, n_seq_max=n_slots,
                                             kv_unified=False, n_threads=base.n_threads,
                                             n_threads_batch=base.n_threads)
        # llama.cpp may round a slot up; a slot holds what was asked for, as BaseModel.n_ctx does
        self.n_ctx_per_slot = min(int(llama_cpp.llama_n_ctx_seq(self._ctx.ctx)), n_ctx_per_slot)
        self.slots = [SequenceSlot(self, seq_id) for seq_id in range(n_slots)]
        self._embeddings = False

    def flush(self) -> None:
        """Decode every slot's queued token (and, with `prefill_chunk`, the next chunk of the prompts being read);
        each such slot then holds its next logits (and its hidden state, if it reads them)."""
        for slot in self.slots:  # a hidden-state reader's last prompt token is decoded as a step, hidden states on
            if slot._queued is None and slot.reads_hidden and len(slot._pending) == 1:
                slot._queued = slot._pending.pop()
        queued = [slot for slot in self.slots if slot._queued is not None]
        chunks = self._prompt_chunks()
        steps = [(slot, [slot._queued]) for slot in queued]
        hidden = any(s.reads_hidden for s in queued)
        if chunks and not hidden:  # one decode: the prompt chunk shares the weight reads of the others' steps
            self._decode(steps + chunks)
        else:
            if chunks:  # hidden states on would make every prompt token an output (262k logits each): apart
                self._decode(chunks)
            if len(queued) < BATCH_FROM:  # a few tokens: one decode each is faster than one batched decode
                for work in steps:
                    self._decode([work], hidden=work[0].reads_hidden)
            elif steps:  # every token of a step is an output anyway, so hidden states for some cost the others nothing
                self._decode(steps, hidden=hidden)
        for slot in queued:
            slot._queued = None

    def _prompt_chunks(self) -> list[tuple["SequenceSlot", list[int]]]:
        """Up to `prefill_chunk` tokens of the prompts being read, the longest-waiting prompt first. A hidden-state
        reader's last prompt token stays behind (flush decodes it as a step)."""
        budget, chunks = self.prefill_chunk or 0, []
        for slot in sorted((s for s in self.slots if s._pending), key=lambda s: s._pending_since):
            available = len(slot._pending) - (1 if slot.reads_hidden else 0)
            take = min(budget, available)
            if 0 < available - take < MIN_TAIL <= budget:  # leave the prompt a last chunk of MIN_TAIL or more
                take = available - MIN_TAIL
            if take <= 0:
                continue
            chunks.append((slot, slot._pending[:take]))
            del slot._pending[:take]
            budget -= take
        return chunks

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
                # a prompt chunk needs logits only where the prompt ends
                batch.logits[n] = offset == len(tokens) - 1 and not slot._pending
                n += 1
            last_rows.append(n - 1)
        batch.n_tokens = n
        start = time.perf_counter()
        status = llama_cpp.llama_decode(self._ctx.ctx, batch)
        if status != 0:
            raise RuntimeError(f"llama_decode failed with status {status} in a batch of {n} tokens")
        seconds = time.perf_counter() - start
        for (slot, tokens), row in zip(work, last_rows):
            slot._tokens += tokens
            slot.decode_seconds += seconds
            slot.decoded_tokens += len(tokens)
            if slot._pending:  # a prompt chunk with more to come: no logits yet
                continue
            pointer = llama_cpp.llama_get_logits_ith(self._ctx.ctx, row)
            slot._logits[:] = np.ctypeslib.as_array(pointer, shape=(self.base.n_vocab,))
            if hidden and slot.reads_hidden:
                pointer = llama_cpp.llama_get_embeddings_ith(self._ctx.ctx, row)
                slot._hidden[:] = np.ctypeslib.as_array(pointer, shape=(self.base.n_embd,))

    def close(self) -> None:
        for slot in self.slots:
            if slot._look_ahead is not None:
                slot._look_ahead.close()
        self._batch.close()
        self._ctx.close()


class SavedSequence:
    """A slot's tokens and the bytes of their KV cells, held in host RAM (SequenceSlot.save / restore)."""

    def __init__(self, tokens: list[int], state: bytes) -> None:
        self.tokens = tokens
        self.state = state

    @property
    def nbytes(self) -> int:
        return len(self.state)


class SequenceSlot:
    """One sequence of a BatchContext, with the decoding interface of BaseModel that the decode loop uses
    (prefill, prefilled, step, logits, n_past, n_ctx, decode_seconds and the vocabulary helpers).

    A slot keeps its tokens and their KV cells after a generation ends (`release`), so the next prompt that starts
    the same way (the next turn of a conversation) decodes only what differs: `prefill(..., reuse=True)`."""

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
        self._tokens: list[int] = []  # what its KV cells hold
        self._queued: int | None = None
        self._pending: list[int] = []  # prompt tokens still to read (with the context's prefill_chunk)
        self._pending_since = 0
        self.decode_seconds = 0.0
        self.decoded_tokens = 0  # tokens fed to llama.cpp (what prefix reuse saves shows here)
        self._look_ahead = None

    @property
    def n_ctx(self) -> int:
        return self.context.n_ctx_per_slot

    @property
    def n_past(self) -> int:
        return len(self._tokens) + (self._queued is not None) + len(self._pending)

    @property
    def tokens(self) -> list[int]:
        """The tokens this slot's KV cells hold (a finished generation's prompt and output stay until replaced)."""
        return list(self._tokens)

    @property
    def prefilled(self) -> bool:
        """Whether the whole prompt has been read, so its logits (and hidden state) are ready."""
        return not self._pending and self._queued is None

    def prefill(self, tokens: list[int], reuse: bool = False, hidden: bool = False) -> int:
        """Start a sequence from `tokens`; returns how many of them were already in this slot's KV cache and kept.

        `reuse`: keep the longest common prefix of `tokens` and what the slot holds, and decode only the rest (at
        least the last MIN_TAIL tokens, so the prompt's last logits come from a decode of several tokens, as in a
        fresh read). Without it the slot starts empty. With the context's `prefill_chunk` the rest is only queued,
        read over the next flushes (`prefilled` says when it is in); otherwise it is decoded now, alone. `hidden` as
        in BaseModel.prefill: the last prompt token is decoded with hidden states on, as is every step after."""
        if not tokens:
            raise PromptError("the prompt is empty: give some text to continue")
        if len(tokens) >= self.n_ctx:
            raise PromptError(f"the prompt is {len(tokens)} tokens but a batch slot holds {self.n_ctx}")
        keep = max(0, min(common_prefix(self._tokens, tokens), len(tokens) - MIN_TAIL)) if reuse else 0
        self._truncate(keep)
        if self._look_ahead is not None and not reuse:
            self._look_ahead.forget()  # as BaseModel.prefill: exact replay
        self.reads_hidden = hidden
        if self.context.prefill_chunk is not None:
            self._pending = list(tokens[keep:])
            self._pending_since = next(_ADMISSIONS)
            return keep
        body, last = (tokens[keep:-1], tokens[-1:]) if hidden else (tokens[keep:], [])
        for start in range(0, len(body), self.context.n_batch):
            self.context._decode([(self, body[start:start + self.context.n_batch])])
        if last:
            self.context._decode([(self, last)], hidden=True)
        return keep

    def step(self, token: int) -> None:
        """Queue one token; its logits are ready after the context's next `flush()`."""
        if self._queued is not None or self._pending:
            raise RuntimeError("this slot already has tokens waiting for flush()")
        if self.n_past + 1 > self.n_ctx:
            raise PromptError(f"context full: {self.n_past} + 1 tokens > {self.n_ctx}")
        self._queued = token

    def logits(self) -> np.ndarray:
        """This slot's logits for its next position (a copy owned by the slot)."""
        if not self.prefilled:
            raise RuntimeError("logits read before flush(): the queued tokens have not been decoded yet")
        return self._logits

    def hidden(self) -> np.ndarray:
        """This slot's hidden state at its last decoded position (a copy owned by the slot)."""
        if not self.reads_hidden or not self.prefilled:
            raise RuntimeError("hidden state read before flush(), or this slot was not prefilled with hidden=True")
        return self._hidden

    def look_ahead(self, k: int, layer: int | None = None):
        """The exact look-ahead of this slot's generation (a context of its own, as BaseModel.look_ahead)."""
        self._look_ahead = reuse_look_ahead(self._look_ahead, self.context.base, k, self.n_ctx, layer)
        return self._look_ahead

    def save(self) -> "SavedSequence":
        """A host-RAM copy of this slot's tokens and their KV cells (llama.cpp's sequence state), to `restore`
        later into any slot of this context: a conversation that lost its slot to another keeps its cache."""
        import ctypes

        llama_cpp = _llama()
        size = llama_cpp.llama_state_seq_get_size(self.context._ctx.ctx, self.seq_id)
        buffer = (ctypes.c_uint8 * size)()
        written = llama_cpp.llama_state_seq_get_data(self.context._ctx.ctx, buffer, size, self.seq_id)
        return SavedSequence(list(self._tokens), bytes(buffer[:written]))

    def restore(self, saved: "SavedSequence") -> bool:
        """Replace this slot's contents with a saved sequence; False (and an empty slot) if llama.cpp refused it."""
        import ctypes

        self.clear()
        llama_cpp = _llama()
        buffer = (ctypes.c_uint8 * len(saved.state)).from_buffer_copy(saved.state)
        if llama_cpp.llama_state_seq_set_data(self.context._ctx.ctx, buffer, len(saved.state), self.seq_id) == 0:
            self.clear()
            return False
        self._tokens = list(saved.tokens)
        return True

    def release(self) -> None:
        """The generation in this slot ended: drop what was queued but not decoded, keep what the KV cells hold
        for the next prompt that shares it."""
        self._queued = None
        self._pending = []
        self.reads_hidden = False

    def clear(self) -> None:
        self._truncate(0)

    def _truncate(self, n_tokens: int) -> None:
        """Forget this slot's tokens after the first `n_tokens` (their KV cells too), and what was queued."""
        self.release()
        llama_cpp = _llama()
        memory = llama_cpp.llama_get_memory(self.context._ctx.ctx)
        if not llama_cpp.llama_memory_seq_rm(memory, self.seq_id, n_tokens, -1):
            # a cache that cannot cut a sequence in the middle: start this slot afresh
            llama_cpp.llama_memory_seq_rm(memory, self.seq_id, -1, -1)
            n_tokens = 0
        del self._tokens[n_tokens:]
