"""The converted authors'-format fixture through each runtime against the torch fp32 path.

    python -m benchmarks.converted_parity [--size 1920x1080] [--backends ov-cpu,ort-cpu] [--json]

The fixture (tests/authors_format.py, converted, as ``benchmarks.tiling``) restores frames 40 and
41 of the bundled bikes clip from a quarter of ``--size`` to ``--size`` through ``vsdloral.upscale``
(VapourSynth) in fp32 with the weights' own settings (the authors' latent tiles: 2 rows x 4 columns
at 1920x1080; frame 40 is its own reference, 41 takes 40). Each backend runs in a process of its own
(its peak RSS is its own; vs-mlrt's OpenVINO runtime and the openvino package cannot share one) on
a private graph cache, so the export is part of its time. Reported: max and mean abs difference
from the torch path's frames, seconds, peak RSS.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from .common import emit, parse_size, parser

_RUN = """
import json, sys, time, resource
import numpy as np, vapoursynth as vs
import vsdloral
from vsdloral.samples import sample_video
model, backend, w, h, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
src = vs.core.bs.VideoSource(str(sample_video("bikes.mp4")))
clip = vs.core.resize.Bicubic(src, w // 4, h // 4, format=vs.RGBS, matrix_in_s="170m")[40:42]
t = time.perf_counter()
res = vsdloral.upscale(clip, 4, model=model, backend=backend, dtype="fp32")
frames = np.stack([np.stack([np.asarray(f[p]) for p in range(3)]) for f in res.frames()])
np.save(out, frames)
print(json.dumps({"seconds": round(time.perf_counter() - t, 1),
                  "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}))
"""


def run_backend(model: Path, backend: str, size: tuple[int, int], work: Path) -> tuple[dict, Path | None]:
    """One backend in its own process: its figures and the .npy of its frames (None if it failed)."""
    out = work / f"{backend}.npy"
    env_cache = {"VSDLORAL_CACHE": str(work / "cache")}
    proc = subprocess.run([sys.executable, "-c", _RUN, str(model), backend, str(size[0]), str(size[1]), str(out)],
                          capture_output=True, text=True, env={**os.environ, **env_cache})
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["killed (no output): out of memory?"])[-1]
        return {"backend": backend, "error": f"exit {proc.returncode}: {tail}"}, None
    return {"backend": backend, **json.loads(proc.stdout.strip().splitlines()[-1])}, out


def main(argv: list[str] | None = None) -> int:
    import numpy as np

    from .tiling import _fixture

    p = parser(__doc__.splitlines()[0])
    p.add_argument("--size", default="1920x1080", help="output size (default 1920x1080)")
    p.add_argument("--backends", default="ov-cpu,ort-cpu", help="vs-mlrt backends to compare (default ov-cpu,ort-cpu)")
    args = p.parse_args(argv)
    size = (256, 192) if args.smoke else parse_size(args.size)
    model = _fixture()
    rows = []
    with tempfile.TemporaryDirectory(prefix="vsdloral-converted-parity-") as tmp:
        work = Path(tmp)
        print(f"converted_parity: torch fp32 at {size[0]}x{size[1]}", file=sys.stderr)
        ref_row, ref_path = run_backend(model, "torch", size, work)
        rows.append(ref_row)
        if ref_path is None:
            raise SystemExit(f"converted_parity: the torch path failed: {ref_row['error']}")
        ref = np.load(ref_path)
        for b in [b for b in args.backends.split(",") if b]:
            print(f"converted_parity: {b} fp32", file=sys.stderr)
            row, path = run_backend(model, b, size, work)
            if path is not None:
                d = np.abs(np.load(path) - ref)
                row.update(max=float(d.max()), mean=float(d.mean()))
            rows.append(row)
    result = {"size": f"{size[0]}x{size[1]}", "load_avg": [round(v, 2) for v in os.getloadavg()], "rows": rows}

    def table(r: dict) -> str:
        lines = [f"converted fixture, {r['size']}, fp32, against the torch path (frames 40-41 of bikes.mp4):",
                 f"{'backend':>8} {'max':>9} {'mean':>9} {'seconds':>8} {'peak RSS':>9}"]
        for row in r["rows"]:
            if "error" in row:
                lines.append(f"{row['backend']:>8} {row['error']}")
                continue
            mx = f"{row['max']:.2e}" if "max" in row else "(ref)"
            mn = f"{row['mean']:.2e}" if "mean" in row else ""
            lines.append(f"{row['backend']:>8} {mx:>9} {mn:>9} {row['seconds']:>8} {row['peak_rss_gb']:>7} GB")
        return "\n".join(lines)

    emit(result, args.json, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
