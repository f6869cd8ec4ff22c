"""CFR modes: time, peak memory and deviation from dense at growing latent sizes.

    python -m benchmarks.cfr [--model PATH|--preset sd21] [--sizes 512x512,1280x720,1920x1080,3840x2160] [--json]

Latents are those of real frames (a sample clip, upscaled bicubically to each size and encoded by the
model's VAE), the reference warped by the model's SPyNet, so the deviation figures reflect real
content with the given weights. Dense runs in query chunks; its memory is bounded by the chunk size.
"""

from __future__ import annotations

import sys
import time

import torch
import torch.nn.functional as F

from .common import emit, model_file, parse_size, parser, setup_threads

MODES = (("dense", {}), ("window", {"window": 2}), ("window", {"window": 4}), ("window", {"window": 8}),
         ("topk", {"topk": 64}))


def _real_pair(w: int, h: int) -> tuple[torch.Tensor, torch.Tensor]:
    import av

    from vsdloral.samples import sample_video

    with av.open(str(sample_video("bikes.mp4"))) as c:
        frames = []
        for i, fr in enumerate(c.decode(video=0)):
            if i >= 40:
                frames.append(torch.from_numpy(fr.to_ndarray(format="rgb24")).permute(2, 0, 1).float() / 255)
            if len(frames) == 2:
                break
    pair = torch.stack(frames)
    pair = F.interpolate(pair, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1)
    return pair[1:2], pair[0:1]


def _peak_bytes(fn, device) -> tuple[float, int, torch.Tensor]:
    """Time ``fn``: (seconds, peak allocated bytes on CUDA or -1 on CPU, where torch has no
    allocator counter, its result)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    dt = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else -1
    return dt, peak, out


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="weights file (default: --preset random weights)")
    p.add_argument("--preset", default="sd21")
    p.add_argument("--sizes", default="512x512,1280x720,1920x1080,3840x2160")
    p.add_argument("--max-dense-positions", type=int, default=40000,
                   help="skip dense above this many latent positions (it is O(N^2))")
    a = p.parse_args(argv)
    setup_threads(a.threads)
    import vsdloral
    from vsdloral.model.temporal import warp_reference

    path = a.model or model_file("tiny" if a.smoke else a.preset)
    r = vsdloral.load_model(path, device=a.device)
    sizes = ["128x96"] if a.smoke else a.sizes.split(",")
    runs = []
    for size in sizes:
        w, h = parse_size(size)
        cur, ref = _real_pair(w, h)
        pc, pr = r.prepare(cur), r.prepare(ref)
        with torch.inference_mode():
            zr = warp_reference(r.spynet, r.flow_small(pc), r.flow_small(pr), pr.latent)
            n = pc.latent.shape[-1] * pc.latent.shape[-2]
            dense = None
            for mode, kw in MODES:
                name = mode + "".join(f"-{k}{v}" for k, v in kw.items())
                if mode in ("dense", "topk") and n > a.max_dense_positions:
                    runs.append({"size": size, "mode": name, "positions": n, "skipped": "O(N^2) too slow here"})
                    continue
                dt, peak, out = _peak_bytes(lambda: r.cfr(pc.latent, zr, mode, **kw), r.device)
                row = {"size": size, "mode": name, "positions": n, "seconds": dt,
                       "peak_cuda_mb": peak / 2**20 if peak >= 0 else None}
                if mode == "dense":
                    dense = out.float()
                    # the retrieved part only (proj_out's bias is there whatever is retrieved)
                    retrieved = (dense - r.cfr.proj_out.bias.float().view(1, -1, 1, 1)).norm()
                    row["retrieved_norm"] = float(retrieved)
                elif dense is not None:
                    row["rel_error_vs_dense"] = float((out.float() - dense).norm() / retrieved.clamp_min(1e-12))
                runs.append(row)
                print(f"cfr: {name} {size} {dt:.3f}s", file=sys.stderr)
    result = {"model": str(path), "device": str(r.device), "dtype": str(r.dtype), "runs": runs}

    def table(res):
        lines = [f"model {res['model']} on {res['device']}", f"{'size':>10} {'mode':>16} {'latent N':>9} {'seconds':>9} {'rel err':>9}"]
        for x in res["runs"]:
            if "skipped" in x:
                lines.append(f"{x['size']:>10} {x['mode']:>16} {x['positions']:9d}   skipped ({x['skipped']})")
            else:
                err = x.get("rel_error_vs_dense")
                lines.append(f"{x['size']:>10} {x['mode']:>16} {x['positions']:9d} {x['seconds']:9.3f} "
                             f"{'' if err is None else f'{err:9.4f}'}")
        return "\n".join(lines)

    emit(result, a.json, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
