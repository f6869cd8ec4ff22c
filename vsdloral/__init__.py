"""vsdloral: DLoRAL one-step diffusion video super-resolution for VapourSynth.

Public API: :func:`upscale` (the VapourSynth filter) and :func:`load_model` (a restorer for
tensors). Heavy modules are imported on first use.
"""

from __future__ import annotations

from ._version import __version__
__all__ = ["load_model", "upscale", "Restorer", "WeightsError", "__version__"]


def __getattr__(name: str):
    if name == "load_model":
        from .loading import load_model

        return load_model
    if name == "upscale":
        from .vs_filter import upscale

        return upscale
    if name == "Restorer":
        from .model.restorer import Restorer

        return Restorer
    if name == "WeightsError":
        from .model.errors import WeightsError

        return WeightsError
    raise AttributeError(f"module 'vsdloral' has no attribute {name!r}")
