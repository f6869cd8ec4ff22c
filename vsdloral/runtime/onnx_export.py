"""Export a model's per-frame computation (:class:`~vsdloral.model.frame_net.FrameNet`) as one
ONNX graph for one output size.

Graph I/O (what vs-mlrt passes and expects): one input ``input``, float32 (1, 6, H, W): channels
0-2 the current frame's RGB in [0,1], channels 3-5 the reference frame's (vs-mlrt concatenates
the clips it is given on channels, in order: ``[current, reference]``); one output ``output``,
float32 (1, 3, H, W) in [0,1], colour fix included. H, W: the output size, static. The graph is
fp32; runtimes choose their own fp16/bf16. With ``exact_reductions`` (for fp32 runtimes) GroupNorms
are traced as :func:`~vsdloral.model.stable_norm.group_norm_for_export`. Attention is always traced
in blocks of queries (:mod:`vsdloral.runtime.chunked_attention`).

Graphs whose weights exceed ``external_threshold`` bytes (default just under ONNX's 2 GB protobuf
limit; SD 2.1's UNet is 3.4 GB in fp32) keep them in ONE external-data file beside the graph,
``<name>.data``.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from ..model.frame_net import FrameNet
from ..model.stable_norm import export_reductions, patch_group_norms
from .chunked_attention import chunked_attention

__all__ = ["DEFAULT_OPSET", "EXTERNAL_THRESHOLD", "GraphOptions", "OnnxUnavailable", "export_onnx", "graph_files",
           "require_onnx", "resolve_options"]

DEFAULT_OPSET = 17
#: weights above this many bytes go to one external-data file (protobuf's limit is 2 GiB)
EXTERNAL_THRESHOLD = 1900 * 2**20


class OnnxUnavailable(RuntimeError):
    """The ``onnx`` package is not installed (the ``onnx`` extra)."""


def require_onnx():
    """The ``onnx`` module, or :class:`OnnxUnavailable` naming the extra that installs it."""
    try:
        import onnx
    except ImportError:
        raise OnnxUnavailable("exporting ONNX graphs needs the onnx extra: pip install 'vsdloral[onnx]'") from None
    return onnx


@dataclass(frozen=True)
class GraphOptions:
    """The resolved options that change the graph (all part of the cache key).

    ``tile``: latent tiles in output pixels (None: one piece); ``vae_tile``: the VAE's own tiling
    (0: never; see :mod:`vsdloral.model.vae_tiling`); ``cfr``/``cfr_window``/``cfr_topk``: the
    retrieval; ``batch_tiles``: all latent tiles through one batched UNet; ``exact_reductions``:
    GroupNorm and colour-fix statistics in the form runtimes keep at fp32 accuracy over a whole
    frame (a graph for an fp32 runtime), else the plain ops that runtimes fuse (for bf16/fp16;
    :func:`vsdloral.model.stable_norm.export_reductions`)."""

    color_fix: str
    cfr: str
    cfr_window: int
    cfr_topk: int
    tile: int | None
    tile_overlap: int
    vae_tile: int
    batch_tiles: bool = True
    exact_reductions: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_options(restorer, *, color_fix: str | None = None, cfr: str | None = None, cfr_window: int | None = None,
                    cfr_topk: int = 64, tile: int | None = None, tile_overlap: int | None = None,
                    vae_tile: int | None = 0, batch_tiles: bool = True,
                    exact_reductions: bool = True) -> GraphOptions:
    """The options as :meth:`Restorer.restore` resolves them (``None``: the model's own), checked.
    ``vae_tile`` defaults to 0 here: VAE tiles only bound torch's memory (the tiled result is the
    untiled one), and a runtime plans its own memory."""
    from ..model.cfr import CFR_MODES
    from ..model.colorfix import COLOR_FIXES

    meta = restorer.meta
    color_fix = restorer.default_color_fix if color_fix is None else color_fix
    cfr = meta.cfr.mode if cfr is None else cfr
    cfr_window = meta.cfr.window if cfr_window is None else cfr_window
    if color_fix not in COLOR_FIXES:
        raise ValueError(f"export: unknown color_fix {color_fix!r}; choose one of {', '.join(COLOR_FIXES)}")
    if cfr not in CFR_MODES:
        raise ValueError(f"export: unknown cfr {cfr!r}; choose one of {', '.join(CFR_MODES)}")
    tile, tile_overlap = restorer.resolve_tiling(tile, tile_overlap)
    vae_tile = restorer.resolve_vae_tile(vae_tile)
    if vae_tile is None:  # the authors' rule: its tile where the rule tiles, at this graph's size
        raise ValueError("export: vae_tile=None (the authors' rule) is not an export option; pass 0 (never) "
                         "or a tile size in pixels")
    return GraphOptions(color_fix, cfr, int(cfr_window), int(cfr_topk), tile, int(tile_overlap), int(vae_tile),
                        bool(batch_tiles), bool(exact_reductions))


class _Graph(nn.Module):
    """The graph's I/O around :meth:`FrameNet.forward`: (1, 6, H, W) -> (1, 3, H, W)."""

    def __init__(self, net: FrameNet, options: GraphOptions) -> None:
        super().__init__()
        self.net = net
        o = options
        self.kw = dict(color_fix=o.color_fix, cfr={"mode": o.cfr, "window": o.cfr_window, "topk": o.cfr_topk},
                       tile=o.tile, tile_overlap=o.tile_overlap, vae_tile=o.vae_tile,
                       batch_tiles=o.batch_tiles)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x[:, 0:3], x[:, 3:6], **self.kw)


