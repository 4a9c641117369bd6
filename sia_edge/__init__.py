"""sia-edge: sparse inference-time alignment for small GGUF models on ordinary CPUs."""

__version__ = "0.1.0"
__all__ = ["Engine", "GenerationSettings", "GenerationResult", "TokenEvent"]


def __getattr__(name: str):
    # Lazy, so that `import sia_edge` (and `sia-edge --help`) does not load llama.cpp or onnxruntime.
    if name == "Engine":
        from .engine import Engine

        return Engine
    if name == "GenerationSettings":
        from .settings import GenerationSettings

        return GenerationSettings
    if name in ("GenerationResult", "TokenEvent"):
        from . import decoder

        return getattr(decoder, name)
    raise AttributeError(f"module 'sia_edge' has no attribute {name!r}")
