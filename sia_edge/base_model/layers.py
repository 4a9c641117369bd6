"""The base model's residual stream at any layer, read with llama.cpp's graph-evaluation callback.

llama.cpp names each transformer block's output `l_out-<i>` (i = 0 .. n_layer - 1) and the final, normed state
`result_norm`: the vector `embeddings` returns and the output layer reads. A callback that asks for a named tensor
is shown it once it is computed (host memory on the CPU backend) and may copy it; returning False then ends the
decode there, so nothing above the deepest layer read is computed (not even the output layer's logits).
"""

from __future__ import annotations

import ctypes

import numpy as np

from ..errors import PromptError
from .native import _llama, decode_rows, own_context

FINAL_NORM = b"result_norm"


def layer_tensor(layer: int, n_layer: int) -> bytes:
    """llama.cpp's name for the state after block `layer` (0-based); `n_layer` names the final, normed state."""
    if not 0 <= layer <= n_layer:
        raise ValueError(f"layer {layer} is outside 0..{n_layer} (this model has {n_layer} blocks; {n_layer} is the "
                         f"final normed state)")
    return FINAL_NORM if layer == n_layer else b"l_out-%d" % layer


def _ggml():
    from llama_cpp import _ggml

    lib = _ggml.libggml
    lib.ggml_get_name.restype, lib.ggml_get_name.argtypes = ctypes.c_char_p, [ctypes.c_void_p]
    lib.ggml_nelements.restype, lib.ggml_nelements.argtypes = ctypes.c_int64, [ctypes.c_void_p]
    lib.ggml_get_data_f32.restype = ctypes.POINTER(ctypes.c_float)
    lib.ggml_get_data_f32.argtypes = [ctypes.c_void_p]
    return lib


class TensorTap:
    """A graph-evaluation callback that copies the named float32 tensors of each decode as they are computed,
    (n_rows, width) each, and ends the decode after the last of them. llama.cpp keeps only a pointer to `callback`:
    keep the tap alive as long as the context that uses it."""

    def __init__(self, names: list[bytes], width: int) -> None:
        lib = _ggml()
        self.names, self.width = set(names), width
        self.captured: dict[bytes, np.ndarray] = {}
        self.stops = 0  # decodes ended early (a test checks that this llama.cpp names the tensors so)

        @_llama().ggml_backend_sched_eval_callback
        def callback(tensor, ask, _user_data):
            name = lib.ggml_get_name(tensor)
            if ask:
                return name in self.names
            count = int(lib.ggml_nelements(tensor))
            if count:  # (a decode without outputs leaves the final norm empty)
                data = np.ctypeslib.as_array(lib.ggml_get_data_f32(tensor), shape=(count,))
                self.captured[name] = data.reshape(-1, self.width).copy()  # the buffer is reused by later nodes
            else:
                self.captured[name] = np.empty((0, self.width), np.float32)
            if self.captured.keys() >= self.names:
                self.stops += 1
                return False
            return True

        self.callback = callback

    def take(self) -> dict[bytes, np.ndarray]:
        """What the last decode captured (and forget it)."""
        captured, self.captured = self.captured, {}
        return captured


class LayerStates:
    """The residual stream after chosen layers at every position of whole texts, for value models that read a
    layer other than the last (and for finding which layer to read, tools/layer_probe.py): a llama.cpp context of
    its own whose decodes stop after the deepest layer asked for. Each call decodes from an empty cache.
    Thread-safe (one text at a time). With one layer it reads like `HiddenStates` (`of`, `after`)."""

    def __init__(self, base, layers: list[int], n_ctx: int | None = None) -> None:
        import threading

        llama_cpp = _llama()
        self.base, self.layers = base, sorted(set(layers))
        self.n_layer = base.n_layer
        self._names = [layer_tensor(layer, self.n_layer) for layer in self.layers]
        self._tap = TensorTap(self._names, base.n_embd)
        n_ctx = n_ctx or base.n_ctx
        self.n_batch = min(64, n_ctx)
        self._ctx, self._batch = own_context(base, self.n_batch, n_ctx=n_ctx, n_seq_max=1, embeddings=False,
                                             cb_eval=self._tap.callback, cb_eval_user_data=None)
        self.n_ctx = min(int(llama_cpp.llama_n_ctx(self._ctx.ctx)), n_ctx)
        self._lock = threading.Lock()

    def all(self, tokens: list[int]) -> dict[int, np.ndarray]:
        """layer -> (len(tokens), n_embd) float32: the state after each token (BOS included if the text has one)."""
        if not tokens:
            raise PromptError("no tokens to read")
        if len(tokens) >= self.n_ctx:
            raise PromptError(f"the text is {len(tokens)} tokens but the context holds {self.n_ctx}")
        llama_cpp = _llama()
        # the last block and the final norm keep only output rows; the blocks below it keep every row
        every_row = self.layers[-1] >= self.n_layer - 1
        parts: dict[int, list[np.ndarray]] = {layer: [] for layer in self.layers}
        with self._lock:
            llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(self._ctx.ctx), -1, -1, -1)
            for start in range(0, len(tokens), self.n_batch):
                chunk = tokens[start:start + self.n_batch]
                decode_rows(self._ctx, self._batch, [(t, start + i, 0, every_row or start + i == len(tokens) - 1)
                                                     for i, t in enumerate(chunk)], "reading layer states")
                captured = self._tap.take()
                for layer, name in zip(self.layers, self._names):
                    parts[layer].append(captured[name])
        return {layer: np.concatenate(rows) for layer, rows in parts.items()}

    def of(self, tokens: list[int]) -> np.ndarray:
        """(len(tokens), n_embd) float32: the state after each token, at this reader's one layer."""
        if len(self.layers) != 1:
            raise ValueError(f"this reader reads layers {self.layers}: use all()")
        return self.all(tokens)[self.layers[0]]

    def after(self, tokens: list[int]) -> np.ndarray:
        """(n_embd,) float32: the state after the last of `tokens`, at this reader's one layer."""
        return self.of(tokens)[-1].copy()

    def close(self) -> None:
        self._batch.close()
        self._ctx.close()
