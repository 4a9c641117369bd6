"""BaseModel: one GGUF model and its own llama.cpp context (one sequence)."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ModelFileError, PromptError
from .look_ahead import reuse_look_ahead
from .native import _llama, _quiet_stderr, check_gguf_file, common_prefix, tokenizer_fingerprint

if TYPE_CHECKING:
    from .hidden import HiddenStates
    from .layers import LayerStates
    from .look_ahead import LookAhead

DEFAULT_CONTEXT = 2048


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
                    pooling_type=llama_cpp.LLAMA_POOLING_TYPE_NONE,  # hidden states per token, when switched on
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
        self.n_embd = int(llama_cpp.llama_model_n_embd(self._llm._model.model))
        self.n_layer = int(llama_cpp.llama_model_n_layer(self._llm._model.model))  # transformer blocks
        self._embeddings = False  # whether llama.cpp also returns hidden states (switched per decode)
        self._hidden_reader: "HiddenStates | None" = None
        self._layer_readers: dict[int, "LayerStates"] = {}
        self._look_ahead: "LookAhead | None" = None

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

    def token_bytes(self, token: int, special: bool = False) -> bytes:
        """The bytes a token renders as in text (special tokens render as nothing); `special=True`: special tokens
        render as their names (e.g. b"<eos>"), to show which token it was."""
        if self._vocab is None:  # llama.cpp would read freed memory
            raise RuntimeError(f"{self.name} is closed")
        buffer = ctypes.create_string_buffer(64)
        n = _llama().llama_token_to_piece(self._vocab, token, buffer, 64, 0, special)
        if n < 0:  # longer than 64 bytes: ask again with the size llama.cpp wants
            buffer = ctypes.create_string_buffer(-n)
            n = _llama().llama_token_to_piece(self._vocab, token, buffer, -n, 0, special)
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

    @property
    def prefilled(self) -> bool:
        """The decode loop's question to a batch slot (whose prompt may still be in flight): here always true."""
        return True

    def prefill(self, tokens: list[int], reuse: bool = False, hidden: bool = False) -> int:
        """Replace the context with `tokens`; returns how many of them were kept from the KV cache (with `reuse`).

        `reuse`: keep the longest common prefix already in the KV cache and decode only the rest (chat turns). The
        next logits then differ from a fresh prefill's in the last float digits (the last prompt token is decoded in
        a batch of another shape), so a seeded generation replays exactly only without reuse, the default.
        `hidden`: also make the hidden state after the prompt readable (`hidden()`), and keep reading one at every
        step: the last prompt token is decoded alone with hidden states on, the rest of the prompt without.
        """
        if not tokens:
            raise PromptError("the prompt is empty: give some text to continue")
        if len(tokens) >= self.n_ctx:
            raise PromptError(
                f"the prompt is {len(tokens)} tokens but the context holds {self.n_ctx}; shorten it or raise --ctx"
            )
        keep = min(common_prefix(self.tokens, tokens), len(tokens) - 1) if reuse else 0
        self.rollback(keep)  # always decode at least the last token so its logits are fresh
        if self._look_ahead is not None and not reuse:
            self._look_ahead.forget()
        if hidden:
            self._set_embeddings(False)
            if len(tokens) - 1 > keep:
                self._decode(tokens[keep:-1])
            self._set_embeddings(True)
            self._decode(tokens[-1:])
        else:
            self._set_embeddings(False)
            self._decode(tokens[keep:])
        return keep

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

    def hidden(self) -> np.ndarray:
        """Zero-copy float32 view (n_embd,) of the last decoded position's hidden state; valid until the next decode.
        Only after a `prefill(..., hidden=True)` (and the steps after it)."""
        if not self._embeddings:
            raise RuntimeError("hidden states are off: prefill with hidden=True to read them")
        pointer = _llama().llama_get_embeddings_ith(self._llm._ctx.ctx, -1)
        if not pointer:
            raise RuntimeError("llama.cpp returned no hidden state for the last position")
        return np.ctypeslib.as_array(pointer, shape=(self.n_embd,))

    def hidden_states(self, layer: int | None = None) -> "HiddenStates | LayerStates":
        """This model's reader of whole texts' hidden states (its own llama.cpp context, made on first use): the
        final state, or with `layer` the state after that block (base_model.layers; n_layer is the final one)."""
        if layer is not None and layer != self.n_layer:
            if layer not in self._layer_readers:
                from .layers import LayerStates

                self._layer_readers[layer] = LayerStates(self, [layer])
            return self._layer_readers[layer]
        if self._hidden_reader is None:
            from .hidden import HiddenStates

            self._hidden_reader = HiddenStates(self)
        return self._hidden_reader

    def look_ahead(self, k: int, layer: int | None = None) -> "LookAhead":
        """The exact look-ahead of this model's generation (a context of its own mirroring the text, made on first
        use and kept, so the next generation reuses what it holds), reading the final state or `layer`'s."""
        self._look_ahead = reuse_look_ahead(self._look_ahead, self, k, self.n_ctx, layer)
        return self._look_ahead

    def _set_embeddings(self, on: bool) -> None:
        if on != self._embeddings:
            _llama().llama_set_embeddings(self._llm._ctx.ctx, on)
            self._embeddings = on

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
        if self._hidden_reader is not None:
            self._hidden_reader.close()
        for reader in self._layer_readers.values():
            reader.close()
        if self._look_ahead is not None:
            self._look_ahead.close()
        self._llm.close()
