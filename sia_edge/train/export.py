"""ONNX export of the incremental value graph, with the metadata models/README.md requires."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

CONTRACT_VERSION = "2"  # models/README.md; the runtime also reads 1 (token models before `input`)
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
    replace_metadata(model, sia_keys({"contract": CONTRACT_VERSION, **metadata}))
    model.producer_name = "sia-edge vm train"
    onnx.checker.check_model(model)
    save_atomically(model, out)


def export_recurrent_value_model(graph, out: Path, metadata: dict[str, str]) -> None:
    """Write a RecurrentValueGraph as ONNX opset 17, node by node, with `metadata` as sia_edge.* metadata_props.

    torch's exporter cannot express the contract's mask with ONNX's own GRU operator (which takes per-row lengths,
    not a mask), and a scripted step loop costs a graph iteration per byte. So the graph is written directly:

        real = mask > 0.5; slot = cumsum(real) - 1 for real positions, n (a spill column) for padding
        units   = ScatterElements(zeros (B, n+1), slot, rows)[:, :n]    # real tokens moved left, in order
        lengths = sum(real)                                              # per row, may be 0
        h       = GRU(embedding[units], lengths, initial_h = state)     # ONNX GRU, linear_before_reset = 1
        new_state = lengths > 0 ? h : state;  score = head(new_state)

    which is what RecurrentValueGraph computes step by step (padding anywhere leaves the state unchanged).
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    net = graph.net
    hidden = net.hidden

    def array(t) -> np.ndarray:
        return t.detach().cpu().numpy().astype(np.float32)

    def gates_zrh(t: np.ndarray) -> np.ndarray:  # torch orders the gates (r, z, n); ONNX (z, r, h)
        r, z, n = np.split(t, 3, axis=0)
        return np.concatenate([z, r, n], axis=0)

    weights = {
        "embedding": array(net.embedding.weight),
        "W": gates_zrh(array(net.gru.weight_ih_l0))[None],  # (1, 3H, D)
        "R": gates_zrh(array(net.gru.weight_hh_l0))[None],  # (1, 3H, H)
        "B": np.concatenate([gates_zrh(array(net.gru.bias_ih_l0)), gates_zrh(array(net.gru.bias_hh_l0))])[None],
        "head1_w": array(net.head[0].weight), "head1_b": array(net.head[0].bias),
        "head2_w": array(net.head[2].weight), "head2_b": array(net.head[2].bias),
        "one": np.array([1], np.int64), "zero": np.array([0], np.int64), "axis1": np.array(1, np.int64),
        "axes0": np.array([0], np.int64), "axes1": np.array([1], np.int64), "half": np.array(0.5, np.float32),
        "min_len": np.array(1, np.int32), "zero_len": np.array(0, np.int32),
        "byte_min": np.array(0, np.int64), "byte_max": np.array(255, np.int64),
    }
    nodes = [
        helper.make_node("Greater", ["mask", "half"], ["real"]),
        helper.make_node("Cast", ["real"], ["real_i"], to=TensorProto.INT64),
        helper.make_node("CumSum", ["real_i", "axis1"], ["count"]),
        helper.make_node("Sub", ["count", "one"], ["slot_real"]),
        helper.make_node("Shape", ["tokens"], ["batch"], start=0, end=1),
        helper.make_node("Shape", ["tokens"], ["n"], start=1, end=2),
        helper.make_node("Where", ["real", "slot_real", "n"], ["slot"]),
    ]
    if graph.row_of_token is None:  # bytes: the value is the row
        nodes.append(helper.make_node("Clip", ["tokens", "byte_min", "byte_max"], ["rows"]))
    else:  # token ids -> compact rows; ids outside the vocabulary -> the unknown row (0)
        n_vocab = int(graph.row_of_token.shape[0])
        weights.update({"row_of_token": graph.row_of_token.cpu().numpy().astype(np.int32),
                        "id_max": np.array(n_vocab - 1, np.int64), "unknown": np.array(0, np.int64)})
        nodes += [
            helper.make_node("GreaterOrEqual", ["tokens", "byte_min"], ["above"]),
            helper.make_node("LessOrEqual", ["tokens", "id_max"], ["below"]),
            helper.make_node("And", ["above", "below"], ["inside"]),
            helper.make_node("Clip", ["tokens", "byte_min", "id_max"], ["ids"]),
            helper.make_node("Gather", ["row_of_token", "ids"], ["rows32"]),
            helper.make_node("Cast", ["rows32"], ["rows_in"], to=TensorProto.INT64),
            helper.make_node("Where", ["inside", "rows_in", "unknown"], ["rows"]),
        ]
    nodes += [
        helper.make_node("Add", ["n", "one"], ["n_spill"]),
        helper.make_node("Concat", ["batch", "n_spill"], ["spill_shape"], axis=0),
        helper.make_node("ConstantOfShape", ["spill_shape"], ["empty"],
                         value=helper.make_tensor("v", TensorProto.INT64, [1], [0])),
        helper.make_node("ScatterElements", ["empty", "slot", "rows"], ["spilled"], axis=1),
        helper.make_node("Slice", ["spilled", "zero", "n", "axes1"], ["units"]),
        helper.make_node("ReduceSum", ["real_i", "axes1"], ["length64"], keepdims=0),
        helper.make_node("Cast", ["length64"], ["length"], to=TensorProto.INT32),
        helper.make_node("Max", ["length", "min_len"], ["length_run"]),  # a 0-length row runs 1 step, discarded
        helper.make_node("Gather", ["embedding", "units"], ["x_bnd"]),
        helper.make_node("Transpose", ["x_bnd"], ["x"], perm=[1, 0, 2]),  # (n, B, D)
        helper.make_node("Unsqueeze", ["state", "axes0"], ["h0"]),
        helper.make_node("GRU", ["x", "W", "R", "B", "length_run", "h0"], ["", "h_last"], hidden_size=hidden,
                         linear_before_reset=1),
        helper.make_node("Squeeze", ["h_last", "axes0"], ["h_run"]),
        helper.make_node("Greater", ["length", "zero_len"], ["has_units"]),
        helper.make_node("Unsqueeze", ["has_units", "axes1"], ["has_units_col"]),
        helper.make_node("Where", ["has_units_col", "h_run", "state"], ["new_state"]),
        helper.make_node("Gemm", ["new_state", "head1_w", "head1_b"], ["head_in"], transB=1),
        helper.make_node("Tanh", ["head_in"], ["head_act"]),
        helper.make_node("Gemm", ["head_act", "head2_w", "head2_b"], ["score_col"], transB=1),
        helper.make_node("Squeeze", ["score_col", "axes1"], ["score"]),
    ]
    body = helper.make_graph(
        nodes, "sia_edge_recurrent_value_model",
        inputs=[helper.make_tensor_value_info("state", TensorProto.FLOAT, ["batch", hidden]),
                helper.make_tensor_value_info("tokens", TensorProto.INT64, ["batch", "n"]),
                helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["batch", "n"])],
        outputs=[helper.make_tensor_value_info("new_state", TensorProto.FLOAT, ["batch", hidden]),
                 helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"])],
        initializer=[numpy_helper.from_array(value, name) for name, value in weights.items()],
    )
    model = helper.make_model(body, opset_imports=[helper.make_opsetid("", 17)], producer_name="sia-edge vm train")
    model.ir_version = 8
    replace_metadata(model, sia_keys({"contract": CONTRACT_VERSION, **metadata}))
    onnx.checker.check_model(model, full_check=True)
    save_atomically(model, out)


