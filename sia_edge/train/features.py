"""Hidden-state features for training contract-3 value models, cached on disk per (base-model weights, text).

Reading a text's hidden states costs a full decode with every position an output (each with its full-vocabulary
logits: ~0.1-0.2 s per tweet on 2 cores), so they are computed once and kept: a refit or a new head then takes
seconds. The cache is a folder per weights fingerprint holding shards of float16 states; it is resumable (a shard is
written every `SHARD` new texts) and never read for other weights (the folder name and its header both say which).
No torch here.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

import numpy as np

SHARD = 200  # texts per shard file: what an interrupted extraction loses at most


def text_key(tokens: list[int]) -> str:
    """The cache key of a token sequence (BOS included): what was decoded, exactly."""
    return hashlib.sha256(np.asarray(tokens, dtype=np.int64).tobytes()).hexdigest()[:32]


class FeatureCache:
    """Hidden states of token sequences for one base model's weights: key -> (n, d) float16, or float32 where the
    states outgrow float16 (a middle layer's residual stream: Gemma's reaches ~1e5 after BOS; float16 ends at
    65504)."""

    FORMAT = "sia-edge-hidden-v1"
    FIELDS = ("states",)  # arrays per entry, all with the same first dimension; the first one is the states

    def __init__(self, root: Path, weights: str, hidden_size: int, dtype: str = "float16", **header_extra) -> None:
        self.folder = Path(root) / weights[:32]
        self.folder.mkdir(parents=True, exist_ok=True)
        self.dtype = np.dtype(dtype)
        header = {"weights_fingerprint": weights, "hidden_size": hidden_size, "format": self.FORMAT, **header_extra}
        if dtype != "float16":  # (older caches have no key: float16)
            header["dtype"] = dtype
        path = self.folder / "header.json"
        if path.exists():
            found = json.loads(path.read_text())
            if found != header:  # another model (a 32-hex prefix collision) or another format: never mix them
                raise ValueError(f"{self.folder} holds features of {found}, not {header}; delete it or use another "
                                 f"cache folder")
        else:
            path.write_text(json.dumps(header, indent=1))
        self.entries: dict[str, dict[str, np.ndarray]] = {}
        for shard in sorted(self.folder.glob("shard-*.npz")):
            with np.load(shard) as data:
                keys, offsets = data["keys"], data["offsets"]
                arrays = {name: data[name] for name in self.FIELDS}
            for i, key in enumerate(keys):
                self.entries[str(key)] = {name: a[offsets[i]:offsets[i + 1]] for name, a in arrays.items()}
        self._pending: dict[str, dict[str, np.ndarray]] = {}

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def get(self, key: str) -> dict[str, np.ndarray]:
        return self.entries[key]

    def add(self, key: str, states: np.ndarray, **arrays: np.ndarray) -> None:
        entry = {"states": states.astype(self.dtype), **arrays}
        self.entries[key] = self._pending[key] = entry
        if len(self._pending) >= SHARD:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        keys = list(self._pending)
        offsets = np.cumsum([0] + [len(self._pending[k]["states"]) for k in keys])
        number = len(list(self.folder.glob("shard-*.npz")))
        target = self.folder / f"shard-{number:05d}.npz"
        temporary = target.with_suffix(".tmp.npz")
        np.savez(temporary, keys=np.array(keys), offsets=offsets,
                 **{name: np.concatenate([self._pending[k][name] for k in keys]) for name in self.FIELDS})
        temporary.replace(target)  # a shard is either whole or absent
        self._pending = {}


class CandidateCache(FeatureCache):
    """Look-ahead states for one base model's weights: key -> rows of (position, candidate id, hidden state after
    the text's first `position` tokens and that candidate), k rows per position (CandidateStates)."""

    FORMAT = "sia-edge-candidates-v1"
    FIELDS = ("states", "ids", "positions")


def _fill(cache: FeatureCache, keys: list[str], read: Callable[[int], dict[str, np.ndarray]],
          progress: Callable[[int, int], None] | None) -> list[dict[str, np.ndarray]]:
    """Every key's entry, from the cache or `read(i)` now (and cached; flushed even if interrupted)."""
    missing = [i for i, key in enumerate(keys) if key not in cache]
    try:
        for done, i in enumerate(missing, 1):
            cache.add(keys[i], **read(i))
            if progress is not None:
                progress(done, len(missing))
    finally:
        cache.flush()
    return [cache.get(key) for key in keys]


def extract(reader, sequences: list[list[int]], cache: FeatureCache,
            progress: Callable[[int, int], None] | None = None) -> list[np.ndarray]:
    """Hidden states (n_i, d) float16 of each sequence, from the cache or decoded now (and cached)."""
    entries = _fill(cache, [text_key(tokens) for tokens in sequences],
                    lambda i: {"states": reader.of(sequences[i])}, progress)
    return [entry["states"] for entry in entries]


def look_ahead_positions(tokens: list[int], first: int, count: int) -> list[int]:
    """`count` positions p in first..len(tokens), drawn without replacement and seeded by the text itself (the
    same text always gets the same positions, so its cache entry is reused)."""
    choices = np.arange(max(1, first), len(tokens) + 1)
    if count >= len(choices):
        return [int(p) for p in choices]
    seed = int(text_key(tokens)[:8], 16)
    return sorted(int(p) for p in np.random.default_rng(seed).choice(choices, count, replace=False))


def extract_candidates(reader, sequences: list[list[int]], firsts: list[int], count: int, cache: CandidateCache,
                       progress: Callable[[int, int], None] | None = None) -> list[dict[str, np.ndarray]]:
    """Per sequence: `count` positions from its firsts[i] on, the base model's top-k tokens there and the hidden
    state after each (CandidateStates.at), from the cache or decoded now (and cached). Each entry holds rows
    `positions` (R,), `ids` (R,) and `states` (R, d) float16, k consecutive rows per position."""
    def read(i: int) -> dict[str, np.ndarray]:
        where = look_ahead_positions(sequences[i], firsts[i], count)
        ids, states = reader.at(sequences[i], where)
        return {"states": states.reshape(-1, states.shape[-1]), "ids": ids.reshape(-1).astype(np.int32),
                "positions": np.repeat(np.asarray(where, np.int32), ids.shape[1])}

    keys = [f"{text_key(tokens)}-{first}-{count}" for tokens, first in zip(sequences, firsts)]
    return _fill(cache, keys, read, progress)


def embedding_rows(gguf_path: Path) -> np.ndarray:
    """The base model's input-embedding table (n_vocab, d) float32, read from the GGUF with the ggml project's
    `gguf` package (Gemma 3 270M: Q8_0, ~4 s to dequantize all 262,144 rows)."""
    try:
        from gguf import GGUFReader
        from gguf.quants import dequantize
    except ImportError as exc:
        from ..errors import TrainingDataError

        raise TrainingDataError("hidden-state value models read the base model's embedding table with the `gguf` "
                                "package: pip install 'sia-edge[train]'") from exc
    reader = GGUFReader(str(gguf_path))
    tensor = next(t for t in reader.tensors if t.name == "token_embd.weight")
    rows = dequantize(tensor.data, tensor.tensor_type)
    return np.asarray(rows, dtype=np.float32).reshape(-1, rows.shape[-1])
