"""Shared benchmark helpers: argument parsing, model files, isolated peak-memory runs, FLOP peak."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

CACHE = Path(os.environ.get("VSDLORAL_BENCH_CACHE", Path(tempfile.gettempdir()) / "vsdloral-bench"))
# The benchmarks measure the torch path unless told otherwise: upscale()'s default backend is
# "auto" (OpenVINO where the mlrt extra is installed), which would silently change what they time.
# Inherited by their vspipe subprocesses; benchmarks.backends names its backends explicitly.
os.environ.setdefault("VSDLORAL_BACKEND", "torch")


def tensor_psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR (dB, data range 1) between two tensors of the same shape."""
    from vsdloral.evaluation.metrics import psnr_from_mse

    return psnr_from_mse(float(((a - b) ** 2).mean()))


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--smoke", action="store_true", help="tiny sizes only (CI)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    return p


def parse_size(s: str) -> tuple[int, int]:
    """``"1280x720"`` -> ``(1280, 720)``."""
    w, h = s.lower().split("x")
    return int(w), int(h)


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``, as the benchmarks' JSON reports it."""
    return str(dtype).replace("torch.", "")


def setup_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)


def model_file(preset: str, seed: int = 0) -> Path:
    """A random-weight model file of ``preset`` (built once, cached), or the default model for ``default``."""
    if preset == "default":
        from vsdloral.loading import DEFAULT_MODEL_PATH

        return DEFAULT_MODEL_PATH
    from vsdloral.model.init import init_model

    path = CACHE / f"{preset}-{seed}.safetensors"
    if not path.is_file():
        print(f"building random {preset} model at {path}", file=sys.stderr)
        init_model(preset, seed=seed).save(path)
    return path


def run_isolated(module: str, args: list[str]) -> dict:
    """Run ``python -m module args`` in a fresh process; return its JSON plus its peak RSS (MB)."""
    proc = subprocess.Popen([sys.executable, "-m", module, *args], stdout=subprocess.PIPE)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}"}
    result = json.loads(out)
    result["peak_rss_mb"] = round(usage.ru_maxrss / 1024, 1)
    return result


def matmul_peak_flops(device: torch.device, dtype: torch.dtype = torch.float32, n: int = 2048, reps: int = 5) -> float:
    """Measured FLOP/s of a large square matmul: the practical compute peak of this machine."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        torch.matmul(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def emit(result: dict, as_json: bool, table) -> None:
    """Print ``result`` as JSON or as the human table built by ``table(result)``."""
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        print(table(result))
