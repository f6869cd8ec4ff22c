"""Our default path vs processing a clip the way the authors' script does, same weights, same frames.

    python -m benchmarks.authors_style [--preset sd21|--model PATH] [--size 512x512] [--frames 3] [--json]

Authors' style, per output frame: both frames of the pair VAE-encoded again (every frame encoded
twice over a clip) with a *sampled* latent, the six LoRA adapters left unmerged in PEFT (zero-B
adapters on the merged weights: the same function, the adapter compute paid), dense CFR written
as plain tensor ops in one (HW)x(HW) block, VAE and UNet in PyTorch's default (NCHW) memory
format. Ours: one encode per frame (posterior mean, reused as the next reference), merged weights,
chunked and fused dense CFR, channels-last VAE/UNet. Reported: seconds per frame for each, the speed ratio, and the PSNR
between the two outputs (differences come from the sampled latents only).
"""

from __future__ import annotations

import copy
import math
import sys
import time

import torch
import torch.nn.functional as F

from .cfr import _real_pair
from .common import emit, model_file, parse_size, parser, setup_threads


def _authors_cfr(cfr, cur: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Dense CFR as plain tensor ops over all (HW)x(HW) pairs at once (SPEC section 2), same weights."""
    b, _, h, w = cur.shape
    c = cfr.config
    q = cfr.query_conv(cur).view(b, c.heads, c.head_dim, h * w).transpose(-1, -2)
    k = cfr.key_conv(ref).view(b, c.heads, c.head_dim, h * w)
    v = cfr.value_conv(ref).view(b, c.heads, c.head_dim, h * w).transpose(-1, -2)
    t = cfr.threshold_fc(q)                                        # (B, heads, N, 1)
    scores = torch.matmul(q, k) / math.sqrt(c.head_dim)
    att = torch.relu((scores - t) / c.temperature)
    out = torch.matmul(att, v).transpose(-1, -2).reshape(b, -1, h, w)
    return cfr.proj_out(out)


def _authors_frame(r, vae, lora_unet, cur: torch.Tensor, prev: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
    """One output frame the authors' way (SPEC section 1 with their choices); ``gen=None`` takes
    the posterior mean instead of a sample (to check that both paths compute the same function)."""
    from vsdloral.model.colorfix import adain_color_fix
    from vsdloral.model.temporal import flow_input, warp_reference

    f = r.factor
    h, w = cur.shape[-2:]
    hp, wp = math.ceil(h / f) * f, math.ceil(w / f) * f
    xs = [F.pad(2 * t.to(r.device) - 1, (0, wp - w, 0, hp - h), mode="replicate") for t in (cur, prev)]
    post = [vae.encode(x.to(r.dtype)).latent_dist for x in xs]  # two encodes
    z = [(p.mode() if gen is None else p.sample(gen)) * r.scaling_factor for p in post]
    small = [flow_input(x, (hp // f, wp // f), r.meta.cfr.flow_downscale) for x in xs]
    z_ref = warp_reference(r.spynet, small[0], small[1], z[1])
    z_cur = z[0] + _authors_cfr(r.cfr, z[0], z_ref)  # no chunking
    prompt = r.prompt_embeds.expand(z_cur.shape[0], -1, -1)
    eps = lora_unet(torch.cat([z_ref, z_cur], 1), r._timestep, encoder_hidden_states=prompt).sample
    y = vae.decode((z_cur - eps) / r.scaling_factor).sample.float().clamp(-1, 1)
    y = (y[..., :h, :w] + 1) / 2
    return adain_color_fix(y, cur.to(y.device)).clamp(0, 1)


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--model", default=None)
    p.add_argument("--preset", default="sd21")
    p.add_argument("--size", default="512x512")
    p.add_argument("--frames", type=int, default=3)
    a = p.parse_args(argv)
    setup_threads(a.threads)
    import vsdloral
    from training.lora import inject

    path = a.model or model_file("tiny" if a.smoke else a.preset)
    size = "96x64" if a.smoke else a.size
    w, h = parse_size(size)
    n = 2 if a.smoke else a.frames
    r = vsdloral.load_model(path, device=a.device)
    lora_unet = copy.deepcopy(r.unet)
    inject(lora_unet)  # six adapters, B = 0: same function, unmerged compute
    lora_unet.to(r.device, r.dtype, memory_format=torch.contiguous_format).eval().requires_grad_(False)
    vae = copy.deepcopy(r.vae).to(memory_format=torch.contiguous_format)  # the authors' modules: default NCHW
    cur, ref = _real_pair(w, h)
    # a short clip: the pair plus small shifts of it
    clip = [ref, cur] + [torch.roll(cur, shifts=(k, k), dims=(2, 3)) for k in range(1, n)]
    gen = torch.Generator(device=r.device).manual_seed(0)

    with torch.inference_mode():
        _authors_frame(r, vae, lora_unet, clip[1], clip[0], gen)  # warm-up both paths
        r.restore(clip[1], clip[0])
        t0 = time.perf_counter()
        theirs = [_authors_frame(r, vae, lora_unet, clip[i], clip[i - 1], gen) for i in range(1, len(clip))]
        t_authors = (time.perf_counter() - t0) / (len(clip) - 1)
        enc0 = r.stats["vae_encodes"]
        t0 = time.perf_counter()
        prepared = r.prepare(clip[0])
        ours = []
        for i in range(1, len(clip)):
            cur_p = r.prepare(clip[i])
            ours.append(r.restore_prepared(cur_p, prepared, cfr="dense", color_fix="adain"))
            prepared = cur_p
        t_ours = (time.perf_counter() - t0) / (len(clip) - 1)
        encodes = (r.stats["vae_encodes"] - enc0) / (len(clip) - 1)
        same_fn = _authors_frame(r, vae, lora_unet, clip[-1], clip[-2], None)  # mean latents
    mse = float(torch.stack([((a_ - b_) ** 2).mean() for a_, b_ in zip(theirs, ours)]).mean())
    same_fn_diff = (same_fn - ours[-1]).abs().max().item()
    result = {
        "model": str(path), "device": str(r.device), "dtype": str(r.dtype).replace("torch.", ""), "size": size,
        "frames": len(clip) - 1, "authors_seconds_per_frame": t_authors, "ours_seconds_per_frame": t_ours,
        "speedup": t_authors / t_ours, "ours_vae_encodes_per_frame": encodes, "authors_vae_encodes_per_frame": 2.0,
        "psnr_between_outputs_db": math.inf if mse == 0 else 10 * math.log10(1 / mse),
        "max_abs_diff_with_mean_latents": same_fn_diff,
    }

    def table(res):
        return "\n".join([
            f"{res['model']} at {res['size']} on {res['device']} ({res['dtype']}), {res['frames']} frames",
            f"authors' style: {res['authors_seconds_per_frame']:.3f} s/frame (2 VAE encodes/frame, unmerged LoRA, unchunked CFR, sampled latents)",
            f"ours:           {res['ours_seconds_per_frame']:.3f} s/frame ({res['ours_vae_encodes_per_frame']:.2f} VAE encodes/frame)",
            f"speed-up:       {res['speedup']:.2f}x   PSNR between outputs: {res['psnr_between_outputs_db']:.2f} dB",
            f"same function:  max |authors - ours| with the posterior mean instead of a sample: "
            f"{res['max_abs_diff_with_mean_latents']:.2e}",
        ])

    emit(result, a.json, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
