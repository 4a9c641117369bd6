"""The GGUF base model through llama-cpp-python. The only package that imports llama_cpp.

It owns the decode loop's llama.cpp side: prefill, one step, a zero-copy view of the last position's logits,
rollback, tokenization and the tokenizer fingerprint. It never asks llama.cpp for every position's logits (logits_all) nor reads `Llama.scores`.

Hidden states: with llama.cpp's `embeddings` switched on (pooling NONE) a decode also returns each output token's
last-layer hidden state (after the final norm, the vector the output layer reads), next to unchanged logits. It is
switched on only for the decodes whose hidden state is read: with it on, llama.cpp makes every token of a batch an
output, so a prompt decoded with it on would also project every prompt token onto the whole vocabulary.
`CandidateStates` (training only) decodes a text's top-k next tokens as k sequences sharing its KV cells, to read the
state each candidate would lead to; `LookAhead` does the same at a generation's junctions, for a look-ahead value
model, in a context of its own that mirrors the generation's text. `LayerStates` and the look-ahead can also read a
middle layer's output (`layers`: copied from llama.cpp's graph as it is computed, the decode ended there).
"""

from .batch_context import BATCH_FROM, DEFAULT_PREFILL_CHUNK, BatchContext, SequenceSlot
from .hidden import CandidateStates, HiddenStates
from .layers import LayerStates
from .look_ahead import LookAhead
from .model import DEFAULT_CONTEXT, BaseModel
from .native import GGUF_MAGIC, check_gguf_file, common_prefix, gpu_offload_supported, tokenizer_fingerprint

__all__ = ["BATCH_FROM", "DEFAULT_CONTEXT", "DEFAULT_PREFILL_CHUNK", "GGUF_MAGIC", "BaseModel", "BatchContext",
           "CandidateStates", "HiddenStates", "LayerStates", "LookAhead", "SequenceSlot", "check_gguf_file",
           "common_prefix", "gpu_offload_supported", "tokenizer_fingerprint"]
