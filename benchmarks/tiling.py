"""The authors' latent tiles against our dense option: how far apart, and what each costs.

    python -m benchmarks.tiling [--sizes 1280x720,1920x1080] [--speed-preset sd21] [--speed-size 1280x720]
                                [--frames 1] [--skip-speed] [--json]

Part 1, difference (the authors'-format fixture of tests/authors_format.py: a tiny SD-like model
with random weights in the authors' checkpoint layout, converted by ``vsdloral convert``): frames 40
and 41 of the bundled bikes clip at each output size, restored (a) with the converted weights' own
tiling, the authors' 96/32 latent tiles (``tile=None``), and (b) densely (``tile=0``: flow, CFR and
UNet over the whole latent, the path vsdloral took before). Reported: max and mean abs difference
of the outputs (colour fix off, fp32), the number of tiles.

Part 2, speed (``--speed-preset``, random weights of that preset; sd21 is SD 2.1's shape): one
pair prepared once (the VAE encode is the same for both paths), then ``restore_prepared`` timed
densely and with 768/256 tiles, stage by stage (``Restorer.timings``), with the UNet's latent
positions (tiles overlap, so the tiled path runs the UNet on more positions) and the machine's
load average before and after (the CPU may be shared).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

from .common import CACHE, dtype_name, emit, model_file, parse_size, parser, setup_threads

ROOT = Path(__file__).resolve().parent.parent


def _fixture() -> Path:
    """The authors'-format fixture converted to a vsdloral file (built once, cached)."""
    out = CACHE / "authors-fixture" / "converted.safetensors"
    if out.is_file():
        return out
    sys.path.insert(0, str(ROOT / "tests"))
    from authors_format import make_authors_checkpoint, make_sd_base

    from vsdloral.convert import convert

    root = out.parent
    root.mkdir(parents=True, exist_ok=True)
    print(f"building the authors'-format fixture in {root}", file=sys.stderr)
    sd = make_sd_base(root / "sd-base", seed=1)
    ck = make_authors_checkpoint(root / "model.pkl", seed=2)
    convert(sd, ck, out, force=True)
    return out


def _pair(w: int, h: int) -> tuple[torch.Tensor, torch.Tensor]:
    from .cfr import _real_pair

    return _real_pair(w, h)


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def difference(sizes: list[tuple[int, int]], tile: int | None, overlap: int | None, device: str | None) -> list[dict]:
    """Part 1: the authors' tiles vs dense on the fixture, fp32, colour fix off."""
    import vsdloral

    r = vsdloral.load_model(_fixture(), device=device, dtype="fp32")
    rows = []
    for w, h in sizes:
        cur, ref = _pair(w, h)
        pc, pr = r.prepare(cur), r.prepare(ref)
        n0 = r.stats["unet_calls"]
        tiled, t_tiled = _timed(lambda: r.restore_prepared(pc, pr, color_fix="none", tile=tile, tile_overlap=overlap))
        n_tiles = r.stats["unet_calls"] - n0
        dense, t_dense = _timed(lambda: r.restore_prepared(pc, pr, color_fix="none", tile=0))
        d = (tiled - dense).abs()
        rows.append({"size": f"{w}x{h}", "tiles": n_tiles, "max_abs": float(d.max()), "mean_abs": float(d.mean()),
                     "tiled_s": round(t_tiled, 3), "dense_s": round(t_dense, 3)})
        print(f"tiling: fixture {w}x{h}: max {rows[-1]['max_abs']:.4f} mean {rows[-1]['mean_abs']:.5f}", file=sys.stderr)
    return rows


