"""Opening an ONNX value model: the one place onnxruntime is imported, and the metadata every contract reads."""

from __future__ import annotations

from pathlib import Path

from ..errors import ValueModelError

META_PREFIX = "sia_edge."


def metadata_of(session) -> dict[str, str]:
    meta = session.get_modelmeta().custom_metadata_map
    return {k[len(META_PREFIX):]: v for k, v in meta.items() if k.startswith(META_PREFIX)}


def by_name(args, name: str):
    """An input or output of the session by name: the contract fixes names, not positions."""
    return next(arg for arg in args if arg.name == name)


def open_session(path: Path, threads: int):
    import onnxruntime as ort

    if not path.is_file():
        raise ValueModelError(f"value model not found: {path}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Idle onnxruntime threads must not spin: llama.cpp needs both cores between junctions.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped errors for corrupt files
        raise ValueModelError(f"cannot load value model {path}: {str(exc).splitlines()[0]}") from exc
