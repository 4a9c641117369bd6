"""ONNX export of the incremental value graph, with the metadata models/README.md requires."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

CONTRACT_VERSION = "1"
_DYNAMIC_AXES = {
    "state": {0: "batch"},
    "tokens": {0: "batch", 1: "n"},
    "mask": {0: "batch", 1: "n"},
    "new_state": {0: "batch"},
    "score": {0: "batch"},
}


def export_value_model(graph: torch.nn.Module, state_size: int, out: Path, metadata: dict[str, str]) -> None:
    """Write `graph` as ONNX opset 17 to `out` (atomically), with `metadata` as sia_edge.* metadata_props."""
    import onnx

    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    example = (
        torch.zeros(2, state_size),  # state (B, S)
        torch.zeros(2, 3, dtype=torch.int64),  # tokens (B, n)
        torch.ones(2, 3),  # mask (B, n)
    )
    graph.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice is not the user's concern
        torch.onnx.export(
            graph, example, str(partial), input_names=["state", "tokens", "mask"],
            output_names=["new_state", "score"], dynamic_axes=_DYNAMIC_AXES, opset_version=17, dynamo=False,
        )
    model = onnx.load(str(partial))
    del model.metadata_props[:]
    for key, value in {"contract": CONTRACT_VERSION, **metadata}.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = f"sia_edge.{key}", value
    model.producer_name = "sia-edge vm train"
    onnx.checker.check_model(model)
    onnx.save(model, str(partial))
    os.replace(partial, out)
