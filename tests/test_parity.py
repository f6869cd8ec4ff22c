"""Parity: a converted authors'-format checkpoint restores frames like an UNMERGED reference
written here from SPEC sections 1-3 and the authors' code, not from vsdloral's: functional SPyNet
(normalised with the checkpoint's own ``spynet.mean``/``spynet.std`` buffers, ImageNet's when
absent), flow warp and dense CFR on the raw checkpoint tensors, the PEFT-injected UNet with all six
adapters active, the authors' AdaIN. A frame without a predecessor (frame 0, a scene cut) is
restored as the authors do it: against a COPY of itself that is encoded again, flowed by SPyNet
(which is not exactly zero between identical frames) and warped like any reference. Above
``tile**2`` latent positions the reference is a transcription of the authors' tiled branch
(``Generator_eval.forward``), written from their code and not from vsdloral's latent_tiles.
Planted bugs it catches (tests/test_parity.py::test_parity_authors_tiles_small): dense CFR/flow of
the whole frame cropped into the tiles (UNet inputs 0.04 off); the y midpoint at (ts-1)/2 (0.74;
0.40 in test_parity_authors_tiles_several_rows; nothing at all at 1040x584, whose one row of
tiles makes the y weight cancel in the blend); z' pasted per tile instead of blended (2.7e-3);
SPyNet once on the whole frame, its flow cropped (0.04). SPyNet on the bicubic 1/8 of a tile's pixels equals it on the crop of the frame's 1/8 (the
taps of an 8x bicubic never leave the tile), so only where SPyNet runs can differ.

Tolerances are measured maxima with a margin (fp32 on CPU): see TOL."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from authors_format import (BRANCHES, GROUPS, IMAGENET_MEAN, IMAGENET_STD, dlora_unet_config, make_authors_checkpoint,
                            make_sd_base)

# Measured max abs error against the reference, fp32, 2-core CPU (20 frame pairs, 2 sizes, 5 seeds):
# 6e-6..2.0e-5 without colour fix (typically 1e-5; the former TOL was 1e-4). The authors' latent
# tiles on small frames (SMALL_TILES, 3 seeds each): 4.7e-6..6.3e-6.
# With adain the error was 5.1e-5..8.1e-5 while vsdloral added its eps to the output's std only;
# since both images' std is sqrt(var + eps), as the authors' AdaIN, adain is held to TOL as well.
TOL = 6e-5
TOL_ADAIN = TOL
TOL_TILE_INPUT = 1e-4  # per-tile UNet input (latent units, |z| up to ~10), measured: see the tiled tests
# At 1040x584, measured on 2 threads: max 1.9e-5, mean 8.8e-7 (1.4e-5 / 9.6e-7 at the 392x264 of
# test_parity_authors_tiles_several_rows, held to TOL and TOL_LARGE_MEAN). Both sides are at the fp32 floor there: against a float64
# run of the reference, ours is 5.3e-5 max off and the fp32 reference 4.0e-5 (benchmarks.fp32_floor;
# 8.4e-5 / 7.9e-5 at 1920x1080). The bounds of 3e-3 / 3e-4 held before were torch's channels-last CPU
# GroupNorm (2.3e-3 off float64 at 1040x584, vsdloral.model.stable_norm), not fp32 as such. Held to
# about 5x the measured figures, below the closest planted bug (z' pasted per tile: 2.7e-3).
TOL_LARGE, TOL_LARGE_MEAN = 1e-4, 5e-6
# The per-tile UNet inputs at that size: measured 1.9e-6 (with torch's GroupNorm put back 5.5e-5 alone,
# 1.5e-4 in a full-suite run: this test then fails); the planted bugs of the tiled tests move them by
# 0.04 and more.
TOL_LARGE_TILE_INPUT = 2e-5
pytestmark = pytest.mark.filterwarnings("ignore:Already found a `peft_config`")


@pytest.fixture(scope="module")
def authors(tmp_path_factory):
    root = tmp_path_factory.mktemp("authors")
    sd = make_sd_base(root / "sd-base", seed=1)
    ckpt_path = make_authors_checkpoint(root / "model.pkl", seed=2)
    return sd, ckpt_path


def _convert(sd, ckpt_path, out):
    from vsdloral.cli import main

    return main(["convert", "--sd-base", str(sd), "--checkpoint", str(ckpt_path), "-o", str(out),
                 "--prompt", "hello cat"])


@pytest.fixture(scope="module")
def converted(authors, tmp_path_factory):
    out = tmp_path_factory.mktemp("conv") / "dlora.safetensors"
    assert _convert(*authors, out) == 0
    return out


# -- the reference, from SPEC ---------------------------------------------------------------------
def ref_warp(x, flow, padding_mode="zeros"):
    """SPEC 3: sample at grid + flow, normalised by 2*x/(w-1) - 1, bilinear, align_corners=True."""
    _, _, h, w = x.shape
    gy, gx = torch.meshgrid(torch.arange(h, dtype=x.dtype), torch.arange(w, dtype=x.dtype), indexing="ij")
    px = gx + flow[:, 0]
    py = gy + flow[:, 1]
    grid = torch.stack([2 * px / (w - 1) - 1, 2 * py / (h - 1) - 1], dim=-1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding_mode, align_corners=True)


def spynet_norm(bpp):
    """The checkpoint's SPyNet normalisation buffers; ImageNet's where absent (SPEC 3-4)."""
    mean = bpp.get("spynet.mean", torch.tensor(IMAGENET_MEAN))
    std = bpp.get("spynet.std", torch.tensor(IMAGENET_STD))
    return mean.float().view(1, 3, 1, 1), std.float().view(1, 3, 1, 1)


def ref_spynet(bpp, ref, supp):
    """SPEC 3, with the checkpoint's conv tensors applied by F.conv2d."""
    mean, std = spynet_norm(bpp)

    def level(i, x):
        for j in range(5):
            p = f"spynet.basic_module.{i}.basic_module.{j}.conv."
            x = F.conv2d(x, bpp[p + "weight"], bpp[p + "bias"], padding=3)
            if j < 4:
                x = F.relu(x)
        return x

    h, w = ref.shape[-2:]
    hu, wu = math.ceil(h / 32) * 32, math.ceil(w / 32) * 32
    r = F.interpolate(ref, size=(hu, wu), mode="bilinear", align_corners=False)
    s = F.interpolate(supp, size=(hu, wu), mode="bilinear", align_corners=False)
    rs, ss = [(r - mean) / std], [(s - mean) / std]
    for _ in range(5):
        rs.insert(0, F.avg_pool2d(rs[0], 2))
        ss.insert(0, F.avg_pool2d(ss[0], 2))
    flow = torch.zeros(ref.shape[0], 2, hu // 32, wu // 32)
    for i in range(6):
        up = flow if i == 0 else 2 * F.interpolate(flow, scale_factor=2, mode="bilinear", align_corners=True)
        flow = up + level(i, torch.cat([rs[i], ref_warp(ss[i], up, "border"), up], 1))
    flow = F.interpolate(flow, size=(h, w), mode="bilinear", align_corners=False)
    return torch.stack([flow[:, 0] * w / wu, flow[:, 1] * h / hu], 1)


def ref_cfr(bpp, cur, ref):
    """SPEC 2: full (HW)x(HW) ReLU-thresholded attention, no softmax, T = 3000."""
    p = "cross_attn_module."
    conv = lambda name, x: F.conv2d(x, bpp[p + name + ".weight"], bpp[p + name + ".bias"])  # noqa: E731
    d = bpp[p + "threshold_fc.weight"].shape[1]
    b, _, h, w = cur.shape
    q, k, v = conv("query_conv", cur), conv("key_conv", ref), conv("value_conv", ref)
    nh = q.shape[1] // d
    q = q.view(b, nh, d, h * w).transpose(2, 3)  # (b, nh, N, d)
    k = k.view(b, nh, d, h * w)
    v = v.view(b, nh, d, h * w).transpose(2, 3)
    t = q @ bpp[p + "threshold_fc.weight"].t() + bpp[p + "threshold_fc.bias"]  # (b, nh, N, 1)
    a = torch.relu((q @ k / math.sqrt(d) - t) / 3000.0)
    out = (a @ v).transpose(2, 3).reshape(b, nh * d, h, w)
    return conv("proj_out", out)


def ref_adain(target, source, eps=1e-5):
    """SPEC 1 step 10, as the authors' colour fix (StableSR's ``adaptive_instance_normalization``):
    per-channel mean and std (unbiased variance + eps) of ``target`` matched to ``source``."""
    def stats(x):
        flat = x.flatten(2)
        return flat.mean(2)[..., None, None], (flat.var(2) + eps).sqrt()[..., None, None]

    tm, ts = stats(target)
    sm, ss = stats(source)
    return ((target - tm) / ts * ss + sm).clamp(0, 1)


def ref_gaussian_weights(tile_width, tile_height):
    """The authors' ``_gaussian_weights`` (DLoRAL_model.py), in numpy float64 as theirs: var 0.01,
    x midpoint (width - 1) / 2, y midpoint height / 2 (sic), outer(y, x)."""
    var = 0.01
    mid = (tile_width - 1) / 2
    x_probs = [math.exp(-(x - mid) * (x - mid) / (tile_width * tile_width) / (2 * var)) / math.sqrt(2 * math.pi * var)
               for x in range(tile_width)]
    mid = tile_height / 2
    y_probs = [math.exp(-(y - mid) * (y - mid) / (tile_height * tile_height) / (2 * var)) / math.sqrt(2 * math.pi * var)
               for y in range(tile_height)]
    return torch.tensor(np.outer(y_probs, x_probs))


class Reference:
    """SPEC section 1 on the unmerged authors' model."""

    def __init__(self, sd_base, ckpt_path):
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from peft import LoraConfig
        from transformers import CLIPTextModel, CLIPTokenizer

        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        self.bpp = ckpt["state_dict_bpp"]
        unet = UNet2DConditionModel.from_config(dlora_unet_config())
        names = []
        for b in BRANCHES:
            for g in GROUPS:
                name = f"default_{g}_{b}"
                unet.add_adapter(LoraConfig(r=ckpt[f"lora_rank_unet_{b}"], init_lora_weights="gaussian",
                                            target_modules=ckpt[f"unet_lora_{g}_modules_{b}"]), adapter_name=name)
                names.append(name)
        unet.load_state_dict(ckpt["state_dict_unet"], strict=True)
        unet.set_adapters(names, [1.0] * 6)
        self.unet = unet.eval()
        self.adapters = names
        self.vae = AutoencoderKL.from_pretrained(sd_base / "vae").eval()
        tok = CLIPTokenizer.from_pretrained(sd_base / "tokenizer")
        ids = tok(", hello cat,", max_length=tok.model_max_length, padding="max_length", truncation=True,
                  return_tensors="pt").input_ids
        self.prompt = CLIPTextModel.from_pretrained(sd_base / "text_encoder").eval()(ids)[0]
        self.sf = self.vae.config.scaling_factor
        self.last = {}

    def _unet(self, x):
        return self.unet(x, torch.tensor([1]), encoder_hidden_states=self.prompt.expand(x.shape[0], -1, -1)).sample

    def _pair(self, img_c, img_r, zc, zr):
        """SPEC 1 steps 4-7 on one piece: flow (bicubic 1/8 of the pixels), warp, CFR, UNet.
        Returns (z', eps)."""
        size = tuple(zc.shape[-2:])
        sc = F.interpolate(img_c, size=size, mode="bicubic", align_corners=False)
        sr = F.interpolate(img_r, size=size, mode="bicubic", align_corners=False)
        flow = ref_spynet(self.bpp, sc, sr)
        zr_w = ref_warp(zr, flow)
        residual = ref_cfr(self.bpp, zc, zr_w)
        self.last["flow"], self.last["cfr"] = flow, residual
        zc2 = zc + residual
        return zc2, self._unet(torch.cat([zr_w, zc2], 1))

    def _tiled(self, img_c, img_r, zc, zr, tile_size, tile_overlap):
        """The tiled branch of the authors' ``Generator_eval.forward``, transcribed: their grid
        loops (``grid_rows`` counts tiles along x), offsets and end alignment, one tile at a time
        (flow on the tile's pixel crops, warp, CFR, UNet), then both sums in their order, float64
        weights into float32 sums, each divided by the summed weights."""
        _, _, h, w = zc.shape
        tile_size = min(tile_size, min(h, w))
        tile_weights = ref_gaussian_weights(tile_size, tile_size)
        grid_rows, cur_x = 0, 0
        while cur_x < w:
            cur_x = max(grid_rows * tile_size - tile_overlap * grid_rows, 0) + tile_size
            grid_rows += 1
        grid_cols, cur_y = 0, 0
        while cur_y < h:
            cur_y = max(grid_cols * tile_size - tile_overlap * grid_cols, 0) + tile_size
            grid_cols += 1

        def offsets(row, col):
            ofs_x = max(row * tile_size - tile_overlap * row, 0)
            ofs_y = max(col * tile_size - tile_overlap * col, 0)
            if row == grid_rows - 1:
                ofs_x = w - tile_size
            if col == grid_cols - 1:
                ofs_y = h - tile_size
            return ofs_x, ofs_y

        noise_preds, enc_ctrls = [], []
        self.last["tiles"] = []
        for row in range(grid_rows):
            for col in range(grid_cols):
                x0, y0 = offsets(row, col)
                self.last["tiles"].append((y0, x0))
                ys, xs = slice(y0, y0 + tile_size), slice(x0, x0 + tile_size)
                py, px = slice(y0 * 8, (y0 + tile_size) * 8), slice(x0 * 8, (x0 + tile_size) * 8)
                zc2, eps = self._pair(img_c[..., py, px], img_r[..., py, px], zc[..., ys, xs], zr[..., ys, xs])
                noise_preds.append(eps)
                enc_ctrls.append(zc2)
        b = zc.shape[0]
        noise_pred = torch.zeros(b, 4, h, w)
        contributors = torch.zeros(b, 4, h, w)
        enc_ctrl = torch.zeros(b, 4, h, w)
        for row in range(grid_rows):
            for col in range(grid_cols):
                x0, y0 = offsets(row, col)
                ys, xs = slice(y0, y0 + tile_size), slice(x0, x0 + tile_size)
                noise_pred[:, :, ys, xs] += noise_preds[row * grid_cols + col] * tile_weights
                enc_ctrl[:, :, ys, xs] += enc_ctrls[row * grid_cols + col] * tile_weights
                contributors[:, :, ys, xs] += tile_weights
        noise_pred /= contributors
        enc_ctrl /= contributors
        return enc_ctrl - noise_pred

    @torch.no_grad()
    def __call__(self, cur, ref=None, *, color_fix="none", tile=96, tile_overlap=32):
        """``ref=None``: no predecessor, so the reference is a copy of ``cur`` and takes the whole
        path (encode, SPyNet, warp). ``tile``/``tile_overlap`` (latent positions, the authors'
        96/32 by default): their latent tiles when the latent has more than ``tile**2`` positions;
        ``tile=None``: the whole frame in one piece whatever its size (our dense option)."""
        if ref is None:
            ref = cur.clone()
        h, w = cur.shape[-2:]
        hp, wp = math.ceil(h / 8) * 8, math.ceil(w / 8) * 8

        def prep(x):
            x = F.pad(2 * x - 1, (0, wp - w, 0, hp - h), mode="replicate")
            return x, self.vae.encode(x).latent_dist.mode() * self.sf

        xc, zc = prep(cur)
        xr, zr = prep(ref)
        self.last["tiles"] = None
        if tile is None or zc.shape[-2] * zc.shape[-1] <= tile * tile:
            zc2, eps = self._pair(xc, xr, zc, zr)
            z_hat = zc2 - eps
        else:
            z_hat = self._tiled(xc, xr, zc, zr, tile, tile_overlap)
        y = self.vae.decode(z_hat / self.sf).sample.clamp(-1, 1)
        y = ((y + 1) / 2)[..., :h, :w]
        if color_fix == "adain":
            return ref_adain(y, cur)
        assert color_fix == "none"
        return y


@pytest.fixture(scope="module")
def reference(authors):
    return Reference(*authors)


@pytest.fixture(scope="module")
def restorer(converted):
    from vsdloral import load_model

    return load_model(converted, device="cpu", dtype="fp32")


def _smooth(h, w, g):
    return F.interpolate(torch.rand(1, 3, h // 4 + 3, w // 4 + 3, generator=g), size=(h + 12, w + 12),
                         mode="bicubic", align_corners=False).clamp(0, 1)


def _frames(h, w, seed=0):
    """A smooth random frame and the same content shifted (a plausible previous frame)."""
    base = _smooth(h, w, torch.Generator().manual_seed(seed))
    cur = base[..., 6 : 6 + h, 6 : 6 + w].contiguous()
    prev = base[..., 4 : 4 + h, 9 : 9 + w].contiguous()
    return cur, prev


def _err(a, b):
    assert a.shape == b.shape
    return (a - b).abs().max().item()


# -- tests ----------------------------------------------------------------------------------------
def test_reference_is_meaningful(reference):
    """Guards against a vacuous parity: LoRA deltas, flow and CFR all contribute, SPyNet's flow
    between a frame and its copy is not zero (so a self-reference that skips it is caught), and
    the colour fix changes the output."""
    cur, prev = _frames(72, 88)
    out = reference(cur, prev)
    assert reference.last["cfr"].abs().mean() > 1e-2
    assert reference.last["flow"].abs().max() > 1e-2
    assert ((out <= 0) | (out >= 1)).float().mean() < 0.1  # little is hidden by the final clamp
    own = reference(cur, None)
    assert reference.last["flow"].abs().max() > 1e-2  # flow between identical frames
    assert _err(out, own) > 0.1  # the reference frame matters
    assert _err(out, reference(cur, prev, color_fix="adain")) > 0.05
    x = torch.randn(1, 8, 9, 11)
    with torch.no_grad():
        with_lora = reference._unet(x)
        reference.unet.disable_adapters()
        try:
            without = reference._unet(x)
        finally:
            reference.unet.enable_adapters()
            reference.unet.set_adapters(reference.adapters, [1.0] * 6)
    assert (with_lora - without).abs().max() > 1e-2


@pytest.mark.parametrize("size", [(72, 88), (70, 90)])
def test_parity_with_reference_frame(reference, restorer, size):
    cur, prev = _frames(*size)
    expected = reference(cur, prev)
    got = restorer.restore(cur, prev, color_fix="none", cfr="dense")
    assert got.shape == expected.shape == cur.shape
    err = _err(got, expected)
    assert err < TOL, f"max abs error {err:.3g} at {size}"


@pytest.mark.parametrize("size", [(72, 88), (70, 90)])
def test_parity_self_reference(reference, restorer, size):
    """No predecessor: the authors' copy path (encode the copy, SPyNet, warp, CFR, UNet)."""
    cur, _ = _frames(*size, seed=3)
    expected = reference(cur, None)
    enc = restorer.stats["vae_encodes"]
    got = restorer.restore(cur, None, color_fix="none", cfr="dense")
    assert restorer.stats["vae_encodes"] == enc + 1  # the frame is encoded once
    err = _err(got, expected)
    assert err < TOL, f"max abs error {err:.3g}"


def test_self_reference_is_passing_the_frame_itself(restorer):
    """``ref=None`` is exactly ``ref=cur``, for tensors and for prepared frames."""
    cur, _ = _frames(40, 56, seed=6)
    kw = dict(color_fix="adain", cfr="dense")
    none = restorer.restore(cur, None, **kw)
    assert torch.equal(none, restorer.restore(cur, cur, **kw))
    assert torch.equal(none, restorer.restore(cur, cur.clone(), **kw))
    pc = restorer.prepare(cur)
    enc = restorer.stats["vae_encodes"]
    assert torch.equal(restorer.restore_prepared(pc, None, **kw), restorer.restore_prepared(pc, pc, **kw))
    assert torch.equal(restorer.restore_prepared(pc, None, **kw), none)
    assert restorer.stats["vae_encodes"] == enc  # the prepared latent is reused


def test_parity_batch_of_two(reference, restorer):
    c1, p1 = _frames(40, 56, seed=4)
    c2, p2 = _frames(40, 56, seed=5)
    cur, prev = torch.cat([c1, c2]), torch.cat([p1, p2])
    expected = reference(cur, prev)
    got = restorer.restore(cur, prev, color_fix="none", cfr="dense")
    err = _err(got, expected)
    assert err < TOL, f"max abs error {err:.3g}"


@pytest.mark.parametrize("own", [False, True], ids=["prev", "self"])
def test_parity_adain(reference, restorer, own):
    """The default colour fix against the authors' AdaIN."""
    cur, prev = _frames(72, 88, seed=9)
    ref = None if own else prev
    expected = reference(cur, ref, color_fix="adain")
    got = restorer.restore(cur, ref, color_fix="adain", cfr="dense")
    err = _err(got, expected)
    assert err < TOL_ADAIN, f"max abs error {err:.3g}"


def _recording(monkeypatch, restorer, reference):
    """Record every UNet input of ``restorer`` and of ``reference``, in call order."""
    ours, theirs = [], []
    unet_fn, ref_unet = restorer._unet_fn, reference._unet
    monkeypatch.setattr(restorer, "_unet_fn", lambda x, *a, **k: ours.append(x.detach().clone()) or unet_fn(x, *a, **k))
    monkeypatch.setattr(reference, "_unet", lambda x: theirs.append(x.detach().clone()) or ref_unet(x))
    return ours, theirs


# (output size, tile, overlap in pixels, tiles expected): several rows and columns with end-aligned
# last tiles (9x11 latent, side 4, stride 3: rows 0 3 5, columns 0 3 6 7); a frame thinner than
# the tile (5x15 latent, tile 6: side 5, columns 0 3 6 9 10); a self-reference
SMALL_TILES = [((72, 88), 32, 8, 12, False), ((40, 120), 48, 16, 5, False), ((72, 88), 32, 8, 12, True)]


@pytest.mark.parametrize("size,tile,overlap,n,own", SMALL_TILES, ids=["grid", "thin", "self"])
def test_parity_authors_tiles_small(reference, restorer, monkeypatch, size, tile, overlap, n, own):
    """Small tiles on small frames against the transcription of the authors' tiled branch: every
    tile's UNet input (its warped reference and CFR-updated latent: per-tile flow on pixel crops,
    zero-padded warp, CFR over the tile) in the authors' order, then the blended output."""
    cur, prev = _frames(*size, seed=10)
    ref = None if own else prev
    ours, theirs = _recording(monkeypatch, restorer, reference)
    enc = restorer.stats["vae_encodes"]
    got = restorer.restore(cur, ref, color_fix="none", cfr="dense", tile=tile, tile_overlap=overlap)
    assert restorer.stats["vae_encodes"] == enc + (1 if own else 2)  # tiles crop the latent
    expected = reference(cur, ref, tile=tile // 8, tile_overlap=overlap // 8)
    assert len(ours) == len(theirs) == n
    side = min(tile // 8, size[0] // 8, size[1] // 8)
    assert all(tuple(x.shape[-2:]) == (side, side) for x in ours)
    tile_err = max(_err(a, b) for a, b in zip(ours, theirs))
    assert tile_err < TOL_TILE_INPUT, f"UNet inputs differ by {tile_err:.3g}"
    assert _err(expected, reference(cur, ref, tile=None)) > 1e-2  # tiling changes the result: the test sees it
    err = _err(got, expected)
    assert err < TOL, f"max abs error {err:.3g}"


def test_parity_authors_tiles_at_their_size(reference, restorer, monkeypatch):
    """1040x584 output (latent 130x73: three 73x73 tiles at x 0, 41, 57) with NO option passed:
    the converted weights' own tiles are the authors' 96/32, and the frame restores as theirs."""
    cur, prev = _frames(584, 1040, seed=12)
    ours, theirs = _recording(monkeypatch, restorer, reference)
    got = restorer.restore(cur, prev, color_fix="none")
    expected = reference(cur, prev)
    assert reference.last["tiles"] == [(0, 0), (0, 41), (0, 57)]
    assert [tuple(x.shape[-2:]) for x in ours] == [(73, 73)] * 3
    tile_err = max(_err(a, b) for a, b in zip(ours, theirs))
    assert tile_err < TOL_LARGE_TILE_INPUT, f"UNet inputs differ by {tile_err:.3g}"
    err, mean = _err(got, expected), (got - expected).abs().mean().item()
    assert err < TOL_LARGE and mean < TOL_LARGE_MEAN, f"max abs error {err:.3g}, mean {mean:.3g}"


def test_parity_authors_tiles_several_rows(reference, restorer, monkeypatch):
    """Two rows of tiles (392x264 output, latent 49x33, 192/64 px tiles: side 24, stride 16; rows at
    y 0 and 9, columns at x 0, 16, 25), so the blend's y weights do not cancel as they do in one row
    (the authors' y midpoint at (side - 1) / 2 moves this output by 0.40)."""
    cur, prev = _frames(264, 392, seed=12)
    ours, theirs = _recording(monkeypatch, restorer, reference)
    got = restorer.restore(cur, prev, color_fix="none", cfr="dense", tile=192, tile_overlap=64)
    expected = reference(cur, prev, tile=24, tile_overlap=8)
    assert reference.last["tiles"] == [(y, x) for x in (0, 16, 25) for y in (0, 9)]
    assert [tuple(x.shape[-2:]) for x in ours] == [(24, 24)] * 6
    tile_err = max(_err(a, b) for a, b in zip(ours, theirs))
    assert tile_err < TOL_LARGE_TILE_INPUT, f"UNet inputs differ by {tile_err:.3g}"
    err, mean = _err(got, expected), (got - expected).abs().mean().item()
    assert err < TOL and mean < TOL_LARGE_MEAN, f"max abs error {err:.3g}, mean {mean:.3g}"


def test_parity_several_cfr_chunks(reference, restorer, monkeypatch):
    """Dense CFR in several query chunks (its memory bound, ``max_chunk_elems``, forced low)."""
    cur, prev = _frames(72, 88, seed=11)
    expected = reference(cur, prev)
    cfr, chunks = restorer.cfr, []
    forward, baddbmm = cfr.forward, torch.baddbmm

    def counting_baddbmm(*a, **k):  # the dense path runs one fused baddbmm per query chunk
        chunks.append(a[1].shape[1])
        return baddbmm(*a, **k)

    def chunked(*a, **k):
        with monkeypatch.context() as m:
            m.setattr(torch, "baddbmm", counting_baddbmm)
            return forward(*a, max_chunk_elems=2 * 99 * 16, **k)  # heads x positions x 16 queries

    monkeypatch.setattr(cfr, "forward", chunked)
    got = restorer.restore(cur, prev, color_fix="none", cfr="dense")
    assert len(chunks) > 3 and sum(chunks) == 99, chunks
    err = _err(got, expected)
    assert err < TOL, f"max abs error {err:.3g}"


def test_parity_components(reference, restorer):
    """Localise a mismatch: SPyNet flow and CFR residual of the loaded model against the reference."""
    from vsdloral.model.spynet import flow_warp

    g = torch.Generator().manual_seed(7)
    a = torch.rand(1, 3, 9, 11, generator=g) * 2 - 1
    b = torch.roll(a, shifts=(1, 1), dims=(2, 3))
    with torch.no_grad():
        assert (restorer.spynet(a, b) - ref_spynet(reference.bpp, a, b)).abs().max() < 1e-5
        assert (restorer.spynet(a, a) - ref_spynet(reference.bpp, a, a)).abs().max() < 1e-5
        flow = torch.randn(1, 2, 9, 11, generator=g)
        z = torch.randn(1, 4, 9, 11, generator=g)
        assert (flow_warp(z, flow) - ref_warp(z, flow)).abs().max() < 1e-6
        zc = torch.randn(1, 4, 9, 11, generator=g)
        assert (restorer.cfr(zc, z, "dense") - ref_cfr(reference.bpp, zc, z)).abs().max() < 1e-5
        assert (restorer.prompt_embeds - reference.prompt).abs().max() < 1e-6


# -- SPyNet's normalisation buffers ---------------------------------------------------------------
def test_spynet_buffers_absent_mean_imagenet(authors, tmp_path):
    """SPEC 4: ``spynet.mean``/``spynet.std`` may be absent; SPyNet then normalises with ImageNet's."""
    from vsdloral import load_model

    sd, _ = authors
    ck = make_authors_checkpoint(tmp_path / "model.pkl", seed=2, spynet_norm=None)
    bpp = torch.load(ck, weights_only=True)["state_dict_bpp"]
    assert "spynet.mean" not in bpp and "spynet.std" not in bpp
    assert _convert(sd, ck, tmp_path / "m.safetensors") == 0
    r = load_model(tmp_path / "m.safetensors", device="cpu", dtype="fp32")
    g = torch.Generator().manual_seed(12)
    a = torch.rand(1, 3, 9, 11, generator=g) * 2 - 1
    b = torch.roll(a, shifts=(1, 2), dims=(2, 3))
    with torch.no_grad():
        assert (r.spynet(a, b) - ref_spynet(bpp, a, b)).abs().max() < 1e-5


@pytest.mark.parametrize("which", ["mean", "std"])
def test_spynet_buffers_other_than_imagenet_are_used_or_refused(authors, tmp_path, capsys, which):
    """A checkpoint whose SPyNet buffers are not ImageNet's: the converted model must normalise
    with them (checked against the reference, which does), or conversion must refuse it naming
    the buffer. Ignoring them silently computes another flow (checked first: it does differ)."""
    from vsdloral import load_model

    sd, _ = authors
    norm = ((0.3, 0.6, 0.5), IMAGENET_STD) if which == "mean" else (IMAGENET_MEAN, (0.4, 0.15, 0.3))
    ck = make_authors_checkpoint(tmp_path / "model.pkl", seed=2, spynet_norm=norm)
    bpp = torch.load(ck, weights_only=True)["state_dict_bpp"]
    imagenet = {k: v for k, v in bpp.items() if k not in ("spynet.mean", "spynet.std")}
    g = torch.Generator().manual_seed(13)
    a = torch.rand(1, 3, 9, 11, generator=g) * 2 - 1
    b = torch.roll(a, shifts=(1, 2), dims=(2, 3))
    assert (ref_spynet(bpp, a, b) - ref_spynet(imagenet, a, b)).abs().max() > 1e-3
    out = tmp_path / "m.safetensors"
    rc = _convert(sd, ck, out)
    if rc == 0:
        r = load_model(out, device="cpu", dtype="fp32")
        with torch.no_grad():
            assert (r.spynet(a, b) - ref_spynet(bpp, a, b)).abs().max() < 1e-5
    else:
        err = capsys.readouterr().err
        assert rc == 2 and f"spynet.{which}" in err and not out.exists(), err


# -- the filter: frame 0 and scene cuts -----------------------------------------------------------
def _clip(frames):
    """An RGBS clip holding ``frames`` ((1,3,H,W) tensors) exactly."""
    import vapoursynth as vs

    core = vs.core
    h, w = frames[0].shape[-2:]
    blank = core.std.BlankClip(format=vs.RGBS, width=w, height=h, length=len(frames), keep=False)

    def fill(n, f):
        out = f.copy()
        for p in range(3):
            np.copyto(np.asarray(out[p]), frames[n][0, p].numpy())
        return out

    return core.std.ModifyFrame(blank, blank, fill)


@pytest.mark.parametrize("color_fix", ["none", "adain"])
def test_filter_scene_cut_parity(reference, restorer, color_fix):
    """``vsdloral.upscale`` on a 5-frame RGBS clip (scale 1: the input is already at output size)
    with ``_SceneChangePrev`` on frame 3: frames 0 and 3 are restored against a copy of themselves,
    the others against frame n-1, each matching the reference."""
    import vapoursynth as vs

    import vsdloral

    h, w = 72, 88
    g = torch.Generator().manual_seed(14)
    a, b = _smooth(h, w, g), _smooth(h, w, g)  # two scenes
    frames = [a[..., 6 - i : 6 - i + h, 2 + 2 * i : 2 + 2 * i + w].contiguous() for i in range(3)]
    frames += [b[..., 6 - i : 6 - i + h, 3 + i : 3 + i + w].contiguous() for i in range(2)]
    clip = _clip(frames)
    clip = clip[:3] + vs.core.std.SetFrameProps(clip[3], _SceneChangePrev=1) + clip[4:]
    out = vsdloral.upscale(clip, 1, model=restorer, color_fix=color_fix, cfr="dense", tile=0)
    assert (out.width, out.height, out.format.id) == (w, h, vs.RGBS)
    own = {0, 3}
    tol = TOL_ADAIN if color_fix == "adain" else TOL
    for n, f in enumerate(out.frames()):
        assert f.props["DLoRALReference"] == (n if n in own else n - 1)
        got = torch.from_numpy(np.stack([np.asarray(f[p]) for p in range(3)]))[None]
        expected = reference(frames[n], None if n in own else frames[n - 1], color_fix=color_fix)
        err = _err(got, expected)
        assert err < tol, f"frame {n}: max abs error {err:.3g}"
