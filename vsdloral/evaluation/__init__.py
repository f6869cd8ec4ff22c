"""Video super-resolution evaluation: PSNR/SSIM (Y and RGB), E*warp and tOF with OpenCV DIS flow, NIQE
(:mod:`vsdloral.evaluation.niqe`), optional LPIPS.

>>> from vsdloral.evaluation import evaluate
>>> res = evaluate("gt.mp4", "out.mp4", lq="lq.mp4", baseline="bicubic")  # doctest: +SKIP
"""

from __future__ import annotations

from .flow import FLOW_METHOD
from .io import FrameSource, open_frames
from .metrics import luma, psnr, ssim
from .report import format_table, to_json
from .runner import evaluate

__all__ = ["FLOW_METHOD", "FrameSource", "evaluate", "format_table", "luma", "open_frames", "psnr", "ssim", "to_json"]
