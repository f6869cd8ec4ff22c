"""fp32 vs reduced precision: speed ratio and PSNR between the outputs, measured side by side.

    python -m benchmarks.precision [--preset sd21|--model PATH] [--size 512x512] [--dtypes bf16] [--json]

On CPU the comparison is fp32 vs bf16; on CUDA fp32 vs fp16 and bf16. Real frames (bikes.mp4)
upscaled bicubically to the size are restored as a sequential pair (reference = previous frame).
"""

from __future__ import annotations

import sys
import time

import torch

from .cfr import _real_pair
from .common import dtype_name, emit, model_file, parse_size, parser, setup_threads, tensor_psnr


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--model", default=None)
    p.add_argument("--preset", default="sd21")
    p.add_argument("--size", default="512x512")
    p.add_argument("--dtypes", default=None, help="comma list (default: bf16 on CPU, fp16,bf16 on CUDA)")
    p.add_argument("--reps", type=int, default=2)
    a = p.parse_args(argv)
    setup_threads(a.threads)
    import vsdloral
    from vsdloral.loading import cpu_has_native_bf16, default_dtype, resolve_device

    device = resolve_device(a.device)
    dtypes = (a.dtypes or ("bf16" if device.type == "cpu" else "fp16,bf16")).split(",")
    path = a.model or model_file("tiny" if a.smoke else a.preset)
    size = "96x64" if a.smoke else a.size
    w, h = parse_size(size)
    cur, ref = _real_pair(w, h)
    runs, outs = [], {}
    for dt in ["fp32", *dtypes]:
        r = vsdloral.load_model(path, device=device, dtype=dt)
        r.restore(cur, ref)  # warm-up
        times = []
        for _ in range(1 if a.smoke else a.reps):
            t0 = time.perf_counter()
            outs[dt] = r.restore(cur, ref).cpu()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        runs.append({"dtype": dt, "seconds": min(times)})
        del r
        print(f"precision: {dt} {min(times):.3f}s", file=sys.stderr)
    base = runs[0]["seconds"]
    for row in runs:
        row["speedup_vs_fp32"] = base / row["seconds"]
        row["psnr_vs_fp32_db"] = tensor_psnr(outs[row["dtype"]], outs["fp32"])
    default = dtype_name(default_dtype(device))
    result = {"model": str(path), "device": str(device), "size": size, "runs": runs,
              "cpu_native_bf16": cpu_has_native_bf16(), "default_dtype": default}

    def table(res):
        lines = [f"{res['model']} at {res['size']} on {res['device']} (native bf16 on this CPU: "
                 f"{res['cpu_native_bf16']}; default dtype here: {res['default_dtype']})",
                 f"{'dtype':>6} {'s/frame':>9} {'speed-up':>9} {'PSNR vs fp32 (dB)':>18}"]
        for x in res["runs"]:
            lines.append(f"{x['dtype']:>6} {x['seconds']:9.3f} {x['speedup_vs_fp32']:9.2f} {x['psnr_vs_fp32_db']:18.2f}")
        return "\n".join(lines)

    emit(result, a.json, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
