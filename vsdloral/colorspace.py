"""The YUV matrix of clips that do not say which one they use (frame prop ``_Matrix``).

One rule for the filter, the CLI's graph and the examples: the VapourSynth ecosystem's guess
from the frame size, as vs-jetpack's ``vstools.Matrix.from_res`` makes it.
"""

from __future__ import annotations

import threading
from typing import Any

from .utils.log import get_logger

__all__ = ["MATRIX_NAMES", "matrix_from_resolution", "is_unspecified", "note_guess", "ensure_matrix"]

log = get_logger("vsdloral.colorspace")

# VapourSynth / ITU-T H.273 matrix coefficients
BT709, BT470BG, ST170M = 1, 5, 6
MATRIX_NAMES = {0: "RGB", BT709: "BT.709", 2: "unspecified", BT470BG: "BT.470BG (BT.601 625-line)",
                ST170M: "SMPTE 170M (BT.601 525-line)", 9: "BT.2020 NCL"}
_UNSPECIFIED = (2, 3)  # unspecified, reserved
_logged: set[tuple[int, int, int]] = set()
_logged_lock = threading.Lock()


def matrix_from_resolution(width: int, height: int) -> int:
    """The matrix an untagged YUV clip of this size is assumed to use: 6 (SMPTE 170M) up to
    486 lines, 5 (BT.470BG) for the rest of SD, 1 (BT.709) above 1024x576.

    The thresholds are vs-jetpack's ``vstools.Matrix.from_res`` (vstools/enums/color.py,
    Jaded-Encoding-Thaumaturgy/vs-jetpack): ``if (width, height) <= (1024, 576): return
    ST170_M if height <= 486 else BT470_BG``, else ``BT709``. The comparison is Python's tuple
    order, kept as it is: any width below 1024 counts as SD whatever the height."""
    if (int(width), int(height)) <= (1024, 576):
        return ST170M if height <= 486 else BT470BG
    return BT709


def is_unspecified(matrix: Any) -> bool:
    """True when a ``_Matrix`` prop value says nothing: absent (None), 2 (unspecified) or 3 (reserved)."""
    return matrix is None or int(matrix) in _UNSPECIFIED


def note_guess(width: int, height: int, matrix: int) -> None:
    """Log (stderr, once per process for each size and matrix) that an untagged clip is assumed to use ``matrix``."""
    key = (int(width), int(height), int(matrix))
    with _logged_lock:
        if key in _logged:
            return
        _logged.add(key)
    # no "upscale:" in it: the CLI reports the first stderr line that has one as the error
    log.info("the clip does not say which YUV matrix it uses (_Matrix unspecified); assuming %s from its "
             "size %dx%d, as vstools' Matrix.from_res does; pass matrix_in= to override",
             MATRIX_NAMES.get(matrix, matrix), width, height)


def ensure_matrix(clip):
    """``clip`` with ``_Matrix`` set from its size when it is YUV and frame 0 does not say
    (logged once); any other clip unchanged. Use it before resizing a clip, so the guess is
    made from the source's size and not from a preview size."""
    import vapoursynth as vs

    if clip.format is None or clip.format.color_family != vs.YUV or not clip.width or not clip.height:
        return clip
    if not is_unspecified(clip.get_frame(0).props.get("_Matrix")):
        return clip
    matrix = matrix_from_resolution(clip.width, clip.height)
    note_guess(clip.width, clip.height, matrix)
    return vs.core.std.SetFrameProps(clip, _Matrix=matrix)
