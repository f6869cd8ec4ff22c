"""``upscale(backend=...)`` -> a configured ``vsscale.Backend`` (or ``None`` for the torch path).

Accepted values: ``"torch"``; ``"auto"``; a name of :data:`BACKEND_NAMES` (``"ov-cpu"``, ``"trt"``,
...; what ``vsdloral upscale --backend`` passes); a ``vsscale.Backend`` instance such as
``Backend.OV_CPU()``. ``dtype``, ``device_index``, ``num_streams`` and ``threads`` are applied to
the backend's own fields (``fp16``/``bf16``, ``device_id``, ``num_streams``, OpenVINO's
``num_threads``). Every problem is a :class:`BackendError` with one line that names the fix.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import shutil
from dataclasses import dataclass
from typing import Any

import vapoursynth as vs

__all__ = ["BACKEND_NAMES", "BackendChoice", "BackendError", "auto_backend", "backend_name", "default_precision", "describe",
           "resolve_backend"]

#: ``--backend`` names -> ``vsscale.Backend`` attributes ("torch" and "auto" are handled apart)
BACKEND_NAMES: dict[str, str] = {
    "ov-cpu": "OV_CPU", "ov-gpu": "OV_GPU", "ort-cpu": "ORT_CPU", "ort-cuda": "ORT_CUDA", "ort-dml": "ORT_DML",
    "ort-coreml": "ORT_COREML", "trt": "TRT", "trt-rtx": "TRT_RTX", "migx": "MIGX",
}
#: vsscale class name (or a base of it) -> (VapourSynth namespace, pip package of the plugin); most
#: specific first, as a class's MRO is searched in order
_PLUGINS: dict[str, tuple[str, str]] = {
    "TRT_RTX": ("trt_rtx", "vapoursynth-mlrt-trt-rtx"), "TRT": ("trt", "vapoursynth-mlrt-trt"),
    "MIGX": ("migx", "vapoursynth-mlrt-migx"), "ORT": ("ort", "vapoursynth-mlrt-ort"),
    "OV": ("ov", "vapoursynth-mlrt-ov"), "NCNN": ("ncnn", "vapoursynth-mlrt-ncnn"),
}
#: Python modules vsscale's TensorRT engine build imports (module -> pip package), and its tools
_TRT_MODULES = {"tensorrt": "tensorrt-cu12 (the CUDA major of the plugin)", "onnx": "onnx",
                "onnxconverter_common": "onnxconverter-common", "ml_dtypes": "ml_dtypes", "cuda.core": "cuda-core"}
_CPU_BACKENDS = ("OV_CPU", "ORT_CPU")
_DTYPES = {"fp32": "fp32", "float32": "fp32", "fp16": "fp16", "float16": "fp16", "half": "fp16",
           "bf16": "bf16", "bfloat16": "bf16"}
# the ort plugin's verbosity for the backends built here: errors only. Measured with vs-mlrt v17.1.1:
# 0 prints nothing, 1 errors, 2 warnings (constant folding, dozens of lines), 3 info, 4 verbose;
# vsscale's ORT.Verbosity enum (ERROR = 3) reads it the other way round
_ORT_QUIET = 1


class BackendError(ValueError):
    """A ``backend=`` value or option that cannot be used (one line naming the fix)."""


@dataclass(frozen=True)
class BackendChoice:
    """A configured vs-mlrt backend: ``backend`` is the ``vsscale.Backend`` instance to call."""

    backend: Any
    name: str  #: vsscale class name, e.g. "OV_CPU"
    precision: str  #: "fp32", "fp16" or "bf16"
    namespace: str  #: the VapourSynth plugin namespace, e.g. "ov"


def _vsscale_backend(value) -> Any:
    try:
        from vsscale import Backend
    except ImportError as exc:
        raise BackendError(f"backend={value!r} needs vs-jetpack and the vs-mlrt plugins ({exc}); "
                           "pip install 'vsdloral[mlrt]'") from None
    return Backend


def _base_class() -> type:
    from vsscale.mlrt.backend.base import Backend as Base

    return Base


def _plugin(b) -> tuple[str, str]:
    for cls in type(b).__mro__:
        if cls.__name__ in _PLUGINS:
            return _PLUGINS[cls.__name__]
    raise BackendError(f"backend {type(b).__name__} is not a vs-mlrt backend vsdloral knows; use one of "
                       f"{', '.join(sorted(set(BACKEND_NAMES.values())))}")


def _is_a(b, name: str) -> bool:
    return any(cls.__name__ == name for cls in type(b).__mro__)


def _fields(b) -> set[str]:
    return {f.name for f in dataclasses.fields(b)}


def precision_of(b) -> str:
    """The precision a vsscale backend instance computes in: "bf16", "fp16" or "fp32"."""
    if getattr(b, "bf16", None):
        return "bf16"
    return "fp16" if getattr(b, "fp16", None) else "fp32"


def default_precision(b) -> str:
    """vsdloral's precision for a backend given no ``dtype``: fp32 on ONNX Runtime's CPU provider;
    OpenVINO's CPU bf16 where the CPU computes bf16 natively (AVX-512 BF16 / AMX, as the torch
    path's default), else fp32; fp16 on GPUs (TensorRT, ORT CUDA/DirectML/CoreML, OpenVINO GPU,
    MIGraphX), as the torch path on CUDA. vsscale's own default (fp16 everywhere) is not used:
    ONNX Runtime on a CPU would round every tensor to fp16 (0.7998 for 0.8)."""
    if _is_a(b, "ORT_CPU"):
        return "fp32"
    if _is_a(b, "OV_CPU"):
        from ..loading import cpu_has_native_bf16

        return "bf16" if cpu_has_native_bf16() else "fp32"
    return "fp16"


def _dtype_name(dtype) -> str | None:
    if dtype is None:
        return None
    try:
        import torch

        if isinstance(dtype, torch.dtype):
            dtype = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, str(dtype))
    except ImportError:  # pragma: no cover - torch is a base dependency
        pass
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise BackendError(f"unknown dtype {dtype!r}; use fp32, fp16 or bf16") from None


def _with_precision(b, precision: str):
    name = type(b).__name__
    fields = _fields(b)
    if "fp16" not in fields:
        if precision != precision_of(b):
            raise BackendError(f"backend {name} has no precision setting; drop dtype={precision!r}")
        return b
    if precision == "bf16" and "bf16" not in fields:
        raise BackendError(f"backend {name} runs fp32 or fp16, not bf16; pass dtype='fp32' or 'fp16' "
                           "(bf16 on a CPU: backend='ov-cpu')")
    if _is_a(b, "OV_NPU") and precision != "fp16":
        raise BackendError(f"backend {name} runs fp16 only; pass dtype='fp16'")
    change: dict[str, Any] = {"fp16": precision == "fp16"}
    if "bf16" in fields:
        change["bf16"] = precision == "bf16"
    return dataclasses.replace(b, **change)


def _trt_missing() -> list[str]:
    missing = []
    for mod, pkg in _TRT_MODULES.items():
        try:
            found = importlib.util.find_spec(mod) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(pkg)
    if shutil.which("nvidia-smi") is None:
        missing.append("nvidia-smi on PATH (the NVIDIA driver)")
    return missing


def _ort_providers() -> str:
    try:
        return str(vs.core.ort.Version().get("providers", ""))
    except (AttributeError, vs.Error):
        return ""


def _check_runnable(b) -> None:
    """One line naming what to install when ``b``'s plugin or its build tools are missing."""
    ns, pkg = _plugin(b)
    name = type(b).__name__
    if not hasattr(vs.core, ns):
        raise BackendError(f"backend {name} needs the vs-mlrt '{ns}' plugin, which is not installed: pip install {pkg}")
    if _is_a(b, "TRT") and not _is_a(b, "TRT_RTX") and (missing := _trt_missing()):
        raise BackendError(f"backend {name} builds its engine with TensorRT's Python tools; missing: "
                           f"{', '.join(missing)} (pip install them)")
    if _is_a(b, "MIGX") and shutil.which("migraphx-driver") is None:
        raise BackendError(f"backend {name} compiles with migraphx-driver, which is not on PATH; install MIGraphX (ROCm)")
    if _is_a(b, "ORT") and not _is_a(b, "ORT_CPU"):
        provider = getattr(type(b), "provider", "")
        if provider and provider not in _ORT_PROVIDERS_ALWAYS and provider not in _ort_providers():
            raise BackendError(f"backend {name}: this ONNX Runtime plugin has no {provider} provider "
                               f"(it has: {_ort_providers() or 'CPU only'})")


