"""Eager vs ``torch.compile`` (``load_model(..., compile=True)``): compile time, speed, output difference.

    python -m benchmarks.compile [--preset default] [--size 1280x720] [--tile 0] [--reps 3] [--json]

Both restorers load the same weights and restore the same frames (sequential: each frame encoded
once, the previous one as reference). The compiled restorer's first frame includes the compile
time (reported as ``first_frame_s``); the steady figures are medians over ``--reps`` frames after
it. ``max_abs_diff`` is between the eager and compiled outputs of the same frame.
"""

from __future__ import annotations

import statistics
import time

import torch

from .common import dtype_name, emit, model_file, parse_size, parser, setup_threads


def _run(r, frames: list[torch.Tensor], tile: int | None) -> tuple[float, list[float], torch.Tensor]:
    kw = dict(tile=tile, tile_overlap=None)
    t0 = time.perf_counter()
    prev = r.prepare(frames[0], **kw)
    cur = r.prepare(frames[1], **kw)
    r.restore_prepared(cur, prev, **kw)
    first = time.perf_counter() - t0
    times, out = [], None
    for f in frames[2:]:
        t0 = time.perf_counter()
        prev, cur = cur, r.prepare(f, **kw)
        out = r.restore_prepared(cur, prev, **kw)
        times.append(time.perf_counter() - t0)
    return first, times, out


def table(res: dict) -> str:
    e, c = res["eager"], res["compiled"]
    return "\n".join([
        f"{res['preset']} {res['size']} tile={res['tile']} ({res['device']}, {res['dtype']})",
        f"  eager:    first frame {e['first_frame_s']:7.2f} s, then {e['seconds_per_frame']:.3f} s/frame",
        f"  compiled: first frame {c['first_frame_s']:7.2f} s (includes compiling), then {c['seconds_per_frame']:.3f} s/frame",
        f"  speed-up (steady): {res['speedup']:.2f}x; max |eager - compiled| = {res['max_abs_diff']:.2e}",
    ])


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--preset", default="default", help="tiny, lite, sd21 or default (the bundled model)")
    p.add_argument("--size", default="1280x720")
    p.add_argument("--tile", type=int, default=0, help="tile size in output pixels; 0 = untiled (default)")
    p.add_argument("--dtype", default=None)
    p.add_argument("--reps", type=int, default=3)
    a = p.parse_args(argv)
    setup_threads(a.threads)
    import vsdloral

    preset = "tiny" if a.smoke else a.preset
    w, h = parse_size("64x48" if a.smoke else a.size)
    reps = 1 if a.smoke else a.reps
    g = torch.Generator().manual_seed(0)
    frames = [torch.rand(1, 3, h, w, generator=g) for _ in range(reps + 2)]
    path = model_file(preset)
    results = {}
    outs = {}
    for name, comp in (("eager", False), ("compiled", True)):
        r = vsdloral.load_model(path, device=a.device, dtype=a.dtype, compile=comp)
        first, times, outs[name] = _run(r, frames, a.tile)
        results[name] = {"first_frame_s": first, "seconds_per_frame": statistics.median(times)}
    res = {"preset": preset, "size": f"{w}x{h}", "tile": a.tile, "device": str(r.device),
           "dtype": dtype_name(r.dtype), **results,
           "speedup": results["eager"]["seconds_per_frame"] / results["compiled"]["seconds_per_frame"],
           "compile_overhead_s": results["compiled"]["first_frame_s"] - results["eager"]["first_frame_s"],
           "max_abs_diff": (outs["eager"] - outs["compiled"]).abs().max().item()}
    emit(res, a.json, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