def _positions(r, lat_hw: tuple[int, int], tile: int | None, overlap: int) -> int:
    """Latent positions the UNet sees for one frame (the sum of the tiles' areas)."""
    from vsdloral.model import latent_tiles as lt

    h, w = lat_hw
    f = r.factor
    if not tile or not lt.needs_tiles(h, w, tile // f):
        return h * w
    side = lt.tile_side(h, w, tile // f)
    return side * side * len(lt.tile_grid(h, w, side, lt.effective_overlap(side, overlap // f)))


def speed(preset: str, size: tuple[int, int], tile: int, overlap: int, frames: int, device: str | None) -> dict:
    """Part 2: seconds per frame of the latent stage + decode, dense vs tiled, one prepared pair."""
    import vsdloral

    r = vsdloral.load_model(model_file(preset), device=device)
    w, h = size
    cur, ref = _pair(w, h)
    load_before = os.getloadavg()
    r.timings = {}
    pc, pr = r.prepare(cur), r.prepare(ref)
    encode_s = r.timings.pop("vae_encode", 0.0) / 2
    out = {"preset": preset, "size": f"{w}x{h}", "device": str(r.device), "dtype": dtype_name(r.dtype),
           "threads": torch.get_num_threads(), "frames": frames, "encode_s_per_frame": round(encode_s, 3), "paths": {}}
    for name, t, o in (("dense", 0, 0), ("tiled", tile, overlap)):
        r.timings = {}
        t0 = time.perf_counter()
        for _ in range(frames):
            r.restore_prepared(pc, pr, color_fix="none", tile=t, tile_overlap=o)
        total = (time.perf_counter() - t0) / frames
        lat = tuple(pc.latent.shape[-2:])
        out["paths"][name] = {"tile": t, "overlap": o, "s_per_frame": round(total, 3),
                              "stages_s": {k: round(v / frames, 3) for k, v in r.timings.items()},
                              "unet_positions": _positions(r, lat, t, o)}
        print(f"tiling: {preset} {w}x{h} {name}: {total:.2f} s/frame", file=sys.stderr)
    r.timings = None
    out["load_avg_before"] = [round(x, 2) for x in load_before]
    out["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
    d, t = out["paths"]["dense"], out["paths"]["tiled"]
    out["tiled_over_dense"] = round(t["s_per_frame"] / d["s_per_frame"], 3)
    out["unet_positions_ratio"] = round(t["unet_positions"] / d["unet_positions"], 3)
    return out


def _table(res: dict) -> str:
    lines = ["authors' latent tiles vs dense, fixture (fp32, colour fix off):",
             f"{'size':>10} {'tiles':>6} {'max abs':>9} {'mean abs':>9} {'tiled s':>8} {'dense s':>8}"]
    for r in res["difference"]:
        lines.append(f"{r['size']:>10} {r['tiles']:6d} {r['max_abs']:9.4f} {r['mean_abs']:9.5f} "
                     f"{r['tiled_s']:8.2f} {r['dense_s']:8.2f}")
    s = res.get("speed")
    if s:
        lines.append(f"speed, {s['preset']} {s['size']} on {s['device']} {s['dtype']} ({s['threads']} threads, "
                     f"load {s['load_avg_before'][0]} -> {s['load_avg_after'][0]}); encode {s['encode_s_per_frame']} s/frame:")
        for name, p in s["paths"].items():
            stages = ", ".join(f"{k} {v}" for k, v in p["stages_s"].items())
            lines.append(f"  {name:6} tile {p['tile']}/{p['overlap']}: {p['s_per_frame']} s/frame "
                         f"(UNet positions {p['unet_positions']}; {stages})")
        lines.append(f"  tiled / dense: {s['tiled_over_dense']}x time, {s['unet_positions_ratio']}x UNet positions")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1280x720,1920x1080", help="output sizes of part 1 (comma list)")
    p.add_argument("--speed-preset", default="sd21", help="preset timed in part 2 (random weights)")
    p.add_argument("--speed-size", default="1280x720")
    p.add_argument("--frames", type=int, default=1, help="restores timed per path in part 2")
    p.add_argument("--skip-speed", action="store_true", help="part 1 only")
    a = p.parse_args(argv)
    setup_threads(a.threads)
    if a.smoke:  # tiny sizes, tiles small enough to tile them (32/8 px: 4/1 latent positions)
        sizes, tile, overlap = [(128, 72)], 32, 8
        preset, speed_size = "tiny", (128, 72)
    else:
        sizes = [parse_size(s) for s in a.sizes.split(",") if s]
        tile, overlap = None, None  # the converted weights' own: the authors' 768/256
        preset, speed_size = a.speed_preset, parse_size(a.speed_size)
    res = {"difference": difference(sizes, tile, overlap, a.device)}
    if not a.skip_speed:
        res["speed"] = speed(preset, speed_size, tile or 768, overlap or 256, a.frames, a.device)
    emit(res, a.json, _table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
