"""Our default path vs processing a clip the way the authors' script does, same weights, same frames.

    python -m benchmarks.authors_style [--preset sd21|--model PATH] [--size 512x512] [--frames 3]
                                       [--authors-dtype fp32] [--json]

Authors' style, per output frame: both frames of the pair VAE-encoded again (every frame encoded
twice over a clip) with a *sampled* latent, the six LoRA adapters left unmerged in PEFT (zero-B
adapters on the merged weights: the same function, the adapter compute paid), dense CFR written
as plain tensor ops in one (HW)x(HW) block, VAE and UNet in PyTorch's default (NCHW) memory
format. Ours: one encode per frame (posterior mean, reused as the next reference), merged weights,
chunked and fused dense CFR, channels-last VAE/UNet, in our default dtype for the device.

Precision: the authors' script runs in its ``--mixed_precision`` dtype (fp16 by default, on CUDA
only). On a CPU fp16 has no hardware path (a 3x3 conv measured ~350x slower than fp32 here), so
their script on a CPU means fp32: ``--authors-dtype`` defaults to fp32 on CPU and fp16 on CUDA.
The baseline is also run in *our* dtype when that differs, so the same-precision ratio is
reported beside the headline one. Reported: seconds per frame for each, the speed ratios, and the
PSNR between the outputs (differences come from the sampled latents and the precision).
"""

from __future__ import annotations

import copy
import math
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .cfr import _real_pair
from .common import dtype_name, emit, model_file, parse_size, parser, setup_threads


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


@dataclass
class AuthorsModules:
    """The baseline's own copies of the modules, in the authors' layout and one dtype."""

    dtype: torch.dtype
    vae: torch.nn.Module
    lora_unet: torch.nn.Module
    cfr: torch.nn.Module
    prompt_embeds: torch.Tensor

    @classmethod
    def build(cls, r, dtype: torch.dtype) -> AuthorsModules:
        from training.lora import inject
        from vsdloral.model.restorer import _quiet_diffusers

        lora_unet = copy.deepcopy(r.unet)
        inject(lora_unet)  # six adapters, B = 0: same function, unmerged compute
        # the authors' modules: default NCHW
        with _quiet_diffusers():  # its dtype-cast advice is for training
            lora_unet.to(r.device, dtype, memory_format=torch.contiguous_format).eval().requires_grad_(False)
            vae = copy.deepcopy(r.vae).to(r.device, dtype, memory_format=torch.contiguous_format)
        cfr = copy.deepcopy(r.cfr).to(r.device, dtype)
        return cls(dtype, vae, lora_unet, cfr, r.prompt_embeds.to(dtype))