_ORT_PROVIDERS_ALWAYS = ("CPU",)


def _auto(Backend, quiet: bool):
    """``backend="auto"``: vs-jetpack's ``Backend.autoselect`` order for the GPU kinds this code can
    see without pyopencl (which autoselect imports, and vs-jetpack does not install): on CUDA,
    TensorRT when its plugin and build tools are there, else ONNX Runtime's CUDA provider when its
    libraries are installed (vapoursynth-mlrt-ort-cuda), else the torch path; without CUDA,
    OpenVINO's CPU backend when its plugin is installed, else the torch path."""
    import torch

    if torch.cuda.is_available():
        if hasattr(vs.core, "trt") and not _trt_missing():
            return Backend.TRT()
        if hasattr(vs.core, "ort") and "CUDA" in _ort_providers() and _installed("vapoursynth-mlrt-ort-cuda"):
            return Backend.ORT_CUDA(verbosity=_ORT_QUIET) if quiet else Backend.ORT_CUDA()
        return None
    if hasattr(vs.core, "ov"):
        return Backend.OV_CPU()
    return None


def _installed(dist: str) -> bool:
    try:
        importlib.metadata.version(dist)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def resolve_backend(value, *, dtype=None, device_index: int | None = None, num_streams: int | None = None,
                    threads: int | None = None) -> BackendChoice | None:
    """``value`` (see the module docstring) and the options -> a :class:`BackendChoice`, or ``None``
    for the torch path. ``dtype`` ``None``: a precision set on a backend instance (one that differs
    from vsscale's default) is kept, else :func:`default_precision`. Raises :class:`BackendError`."""
    if isinstance(value, str) and value == "torch":
        return None
    if isinstance(value, str) and value == "auto":
        try:
            Backend = _vsscale_backend(value)
        except BackendError:
            return None
        if importlib.util.find_spec("onnx") is None:  # no ONNX export ('onnx' extra): the torch path
            return None
        b = _auto(Backend, quiet=True)
        if b is None:
            return None
    elif isinstance(value, str):
        if value not in BACKEND_NAMES:
            raise BackendError(f"unknown backend {value!r}; choose torch, auto or one of {', '.join(BACKEND_NAMES)}, "
                               "or pass a vsscale.Backend instance such as Backend.OV_CPU()")
        Backend = _vsscale_backend(value)
        cls = getattr(Backend, BACKEND_NAMES[value])
        b = cls(verbosity=_ORT_QUIET) if BACKEND_NAMES[value].startswith("ORT") else cls()
    else:
        try:
            base = _base_class()
        except ImportError:
            base = None
        if base is None or not isinstance(value, base):
            raise BackendError(f"backend must be 'torch', 'auto', one of {', '.join(BACKEND_NAMES)} or a "
                               f"vsscale.Backend instance (e.g. Backend.OV_CPU()), got {type(value).__name__}")
        b = value
    _check_runnable(b)
    name = type(b).__name__
    fields = _fields(b)

    precision = _dtype_name(dtype)
    if precision is None:
        explicit = precision_of(b) != precision_of(type(b)())
        precision = precision_of(b) if explicit else default_precision(b)
    b = _with_precision(b, precision)

    change: dict[str, Any] = {}
    if device_index is not None:
        if "device_id" not in fields:
            raise BackendError(f"device_index applies to GPU backends; {name} runs on the CPU (drop device_index)")
        if isinstance(device_index, bool) or not isinstance(device_index, int) or device_index < 0:
            raise BackendError(f"device_index must be an integer >= 0, got {device_index!r}")
        change["device_id"] = device_index
    if num_streams is not None:
        if isinstance(num_streams, bool) or not isinstance(num_streams, int) or num_streams < 1:
            raise BackendError(f"num_streams must be an integer >= 1, got {num_streams!r}")
        if "num_streams" not in fields:
            raise BackendError(f"backend {name} has no num_streams setting; drop num_streams")
        change["num_streams"] = num_streams
    if threads is not None:
        if "num_threads" not in fields:
            raise BackendError(f"threads applies to backend='torch' and to OpenVINO's CPU backend; {name} "
                               "picks its own thread count (drop threads)")
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise BackendError(f"threads must be an integer >= 1, got {threads!r}")
        change["num_threads"] = threads
    if change:
        b = dataclasses.replace(b, **change)
    return BackendChoice(b, name, precision_of(b), _plugin(b)[0])


