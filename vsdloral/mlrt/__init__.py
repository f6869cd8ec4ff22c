"""vs-mlrt backends for ``vsdloral.upscale(clip, backend=...)``: the per-frame graph (exported by
:mod:`vsdloral.runtime`) run through vs-jetpack's ``vsscale.Backend`` (ONNX Runtime, OpenVINO,
TensorRT, MIGraphX, ...). Optional: ``pip install 'vsdloral[mlrt]'``; nothing here imports vsscale
until a backend other than ``"torch"`` is asked for.

:mod:`.select` turns ``backend=`` and the precision/device options into a configured
``vsscale.Backend``; :mod:`.graph` builds the VapourSynth graph around it (reference clip,
inference, frame props).
"""

from __future__ import annotations

from .select import BACKEND_NAMES, BackendChoice, BackendError, describe, resolve_backend

__all__ = ["BACKEND_NAMES", "BackendChoice", "BackendError", "describe", "resolve_backend"]
