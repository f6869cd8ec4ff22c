"""GroupNorm at fp32 accuracy for channels-last tensors on CPU.

torch's CPU GroupNorm kernel for channels-last input (``GroupNormKernelImplChannelsLastInternal``)
accumulates each channel's sum and sum of squares sequentially in float32 over all H*W positions
and takes the variance as ``E[x^2] - E[x]^2``. Over a large frame that loses about three orders of
magnitude against the contiguous kernel (which uses Welford moments): on a 128-channel 1040x584 map
with mean 5 and std 3 the normalised output is off by 1e-3 from a float64 GroupNorm, against 1.3e-6
for the contiguous kernel. It was the whole of the fp32 error of channels-last VAE passes (issue
#29, ``benchmarks/precision.py``); every other op of the SD VAE is at the fp32 floor in either
layout.

:class:`StableGroupNorm` keeps channels-last (converting the tensor to contiguous and back costs
more than the whole native kernel) and computes the statistics in a stable form instead: per band
of rows, each channel's mean by torch's cascade sum and its squared deviations from that mean (a
two-pass variance on a cache-sized band), pooled exactly over bands and over the channels of a
group in float64 (Chan's formula); then ``x * scale + shift`` per channel in one pass. Any other
input (contiguous, bf16/fp16, CUDA, 3-D) runs ``F.group_norm`` as before; traced for export, it is
:func:`group_norm_for_export`, whose reductions runtimes keep accurate.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["StableGroupNorm", "exact_export", "export_reductions", "group_norm_channels_last", "group_norm_for_export",
           "moments_for_export", "patch_group_norms", "rows_of", "uses_stable_path"]

#: floats per band of rows whose deviations are squared at once (512 KB: a band stays in cache; measured fastest of 2^16..2^20)
_BAND_ELEMS = 1 << 17


def uses_stable_path(x: torch.Tensor) -> bool:
    """True when :class:`StableGroupNorm` computes ``x`` itself: a 4-D float32 CPU tensor in
    channels-last layout (with more than one channel), outside tracing and scripting."""
    return (x.dim() == 4 and x.dtype == torch.float32 and x.device.type == "cpu" and x.shape[1] > 1
            and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
            and not torch.jit.is_tracing() and not torch.jit.is_scripting())


def group_norm_channels_last(x: torch.Tensor, groups: int, weight: torch.Tensor | None, bias: torch.Tensor | None,
                             eps: float) -> torch.Tensor:
    """``F.group_norm(x, groups, weight, bias, eps)`` for a channels-last float32 ``x`` (N,C,H,W),
    with statistics accurate to float32 rounding; the result is channels-last."""
    n, c, h, w = x.shape
    rows = max(1, min(h, _BAND_ELEMS // max(1, n * c * w)))
    counts, means, m2s = [], [], []
    for y0 in range(0, h, rows):
        band = x[:, :, y0:y0 + rows]
        mean = band.mean(dim=(2, 3), keepdim=True)  # cascade sum per channel
        m2 = (band - mean).square_().sum(dim=(2, 3))  # two-pass: no cancellation
        counts.append(band.shape[2] * w)
        means.append(mean.flatten(1))
        m2s.append(m2)
    # pool bands, then the channels of each group, exactly in float64 (Chan et al.)
    cnt = torch.tensor(counts, dtype=torch.float64).view(-1, 1, 1)  # (bands, 1, 1)
    mean_b = torch.stack(means).double()  # (bands, N, C)
    m2_b = torch.stack(m2s).double()
    total = cnt.sum()
    mean_c = (mean_b * cnt).sum(0) / total  # (N, C)
    m2_c = m2_b.sum(0) + ((mean_b - mean_c) ** 2 * cnt).sum(0)
    mean_g = mean_c.view(n, groups, -1).mean(2, keepdim=True)  # channels of a group have equal counts
    var_g = (m2_c.view(n, groups, -1) + total * (mean_c.view(n, groups, -1) - mean_g) ** 2).sum(2, keepdim=True) \
        / (total * (c // groups))
    rstd = torch.rsqrt(var_g + eps).expand(n, groups, c // groups).reshape(n, c)
    mean_g = mean_g.expand(n, groups, c // groups).reshape(n, c)
    scale = rstd if weight is None else rstd * weight.double()
    shift = -mean_g * scale if bias is None else bias.double() - mean_g * scale
    return torch.addcmul(shift.float()[:, :, None, None], x, scale.float()[:, :, None, None])


def moments_for_export(x: torch.Tensor, unbiased: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of ``x`` (N, G, K, R, L) over its last three dims (keepdim), in the form
    an exported graph keeps accurate: a mean over each row of L, then a sum over the K*R rows
    divided by their count; the variance two-pass (squared deviations from that mean).

    Traced as one reduction over K*R*L values, a mean is one fp32 accumulation in OpenVINO's CPU
    plugin (2026.4): ONNX ``InstanceNormalization`` for a GroupNorm of 32 channels at 1920x1080 was
    off by 1.0e-3 from float64 (torch: 7e-7); this form measured 1.9e-6 there. The two reductions
    are of different kinds (mean, then sum), so reduce-merging passes do not fuse them into one."""
    count = x.shape[2] * x.shape[3]
    mean = x.mean(dim=4, keepdim=True).sum(dim=(2, 3), keepdim=True) / count
    dev = x - mean
    var = dev.square().mean(dim=4, keepdim=True).sum(dim=(2, 3), keepdim=True) / count
    if unbiased:
        n = count * x.shape[4]
        var = var * (n / (n - 1))
    return mean, var


