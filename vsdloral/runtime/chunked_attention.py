"""Attention exported in blocks of queries, so that a runtime's memory stays bounded.

Traced as is, diffusers' attention (``F.scaled_dot_product_attention``) becomes one MatMul-Softmax-
MatMul over all positions, whose score matrix and softmax ONNX Runtime's CPU provider
materialises: from the shapes, 4.2 GB each for the SD VAE's mid-block at 1920x1080 (32,400
positions) and 10.9 GB each for the fixture UNet's eight batched 96 x 96 latent tiles (4 heads). It
was killed above 21 GB there; with blocks it peaked at 5.7 GB. Within
:func:`chunked_attention` (used by :func:`vsdloral.runtime.onnx_export.export_onnx`) each call is
split into blocks of queries whose scores hold at most :data:`SCORE_BUDGET` elements; every block
sees all keys, so the result is the same attention (each query's softmax is its own row).
The torch path computes the same: the patch swaps diffusers' processors' ``F`` for the duration of
the export (process-wide, so a torch-path frame computed meanwhile gets the same attention in blocks).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F

__all__ = ["SCORE_BUDGET", "chunked_attention", "chunked_sdpa"]

#: most attention scores (batch x heads x queries x keys) one block of an exported attention holds
SCORE_BUDGET = 1 << 27  # 512 MB in fp32


def chunked_sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: torch.Tensor | None = None,
                 dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None,
                 **kwargs) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` over blocks of queries of at most :data:`SCORE_BUDGET`
    scores each (one call when it fits, or for a causal mask)."""
    n_q, n_k = query.shape[-2], key.shape[-2]
    batch = math.prod(query.shape[:-2])
    block = max(1, SCORE_BUDGET // max(1, batch * n_k))
    if block >= n_q or is_causal:
        return F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p,
                                              is_causal=is_causal, scale=scale, **kwargs)
    outs = []
    for q0 in range(0, n_q, block):
        mask = attn_mask
        if mask is not None and mask.dim() >= 2 and mask.shape[-2] == n_q:
            mask = mask[..., q0:q0 + block, :]
        outs.append(F.scaled_dot_product_attention(query[..., q0:q0 + block, :], key, value, attn_mask=mask,
                                                   dropout_p=dropout_p, scale=scale, **kwargs))
    return torch.cat(outs, dim=-2)


class _Functional:
    """``torch.nn.functional`` with :func:`chunked_sdpa` as its ``scaled_dot_product_attention``."""

    scaled_dot_product_attention = staticmethod(chunked_sdpa)

    def __getattr__(self, name: str):
        return getattr(F, name)


@contextlib.contextmanager
def chunked_attention() -> Iterator[None]:
    """Within the block, diffusers' attention processors compute attention with :func:`chunked_sdpa`."""
    from diffusers.models import attention_processor

    old = attention_processor.F
    attention_processor.F = _Functional()
    try:
        yield
    finally:
        attention_processor.F = old
