"""StableGroupNorm: channels-last fp32 GroupNorm on CPU at the fp32 floor (issue #29)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vsdloral.model import stable_norm
from vsdloral.model.stable_norm import StableGroupNorm, group_norm_channels_last, patch_group_norms

CL = torch.channels_last


def _input(n=2, c=16, h=130, w=150, seed=0):
    """Activations with |mean| = 8 std, as after a conv with a bias: where E[x^2] - E[x]^2 cancels."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, c, h, w, generator=g) * 0.5 + 4).contiguous(memory_format=CL)


@pytest.mark.parametrize("band_elems", [None, 4096], ids=["bands", "one-row-bands"])
@pytest.mark.parametrize("affine", [True, False])
def test_channels_last_group_norm_at_fp32_floor(monkeypatch, band_elems, affine):
    """Against float64: at the contiguous kernel's error (Welford moments), where torch's own
    channels-last kernel is 100x off (checked first, so the test sees the bug it guards against).
    One-row bands: 130 bands pooled, the last one shorter."""
    if band_elems:
        monkeypatch.setattr(stable_norm, "_BAND_ELEMS", band_elems)
    x = _input()
    g = torch.Generator().manual_seed(1)
    w, b = (torch.randn(16, generator=g), torch.randn(16, generator=g)) if affine else (None, None)
    exact = F.group_norm(x.double(), 4, None if w is None else w.double(), None if b is None else b.double(), 1e-6)
    floor = (F.group_norm(x.contiguous(), 4, w, b, 1e-6).double() - exact).abs().max().item()
    native = (F.group_norm(x, 4, w, b, 1e-6).double() - exact).abs().max().item()
    assert native > 100 * floor  # torch's channels-last CPU kernel
    y = group_norm_channels_last(x, 4, w, b, 1e-6)
    assert y.is_contiguous(memory_format=CL) and y.dtype == torch.float32
    err = (y.double() - exact).abs().max().item()
    assert err < 3 * floor, (err, floor)


def test_module_routes_only_fp32_channels_last_cpu():
    """StableGroupNorm is nn.GroupNorm for everything but fp32 channels-last CPU input: contiguous,
    bf16 and 3-D inputs give torch's results bit for bit (bf16 stays as it was)."""
    torch.manual_seed(0)
    plain = nn.GroupNorm(4, 16)
    nn.init.normal_(plain.weight)
    nn.init.normal_(plain.bias)
    stable = nn.GroupNorm(4, 16)
    stable.load_state_dict(plain.state_dict())
    assert patch_group_norms(nn.Sequential(stable)) == 1 and type(stable) is StableGroupNorm
    assert stable.state_dict().keys() == plain.state_dict().keys()
    x = _input(h=40, w=48)
    with torch.no_grad():
        assert torch.equal(stable(x.contiguous()), plain(x.contiguous()))
        xb = x.bfloat16()
        assert torch.equal(stable.bfloat16()(xb), plain.bfloat16()(xb))
        stable.float(), plain.float()
        x3 = x.flatten(2)
        assert torch.equal(stable(x3), plain(x3))
        assert not torch.equal(stable(x), plain(x))  # the channels-last fp32 path is its own
        assert (stable(x) - plain(x.contiguous())).abs().max() < 1e-5


def test_frame_net_patches_fp32_cpu_only():
    """FrameNet patches the VAE's and the UNet's GroupNorms in fp32 channels-last on CPU, not in
    bf16; the patched VAE still tiles exactly (vae_tiling accepts the patched norm)."""
    from vsdloral.model import vae_tiling
    from vsdloral.model.frame_net import FrameNet
    from vsdloral.model.init import init_model

    def kinds(net):
        return {type(m) for m in [*net.vae.modules(), *net.unet.modules()] if isinstance(m, nn.GroupNorm)}

    assert kinds(FrameNet(init_model("tiny", seed=0), "cpu", torch.float32)) == {StableGroupNorm}
    assert kinds(FrameNet(init_model("tiny", seed=0), "cpu", torch.bfloat16)) == {nn.GroupNorm}
    net = FrameNet(init_model("tiny", seed=0), "cpu", torch.float32)
    assert vae_tiling.unsupported_reason(net.vae.encoder) is None
    assert vae_tiling.unsupported_reason(net.vae.decoder) is None


def test_fp32_floor_benchmark_smoke():
    """benchmarks.fp32_floor --smoke runs as a user runs it: fp32 against float64 for the fixture
    (ours within 3x of the fp32 transcription's distance) and the VAE per memory format."""
    import json
    import math
    import subprocess
    import sys
    from pathlib import Path

    proc = subprocess.run([sys.executable, "-m", "benchmarks.fp32_floor", "--smoke", "--json", "--threads", "1"],
                          cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout)
    assert [(x["size"], x["dense"]) for x in r["parity"]] == [("136x72", False), ("64x64", True)]
    for row in r["parity"]:
        floor, ours = row["transcription_fp32"], row["ours_fp32"]
        assert 0 < floor["max"] < 1e-4 and 0 < ours["max"] < 3 * floor["max"], row
    v = r["vae"]["variants"]
    assert set(v) == {"nchw", "channels_last_torch_groupnorm", "channels_last_stable"}
    for part in ("encode_err", "decode_err"):
        assert v["channels_last_stable"][part]["max"] < 3 * v["nchw"][part]["max"]
    assert all(math.isfinite(x[k]) and x[k] > 0 for x in v.values() for k in ("encode_s", "decode_s"))