def _authors_frame(r, m: AuthorsModules, cur: torch.Tensor, prev: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
    """One output frame the authors' way (SPEC section 1 with their choices) with ``r``'s flow
    network and constants; ``gen=None`` takes the posterior mean instead of a sample (to check
    that both paths compute the same function)."""
    from vsdloral.model.colorfix import adain_color_fix
    from vsdloral.model.decoders import decode_latents
    from vsdloral.model.temporal import flow_input, warp_reference

    f = r.factor
    h, w = cur.shape[-2:]
    hp, wp = math.ceil(h / f) * f, math.ceil(w / f) * f
    xs = [F.pad(2 * t.to(r.device) - 1, (0, wp - w, 0, hp - h), mode="replicate") for t in (cur, prev)]
    post = [m.vae.encode(x.to(m.dtype)).latent_dist for x in xs]  # two encodes
    z = [(p.mode() if gen is None else p.sample(gen)) * r.scaling_factor for p in post]
    small = [flow_input(x, (hp // f, wp // f), r.meta.cfr.flow_downscale) for x in xs]
    z_ref = warp_reference(r.spynet, small[0], small[1], z[1])
    z_ref = z_ref.to(m.dtype)
    z_cur = z[0] + _authors_cfr(m.cfr, z[0], z_ref)  # no chunking
    prompt = m.prompt_embeds.expand(z_cur.shape[0], -1, -1)
    eps = m.lora_unet(torch.cat([z_ref, z_cur], 1), r.net.timestep, encoder_hidden_states=prompt).sample
    y = decode_latents(m.vae, (z_cur - eps) / r.scaling_factor, xs[0].to(m.dtype)).float().clamp(-1, 1)
    y = (y[..., :h, :w] + 1) / 2
    return adain_color_fix(y, cur.to(y.device)).clamp(0, 1)


def _time_authors(r, m: AuthorsModules, clip: list[torch.Tensor], gen: torch.Generator) -> tuple[float, list[torch.Tensor]]:
    _authors_frame(r, m, clip[1], clip[0], gen)  # warm-up
    t0 = time.perf_counter()
    outs = [_authors_frame(r, m, clip[i], clip[i - 1], gen) for i in range(1, len(clip))]
    return (time.perf_counter() - t0) / (len(clip) - 1), outs


def _psnr(xs: list[torch.Tensor], ys: list[torch.Tensor]) -> float:
    mse = float(torch.stack([((a - b) ** 2).mean() for a, b in zip(xs, ys)]).mean())
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--model", default=None)
    p.add_argument("--preset", default="sd21")
    p.add_argument("--size", default="512x512")
    p.add_argument("--frames", type=int, default=3)
    p.add_argument("--dtype", default=None, help="our dtype (default: the device's default, as load_model)")
    p.add_argument("--authors-dtype", default=None,
                   help="the baseline's dtype (default: fp32 on CPU, fp16 on CUDA: what their script can run in)")
    a = p.parse_args(argv)
    setup_threads(a.threads)
    import vsdloral
    from vsdloral.loading import resolve_dtype

    path = a.model or model_file("tiny" if a.smoke else a.preset)
    size = "96x64" if a.smoke else a.size
    w, h = parse_size(size)
    n = 2 if a.smoke else a.frames
    r = vsdloral.load_model(path, device=a.device, dtype=a.dtype)
    authors_dtype = resolve_dtype(a.authors_dtype or ("fp16" if r.device.type == "cuda" else "fp32"), r.device)
    cur, ref = _real_pair(w, h)
    # a short clip: the pair plus small shifts of it
    clip = [ref, cur] + [torch.roll(cur, shifts=(k, k), dims=(2, 3)) for k in range(1, n)]
    gen = torch.Generator(device=r.device).manual_seed(0)

    with torch.inference_mode():
        r.restore(clip[1], clip[0])  # warm-up
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

        baselines = []
        for dt in dict.fromkeys([authors_dtype, r.dtype]):  # the authors' dtype, then ours if it differs
            m = AuthorsModules.build(r, dt)
            t_authors, theirs = _time_authors(r, m, clip, gen)
            row = {"dtype": dtype_name(dt), "seconds_per_frame": t_authors, "speedup": t_authors / t_ours,
                   "psnr_vs_ours_db": _psnr(theirs, ours)}
            if dt == r.dtype:  # same function check: mean latents, same precision as ours
                same_fn = _authors_frame(r, m, clip[-1], clip[-2], None)
                row["max_abs_diff_with_mean_latents"] = (same_fn - ours[-1]).abs().max().item()
            baselines.append(row)
            del m
            print(f"authors_style: baseline {row['dtype']} {t_authors:.3f} s/frame", file=sys.stderr)
    head = baselines[0]
    same = next(b for b in baselines if b["dtype"] == dtype_name(r.dtype))
    result = {
        "model": str(path), "device": str(r.device), "dtype": dtype_name(r.dtype), "size": size,
        "frames": len(clip) - 1, "authors_dtype": head["dtype"],
        "authors_seconds_per_frame": head["seconds_per_frame"], "ours_seconds_per_frame": t_ours,
        "speedup": head["speedup"], "speedup_same_dtype": same["speedup"],
        "ours_vae_encodes_per_frame": encodes, "authors_vae_encodes_per_frame": 2.0,
        "psnr_between_outputs_db": head["psnr_vs_ours_db"],
        "max_abs_diff_with_mean_latents": same["max_abs_diff_with_mean_latents"],
        "baselines": baselines,
    }

    def table(res):
        lines = [f"{res['model']} at {res['size']} on {res['device']}, {res['frames']} frames",
                 f"ours ({res['dtype']}):{'':<6}{res['ours_seconds_per_frame']:.3f} s/frame "
                 f"({res['ours_vae_encodes_per_frame']:.2f} VAE encodes/frame)"]
        for b in res["baselines"]:
            lines.append(f"authors' style ({b['dtype']}): {b['seconds_per_frame']:.3f} s/frame -> ours is "
                         f"{b['speedup']:.2f}x faster; PSNR between outputs {b['psnr_vs_ours_db']:.2f} dB")
        lines.append("  (authors' style: 2 VAE encodes/frame, unmerged LoRA, unchunked CFR, sampled latents)")
        lines.append(f"same function: max |authors - ours| at {res['dtype']} with the posterior mean instead of a "
                     f"sample: {res['max_abs_diff_with_mean_latents']:.2e}")
        return "\n".join(lines)

    emit(result, a.json, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
