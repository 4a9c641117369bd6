"""Typed errors. The CLI turns each into a one-line message and exit code 2."""


class SiaError(Exception):
    """Base class for every error sia-edge raises on purpose."""


class InvalidSettingError(SiaError, ValueError):
    """A generation parameter is out of range (names the parameter and echoes the value)."""


class ModelFileError(SiaError):
    """A GGUF base model is missing, unreadable, truncated or not a GGUF file."""


class ValueModelError(SiaError):
    """An ONNX value model is missing, unreadable or does not follow the contract in models/README.md."""


class TokenizerMismatchError(ValueModelError):
    """The value model was built for a different tokenizer than the base model."""


class PromptError(SiaError, ValueError):
    """The prompt is empty or does not fit in the context window."""


class CalibrationError(SiaError):
    """No usable calibration for the requested ratio."""


class TrainingDataError(SiaError):
    """Value-model training data is missing, unreadable or unusable (names the file, row and column)."""


class ModelOutputError(SiaError):
    """The base model produced something unusable (e.g. NaN or infinite logits)."""


class QueueTimeoutError(SiaError):
    """Every slot of the engine stayed busy for longer than the caller would wait (the server answers 503)."""
