"""The GGUF base model through llama-cpp-python. The only module that imports llama_cpp.

It owns the decode loop's llama.cpp side: prefill, one step, a zero-copy view of the last position's logits,
rollback, tokenization and the tokenizer fingerprint. It never asks llama.cpp for every position's logits (logits_all) nor reads `Llama.scores`.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import io
import os
from pathlib import Path

import numpy as np

from .errors import ModelFileError, PromptError

GGUF_MAGIC = b"GGUF"
DEFAULT_CONTEXT = 2048


def _llama():
    import llama_cpp  # deferred so `sia-edge --help` does not load the native library

    return llama_cpp


def check_gguf_file(path: Path) -> None:
    """Fail with a clear message before llama.cpp sees a file it would crash or mumble on."""
    if not path.exists():
        raise ModelFileError(f"model file not found: {path}")
    if not path.is_file():
        raise ModelFileError(f"model path is not a file: {path}")
    try:
        with path.open("rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise ModelFileError(f"cannot read model file {path}: {exc.strerror}") from exc
    if magic != GGUF_MAGIC:
        raise ModelFileError(f"{path} is not a GGUF file (it starts with {magic!r}, not b'GGUF')")


class BaseModel:
    """A loaded GGUF model and one llama.cpp context (one sequence).

    Not thread-safe: one generation at a time per instance (the engine serialises callers).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        n_ctx: int = DEFAULT_CONTEXT,
        n_threads: int | None = None,
        vocab_only: bool = False,
        gpu_layers: int = 0,
    ) -> None:
        """`gpu_layers`: layers to offload to a GPU (-1 = all), honoured by a Metal or CUDA build of llama.cpp;
        a CPU-only build accepts it and runs on the CPU (`gpu_offload_supported()` tells which)."""
        self.path = Path(path)
        check_gguf_file(self.path)
        llama_cpp = _llama()
        threads = n_threads or os.cpu_count() or 1
        try:
            with _quiet_stderr():
                self._llm = llama_cpp.Llama(
                    model_path=str(self.path),
                    n_ctx=n_ctx,
                    n_batch=min(512, n_ctx),
                    n_threads=threads,
                    n_threads_batch=threads,
                    n_gpu_layers=gpu_layers,
                    vocab_only=vocab_only,
                    logits_all=False,
                    verbose=False,
                )
        except (ValueError, RuntimeError) as exc:
            raise ModelFileError(
                f"llama.cpp could not load {self.path} (truncated or corrupt GGUF?): {exc}"
            ) from exc
        self.vocab_only = vocab_only
        self.gpu_layers = gpu_layers
        self._vocab = self._llm._model.vocab
        self.n_vocab = int(self._llm.n_vocab())
        self.bos_id = int(llama_cpp.llama_vocab_bos(self._vocab))
        self.eos_id = int(llama_cpp.llama_vocab_eos(self._vocab))
        self.add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self._vocab))
        # llama.cpp may round the context up (to a multiple of 256) while llama-cpp-python sizes its token buffer
        # to the request: the smaller of the two is what actually fits.
        self.n_ctx = 0 if vocab_only else min(int(self._llm.n_ctx()), len(self._llm.input_ids))
        self._fingerprint: str | None = None
        self.decode_seconds = 0.0
        self.decoded_tokens = 0  # tokens actually fed to llama.cpp (what KV-cache reuse saves shows here)
        self.n_threads = threads

    # --- metadata ------------------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def metadata(self) -> dict[str, str]:
        return dict(self._llm.metadata)

    @property
    def chat_template(self) -> str | None:
        return self._llm.metadata.get("tokenizer.chat_template")

    def is_end_of_generation(self, token: int) -> bool:
        return bool(_llama().llama_vocab_is_eog(self._vocab, token))

    @property
    def fingerprint(self) -> str:
        """Tokenizer fingerprint as defined in models/README.md (computed once, ~0.3 s for 262k tokens)."""
        if self._fingerprint is None:
            self._fingerprint = tokenizer_fingerprint(
                self.n_vocab, self.bos_id, self.eos_id, self.token_text, self.token_attr
            )
        return self._fingerprint

    def token_text(self, token: int) -> bytes:
        return _llama().llama_vocab_get_text(self._vocab, token) or b""

    def token_attr(self, token: int) -> int:
        return int(_llama().llama_vocab_get_attr(self._vocab, token))

    # --- text <-> tokens -----------------------------------------------------------------------------------

    def tokenize(self, text: str, add_bos: bool | None = None, special: bool = False) -> list[int]:
        bos = self.add_bos if add_bos is None else add_bos
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError as exc:  # lone surrogates: undecodable bytes from argv, or "\ud800" in JSON
            raise PromptError(f"the text is not valid UTF-8 (at character {exc.start}); "
                              "pass UTF-8 text") from None
        return self._llm.tokenize(data, add_bos=bos, special=special)

    def token_bytes(self, token: int) -> bytes:
        """The bytes a token renders as (special tokens render as nothing)."""
        if self._vocab is None:  # llama.cpp would read freed memory
            raise RuntimeError(f"{self.name} is closed")
        buffer = ctypes.create_string_buffer(64)
        n = _llama().llama_token_to_piece(self._vocab, token, buffer, 64, 0, False)
        if n < 0:  # longer than 64 bytes: ask again with the size llama.cpp wants
            buffer = ctypes.create_string_buffer(-n)
            n = _llama().llama_token_to_piece(self._vocab, token, buffer, -n, 0, False)
        return buffer.raw[:n]

    def detokenize(self, tokens: list[int]) -> str:
        return b"".join(self.token_bytes(t) for t in tokens).decode("utf-8", errors="replace")

    # --- decoding ------------------------------------------------------------------------------------------

    @property
    def n_past(self) -> int:
        """How many tokens the context holds."""
        return self._llm.n_tokens

    @property
    def tokens(self) -> list[int]:
        return list(self._llm.input_ids[: self._llm.n_tokens])

    def prefill(self, tokens: list[int]) -> None:
        """Replace the context with `tokens`, reusing the longest common prefix already in the KV cache."""
        if not tokens:
            raise PromptError("the prompt is empty: give some text to continue")
        if len(tokens) >= self.n_ctx:
            raise PromptError(
                f"the prompt is {len(tokens)} tokens but the context holds {self.n_ctx}; shorten it or raise --ctx"
            )
        keep = common_prefix(self.tokens, tokens)
        keep = min(keep, len(tokens) - 1)  # always decode at least the last token so its logits are fresh
        self.rollback(keep)
        self._decode(tokens[keep:])

    def step(self, token: int) -> None:
        """Append one token and compute the next position's logits."""
        self._decode([token])

    def rollback(self, n_tokens: int) -> None:
        """Forget everything after the first n_tokens (KV cache included)."""
        self._llm.n_tokens = n_tokens
        self._llm._ctx.kv_cache_seq_rm(-1, n_tokens, -1)

    def reset(self) -> None:
        self.rollback(0)

    def logits(self) -> np.ndarray:
        """Zero-copy float32 view of the last decoded position's logits; valid until the next decode."""
        pointer = _llama().llama_get_logits_ith(self._llm._ctx.ctx, -1)
        return np.ctypeslib.as_array(pointer, shape=(self.n_vocab,))

    def _decode(self, tokens: list[int]) -> None:
        import time

        if self.n_past + len(tokens) > self.n_ctx:
            raise PromptError(f"context full: {self.n_past} + {len(tokens)} tokens > {self.n_ctx}")
        start = time.perf_counter()
        self._llm.eval(tokens)
        self.decode_seconds += time.perf_counter() - start
        self.decoded_tokens += len(tokens)

    # --- baselines for `sia-edge bench` (here because only this module may touch llama_cpp) -------------------

    def raw_decode(self, prompt_tokens: list[int], continuation: list[int]) -> float:
        """Seconds to prefill and then feed `continuation` one token at a time through `Llama.eval`: this model's
        decode floor, timed from the prompt like the other arms of the benchmark."""
        import time

        self.reset()
        start = time.perf_counter()
        self.prefill(prompt_tokens)
        for token in continuation:
            self._llm.eval([token])
        return time.perf_counter() - start

    def plain_completion(self, prompt: str, max_tokens: int, top_k: int, temperature: float, seed: int) -> tuple[int, float]:
        """llama-cpp-python as a user would call it: `create_completion`. Returns (tokens, decode seconds)."""
        import time

        self.reset()
        start = time.perf_counter()
        out = self._llm.create_completion(prompt, max_tokens=max_tokens, top_k=top_k, top_p=1.0, min_p=0.0,
                                          temperature=temperature, repeat_penalty=1.0, seed=seed)
        seconds = time.perf_counter() - start
        self.reset()  # create_completion leaves its own tokens in the context
        return int(out["usage"]["completion_tokens"]), seconds

    def close(self) -> None:
        self._vocab = None
        self._llm.close()


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

    def __init__(self, base: BaseModel, n_slots: int, n_ctx_per_slot: int) -> None:
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

    def flush(self) -> None:
        """Decode every slot's queued token in one batch; each such slot then holds its next logits."""
        queued = [slot for slot in self.slots if slot._queued is not None]
        if not queued:
            return
        if len(queued) < BATCH_FROM:  # a few tokens: one decode each is faster than one batched decode
            for slot in queued:
                self._decode([(slot, [slot._queued])])
        else:
            self._decode([(slot, [slot._queued]) for slot in queued])
        for slot in queued:
            slot._queued = None

    def _decode(self, work: list[tuple["SequenceSlot", list[int]]]) -> None:
        """One llama_decode over several slots' tokens (a prompt, or one token each); keeps each slot's last
        logits row and charges the wall time to every slot in the batch."""
        import time

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
        status = _llama().llama_decode(self._ctx.ctx, batch)
        if status != 0:
            raise RuntimeError(f"llama_decode failed with status {status} in a batch of {n} tokens")
        seconds = time.perf_counter() - start
        for (slot, tokens), row in zip(work, last_rows):
            pointer = _llama().llama_get_logits_ith(self._ctx.ctx, row)
            slot._logits[:] = np.ctypeslib.as_array(pointer, shape=(self.base.n_vocab,))
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
        self._tokens: list[int] = []
        self._queued: int | None = None
        self.decode_seconds = 0.0

    @property
    def n_ctx(self) -> int:
        return self.context.n_ctx_per_slot

    @property
    def n_past(self) -> int:
        return len(self._tokens) + (self._queued is not None)

    def prefill(self, tokens: list[int]) -> None:
        """Clear this slot and decode `tokens` now (in chunks of the batch size), alone."""
        if not tokens:
            raise PromptError("the prompt is empty: give some text to continue")
        if len(tokens) >= self.n_ctx:
            raise PromptError(f"the prompt is {len(tokens)} tokens but a batch slot holds {self.n_ctx}")
        self.clear()
        for start in range(0, len(tokens), self.context.n_batch):
            self.context._decode([(self, tokens[start:start + self.context.n_batch])])

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

    def clear(self) -> None:
        _llama().llama_memory_seq_rm(_llama().llama_get_memory(self.context._ctx.ctx), self.seq_id, -1, -1)
        self._tokens = []
        self._queued = None


