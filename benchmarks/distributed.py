"""Chunked rendering on Ray: wall time for 1 vs 2 local workers, split into setup, model load,
rendering and concat, plus the on-paper cluster model (issue 16).

    python -m benchmarks.distributed [--preset default|tiny] [--frames 96] [--chunk-frames 24]
                                     [--lq 320x180] [--scale 4] [--workers 1,2] [--json] [--smoke]

Each run is ``vsdloral upscale bikes.mp4 OUT --workers N --chunk-frames K --codec ffv1`` as a user
types it (a fresh local Ray instance per run), timed from outside; the phases come from the lines
the driver prints on stderr: ``setup`` (driver checks + Ray start), per worker ``graph build`` of
its first chunk (Python imports + model load; later chunks reuse the loaded model) and its render
rate, ``render`` (first task submitted to last chunk done), ``concat`` (stream-copy join + audio)
and Ray's shutdown. ``--threads`` is not used: a CPU worker takes cores / N torch threads, as
the CLI gives it.

The cluster model (printed with the figures): N GPUs, t seconds per frame, F frames, chunks of K
frames (C = F/K), a per-chunk fixed cost o (task start, imports and model load in a fresh worker
process -- Ray does not reuse GPU workers -- the extra reference-frame encode, the encoder start,
the driver's frame count) and per-job fixed costs S (Ray start, driver checks), I (BestSource's
index pass over the source, once per node) and J (the join, I/O bound). Wall time
T_N = S + I + ceil(C/N) (K t + o) + J, so the speed-up over one GPU without chunking (F t) is
N / (1 + o/(K t) + N (S + I + J)/(F t) + tail), tail = ceil(C/N)/(C/N) - 1 (zero when C is a
multiple of N: pick K = ceil(F / C) with C a multiple of N). The per-chunk term stays under 2%
for K >= 50 o / t.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import emit, model_file, parser

_WORKER = re.compile(r"worker (\d+) \((.*?)\): (\d+) chunks, (\d+) frames, ([\d.]+) fps, graph build ([\d.]+) s first "
                     r"/ ([\d.]+) s rest")
_TIMES = re.compile(r"times: setup ([\d.]+) s, render ([\d.]+) s, concat ([\d.]+) s, Ray shutdown ([\d.]+) s")


def parse_driver_log(text: str) -> dict:
    """The driver's per-worker and phase lines -> numbers (see the module docstring)."""
    workers = [{"chunks": int(m[2]), "frames": int(m[3]), "fps_incl_load": float(m[4]),
                "model_load_s": float(m[5]), "later_builds_s": float(m[6])} for m in _WORKER.findall(text)]
    m = _TIMES.search(text)
    if not m or not workers:
        raise RuntimeError(f"the driver printed no timings:\n{text[-2000:]}")
    setup, render, concat, stop = (float(v) for v in m.groups())
    return {"setup_s": setup, "render_s": render, "concat_s": concat, "shutdown_s": stop, "per_worker": workers}


def run_once(src: Path, model: Path, workers: int, frames: int, chunk: int, lq: str, scale: float,
             tmp: Path) -> dict:
    out = tmp / f"w{workers}.mkv"
    cmd = [sys.executable, "-m", "vsdloral", "upscale", str(src), str(out), "--model", str(model), "--scale",
           str(scale), "--lq", lq, "--end", str(frames), "--workers", str(workers), "--chunk-frames", str(chunk),
           "--codec", "ffv1", "--force"]
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # the CLI's own split of the cores
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        return {"workers": workers, "error": (r.stderr.strip().splitlines() or ["?"])[-1]}
    res = {"workers": workers, "wall_s": round(wall, 2), **parse_driver_log(r.stderr)}
    for w in res["per_worker"]:
        # frames per second of rendering proper: the worker's task time minus its first graph build
        busy = w["frames"] / w["fps_incl_load"] if w["fps_incl_load"] else 0.0
        w["render_fps"] = round(w["frames"] / (busy - w["model_load_s"] - w["later_builds_s"]), 3) \
            if busy > w["model_load_s"] + w["later_builds_s"] else None
    res["python_start_s"] = round(wall - res["setup_s"] - res["render_s"] - res["concat_s"] - res["shutdown_s"], 2)
    out.unlink(missing_ok=True)
    return res


def cluster_model(t: float, o: float, fixed: float, n: int, f: int, k: int) -> dict:
    """Expected speed-up of N GPUs over one unchunked GPU, and its overhead terms (fractions)."""
    c = math.ceil(f / k)
    waves = math.ceil(c / n)
    wall = fixed + waves * (k * t + o)
    return {"gpus": n, "frames": f, "chunk_frames": k, "chunks": c, "per_chunk": o / (k * t),
            "fixed": n * fixed / (f * t), "tail": waves / (c / n) - 1, "speedup": f * t / wall,
            "k_for_2pct": math.ceil(50 * o / t)}


