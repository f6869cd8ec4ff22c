"""Memory over a long vspipe render: the vspipe process RSS must stay flat (issue 7).

    python -m benchmarks.long_render [--frames 5000] [--model PATH | --preset tiny] [--lq 16x16] [--scale 2] [--json]

The source is the first ``--source-frames`` frames of bikes.mp4 shrunk to ``--lq`` (RGBS) and looped
with ``std.Loop`` to ``--frames``; ``vspipe -p script.vpy --`` renders it through
``vsdloral.upscale(clip, scale, model=<Restorer>)`` (a random ``tiny`` model by default, tiny frames so
the run is about the filter, not the model). The RSS of the vspipe process (the largest process of
the ``vspipe`` tree; the whole tree is reported too) is sampled every ``--interval`` seconds with
psutil, together with vspipe's own progress counter. Growth = RSS at the end vs RSS after warm-up
(the first sample at ``--warmup`` of the frames, 10% by default); the end is the last sample
before the last frame is delivered (not during vspipe's shutdown). Target < 5%.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from .common import emit, model_file, parser, setup_threads
from .plugin import ROOT, parse_size, vspipe_command, vspipe_env, write_script

_PROGRESS = re.compile(rb"Frame: (\d+)/(\d+)")


def _progress_reader(stream, state: dict) -> None:
    """Follow vspipe's ``-p`` output (``Frame: n/total`` separated by CR); keep the rest for errors."""
    buf = b""
    while True:
        chunk = stream.read1(4096) if hasattr(stream, "read1") else stream.read(4096)
        if not chunk:
            break
        buf += chunk
        parts = re.split(rb"[\r\n]", buf)
        buf = parts.pop()
        for part in parts:
            m = _PROGRESS.search(part)
            if m:
                state["frame"] = int(m.group(1))
            elif part.strip():
                state["lines"].append(part.decode(errors="replace"))
    if buf.strip():
        state["lines"].append(buf.decode(errors="replace"))


def _rss(proc) -> tuple[int, int]:
    """(RSS of the largest process in the tree, RSS of the whole tree), bytes."""
    import psutil

    procs = [proc]
    try:
        procs += proc.children(recursive=True)
    except psutil.Error:
        pass
    sizes = []
    for p in procs:
        try:
            sizes.append(p.memory_info().rss)
        except psutil.Error:
            pass
    return (max(sizes), sum(sizes)) if sizes else (0, 0)


def render(model: str, frames: int, source_frames: int, lq: str, scale: float, interval: float, warmup: float,
           threads: int | None, device: str | None) -> dict:
    import psutil

    with tempfile.TemporaryDirectory(prefix="vsdloral-bench-long-") as td:
        tmp = Path(td)
        report = tmp / "report.json"
        args = {"model": model, "frames": source_frames, "loop_to": frames, "lq": lq, "scale": scale,
                "threads": threads, "device": device, "report": report}
        cmd = vspipe_command(write_script(tmp), args, progress=True)
        state: dict = {"frame": 0, "lines": []}
        samples: list[dict] = []
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=vspipe_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        reader = threading.Thread(target=_progress_reader, args=(proc.stderr, state), daemon=True)
        reader.start()
        ps = psutil.Process(proc.pid)
        while proc.poll() is None:
            rss, tree = _rss(ps)
            if rss and not report.exists():  # the script writes the report once the last frame is out
                samples.append({"t": time.perf_counter() - t0, "frame": state["frame"], "rss": rss, "tree_rss": tree})
            time.sleep(interval)
        wall = time.perf_counter() - t0
        reader.join(timeout=5)
        if proc.returncode != 0 or not report.is_file():
            raise RuntimeError(f"vspipe failed (exit {proc.returncode}):\n" + "\n".join(state["lines"][-30:]))
        rep = json.loads(report.read_text())
    warm_frame = max(1, int(frames * warmup))
    after = [s for s in samples if s["frame"] >= warm_frame]
    if len(after) < 2:
        raise RuntimeError(f"long_render: only {len(after)} RSS samples after warm-up; use more --frames or a "
                           f"smaller --interval")
    warm, end = after[0], after[-1]
    peak = max(after, key=lambda s: s["rss"])
    mb = 1 / 2**20
    return {
        "model": model, "frames": frames, "source_frames": source_frames, "lq": lq, "scale": scale,
        "load_average": list(os.getloadavg()), "cpu_count": os.cpu_count(),
        "wall_s": wall, "fps_whole": frames / wall,
        "fps_steady": (frames - 1) / rep["steady_s"] if rep["steady_s"] > 0 else None,
        "vae_encodes_per_frame": rep["stats"]["vae_encodes"] / rep["frames"],
        "warmup_frame": warm["frame"], "end_frame": end["frame"],
        "rss_warmup_mb": warm["rss"] * mb, "rss_end_mb": end["rss"] * mb, "rss_peak_after_warmup_mb": peak["rss"] * mb,
        "rss_peak_mb": max(s["rss"] for s in samples) * mb,
        "tree_rss_warmup_mb": warm["tree_rss"] * mb, "tree_rss_end_mb": end["tree_rss"] * mb,
        "growth_pct": 100 * (end["rss"] - warm["rss"]) / warm["rss"],
        "peak_growth_pct": 100 * (peak["rss"] - warm["rss"]) / warm["rss"],
        "samples": len(samples), "interval_s": interval,
        "curve": _curve(samples, 10),
    }


