"""Parity: a converted authors'-format checkpoint restores frames exactly like an UNMERGED
reference written here straight from SPEC sections 1-3 (functional SPyNet, flow warp and dense
CFR on the raw checkpoint tensors; the PEFT-injected UNet with all six adapters active)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from authors_format import BRANCHES, GROUPS, dlora_unet_config, make_authors_checkpoint, make_sd_base

TOL = 1e-4
pytestmark = pytest.mark.filterwarnings("ignore:Already found a `peft_config`")


@pytest.fixture(scope="module")
def authors(tmp_path_factory):
    root = tmp_path_factory.mktemp("authors")
    sd = make_sd_base(root / "sd-base", seed=1)
    ckpt_path = make_authors_checkpoint(root / "model.pkl", seed=2)
    return sd, ckpt_path


@pytest.fixture(scope="module")
def converted(authors, tmp_path_factory):
    from vsdloral.cli import main

    sd, ckpt_path = authors
    out = tmp_path_factory.mktemp("conv") / "dlora.safetensors"
    assert main(["convert", "--sd-base", str(sd), "--checkpoint", str(ckpt_path), "-o", str(out),
                 "--prompt", "hello cat"]) == 0
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


def ref_spynet(bpp, ref, supp):
    """SPEC 3, with the checkpoint's conv tensors applied by F.conv2d."""
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

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
        ids = tok("hello cat", max_length=tok.model_max_length, padding="max_length", truncation=True,
                  return_tensors="pt").input_ids
        self.prompt = CLIPTextModel.from_pretrained(sd_base / "text_encoder").eval()(ids)[0]
        self.sf = self.vae.config.scaling_factor
        self.last = {}

    @torch.no_grad()
    def __call__(self, cur, ref=None):
        h, w = cur.shape[-2:]
        hp, wp = math.ceil(h / 8) * 8, math.ceil(w / 8) * 8

        def prep(x):
            x = F.pad(2 * x - 1, (0, wp - w, 0, hp - h), mode="replicate")
            z = self.vae.encode(x).latent_dist.mode() * self.sf
            small = F.interpolate(x, size=(hp // 8, wp // 8), mode="bicubic", align_corners=False)
            return x, z, small

        xc, zc, sc = prep(cur)
        if ref is None:
            zr_w = zc
        else:
            _, zr, sr = prep(ref)
            flow = ref_spynet(self.bpp, sc, sr)
            zr_w = ref_warp(zr, flow)
            self.last["flow"] = flow
        residual = ref_cfr(self.bpp, zc, zr_w)
        self.last["cfr"] = residual
        zc2 = zc + residual
        eps = self.unet(torch.cat([zr_w, zc2], 1), torch.tensor([1]),
                        encoder_hidden_states=self.prompt.expand(cur.shape[0], -1, -1)).sample
        y = self.vae.decode((zc2 - eps) / self.sf).sample.clamp(-1, 1)
        return ((y + 1) / 2)[..., :h, :w]


@pytest.fixture(scope="module")
def reference(authors):
    return Reference(*authors)


@pytest.fixture(scope="module")
def restorer(converted):
    from vsdloral import load_model

    return load_model(converted, device="cpu", dtype="fp32")


def _frames(h, w, seed=0):
    """A smooth random frame and the same content shifted (a plausible previous frame)."""
    g = torch.Generator().manual_seed(seed)
    base = F.interpolate(torch.rand(1, 3, h // 4 + 3, w // 4 + 3, generator=g), size=(h + 12, w + 12),
                         mode="bicubic", align_corners=False).clamp(0, 1)
    cur = base[..., 6 : 6 + h, 6 : 6 + w].contiguous()
    prev = base[..., 4 : 4 + h, 9 : 9 + w].contiguous()
    return cur, prev


# -- tests ----------------------------------------------------------------------------------------
def test_reference_is_meaningful(reference):
    """Guards against a vacuous parity: LoRA deltas, flow and CFR all contribute."""
    cur, prev = _frames(72, 88)
    out = reference(cur, prev)
    assert reference.last["cfr"].abs().mean() > 1e-2
    assert reference.last["flow"].abs().max() > 1e-2
    assert ((out <= 0) | (out >= 1)).float().mean() < 0.1  # little is hidden by the final clamp
    assert (out - reference(cur, None)).abs().max() > 0.1  # the reference frame matters
    x = torch.randn(1, 8, 9, 11)
    with torch.no_grad():
        with_lora = reference.unet(x, torch.tensor([1]), encoder_hidden_states=reference.prompt).sample
        reference.unet.disable_adapters()
        try:
            without = reference.unet(x, torch.tensor([1]), encoder_hidden_states=reference.prompt).sample
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
    err = (got - expected).abs().max().item()
    assert err < TOL, f"max abs error {err:.3g} at {size}"


def test_parity_self_reference(reference, restorer):
    cur, _ = _frames(72, 88, seed=3)
    expected = reference(cur, None)
    got = restorer.restore(cur, None, color_fix="none", cfr="dense")
    err = (got - expected).abs().max().item()
    assert err < TOL, f"max abs error {err:.3g}"


def test_parity_batch_of_two(reference, restorer):
    c1, p1 = _frames(40, 56, seed=4)
    c2, p2 = _frames(40, 56, seed=5)
    cur, prev = torch.cat([c1, c2]), torch.cat([p1, p2])
    expected = reference(cur, prev)
    got = restorer.restore(cur, prev, color_fix="none", cfr="dense")
    err = (got - expected).abs().max().item()
    assert err < TOL, f"max abs error {err:.3g}"


def test_parity_components(reference, restorer):
    """Localise a mismatch: SPyNet flow and CFR residual of the loaded model against the reference."""
    from vsdloral.model.spynet import flow_warp

    g = torch.Generator().manual_seed(7)
    a = torch.rand(1, 3, 9, 11, generator=g) * 2 - 1
    b = torch.roll(a, shifts=(1, 1), dims=(2, 3))
    with torch.no_grad():
        assert (restorer.spynet(a, b) - ref_spynet(reference.bpp, a, b)).abs().max() < 1e-5
        flow = torch.randn(1, 2, 9, 11, generator=g)
        z = torch.randn(1, 4, 9, 11, generator=g)
        assert (flow_warp(z, flow) - ref_warp(z, flow)).abs().max() < 1e-6
        zc = torch.randn(1, 4, 9, 11, generator=g)
        assert (restorer.cfr(zc, z, "dense") - ref_cfr(reference.bpp, zc, z)).abs().max() < 1e-5
        assert (restorer.prompt_embeds - reference.prompt).abs().max() < 1e-6