def rows_of(x: torch.Tensor) -> tuple[int, int]:
    """(rows, row length) of ``x``'s spatial positions: (H, W) for (N,C,H,W); for (N,C,L) the
    divisor pair of L closest to a square (L = H*W of an attention block's input)."""
    if x.dim() == 4:
        return x.shape[2], x.shape[3]
    size = math.prod(x.shape[2:])
    row = max(d for d in range(1, math.isqrt(size) + 1) if size % d == 0)
    return size // row, row


def group_norm_for_export(x: torch.Tensor, groups: int, weight: torch.Tensor | None, bias: torch.Tensor | None,
                          eps: float) -> torch.Tensor:
    """``F.group_norm`` written for an exported graph: the group statistics by
    :func:`moments_for_export` (traced as is, ``F.group_norm`` becomes one ``InstanceNormalization``
    over all of a group's positions, which runtimes may reduce in one fp32 accumulation)."""
    n, c = x.shape[:2]
    rows, row = rows_of(x)
    xg = x.reshape(n, groups, c // groups, rows, row)
    mean, var = moments_for_export(xg)
    y = ((xg - mean) * torch.rsqrt(var + eps)).reshape(x.shape)
    shape = (1, c) + (1,) * (x.dim() - 2)
    if weight is not None:
        y = y * weight.reshape(shape)
    if bias is not None:
        y = y + bias.reshape(shape)
    return y


_EXACT_EXPORT: contextvars.ContextVar[bool] = contextvars.ContextVar("vsdloral_exact_export", default=True)


def exact_export() -> bool:
    """True while torch traces a module for export (TorchScript tracing or ``torch.onnx.export``)
    with exact reductions asked for (the default; see :func:`export_reductions`)."""
    return _EXACT_EXPORT.get() and (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export())


@contextlib.contextmanager
def export_reductions(exact: bool) -> Iterator[None]:
    """Within the block, modules traced for export use the exact forms (:func:`group_norm_for_export`,
    AdaIN's :func:`moments_for_export`) if ``exact``, else the plain ops, which runtimes fuse into
    their own normalisation kernels: faster, and as accurate as a bf16 or fp16 graph can be
    (OpenVINO bf16, bundled model at 1280x720: 7.1e-4 mean from torch fp32 either way, the exact
    forms 5% slower)."""
    token = _EXACT_EXPORT.set(bool(exact))
    try:
        yield
    finally:
        _EXACT_EXPORT.reset(token)


class StableGroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` whose channels-last float32 CPU inputs (see :func:`uses_stable_path`) take
    :func:`group_norm_channels_last` and whose traced (exported) form is
    :func:`group_norm_for_export`; same parameters and state dict."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if uses_stable_path(x):
            return group_norm_channels_last(x, self.num_groups, self.weight, self.bias, self.eps)
        if exact_export() and x.dim() >= 3:
            return group_norm_for_export(x, self.num_groups, self.weight, self.bias, self.eps)
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


def patch_group_norms(module: nn.Module) -> int:
    """Turn every plain ``nn.GroupNorm`` in ``module`` into a :class:`StableGroupNorm` in place (the
    same object, parameters and state dict); returns how many."""
    n = 0
    for m in module.modules():
        if type(m) is nn.GroupNorm:
            m.__class__ = StableGroupNorm
            n += 1
    return n