def gpu_offload_supported() -> bool:
    """Whether this llama.cpp build can offload layers to a GPU (Metal, CUDA, ...)."""
    return bool(_llama().llama_supports_gpu_offload())


def tokenizer_fingerprint(n_vocab: int, bos: int, eos: int, text_of, attr_of) -> str:
    """sha256 over the vocabulary pieces, their attributes and the special ids (models/README.md)."""
    digest = hashlib.sha256()
    digest.update(f"sia-edge-tokenizer-v1\n{n_vocab}\n{bos}\n{eos}\n".encode())
    for token in range(n_vocab):
        digest.update(text_of(token))
        digest.update(b"\0%d\n" % attr_of(token))
    return digest.hexdigest()


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens two sequences share (what the KV cache can keep)."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


@contextlib.contextmanager
def _quiet_stderr():
    """Hide llama.cpp's C-level chatter while loading (e.g. Gemma's SWA notice), unless SIA_EDGE_DEBUG is set."""
    if os.environ.get("SIA_EDGE_DEBUG"):
        yield
        return
    try:
        fd = os.dup(2)
    except OSError:
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        with contextlib.redirect_stderr(io.StringIO()):  # llama-cpp-python's log callback prints via sys.stderr
            yield
    finally:
        os.dup2(fd, 2)
        os.close(fd)
        os.close(devnull)
