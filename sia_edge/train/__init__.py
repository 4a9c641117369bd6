"""Value-model training toolchain (`sia-edge vm train`): labelled text -> small incremental ONNX value model.

Needs the optional extra `sia-edge[train]` (torch, onnx). Nothing here is imported by the runtime, and torch is
imported lazily, so `sia-edge --help` works without it.
"""
