"""The LQ upscaling kernels a model can expect (SPEC section 1 step 1), by name.

Both are Keys cubics, given here as ``core.resize.Bicubic``'s ``(b, c)``
(``filter_param_a``, ``filter_param_b``; Keys' ``a`` is ``-c``):

``pil``
    PIL's ``Image.BICUBIC`` (a = -0.5, Catmull-Rom): the kernel of the authors' inference script,
    so the default of weights converted from their checkpoint.
``torch``
    torch's / OpenCV's bicubic (a = -0.75): what the authors trained with and what the training
    package here uses to make LQ inputs, so the default of models trained here.
"""

from __future__ import annotations

KERNELS: dict[str, tuple[float, float]] = {"pil": (0.0, 0.5), "torch": (0.0, 0.75)}


def resize_params(kernel: str) -> dict[str, float]:
    """``core.resize.Bicubic`` keyword arguments of ``kernel``; ``ValueError`` for an unknown name."""
    try:
        b, c = KERNELS[kernel]
    except KeyError:
        raise ValueError(f"unknown kernel {kernel!r}; choose one of {', '.join(KERNELS)}") from None
    return {"filter_param_a": b, "filter_param_b": c}
