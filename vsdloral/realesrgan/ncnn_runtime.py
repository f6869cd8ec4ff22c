"""The x4plus teacher run by the ``ncnn`` runtime (PyPI ``ncnn``, CPU, fp32) as a frozen module.

On this project's AVX-512 CPU, one thread, a 48x48 LQ crop takes 0.47 s in ncnn against 0.93 s
in the PyTorch port (fp32; the port in bf16 takes 0.46 s but is 0.012 off). ncnn's output agrees
with the port's to 2.5e-6 on float input (``python -m vsdloral.realesrgan.check`` for 8-bit
input), so it is the same teacher, computed faster on a CPU. It is not bit-identical: outputs
quantised to 8 bits differ by one level where a value sits on a rounding boundary, so a cache
of its outputs carries its own identity (:attr:`NcnnX4.identity_tag`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import TeacherError


class NcnnX4(nn.Module):
    """Real-ESRGAN x4plus ``.param``/``.bin`` in the ncnn runtime: ``forward(lq)`` takes
    (N,3,h,w) float in [0,1] on the CPU and returns (N,3,4h,4w) float32 in [0,1]. The float
    input goes to ncnn as is (no 8-bit rounding). ``threads``: ncnn's CPU threads. Its state
    dict holds the sha256 of both files, so :func:`training.teacher.weights_identity` tells
    different weights apart; it has no parameters (nothing to train or move)."""

    scale = 4

    def __init__(self, param: str | Path, bin_path: str | Path, *, threads: int = 1) -> None:
        super().__init__()
        try:
            import ncnn
        except ImportError:
            raise TeacherError("the ncnn teacher runtime needs the ncnn package (pip install ncnn)") from None
        self.param, self.bin_path, self.threads = str(param), str(bin_path), int(threads)
        digest = hashlib.sha256()
        for f in (self.param, self.bin_path):
            if not Path(f).is_file():
                raise TeacherError(f"teacher model file {f} not found")
            digest.update(Path(f).read_bytes())
        self.register_buffer("files_sha256", torch.frombuffer(bytearray(digest.digest()), dtype=torch.uint8))
        net = ncnn.Net()
        opt = net.opt
        opt.use_vulkan_compute = False
        opt.num_threads = self.threads
        for name in ("use_fp16_storage", "use_fp16_packed", "use_fp16_arithmetic", "use_bf16_storage",
                     "use_bf16_packed", "use_int8_inference"):
            if hasattr(opt, name):
                setattr(opt, name, False)
        if net.load_param(self.param) != 0 or net.load_model(self.bin_path) != 0:
            raise TeacherError(f"ncnn could not load {self.param} / {self.bin_path}")
        self._net, self._ncnn = net, ncnn

    identity_tag = "runtime=ncnn-fp32"

    def train(self, mode: bool = True) -> NcnnX4:
        return super().train(False)

    @torch.no_grad()
    def forward(self, lq: torch.Tensor) -> torch.Tensor:
        if lq.ndim != 4 or lq.shape[1] != 3:
            raise ValueError(f"NcnnX4: expected (N, 3, h, w) in [0,1], got {tuple(lq.shape)}")
        out = []
        for frame in lq.detach().float().cpu():
            ex = self._net.create_extractor()
            ex.input("data", self._ncnn.Mat(np.ascontiguousarray(frame.numpy())))
            ret, y = ex.extract("output")
            if ret != 0:
                raise RuntimeError(f"ncnn extract('output') failed with {ret}")
            out.append(torch.from_numpy(np.array(y, dtype=np.float32).copy()))
        return torch.stack(out).clamp_(0.0, 1.0).to(lq.device)


__all__ = ["NcnnX4"]
