"""Per-stage time, FLOPs, achieved FLOP/s and peak memory of the restoration pipeline.

    python -m benchmarks.pipeline [--presets sd21,default] [--sizes 256x256,512x512,1280x720,1920x1080] [--json]

Each (preset, size) runs in its own process so its peak RSS is its own. Times are the median of
``--reps`` sequential frames after one warm-up frame (each frame: one VAE encode of the new frame,
reference reused, as in a sequential render). FLOPs come from torch's FlopCounterMode (taught
the CPU flash-attention kernel, which it does not count by itself); the peak is a
large matmul in the runs' dtype, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch

from .common import dtype_name, emit, matmul_peak_flops, model_file, parse_size, parser, run_isolated, setup_threads

STAGES = ("vae_encode", "flow", "cfr", "unet", "vae_decode", "color_fix")
FLOP_MODULES = {"Encoder": "vae_encode", "SPyNet": "flow", "CrossFrameRetrieval": "cfr",
                "UNet2DConditionModel": "unet", "Decoder": "vae_decode", "LatentSRDecoder": "vae_decode"}


def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *_args, out_shape=None, **_kwargs) -> int:
    """FLOPs of PyTorch's CPU flash attention, which FlopCounterMode does not know (its CUDA
    kernels it does): the same count as theirs, QK^T plus AV."""
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def measure_one(preset: str, size: str, device: str | None, dtype: str | None, reps: int, cfr: str | None,
                tile: int | None) -> dict:
    """Run in the child process: load, warm up, time stages, count FLOPs."""
    import vsdloral
    from torch.utils.flop_counter import FlopCounterMode

    w, h = parse_size(size)
    r = vsdloral.load_model(model_file(preset), device=device, dtype=dtype)
    g = torch.Generator().manual_seed(0)
    frames = [torch.rand(1, 3, h, w, generator=g) for _ in range(reps + 2)]
    kw = dict(tile=tile, tile_overlap=None)  # None: the model's own default overlap
    prev = r.prepare(frames[0], **kw)
    cur = r.prepare(frames[1], **kw)
    r.restore_prepared(cur, prev, cfr=cfr, **kw)  # warm-up
    per_frame = []
    for f in frames[2:]:
        r.timings = {}
        prev, cur = cur, r.prepare(f, **kw)
        r.restore_prepared(cur, prev, cfr=cfr, **kw)
        per_frame.append(r.timings)
    r.timings = None
    stage_s = {s: statistics.median(t.get(s, 0.0) for t in per_frame) for s in STAGES}
    cpu_sdpa = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    with FlopCounterMode(display=False, custom_mapping={cpu_sdpa: _cpu_sdpa_flop}) as fc:
        prev, cur = cur, r.prepare(frames[0], **kw)
        r.restore_prepared(cur, prev, cfr=cfr, **kw)
    counts = fc.get_flop_counts()
    flops = dict.fromkeys(FLOP_MODULES.values(), 0)
    for mod, stage in FLOP_MODULES.items():  # several modules may count for one stage (both decoders)
        flops[stage] += sum(counts.get(mod, {}).values())
    total_s = sum(stage_s.values())
    return {
        "preset": preset, "size": size, "device": str(r.device), "dtype": dtype_name(r.dtype),
        "cfr": cfr or r.meta.cfr.mode, "tile": tile, "seconds_per_frame": total_s, "fps": 1.0 / total_s if total_s else None,
        "stage_seconds": stage_s, "stage_gflops": {k: v / 1e9 for k, v in flops.items()},
        "stage_gflops_per_s": {k: (flops[k] / stage_s[k] / 1e9 if stage_s.get(k) else None) for k in flops},
        "vae_encodes_per_frame": r.stats["vae_encodes"] / max(1, r.stats["frames"]),
    }


def table(res: dict) -> str:
    lines = [f"matmul peak: {res['matmul_peak_gflops']:.1f} GFLOP/s ({res['device']}, {res['matmul_peak_dtype']})", ""]
    head = f"{'preset':8} {'size':>10} {'s/frame':>8} {'fps':>6} {'RSS MB':>8}  " + "  ".join(f"{s:>10}" for s in STAGES)
    lines += [head, "-" * len(head)]
    for r in res["runs"]:
        if "error" in r:
            lines.append(f"{r.get('preset', '?'):8} {r.get('size', '?'):>10}  {r['error']}")
            continue
        st = "  ".join(f"{r['stage_seconds'][s]:10.3f}" for s in STAGES)
        lines.append(f"{r['preset']:8} {r['size']:>10} {r['seconds_per_frame']:8.3f} {r['fps']:6.2f} {r['peak_rss_mb']:8.0f}  {st}")
    lines += ["", "achieved GFLOP/s per stage (and % of matmul peak):"]
    for r in res["runs"]:
        if "error" in r:
            continue
        parts = []
        for k, v in r["stage_gflops_per_s"].items():
            if v:
                parts.append(f"{k} {v:.1f} ({100 * v / res['matmul_peak_gflops']:.0f}%)")
        lines.append(f"  {r['preset']} {r['size']}: " + ", ".join(parts))
        lines.append(f"    GFLOPs/frame: " + ", ".join(f"{k} {v:.2f}" for k, v in r["stage_gflops"].items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--presets", default="sd21,default", help="comma list: tiny, sd21, default")
    p.add_argument("--sizes", default="256x256,512x512,1280x720,1920x1080")
    p.add_argument("--dtype", default=None)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--cfr", default=None, help="dense, topk or window (default: each model's trained mode)")
    p.add_argument("--tile", type=int, default=None)
    p.add_argument("--single", nargs=2, metavar=("PRESET", "SIZE"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    setup_threads(a.threads)
    if a.single:
        print(json.dumps(measure_one(a.single[0], a.single[1], a.device, a.dtype, a.reps, a.cfr, a.tile)))
        return 0
    from vsdloral.loading import resolve_device, resolve_dtype

    device = resolve_device(a.device)
    presets = ["tiny"] if a.smoke else a.presets.split(",")
    sizes = ["64x64", "96x64"] if a.smoke else a.sizes.split(",")
    runs = []
    for preset in presets:
        if preset == "default":
            from vsdloral.loading import DEFAULT_MODEL_PATH

            if not DEFAULT_MODEL_PATH.is_file():
                print("default model not bundled; skipping it", file=sys.stderr)
                continue
        model_file(preset)  # build once in the parent, not in each child
        for size in sizes:
            args = ["--single", preset, size, "--reps", str(1 if a.smoke else a.reps)]
            for flag, val in (("--device", a.device), ("--dtype", a.dtype), ("--threads", a.threads), ("--tile", a.tile),
                              ("--cfr", a.cfr)):
                if val is not None:
                    args += [flag, str(val)]
            print(f"pipeline: {preset} {size} ...", file=sys.stderr)
            res = run_isolated("benchmarks.pipeline", args)
            res.setdefault("preset", preset)
            res.setdefault("size", size)
            runs.append(res)
    dtype = resolve_dtype(a.dtype, device)  # the runs' dtype: the peak is measured in the same one
    result = {"device": str(device), "matmul_peak_gflops": matmul_peak_flops(device, dtype) / 1e9,
              "matmul_peak_dtype": dtype_name(dtype), "runs": runs}
    emit(result, a.json, table)
    return 0 if all("error" not in r for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
