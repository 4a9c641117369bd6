"""The ONNX value models: the contracts in models/README.md, one module each, and `open_value_model` for any of them.

    session.py  opening a file (the only place onnxruntime is imported) and reading its metadata
    text.py     contracts 1 and 2: token ids or bytes, an incremental prefix state (ValueModel)
    hidden.py   contract 3: the base model's own hidden state (HiddenValueModel)
"""

from __future__ import annotations

import os
from pathlib import Path

from .hidden import HIDDEN_CONTRACT, POOLINGS, SCORINGS, STATE_POOLINGS, HiddenValueModel
from .session import META_PREFIX, metadata_of, open_session
from .text import (CONTRACT_VERSION, CONTRACT_VERSIONS, FOLD_INLINE_MAX, INPUT_KINDS, PrefixState, ValueModel,
                   pad_sequences)

__all__ = ["CONTRACT_VERSION", "CONTRACT_VERSIONS", "FOLD_INLINE_MAX", "HIDDEN_CONTRACT", "INPUT_KINDS", "META_PREFIX",
           "POOLINGS", "SCORINGS", "STATE_POOLINGS", "HiddenValueModel", "PrefixState", "ValueModel",
           "open_value_model", "pad_sequences"]


def open_value_model(path: str | os.PathLike, threads: int = 1) -> "ValueModel | HiddenValueModel":
    """Load any value model: contract 1 or 2 (tokens, bytes: ValueModel) or 3 (hidden states: HiddenValueModel)."""
    session = open_session(Path(path), threads)
    if metadata_of(session).get("input") == "hidden":
        return HiddenValueModel(path, session=session)
    return ValueModel(path, session=session)

