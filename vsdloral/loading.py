"""``load_model``: weights file -> :class:`Restorer` on a device."""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

import torch

from .model.restorer import Restorer
from .model.threads import resolve_threads
from .model.weights import DLoRALModel, WeightsError

DEFAULT_MODEL_PATH = Path(__file__).parent / "data" / "default.safetensors"
_DTYPE_NAMES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
                "half": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` -> CUDA when available, else CPU. Raises ``ValueError`` for a device that does not exist."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"unknown device {device!r} ({exc}); use 'cpu', 'cuda' or 'cuda:N'") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available; use device='cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r} does not exist ({torch.cuda.device_count()} CUDA devices)")
    elif dev.type not in ("cpu", "mps", "xpu"):
        raise ValueError(f"unsupported device {device!r}; use 'cpu' or 'cuda'")
    return dev


def bf16_flags_in_cpuinfo(cpuinfo: str) -> bool:
    """True when a Linux ``/proc/cpuinfo`` text lists AVX-512 BF16 or AMX-BF16 among its flags."""
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return bool(set(line.split(":", 1)[-1].split()) & {"avx512_bf16", "amx_bf16"})
    return False


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True when this x86 CPU computes bf16 in hardware (AVX-512 BF16 or AMX-BF16). There,
    bf16 matmuls and convs run at about twice the fp32 rate (``benchmarks.precision``); elsewhere
    bf16 is emulated and slower than fp32, so it is never chosen by default."""
    if platform.system() != "Linux" or platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            return bf16_flags_in_cpuinfo(f.read())
    except OSError:
        return False


def default_dtype(device: torch.device) -> torch.dtype:
    """The dtype used when none is given: fp16 on CUDA; bf16 on a CPU with native bf16
    (:func:`cpu_has_native_bf16`); fp32 elsewhere."""
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return torch.float32


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``None`` -> :func:`default_dtype` for the device. Accepts torch dtypes or fp32/fp16/bf16."""
    if dtype is None:
        return default_dtype(device)
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"unsupported dtype {dtype}; use fp32, fp16 or bf16")
        return dtype
    try:
        return _DTYPE_NAMES[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use fp32, fp16 or bf16") from None


def load_model(
    path: str | os.PathLike | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    compile: bool = False,
    threads: int | None = None,
) -> Restorer:
    """Load a vsdloral weights file (``None``: the bundled default model) and return a
    :class:`~vsdloral.model.restorer.Restorer` on ``device`` in ``dtype``.

    ``compile=True`` wraps the UNet and the VAE encoder/decoder in ``torch.compile`` (the first
    frames of each new shape pay the compile time; ``benchmarks.compile`` measures both).

    ``threads``: torch's intra-op thread count used for every frame, whichever thread asks for it
    (``None``: this thread's ``torch.get_num_threads()`` now). CPU results are bit-identical for a
    given device, dtype, torch version and thread count, and differ in the last bits between counts."""
    if path is None:
        path = DEFAULT_MODEL_PATH
        if not path.is_file():
            raise WeightsError(
                f"the bundled default model is missing ({path}); pass a weights file path "
                "(make one with 'vsdloral convert' or 'vsdloral-train export')"
            )
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    n = resolve_threads(threads)  # checked before the (slow) weights load
    restorer = Restorer(DLoRALModel.load(path), dev, dt, compile=compile, threads=n)
    restorer.source = Path(path)  # what an exported graph of it is made from (vsdloral.runtime)
    return restorer
