"""The VapourSynth graph around a vs-mlrt backend: reference clip, inference, frame props.

The exported graph takes one input of 6 channels, the current frame's RGB then its reference's
(vs-mlrt concatenates the clips passed to ``inference`` on channels, in order), at the output size,
and returns the restored RGB frame. The reference is the previous frame, or the frame itself at
frame 0 and where ``_SceneChangePrev`` is set (``scene_change=True``), as on the torch path.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from pathlib import Path

import vapoursynth as vs

from .select import BackendChoice

__all__ = ["own_reference", "reference_clip", "run_graph"]


def own_reference(n: int, props, scene_change: bool) -> bool:
    """True when frame ``n`` (with frame props ``props``) is restored with itself as reference."""
    return n == 0 or (scene_change and bool(props.get("_SceneChangePrev", 0)))


def reference_clip(rgb: vs.VideoNode, scene_change: bool) -> vs.VideoNode:
    """Frame n's reference: frame n-1 of ``rgb``, or frame n itself (:func:`own_reference`)."""
    prev = rgb if rgb.num_frames == 1 else rgb[0] + rgb[:-1]

    def pick(n: int, f: vs.VideoFrame) -> vs.VideoNode:
        return rgb if own_reference(n, f.props, scene_change) else prev

    return vs.core.std.FrameEval(rgb, pick, prop_src=rgb)


_CWD_LOCK = threading.Lock()


@contextlib.contextmanager
def _external_data_dir(choice: BackendChoice, network: Path):
    """For a graph with an external-data file on ONNX Runtime or OpenVINO: the graph's folder as
    the working directory while the plugin loads it. vs-mlrt's ort and ov plugins parse the graph
    themselves and hand the runtime its bytes, which then resolves the external data against the
    working directory (measured with ort v17.1.1: 'External data path does not exist:
    <cwd>/model.onnx.data'; ov v17.1: 'invalid external data'); both read the weights inside
    ``inference``. The working directory is process-wide: a lock keeps two such loads apart."""
    if choice.namespace not in ("ort", "ov") or not network.with_name(network.name + ".data").exists():
        yield
        return
    with _CWD_LOCK:
        old = os.getcwd()
        os.chdir(network.parent)
        try:
            yield
        finally:
            os.chdir(old)


def run_graph(rgb: vs.VideoNode, choice: BackendChoice, network: str | Path, scene_change: bool) -> vs.VideoNode:
    """Restore every frame of ``rgb`` (RGBS at the output size) with the graph ``network`` through
    ``choice``'s backend, one tile of the whole frame. Output: RGBS, same frame count, each frame
    with ``rgb``'s props and ``DLoRALReference`` (the reference frame's number)."""
    ref = reference_clip(rgb, scene_change)
    # vsscale logs the clips and the network path at INFO on every call (vspipe prints them as
    # "Information: ..."); vsdloral.mlrt logs the backend and graph once, itself
    quiet = logging.getLogger("vsscale.mlrt.backend")
    level = quiet.level
    quiet.setLevel(max(level, logging.WARNING))
    try:
        with _external_data_dir(choice, Path(network)):
            out = choice.backend.inference([rgb, ref], str(network), overlap=(0, 0), tilesize=(rgb.width, rgb.height))
    finally:
        quiet.setLevel(level)
    if out.format.id != vs.RGBS:  # a 16-bit backend hands back half floats
        out = vs.core.resize.Point(out, format=vs.RGBS)

    def props(n: int, f: list[vs.VideoFrame]) -> vs.VideoFrame:
        res, src = f
        own = own_reference(n, src.props, scene_change)
        res = res.copy()
        res.props.clear()
        res.props.update(src.props)
        res.props["DLoRALReference"] = n if own else n - 1
        return res

    return vs.core.std.ModifyFrame(out, [out, rgb], props)
