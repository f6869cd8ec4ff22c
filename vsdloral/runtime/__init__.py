"""Other runtimes than torch: the per-frame computation exported as an ONNX graph.

Public API (what the VapourSynth side calls): :func:`cached_graph` ``(model, width, height,
**options) -> pathlib.Path``; the graph's I/O is described in :mod:`vsdloral.runtime.onnx_export`.
Needs the ``onnx`` extra (``pip install 'vsdloral[onnx]'``); importing this package does not.
"""

from __future__ import annotations

__all__ = ["cached_graph", "export_onnx", "GraphOptions", "INPUT_NAME", "OUTPUT_NAME"]

#: the graph's one input, float32 (1, 6, H, W): current frame's RGB, then the reference frame's
INPUT_NAME = "input"
#: the graph's one output, float32 (1, 3, H, W) in [0,1]
OUTPUT_NAME = "output"


def __getattr__(name: str):
    if name == "cached_graph":
        from .graph_cache import cached_graph

        return cached_graph
    if name in ("export_onnx", "GraphOptions"):
        from . import onnx_export

        return getattr(onnx_export, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