def graph_files(path: str | os.PathLike) -> list[Path]:
    """The files of the graph at ``path``: the .onnx and, if it has one, its external-data file."""
    p = Path(path)
    data = p.with_name(p.name + ".data")
    return [p, data] if data.exists() else [p]


def export_onnx(net: FrameNet, width: int, height: int, path: str | os.PathLike, options: GraphOptions, *,
                opset: int = DEFAULT_OPSET, external_threshold: int = EXTERNAL_THRESHOLD,
                metadata: dict[str, str] | None = None) -> list[Path]:
    """Write the graph of ``net`` at output size ``width`` x ``height`` to ``path`` (its weights in
    ``<path>.data`` when they exceed ``external_threshold`` bytes). ``net`` must be float32 on the
    CPU. Returns the files written. Not atomic: :func:`vsdloral.runtime.cached_graph` writes into a
    temporary folder and renames it."""
    onnx = require_onnx()

    if net.dtype != torch.float32 or next(net.parameters()).device.type != "cpu":
        raise ValueError("export_onnx: the FrameNet must be float32 on the CPU")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    # GroupNorms traced in the form runtimes keep accurate on large maps (stable_norm); outside
    # tracing a patched norm computes what it did before, so patching ``net`` in place is harmless
    patch_group_norms(net)
    graph = _Graph(net, options).eval()
    x = torch.rand(1, 6, height, width, generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".export-") as tmp:
        raw = Path(tmp) / "graph.onnx"
        with torch.no_grad(), warnings.catch_warnings(), export_reductions(options.exact_reductions), \
                chunked_attention():
            warnings.simplefilter("ignore")  # tracer warnings about Python values: the size is static
            torch.onnx.export(graph, (x,), str(raw), input_names=["input"], output_names=["output"],
                              opset_version=opset, dynamo=False, do_constant_folding=True)
        model = onnx.load(str(raw))  # with any external data the exporter wrote (one file per tensor)
        # the tracer leaves the output's batch and spatial dims unnamed; the size is static: say so
        # (TensorRT and MIGraphX plan buffers from the declared shapes)
        for d, v in zip(model.graph.output[0].type.tensor_type.shape.dim, (1, 3, height, width)):
            d.Clear()
            d.dim_value = v
        for k, v in (metadata or {}).items():
            model.metadata_props.append(onnx.StringStringEntryProto(key=k, value=str(v)))
        weights = sum(len(t.raw_data) for t in model.graph.initializer)
        data = out.with_name(out.name + ".data")
        data.unlink(missing_ok=True)
        if weights > external_threshold:
            onnx.save_model(model, str(out), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data.name, size_threshold=1024)
        else:
            onnx.save_model(model, str(out))
    return graph_files(out)