def balanced_chunk(f: int, n: int, k: int) -> int:
    """The chunk length near ``k`` whose chunk count is a multiple of ``n`` (no idle last wave)."""
    c = math.ceil(math.ceil(f / k) / n) * n
    return math.ceil(f / c)


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--preset", default="default", help="default (the bundled model) or tiny (random)")
    p.add_argument("--frames", type=int, default=96)
    p.add_argument("--chunk-frames", type=int, default=24)
    p.add_argument("--lq", default="320x180", help="source shrunk to this first (x4: 1280x720 output)")
    p.add_argument("--scale", type=float, default=4)
    p.add_argument("--workers", default="1,2", help="worker counts to run, comma-separated")
    p.add_argument("--t", type=float, nargs="+", default=[0.712, 0.1],
                   help="per-frame seconds for the paper model (default 0.712: the bundled model at 720p on "
                        "this project's 2-core CPU, docs/default-model.md; 0.1: an assumed GPU figure)")
    p.add_argument("--index-s", type=float, default=300.0,
                   help="paper model: BestSource's index pass per node, seconds (assumed; a film's decode pass)")
    p.add_argument("--join-s", type=float, default=60.0, help="paper model: the final join, seconds (assumed)")
    args = p.parse_args(argv)
    if args.smoke:
        args.preset, args.frames, args.chunk_frames, args.lq, args.scale, args.workers = "tiny", 4, 2, "32x18", 2, "2"
    from vsdloral.samples import sample_video

    src = sample_video("bikes.mp4")
    model = model_file(args.preset)
    runs = []
    with tempfile.TemporaryDirectory(prefix="vsdloral-bench-dist-") as tmp:
        for n in (int(v) for v in args.workers.split(",")):
            print(f"running {n} worker(s)...", file=sys.stderr)
            runs.append(run_once(src, model, n, args.frames, args.chunk_frames, args.lq, args.scale, Path(tmp)))
    ok = [r for r in runs if "error" not in r]
    by_n = {r["workers"]: r for r in ok}
    speedup = None
    if 1 in by_n and 2 in by_n:
        speedup = {"wall": round(by_n[1]["wall_s"] / by_n[2]["wall_s"], 3),
                   "render": round(by_n[1]["render_s"] / by_n[2]["render_s"], 3)}
    # The paper model, fed with what this box measured: o = a fresh worker's first graph build
    # (imports + model load), S = the driver's setup. I (index pass) and J (join) are inputs.
    loads = [w["model_load_s"] for r in ok for w in r["per_worker"]]
    o = max(loads) if loads else float("nan")
    setup = max((r["setup_s"] for r in ok), default=float("nan"))
    fixed = setup + args.index_s + args.join_s
    film = 130 * 60 * 24
    rows = [{"t_s": t, **cluster_model(t, o, fixed, n, film, k)}
            for t in args.t for n in (1, 8, 32) for k in dict.fromkeys((1440, balanced_chunk(film, n, 1440), 4096))]
    result = {"machine": f"{os.cpu_count()} CPU cores", "preset": args.preset, "frames": args.frames,
              "chunk_frames": args.chunk_frames, "lq": args.lq, "scale": args.scale, "runs": runs,
              "speedup_2_vs_1": speedup,
              "paper": {"o_s": o, "setup_s": setup, "index_s": args.index_s, "join_s": args.join_s, "rows": rows}}
    emit(result, args.json, _table)
    return 0 if ok else 1


def _table(r: dict) -> str:
    lines = [f"benchmarks.distributed: {r['frames']} frames of bikes.mp4 at lq {r['lq']} x{r['scale']:g}, "
             f"chunks of {r['chunk_frames']}, {r['preset']} model, {r['machine']}", ""]
    lines.append("workers  wall s  python s  setup s  render s  concat s  shutdown s  per-worker load s / render fps")
    for run in r["runs"]:
        if "error" in run:
            lines.append(f"{run['workers']:>7}  error: {run['error']}")
            continue
        ws = ", ".join(f"{w['model_load_s']:.1f} / {w['render_fps'] or 0:.2f}" for w in run["per_worker"])
        lines.append(f"{run['workers']:>7}  {run['wall_s']:>6.1f}  {run['python_start_s']:>8.1f}  {run['setup_s']:>7.1f}"
                     f"  {run['render_s']:>8.1f}  {run['concat_s']:>8.1f}  {run['shutdown_s']:>10.1f}  {ws}")
    if r["speedup_2_vs_1"]:
        lines.append(f"2 vs 1 worker: wall x{r['speedup_2_vs_1']['wall']}, render phase x{r['speedup_2_vs_1']['render']}")
    pm = r["paper"]
    lines += ["", f"on paper, a 130-min 24 fps film: per-chunk o = {pm['o_s']:.1f} s and setup S = "
              f"{pm['setup_s']:.1f} s measured here; index I = {pm['index_s']:.0f} s and join J = "
              f"{pm['join_s']:.0f} s assumed",
              "t s/frame  GPUs  K frames  chunks  per-chunk   fixed    tail  speed-up  K for <2% per-chunk"]
    for row in pm["rows"]:
        lines.append(f"{row['t_s']:>9}  {row['gpus']:>4}  {row['chunk_frames']:>8}  {row['chunks']:>6}"
                     f"  {row['per_chunk']:>9.2%}  {row['fixed']:>6.2%}  {row['tail']:>6.2%}  {row['speedup']:>8.2f}"
                     f"  {row['k_for_2pct']:>6}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
