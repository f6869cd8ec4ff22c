"""``upscale(clip, backend=...)`` with a vs-mlrt backend: the torch path's conversions around
:func:`vsdloral.mlrt.graph.run_graph` and the cached exported graph of the model."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import vapoursynth as vs

from .graph import run_graph
from .select import BackendChoice

__all__ = ["graph_for", "model_meta", "upscale_with_backend"]


def _err(msg: str) -> vs.Error:
    return vs.Error(f"upscale: {msg}")


def _one_line(exc: BaseException | str) -> str:
    return " / ".join(line.strip() for line in str(exc).splitlines() if line.strip())


def model_meta(model):
    """The :class:`~vsdloral.model.weights.ModelMeta` of ``model`` (a path, a Restorer or None for
    the bundled model), read from the file's header alone: the weights are not loaded."""
    from safetensors import safe_open

    from ..loading import DEFAULT_MODEL_PATH
    from ..model.restorer import Restorer
    from ..model.weights import ModelMeta, WeightsError

    if isinstance(model, Restorer):
        return model.meta
    if model is not None and not isinstance(model, (str, os.PathLike)):
        raise _err(f"model must be a weights-file path, a vsdloral Restorer or None, got {type(model).__name__}")
    path = str(DEFAULT_MODEL_PATH if model is None else model)
    if not Path(path).is_file():
        raise _err(f"cannot read model {path!r}: no such file; pass model=<path to a .safetensors weights file>")
    try:
        with safe_open(path, framework="pt") as f:
            md = f.metadata()
    except Exception as exc:  # safetensors raises its own error types
        raise _err(f"{path} is not a readable safetensors file ({exc})") from None
    try:
        return ModelMeta.from_metadata(md, path)
    except WeightsError as exc:
        raise _err(str(exc)) from None


def graph_for(model, width: int, height: int, options: dict[str, Any]) -> Path:
    """The cached ONNX graph of ``model``'s per-frame computation at ``width`` x ``height``
    (:func:`vsdloral.runtime.cached_graph`, exported on first use)."""
    try:
        from ..runtime import cached_graph
    except ImportError as exc:
        raise _err(f"a vs-mlrt backend needs the ONNX export ({exc}); pip install 'vsdloral[onnx,mlrt]'") from None
    try:
        return cached_graph(model, width, height, **{k: v for k, v in options.items() if v is not None})
    except (ValueError, OSError, RuntimeError) as exc:  # bad option, unreadable weights, no onnx module
        msg = str(exc)
        for prefix in ("restore: ", "export: ", "cached_graph: "):
            msg = msg.removeprefix(prefix)
        raise _err(f"cannot export the model's graph: {_one_line(msg)}") from None


def upscale_with_backend(rgb: vs.VideoNode, choice: BackendChoice, model, *, scene_change: bool,
                         graph_options: dict[str, Any]) -> vs.VideoNode:
    """The backend path of :func:`vsdloral.upscale` (its arguments already checked): ``rgb``, the
    clip in float RGB at the output size (converted by the filter as for the torch path), through
    the model's graph at that size on ``choice``'s backend; returns the same format (RGBS/RGBH)."""
    from ..utils.log import get_logger

    out_w, out_h = rgb.width, rgb.height
    half = rgb.format.id == vs.RGBH
    if half:  # the graph takes fp32; the backend converts to its own precision
        rgb = vs.core.resize.Point(rgb, format=vs.RGBS)
    network = graph_for(model, out_w, out_h, graph_options)
    get_logger("vsdloral.mlrt").info("upscale: %s (%s) runs %s", choice.name, choice.precision, network)
    try:
        res = run_graph(rgb, choice, network, scene_change)
    except vs.Error as exc:
        raise _err(f"backend {choice.name} cannot run the graph {network.name}: {_one_line(exc)}") from None
    except Exception as exc:  # vsscale's engine builds (TensorRT, MIGraphX) raise their own errors
        raise _err(f"backend {choice.name} failed on the graph {network.name}: {type(exc).__name__}: "
                   f"{_one_line(exc)}") from None
    if half:
        res = vs.core.resize.Point(res, format=vs.RGBH)
    return res
