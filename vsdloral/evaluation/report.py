"""Render an :func:`~vsdloral.evaluation.evaluate` result as a text table or JSON.

JSON convention: an infinite PSNR (identical frames) is written as the string ``"inf"``; a metric that is
undefined (E*warp/tOF for a single frame) is ``null``.
"""

from __future__ import annotations

import json
import math
from typing import Any

ROWS = (
    ("psnr_y", "PSNR-Y (dB)", "{:.3f}"),
    ("ssim_y", "SSIM-Y", "{:.4f}"),
    ("psnr_rgb", "PSNR-RGB (dB)", "{:.3f}"),
    ("ssim_rgb", "SSIM-RGB", "{:.4f}"),
    ("ewarp", "E*warp (x1e-3)", "{:.4f}"),
    ("tof", "tOF (px)", "{:.4f}"),
    ("lpips", "LPIPS (alex)", "{:.4f}"),
    ("niqe", "NIQE (lower: more natural)", "{:.3f}"),
)


def _fmt(value: Any, spec: str) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return spec.format(value)


def format_table(result: dict[str, Any]) -> str:
    """``metric | output | <baseline>`` table followed by frame count, size, flow method and notes."""
    base = result.get("baseline")
    header = ["metric", "output"] + ([base["method"]] if base else [])
    rows = [header]
    for key, label, spec in ROWS:
        if key not in result:
            continue
        row = [label, _fmt(result[key], spec)]
        if base:
            row.append(_fmt(base.get(key), spec))
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    lines.append(f"frames: {result['frames']}, size: {result['width']}x{result['height']}"
                 + (f", lq: {base['lq_width']}x{base['lq_height']}" if base else ""))
    if result.get("ewarp_reference") is not None:
        lines.append(f"reference E*warp (x1e-3): {result['ewarp_reference']:.4f}")
    if result.get("niqe_reference") is not None:
        lines.append(f"reference NIQE: {result['niqe_reference']:.3f}")
    lines.append(f"flow: {result['flow_method']}")
    lines.extend(f"note: {n}" for n in result.get("notes", []))
    return "\n".join(lines)


def jsonable(obj: Any) -> Any:
    """Replace infinities with ``"inf"``/``"-inf"`` and NaN with ``None`` (strict JSON)."""
    if isinstance(obj, float):
        if math.isnan(obj):
            return None
        if math.isinf(obj):
            return "inf" if obj > 0 else "-inf"
        return obj
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    return obj


def to_json(result: dict[str, Any]) -> str:
    """Strict JSON text of a result (see module docstring for ``inf``/``null``)."""
    return json.dumps(jsonable(result), indent=2, allow_nan=False)
