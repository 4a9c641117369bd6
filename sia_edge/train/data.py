"""Reading labelled text for value-model training (CSV or JSONL), with clear errors for bad input. No torch here."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import TrainingDataError

LABEL_TYPES = ("auto", "binary", "score")
_TRUE_WORDS = {"true": 1.0, "false": 0.0}


@dataclass
class LabelledTexts:
    """The usable rows of a training file."""

    texts: list[str]
    targets: np.ndarray  # (N,) float32: 0/1 for binary labels, in [0, 1] for scores
    weights: np.ndarray  # (N,) float32 sample weights (all 1 without --weight-column)
    label_type: str  # "binary" or "score"
    skipped_empty: int  # rows dropped because their text was empty
    score_from: np.ndarray | None = None  # (N,) int: first position whose prefix is trained (None: all of them)


def load_labelled_texts(
    path: str | Path,
    text_column: str = "text",
    label_column: str = "label",
    positive: str | None = None,
    weight_column: str | None = None,
    label_type: str = "auto",
) -> LabelledTexts:
    """Read a CSV or JSONL file of texts with a binary label or a score in [0, 1].

    label_type "auto": binary when `positive` is given or every label is 0/1 (or true/false), else a score.
    Raises TrainingDataError naming the file, the row and the column for anything unusable.
    """
    if label_type not in LABEL_TYPES:
        raise TrainingDataError(f"label type must be one of {', '.join(LABEL_TYPES)}, not {label_type!r}")
    path = Path(path)
    rows = _read_rows(path)
    needed = [text_column, label_column] + ([weight_column] if weight_column else [])
    _check_columns(path, rows, needed)

    kept = [(number, row) for number, row in rows if str(row[text_column] or "").strip()]
    if not kept:
        raise TrainingDataError(f"{path}: every row has an empty {text_column!r}")
    texts = [str(row[text_column]) for _, row in kept]
    raw_labels = [(number, row[label_column]) for number, row in kept]
    if positive is not None and label_type == "score":
        raise TrainingDataError("--positive names the positive class of a binary label; it makes no sense with scores")
    if positive is not None:
        targets, chosen_type = _binary_from_strings(path, label_column, raw_labels, positive), "binary"
    else:
        targets, chosen_type = _numeric_targets(path, label_column, raw_labels, label_type)
    weights = _weights(path, weight_column, kept) if weight_column else np.ones(len(kept), dtype=np.float32)
    return LabelledTexts(texts, targets, weights, chosen_type, len(rows) - len(kept))


# --- reading ---------------------------------------------------------------------------------------------------


def _read_rows(path: Path) -> list[tuple[int, dict]]:
    """(line number, row dict) for every data row. JSONL for .jsonl/.json or content starting with '{', else CSV."""
    if not path.exists():
        raise TrainingDataError(f"training data not found: {path}")
    if not path.is_file():
        raise TrainingDataError(f"training data is not a file: {path}")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise TrainingDataError(
            f"{path} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); re-encode it as UTF-8"
        ) from exc
    if not text.strip():
        raise TrainingDataError(f"{path} is empty")
    is_jsonl = path.suffix.lower() in (".jsonl", ".json", ".ndjson") or text.lstrip().startswith("{")
    rows = _jsonl_rows(path, text) if is_jsonl else _csv_rows(path, text)
    if not rows:
        raise TrainingDataError(f"{path} has no data rows")
    return rows


def _csv_rows(path: Path, text: str) -> list[tuple[int, dict]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        # Line numbers as an editor shows them (header is line 1); multi-line quoted fields shift them slightly.
        return [(number + 2, row) for number, row in enumerate(reader)]
    except csv.Error as exc:
        raise TrainingDataError(f"{path}: not a readable CSV file near line {reader.line_num}: {exc}") from exc


def _jsonl_rows(path: Path, text: str) -> list[tuple[int, dict]]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TrainingDataError(f"{path} line {number}: not valid JSON ({exc.msg})") from exc
        if not isinstance(row, dict):
            raise TrainingDataError(f"{path} line {number}: expected a JSON object per line, got {type(row).__name__}")
        rows.append((number, row))
    return rows


def _check_columns(path: Path, rows: list[tuple[int, dict]], needed: list[str]) -> None:
    header = [key for key in rows[0][1] if key is not None]
    for column in needed:
        if column not in header:
            raise TrainingDataError(
                f"{path}: no column {column!r}; the columns are {', '.join(map(repr, header))}"
            )
    for number, row in rows:  # JSONL rows may each miss a key; CSV short rows give None
        for column in needed:
            if row.get(column) is None:
                raise TrainingDataError(f"{path} line {number}: column {column!r} is missing")


# --- labels and weights ----------------------------------------------------------------------------------------


def _binary_from_strings(path: Path, column: str, raw: list[tuple[int, object]], positive: str) -> np.ndarray:
    values = [str(value).strip() for _, value in raw]
    targets = np.array([value == positive for value in values], dtype=np.float32)
    _check_two_classes(path, column, targets, sorted(set(values)))
    return targets


def _numeric_targets(path: Path, column: str, raw: list[tuple[int, object]], label_type: str) -> tuple[np.ndarray, str]:
    targets = np.array([_as_number(path, column, number, value) for number, value in raw], dtype=np.float32)
    is_binary = bool(np.all((targets == 0) | (targets == 1)))
    if label_type == "auto":
        label_type = "binary" if is_binary else "score"
    if label_type == "binary":
        if not is_binary:
            bad = next(v for (n, v), t in zip(raw, targets) if t not in (0.0, 1.0))
            raise TrainingDataError(f"{path}: binary labels must be 0 or 1, but {column!r} holds {bad!r}")
        _check_two_classes(path, column, targets, sorted({str(v) for _, v in raw}))
    else:
        outside = np.flatnonzero((targets < 0) | (targets > 1))
        if outside.size:
            number, value = raw[outside[0]]
            raise TrainingDataError(
                f"{path} line {number}: score {value!r} in {column!r} is outside [0, 1] ({outside.size} rows are); "
                f"rescale the scores to [0, 1], e.g. (x + 1) / 2 for scores in [-1, 1]"
            )
        if float(targets.std()) == 0.0:
            raise TrainingDataError(f"{path}: every score in {column!r} is {targets[0]:g}; nothing to learn")
    return targets, label_type


def _as_number(path: Path, column: str, number: int, value: object) -> float:
    if isinstance(value, bool):
        return float(value)
    word = str(value).strip().lower()
    if word in _TRUE_WORDS:
        return _TRUE_WORDS[word]
    try:
        result = float(word)
    except ValueError:
        raise TrainingDataError(
            f"{path} line {number}: label {value!r} in {column!r} is not a number; for text labels pass "
            f"--positive VALUE to say which label is the positive class"
        ) from None
    if not math.isfinite(result):
        raise TrainingDataError(f"{path} line {number}: label {value!r} in {column!r} is not a finite number")
    return result


def _check_two_classes(path: Path, column: str, targets: np.ndarray, values: list[str]) -> None:
    positives = int(targets.sum())
    if positives == 0 or positives == len(targets):
        which = "positive" if positives else "negative"
        raise TrainingDataError(
            f"{path}: column {column!r} has only one class (every row is {which}; values seen: "
            f"{', '.join(map(repr, values[:5]))}); a value model needs both positive and negative examples"
        )


def _weights(path: Path, column: str, rows: list[tuple[int, dict]]) -> np.ndarray:
    weights = np.empty(len(rows), dtype=np.float32)
    for index, (number, row) in enumerate(rows):
        value = row[column]
        try:
            weight = float(value)
        except (TypeError, ValueError):
            raise TrainingDataError(f"{path} line {number}: weight {value!r} in {column!r} is not a number") from None
        if not math.isfinite(weight) or weight < 0:
            raise TrainingDataError(f"{path} line {number}: weight {value!r} in {column!r} must be a number >= 0")
        weights[index] = weight
    if float(weights.sum()) == 0.0:
        raise TrainingDataError(f"{path}: every weight in {column!r} is 0")
    return weights
