"""CFR: dense chunking is exact, approximate modes are exact at their limits and measured otherwise."""

from __future__ import annotations

import math

import pytest
import torch

from vsdloral.model.cfr import CFRConfig, CrossFrameRetrieval


def naive_cfr(m: CrossFrameRetrieval, c: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """SPEC section 2 written out with the full (HW)x(HW) matrix."""
    cfg = m.config
    b, _, h, w = c.shape
    q = m.query_conv(c).view(b, cfg.heads, cfg.head_dim, h * w).transpose(-1, -2)
    k = m.key_conv(r).view(b, cfg.heads, cfg.head_dim, h * w).transpose(-1, -2)
    v = m.value_conv(r).view(b, cfg.heads, cfg.head_dim, h * w).transpose(-1, -2)
    t = m.threshold_fc(q)  # (b, heads, N, 1)
    a = torch.relu((q @ k.transpose(-1, -2) / math.sqrt(cfg.head_dim) - t) / cfg.temperature)
    out = (a @ v).transpose(-1, -2).reshape(b, -1, h, w)
    return m.proj_out(out)


def _scores_and_thresholds(m: CrossFrameRetrieval, c: torch.Tensor, r: torch.Tensor):
    """Per head: scores q_i.k_j / sqrt(d) (b, heads, N, N), thresholds t_i (b, heads, N, 1) and v."""
    cfg = m.config
    b, _, h, w = c.shape
    q = m.query_conv(c).view(b, cfg.heads, cfg.head_dim, h * w).transpose(-1, -2)
    k = m.key_conv(r).view(b, cfg.heads, cfg.head_dim, h * w).transpose(-1, -2)
    v = m.value_conv(r).view(b, cfg.heads, cfg.head_dim, h * w).transpose(-1, -2)
    return q @ k.transpose(-1, -2) / math.sqrt(cfg.head_dim), m.threshold_fc(q), v


def naive_topk_cfr(m: CrossFrameRetrieval, c: torch.Tensor, r: torch.Tensor, k: int) -> torch.Tensor:
    """SPEC section 2's top-k form, one query at a time: query i keeps its k most similar keys
    (largest q_i.k_j / sqrt(d), found by a full sort), a_ij = relu((q_i.k_j / sqrt(d) - t_i) / T) on
    those and 0 elsewhere. (t_i is one number per query and relu is monotonic, so ranking by the
    score or by the thresholded weight selects the same contributing keys.)"""
    cfg = m.config
    b, _, h, w = c.shape
    scores, t, v = _scores_and_thresholds(m, c, r)
    out = torch.zeros_like(v)  # (b, heads, N, d)
    for bi in range(b):
        for hi in range(cfg.heads):
            for i in range(h * w):
                s = scores[bi, hi, i]
                keep = torch.argsort(s, descending=True)[:k]
                a = torch.relu((s[keep] - t[bi, hi, i]) / cfg.temperature)
                out[bi, hi, i] = a @ v[bi, hi, keep]
    return m.proj_out(out.transpose(-1, -2).reshape(b, -1, h, w))


@pytest.fixture()
def cfr_and_inputs():
    torch.manual_seed(0)
    m = CrossFrameRetrieval(CFRConfig(4, 3, 16, 3000.0)).eval()
    # larger weights so the ReLU threshold matters (a mix of active and inactive pairs)
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(40)
    c = torch.randn(2, 4, 12, 14)
    r = c + 0.3 * torch.randn_like(c)
    return m, c, r


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@torch.no_grad()
def test_dense_matches_naive_and_chunking_is_exact(cfr_and_inputs):
    m, c, r = cfr_and_inputs
    n = 12 * 14
    # the sparsity threshold is active: some but not all pairs contribute (measured: 0.52 of all
    # pairs, 0.29 / 0.68 / 0.60 per head of the first sample), so relu's cut is exercised
    scores, t, _ = _scores_and_thresholds(m, c, r)
    active = (scores - t > 0).float()
    assert 0.2 < float(active.mean()) < 0.8
    per_head = active.mean((-1, -2))
    assert (per_head > 0.1).all() and (per_head < 0.9).all()
    ref = naive_cfr(m, c, r)
    full = m(c, r, "dense")
    assert _rel(full, ref) < 1e-5
    # the dense default is one chunk here; force several, including a short last one
    for per_chunk in (5, 50, n - 1):  # 34, 4 and 2 chunks of queries
        chunked = m(c, r, "dense", max_chunk_elems=2 * 3 * n * per_chunk)
        assert -(-n // per_chunk) > 1
        assert _rel(chunked, ref) < 1e-5 and _rel(chunked, full) < 1e-5
    assert torch.isfinite(full).all() and full.abs().max() > 0


@torch.no_grad()
def test_topk_and_window_are_exact_at_their_limits(cfr_and_inputs):
    m, c, r = cfr_and_inputs
    dense = m(c, r, "dense")
    assert _rel(m(c, r, "topk", topk=12 * 14), dense) < 1e-5
    assert _rel(m(c, r, "window", window=14), dense) < 1e-5


@torch.no_grad()
def test_topk_below_n_matches_naive_per_query_topk(cfr_and_inputs):
    """k < N runs the top-k branch: it equals SPEC's per-query top-k, also over several chunks."""
    m, c, r = cfr_and_inputs
    n = 12 * 14
    dense = m(c, r, "dense")
    for k in (1, 16, 100):
        ref = naive_topk_cfr(m, c, r, k)
        assert _rel(ref, dense) > 1e-2  # a real approximation: dropping keys changes the output
        assert _rel(m(c, r, "topk", topk=k), ref) < 1e-5, k
        chunked = m(c, r, "topk", topk=k, max_chunk_elems=2 * 3 * n * 7)  # 24 chunks of 7 queries
        assert _rel(chunked, ref) < 1e-5, k


@torch.no_grad()
def test_approximate_modes_deviation_is_measured(cfr_and_inputs):
    """Deviation from dense shrinks as the approximation widens (figures quoted in cfr.py)."""
    m, c, r = cfr_and_inputs
    dense = m(c, r, "dense")
    win = [_rel(m(c, r, "window", window=k), dense) for k in (2, 4, 8)]
    top = [_rel(m(c, r, "topk", topk=k), dense) for k in (16, 64, 128)]
    print("window r=2,4,8 rel err:", win, "topk 16,64,128 rel err:", top)
    assert win[0] > win[1] > win[2]
    assert top[0] > top[1] > top[2]
    # figures on random weights and unstructured inputs (the worst case for locality): quoted in cfr.py
    assert win[2] < 0.35 and top[2] < 0.15


def test_unknown_mode_is_a_clear_error(cfr_and_inputs):
    m, c, r = cfr_and_inputs
    with pytest.raises(ValueError, match="unknown CFR mode"):
        m(c, r, "sparse")


def test_window_row_blocks_match_whole_frame_with_gradients():
    """The window mode walks rows in cache-sized blocks: any block size gives the same output and
    the same gradients (training backpropagates through it)."""
    torch.manual_seed(0)
    m = CrossFrameRetrieval(CFRConfig(4, 2, 16, 3.0))
    cur = torch.randn(2, 4, 13, 11, requires_grad=True)
    ref = torch.randn(2, 4, 13, 11, requires_grad=True)
    results = []
    for block in (1 << 18, 2 * 32 * 11 * 3, 1):  # one block, blocks of 3 rows, single rows
        q, k, v = m._heads(m.query_conv(cur)), m._heads(m.key_conv(ref)), m._heads(m.value_conv(ref))
        t = m.threshold_fc(q.movedim(2, -1)).squeeze(-1)
        out = m._window(q, k, v, t, 3, block_elems=block)
        grads = torch.autograd.grad((out ** 2).sum(), [cur, ref, m.query_conv.weight])
        results.append((out.detach(), grads))
    for out, grads in results[1:]:
        assert _rel(out, results[0][0]) < 1e-5
        for g, g0 in zip(grads, results[0][1]):
            assert _rel(g, g0) < 1e-5