def backend_name(choice: BackendChoice) -> str:
    """The :data:`BACKEND_NAMES` key of ``choice`` (``"ov-cpu"``), what ``--backend`` takes."""
    for key, cls in BACKEND_NAMES.items():
        if cls == choice.name:
            return key
    return choice.name


def auto_backend() -> tuple[str, str]:
    """What ``backend="auto"`` runs here: (``--backend`` name, one line for people), e.g.
    ``("ov-cpu", "OpenVINO CPU (vs-mlrt v17.1), bf16")`` or ``("torch", "torch, bf16 on cpu")``."""
    try:
        choice = resolve_backend("auto")
    except BackendError:
        choice = None
    if choice is None:
        import torch

        from ..loading import resolve_device, resolve_dtype

        device = resolve_device(None)
        dtype = str(resolve_dtype(None, device)).removeprefix("torch.")
        return "torch", f"torch {torch.__version__}, {dtype} on {device.type} (no faster backend installed)"
    info = describe(choice)
    plugin = info.get(f"{choice.namespace}.version", "?")
    return backend_name(choice), f"{choice.name} (vs-mlrt {choice.namespace} plugin {plugin}), {choice.precision}"


def describe(choice: BackendChoice) -> dict:
    """What decides a backend's output bits, as plain JSON data: the backend, its precision and
    settings, the plugin's and runtime's versions, vs-jetpack's version (the distributed job records
    it so that resumed chunks come from the same runtime)."""
    b = choice.backend
    info: dict[str, Any] = {"backend": choice.name, "precision": choice.precision}
    for key in ("device_id", "num_streams", "num_threads"):
        if hasattr(b, key):
            info[key] = getattr(b, key)
    try:
        version = dict(getattr(vs.core, choice.namespace).Version())
    except (AttributeError, vs.Error):
        version = {}
    for key, value in sorted(version.items()):
        if key == "version" or key.endswith("_version") or key.endswith("_version_build"):
            info[f"{choice.namespace}.{key}"] = value.decode() if isinstance(value, bytes) else str(value)
    try:
        info["vsjetpack"] = importlib.metadata.version("vsjetpack")
    except importlib.metadata.PackageNotFoundError:
        info["vsjetpack"] = None
    return info


def is_cpu_backend(choice: BackendChoice) -> bool:
    """True for the CPU backends (OpenVINO CPU, ONNX Runtime CPU)."""
    return choice.name in _CPU_BACKENDS
