"""llama.cpp itself: loading the library, quieting it, and the small helpers every part of the base model uses."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
from pathlib import Path

from ..errors import ModelFileError

GGUF_MAGIC = b"GGUF"


def _llama():
    import llama_cpp  # deferred so `sia-edge --help` does not load the native library

    return llama_cpp


def own_context(base, n_batch: int, seqs_per_token: int = 1, **fields):
    """A llama.cpp context of its own on `base`'s loaded weights, and a batch of `n_batch` tokens, each of which
    may belong to up to `seqs_per_token` sequences. It starts from the single-sequence context's parameters, so
    both decode alike (flash attention, KV types, threads...); `fields` are the llama_context_params to change
    (n_ctx, n_seq_max, embeddings, ...). -> (LlamaContext, LlamaBatch)"""
    llama_cpp = _llama()
    from llama_cpp import _internals

    params = llama_cpp.llama_context_params.from_buffer_copy(base._llm.context_params)
    for name, value in fields.items():
        setattr(params, name, value)
    params.n_batch = params.n_ubatch = n_batch
    params.no_perf = True
    with _quiet_stderr():
        context = _internals.LlamaContext(model=base._llm._model, params=params, verbose=False)
        batch = _internals.LlamaBatch(n_tokens=n_batch, embd=0, n_seq_max=seqs_per_token, verbose=False)
    return context, batch


def decode_rows(context, batch, rows, purpose: str) -> None:
    """One llama_decode of (token, position, sequence, output) rows; `purpose` names the work in an error. A row's
    sequence is an id, or a tuple of ids for a token several sequences share (the batch must allow that many)."""
    llama_cpp = _llama()
    fill = batch.batch
    for i, (token, pos, seq, output) in enumerate(rows):
        seqs = seq if isinstance(seq, tuple) else (seq,)
        fill.token[i], fill.pos[i], fill.n_seq_id[i] = token, pos, len(seqs)
        for j, s in enumerate(seqs):
            fill.seq_id[i][j] = s
        fill.logits[i] = output
    fill.n_tokens = len(rows)
    status = llama_cpp.llama_decode(context.ctx, fill)
    if status != 0:
        raise RuntimeError(f"llama_decode failed with status {status} {purpose}")


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
