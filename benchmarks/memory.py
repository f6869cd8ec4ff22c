"""Peak memory of one sequential restoration step at a given size and tiling.

    python -m benchmarks.memory [--preset sd21] [--sizes 1920x1080] [--tiles 512] [--json]

Each (size, tile) runs in its own process (peak RSS is per process): load the model, encode the
reference and the current frame, restore once, as a sequential render does per frame. Cheaper than
``benchmarks.pipeline`` (one frame, no warm-up, no FLOP count), so it can answer "does a 1080p
frame of the SD 2.1-sized model fit in N GB with tile T" on a slow CPU. Reports the peak RSS of the
process, the RSS after loading (weights and runtime), and the step's wall time. On CUDA it also
reports ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import torch

from .common import dtype_name, emit, model_file, parse_size, parser, run_isolated, setup_threads


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_one(preset: str, size: str, tile: int, device: str | None, dtype: str | None) -> dict:
    """Run in the child: one reference + one current frame, one restore; ``tile`` is both the
    latent tile and ``vae_tile``; ``tile=0``: untiled."""
    import vsdloral

    w, h = parse_size(size)
    r = vsdloral.load_model(model_file(preset), device=device, dtype=dtype)
    loaded = _rss_mb()
    g = torch.Generator().manual_seed(0)
    frames = [torch.rand(1, 3, h, w, generator=g) for _ in range(2)]
    # tile T bounds both stages: the authors' latent tiles and the VAE's own tiles (vae_tile, which
    # tile= alone no longer switches on); tile 0: both untiled
    kw = dict(tile=tile, tile_overlap=None, vae_tile=tile)
    if r.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    ref = r.prepare(frames[0], **kw)
    cur = r.prepare(frames[1], **kw)
    out = r.restore_prepared(cur, ref, **kw)
    if r.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    res = {"preset": preset, "size": size, "tile": tile, "device": str(r.device),
           "dtype": dtype_name(r.dtype), "seconds": seconds, "loaded_rss_mb": round(loaded, 1),
           "output_shape": list(out.shape)}
    if r.device.type == "cuda":
        res["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return res


def table(res: dict) -> str:
    head = f"{'preset':8} {'size':>10} {'tile':>6} {'peak RSS MB':>12} {'after load MB':>14} {'step s':>8}"
    lines = [head, "-" * len(head)]
    for r in res["runs"]:
        if "error" in r:
            lines.append(f"{r.get('preset', '?'):8} {r.get('size', '?'):>10} {r.get('tile', '?'):>6}  {r['error']}")
            continue
        lines.append(f"{r['preset']:8} {r['size']:>10} {r['tile'] or 'off':>6} {r['peak_rss_mb']:12.0f} "
                     f"{r['loaded_rss_mb']:14.0f} {r['seconds']:8.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--preset", default="sd21", help="tiny, sd21 or default")
    p.add_argument("--sizes", default="1920x1080")
    p.add_argument("--tiles", default="512", help="comma list of tile sizes in output pixels; 0 = untiled")
    p.add_argument("--dtype", default=None)
    p.add_argument("--single", nargs=3, metavar=("PRESET", "SIZE", "TILE"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    setup_threads(a.threads)
    if a.single:
        print(json.dumps(measure_one(a.single[0], a.single[1], int(a.single[2]), a.device, a.dtype)))
        return 0
    preset = "tiny" if a.smoke else a.preset
    sizes = ["96x64"] if a.smoke else a.sizes.split(",")
    tiles = ["0", "64"] if a.smoke else a.tiles.split(",")
    model_file(preset)  # build once in the parent
    runs = []
    for size in sizes:
        for tile in tiles:
            args = ["--single", preset, size, tile]
            for flag, val in (("--device", a.device), ("--dtype", a.dtype), ("--threads", a.threads)):
                if val is not None:
                    args += [flag, str(val)]
            print(f"memory: {preset} {size} tile {tile} ...", file=sys.stderr)
            res = run_isolated("benchmarks.memory", args)
            res.update(preset=preset, size=size, tile=int(tile))
            runs.append(res)
    emit({"runs": runs}, a.json, table)
    return 0 if all("error" not in r for r in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