def _curve(samples: list[dict], points: int) -> list[dict]:
    """``points`` evenly spaced samples (frame, RSS MB) for the table."""
    if not samples:
        return []
    step = max(1, len(samples) // points)
    picked = samples[::step]
    if picked[-1] is not samples[-1]:
        picked.append(samples[-1])
    return [{"t": round(s["t"], 1), "frame": s["frame"], "rss_mb": round(s["rss"] / 2**20, 1)} for s in picked]


def table(r: dict) -> str:
    la = ", ".join(f"{v:.2f}" for v in r["load_average"])
    lines = [
        f"{r['frames']} frames ({r['source_frames']} of bikes.mp4 looped), LQ {r['lq']} x{r['scale']:g}, "
        f"model {Path(r['model']).name}; load average {la} on {r['cpu_count']} cores",
        f"{r['fps_steady'] or 0:.1f} fps steady, {r['fps_whole']:.1f} fps whole run ({r['wall_s']:.1f} s), "
        f"VAE encodes/frame {r['vae_encodes_per_frame']:.2f}",
        "",
        f"{'':24} {'frame':>7} {'RSS MB':>8}",
        f"{'after warm-up':24} {r['warmup_frame']:7d} {r['rss_warmup_mb']:8.1f}",
        f"{'end':24} {r['end_frame']:7d} {r['rss_end_mb']:8.1f}",
        f"{'peak after warm-up':24} {'':7} {r['rss_peak_after_warmup_mb']:8.1f}",
        "",
        f"growth end vs warm-up: {r['growth_pct']:+.3f}% ({r['rss_end_mb'] - r['rss_warmup_mb']:+.2f} MB, target < 5%); "
        f"peak vs warm-up: {r['peak_growth_pct']:+.3f}%",
        f"({r['samples']} samples every {r['interval_s']} s; vspipe process tree incl. its launcher: "
        f"{r['tree_rss_warmup_mb']:.1f} -> {r['tree_rss_end_mb']:.1f} MB)",
        "",
        "RSS over the run:  " + "  ".join(f"{c['frame']}:{c['rss_mb']:.0f}" for c in r["curve"]),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="weights file (default: random weights of --preset)")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--frames", type=int, default=5000)
    p.add_argument("--source-frames", type=int, default=25, help="real frames looped to --frames")
    p.add_argument("--lq", default="16x16")
    p.add_argument("--scale", type=float, default=2)
    p.add_argument("--interval", type=float, default=0.5, help="RSS sampling period, seconds")
    p.add_argument("--warmup", type=float, default=0.1, help="fraction of frames before the reference RSS")
    a = p.parse_args(argv)
    if a.smoke:
        a.frames, a.interval = 200, 0.1
        a.threads = a.threads or 1  # robust on a busy CI machine (no OpenMP spinning against other jobs)
    setup_threads(a.threads)
    model = a.model or str(model_file(a.preset))
    print(f"long_render: {a.frames} frames through vspipe ...", file=sys.stderr)
    res = render(model, a.frames, min(a.source_frames, a.frames), a.lq, a.scale, a.interval, a.warmup, a.threads,
                 a.device)
    emit(res, a.json, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