def export_trained(net, row_of_token, arch: str, out: Path, metadata: dict[str, str]):
    """Wrap a trained network in the contract's graph (the GRU's or the bag's) and write it; -> the graph.
    `row_of_token` maps the base model's token ids to embedding rows (None: the network reads ids or bytes as
    they are). Shared by `vm train` and `vm distill`."""
    from .network import IncrementalValueGraph
    from .recurrent import RecurrentValueGraph

    table = None if row_of_token is None else torch.from_numpy(row_of_token)
    if arch == "gru":
        graph = RecurrentValueGraph(net, table)
        export_recurrent_value_model(graph, out, metadata)
    else:
        graph = IncrementalValueGraph(net, table)
        export_value_model(graph, net.state_size, out, metadata)
    return graph


def stamp_metadata(source: Path, out: Path, changes: dict[str, str | None]) -> None:
    """Copy the ONNX file `source` to `out` (atomically; the same path rewrites it) with its sia_edge.* metadata
    changed: a key set to None is removed. The graph is untouched (tools/weight_scale.py stamps a measured scale)."""
    import onnx

    model = onnx.load(str(source))
    kept = {entry.key: entry.value for entry in model.metadata_props}
    for key, value in sia_keys(changes).items():
        kept.pop(key, None)
        if value is not None:
            kept[key] = value
    replace_metadata(model, kept)
    save_atomically(model, out)


def sia_keys(metadata: dict) -> dict:
    """The contract's metadata names: `contract` -> `sia_edge.contract`."""
    return {f"sia_edge.{key}": value for key, value in metadata.items()}


def replace_metadata(model, props: dict[str, str]) -> None:
    """The ONNX model's metadata_props become exactly `props`."""
    del model.metadata_props[:]
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def save_atomically(model, out: Path) -> None:
    """Save to OUT.partial, then rename over OUT: a reader (or an interrupted run) never sees half a file."""
    import onnx

    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    onnx.save(model, str(partial))
    os.replace(partial, out)
