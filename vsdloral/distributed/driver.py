"""``vsdloral upscale ... --workers N | --ray ADDRESS``: plan, render the missing chunks on Ray, join.

The driver checks everything it can before starting Ray (input, range, devices, work folder), keeps
the manifest, draws the progress bar and writes OUTPUT atomically once every chunk is done.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import DistributedError
from ..encoding import resolved as resolved_codec
from ..media import audio_options, count_frames, frame_rate, source_frames
from ..utils.atomic import atomic_path
from ..utils.hashing import sha256_file
from .chunks import default_chunk_frames, plan_chunks
from .manifest import LOCK, MANIFEST, Manifest, WorkDirError, check_foreign, locked, open_manifest

MAX_RETRIES = 3  # Ray reruns a chunk whose worker or node died, or whose encode failed, this often
# A finished chunk the driver cannot count yet (shared storage catching up with the worker's write)
# is counted again after these pauses (seconds), then rendered again, at most MAX_RETRIES times.
RECOUNT_PAUSES = (0.25, 0.5, 1.0, 2.0, 4.0)


def log(msg: str) -> None:
    print(f"vsdloral upscale: {msg}", file=sys.stderr, flush=True)


@dataclass
class Placement:
    """Where the chunks run: a local instance (``workers`` slots, ``gpu_ids`` physical CUDA ids or
    None for CPU) or a cluster (``address``); ``kind`` cpu/cuda (None: from the cluster's resources)."""

    workers: int | None
    kind: str | None
    gpu_ids: list[str] | None = None
    address: str | None = None
    threads: int | None = None

    def task_resources(self) -> dict:
        if self.address is None:
            gpus = len(self.gpu_ids) / self.workers if self.gpu_ids else 0
            return {"num_cpus": 1, "num_gpus": gpus}
        if self.kind == "cuda":
            return {"num_cpus": 1, "num_gpus": 1}
        return {"num_cpus": self.threads or 1}


def _threads_asked(args=None) -> int | None:
    """``--threads``, else ``OMP_NUM_THREADS``, else None."""
    if getattr(args, "threads", None):
        return int(args.threads)
    raw = os.environ.get("OMP_NUM_THREADS", "")
    return int(raw) if raw.isdigit() and int(raw) > 0 else None


def _visible_cuda_ids() -> list[str]:
    import torch

    raw = os.environ.get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        return [str(i) for i in range(torch.cuda.device_count())]
    return [v.strip() for v in raw.split(",") if v.strip()][: torch.cuda.device_count()]


def placement(args) -> Placement:
    """Validate ``--workers/--devices/--device/--ray`` (no Ray needed) and say where chunks run."""
    workers = args.workers
    if workers is not None and workers < 1:
        raise DistributedError(f"--workers must be >= 1, got {workers}")
    if args.chunk_frames is not None and args.chunk_frames < 1:
        raise DistributedError(f"--chunk-frames must be >= 1, got {args.chunk_frames}")
    if args.ray is not None:
        if args.devices:
            raise DistributedError("--devices is for a local run; with --ray each worker gets its GPU from "
                                   "Ray (--device cuda, or leave it out)")
        if args.device not in (None, "cpu", "cuda"):
            raise DistributedError(f"with --ray, --device is cpu or cuda (Ray assigns each worker its GPU), "
                                   f"got {args.device!r}")
        return Placement(workers, args.device, address=args.ray, threads=_threads_asked(args) or 1)
    from ..loading import resolve_device

    try:
        if args.devices:
            if args.device is not None:
                raise DistributedError("give --devices or --device, not both")
            names = [d.strip() for d in args.devices.split(",") if d.strip()]
            devs = [resolve_device(d) for d in names]
            if any(d.type != "cuda" for d in devs):
                raise DistributedError(f"--devices takes CUDA devices such as cuda:0,cuda:1, got "
                                       f"{args.devices!r} (for the CPU: --device cpu)")
            idx = [d.index or 0 for d in devs]
            if len(set(idx)) != len(idx):
                raise DistributedError("--devices lists a GPU twice; for two workers on one GPU use "
                                       "--devices cuda:0 --workers 2")
        else:
            dev = resolve_device(args.device)
            if dev.type not in ("cpu", "cuda"):
                raise DistributedError(f"the chunked mode runs on cpu or cuda, got {args.device!r}")
            idx = None if dev.type == "cpu" else ([dev.index] if dev.index is not None else None)
            if dev.type == "cuda" and idx is None:
                import torch

                idx = list(range(torch.cuda.device_count()))
    except ValueError as exc:
        raise DistributedError(str(exc)) from None
    if idx is None:
        workers = workers or 1
        return Placement(workers, "cpu", threads=_threads_asked(args) or max(1, (os.cpu_count() or 1) // workers))
    visible = _visible_cuda_ids()
    gpu_ids = [visible[i] for i in idx]
    workers = workers or len(gpu_ids)
    if workers % len(gpu_ids):
        raise DistributedError(f"--workers {workers} is not a multiple of the {len(gpu_ids)} GPUs; each GPU "
                               "takes the same number of workers")
    return Placement(workers, "cuda", gpu_ids=gpu_ids,
                     threads=getattr(args, "threads", None) or max(1, (os.cpu_count() or 1) // workers))


def _dtype_name(dtype: str | None, kind: str) -> str:
    import torch

    from ..loading import resolve_dtype

    try:
        dt = resolve_dtype(dtype, torch.device(kind))
    except ValueError as exc:
        raise DistributedError(str(exc)) from None
    return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[dt]


def job_backend(args, kind: str) -> tuple[str, dict | None]:
    """The backend every chunk renders with, resolved once here so that all workers agree:
    ``--backend`` or upscale's default (``$VSDLORAL_BACKEND``, else ``auto``). ``auto`` is
    OpenVINO's CPU backend on CPU workers when its plugin is installed (as a single-process
    render), else the torch path; on GPU workers, and with ``--device``, the torch path (name
    ``--backend trt`` or ``ort-cuda`` for those). Returns the name (``torch`` or a
    :data:`~vsdloral.mlrt.select.BACKEND_NAMES` key) and, for a vs-mlrt backend, its
    :func:`~vsdloral.mlrt.select.describe` (precision, plugin and vs-jetpack versions)."""
    from ..vs_filter import default_backend

    value = getattr(args, "backend", None) or default_backend()
    if value == "torch" or (value == "auto" and (kind != "cpu" or args.device is not None)):
        return "torch", None
    from ..mlrt.select import BackendError, backend_name, describe, resolve_backend

    try:
        choice = resolve_backend(value, dtype=args.dtype)
    except BackendError as exc:
        raise DistributedError(f"--backend {value}: {exc}") from None
    if choice is None:
        return "torch", None
    return backend_name(choice), describe(choice)


def job_identity(args, src: Path, model: Path, kind: str, threads: int | None, n_src: int, start: int,
                 end: int, chunk_frames: int, scene_cuts: list[int], runtime: dict,
                 backend: tuple[str, dict | None] = ("torch", None)) -> dict:
    """Everything that decides the output's bits: a work folder holds chunks of one such job.
    ``runtime``: the renderers' :func:`~vsdloral.distributed.runtime.runtime_identity` (versions, CPU level);
    ``backend``: :func:`job_backend` (its identity joins the runtime: a resume after a plugin upgrade
    is refused)."""
    st = src.stat()
    name, info = backend
    if info is not None:
        runtime = {**runtime, "backend": info}
    job = {
        "source": {"path": str(src.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "frames": n_src},
        "model_sha256": sha256_file(model),
        "range": [start, end], "chunk_frames": chunk_frames,
        "settings": {"scale": args.scale, "cfr": args.cfr, "color_fix": args.color_fix, "tile": args.tile,
                     "vae_tile": getattr(args, "vae_tile", None), "kernel": getattr(args, "kernel", None), "lq": args.lq, "scene_cuts": scene_cuts, "device": kind, "backend": name,
                     "dtype": info["precision"] if info else _dtype_name(args.dtype, kind)},
        "encode": resolved_codec(args.codec, args.crf, args.preset),
        "runtime": runtime,
    }
    if kind == "cpu":
        # PyTorch's CPU results depend on its thread count: a CPU job keeps one count throughout
        job["settings"]["cpu_threads"] = threads
    return job


def _count_landed(path: Path, expected: int) -> int | None:
    """The frames of a chunk a task has just finished: counted again after each of
    :data:`RECOUNT_PAUSES` while the driver does not see ``expected`` (storage catching up)."""
    n = count_frames(path)
    for pause in RECOUNT_PAUSES:
        if n == expected:
            break
        time.sleep(pause)
        n = count_frames(path)
    return n


def _verify_done(m: Manifest) -> None:
    """Re-count every chunk the manifest calls done; one that is missing or short is rendered again.
    Temporary files and files of chunks not marked done are removed (never taken as done)."""
    for c in m.chunks:
        path = m.chunk_path(c["index"])
        if c["done"]:
            n = count_frames(path) if path.is_file() else None
            if n != c["end"] - c["start"]:
                log(f"chunk {c['index']}: {'missing' if n is None else f'{n} frames'} instead of "
                    f"{c['end'] - c['start']}; rendering it again")
                m.mark_undone(c["index"])
        if not c["done"]:
            path.unlink(missing_ok=True)
    for p in m.chunk_dir.glob(".chunk_*.part.*"):
        p.unlink(missing_ok=True)


def _ranges(indices: list[int]) -> str:
    out, i = [], 0
    while i < len(indices):
        j = i
        while j + 1 < len(indices) and indices[j + 1] == indices[j] + 1:
            j += 1
        out.append(str(indices[i]) if i == j else f"{indices[i]}-{indices[j]}")
        i = j + 1
    return ",".join(out)


def _task_error(ray, exc: BaseException, chunk: dict) -> DistributedError:
    where = f"chunk {chunk['index']} (frames {chunk['start']}-{chunk['end'] - 1})"
    cause = getattr(exc, "cause", None) if isinstance(exc, ray.exceptions.RayTaskError) else None
    if cause is not None:
        text = str(cause).strip().splitlines()
        return DistributedError(f"{where} failed: {text[0] if text else type(cause).__name__}")
    if isinstance(exc, (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                        ray.exceptions.OutOfMemoryError)):
        return DistributedError(f"{where}: its worker died {MAX_RETRIES + 1} times ({type(exc).__name__}); "
                                "Ray's logs are in /tmp/ray/session_latest/logs")
    text = str(exc).strip().splitlines()
    return DistributedError(f"{where} failed: {text[0] if text else type(exc).__name__}")


def _render(ray, m: Manifest, pending: list[dict], spec: dict, where: Placement, total: int) -> dict:
    """Run one Ray task per pending chunk; mark each done as it lands. Returns per-worker timings."""
    from .progress import Bar, ProgressBoard
    from .render import ChunkRetry
    from .tasks import render_chunk_task

    board = ray.remote(ProgressBoard).options(num_cpus=0).remote()
    res = where.task_resources()
    # A GPU worker process keeps the GPU it first initialised: each GPU task gets a fresh process
    # (Ray's default for GPU tasks, set explicitly since the GPUs are given here, not in a decorator);
    # a CPU worker is reused, so it loads the model once.
    task = ray.remote(max_calls=1 if res.get("num_gpus") else 0, max_retries=MAX_RETRIES,
                      retry_exceptions=[ChunkRetry], **res)(render_chunk_task)
    limit = where.workers if where.address is not None and where.workers else len(pending)
    queue = list(pending)
    running: dict = {}
    again: dict[int, int] = {}  # chunks rendered again because the driver could not count them
    stats: dict = {}
    done_frames = sum(c["end"] - c["start"] for c in m.chunks if c["done"])
    bar = Bar(total, done_frames)
    try:
        while queue or running:
            while queue and len(running) < limit:
                c = queue.pop(0)
                running[task.remote(spec, c["index"], c["start"], c["end"], board)] = c
            ready, _ = ray.wait(list(running), num_returns=1, timeout=0.5)
            for ref in ready:
                c = running.pop(ref)
                try:
                    info = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - a Ray error becomes one line
                    raise _task_error(ray, exc, c) from None
                n = _count_landed(m.chunk_path(c["index"]), c["end"] - c["start"])
                if n != c["end"] - c["start"]:
                    again[c["index"]] = again.get(c["index"], 0) + 1
                    what = f"the driver counts {'no' if n is None else n} frames in {m.chunk_path(c['index'])}, " \
                           f"the worker wrote {info['frames']}"
                    if again[c["index"]] > MAX_RETRIES:
                        raise DistributedError(f"chunk {c['index']}: {what} ({MAX_RETRIES + 1} renders); is the "
                                               "work folder on storage every node sees at once?")
                    log(f"chunk {c['index']}: {what}; rendering it again")
                    queue.append(c)
                    continue
                m.mark_done(c["index"], n, info)
                done_frames += n
                s = stats.setdefault(info["worker"], {"chunks": 0, "frames": 0, "seconds": 0.0, "build_seconds": []})
                s["chunks"] += 1
                s["frames"] += n
                s["seconds"] += info["seconds"]
                s["build_seconds"].append(info["build_seconds"])
            try:
                snap = ray.get(board.snapshot.remote(), timeout=5)
            except Exception:  # noqa: BLE001 - the bar is best effort
                snap = None
            seen = (snap or {}).get("chunks", {})
            partial = sum(min(seen.get(c["index"], 0), c["end"] - c["start"]) for c in running.values())
            bar.show(done_frames + partial, snap)
    except BaseException:
        for ref in running:
            ray.cancel(ref, force=True)
        raise
    finally:
        bar.close()
    return stats


class _StdoutToLog(io.TextIOBase):
    """Ray's driver prints its cluster notes (a worker died, ...) on stdout, which is not ours to
    fill: while Ray runs, stdout goes to one short stderr line per note."""

    def write(self, text: str) -> int:
        for line in text.splitlines():
            line = re.sub(r"\x1b\[[0-9;]*m", "", line).strip()
            if line:
                log(f"Ray: {line.split('. ')[0][:200]}")
        return len(text)


def run_distributed(args, src: Path, out: Path, fmt: str) -> int:
    """The chunked ``vsdloral upscale``: see :mod:`vsdloral.distributed`. Checks that need no
    torch come first, so that bad input fails fast."""
    from ..scripts.graph import parse_scene_cuts
    from .cluster import join, require_ray
    from .runtime import runtime_identity

    t_start = time.perf_counter()
    require_ray()
    if args.workers is not None and args.workers < 1:
        raise DistributedError(f"--workers must be >= 1, got {args.workers}")
    if not os.access(src, os.R_OK):
        raise DistributedError(f"cannot read the input file {src}")
    try:
        n_src = source_frames(src)
    except ValueError as exc:
        raise DistributedError(str(exc)) from None
    start, end = args.start, n_src if args.end is None else args.end
    if end > n_src:
        raise DistributedError(f"--end {end} is past the last frame; {src.name} has {n_src} frames")
    if start >= end:
        raise DistributedError(f"no frames in range: --start {start} --end {end} ({src.name} has {n_src} frames)")
    import vapoursynth as vs

    try:
        scene_cuts = parse_scene_cuts(args.scene_cuts)
    except vs.Error as exc:
        raise DistributedError(str(exc).removeprefix("upscale: ")) from None
    if scene_cuts and scene_cuts[-1] >= n_src:
        raise DistributedError(f"--scene-cuts {scene_cuts[-1]} is past the last frame; {src.name} has {n_src} frames")
    work_dir = Path(args.work_dir) if args.work_dir else out.parent / f"{out.name}.vsdloral-work"
    if work_dir.exists() and not work_dir.is_dir():
        raise DistributedError(f"--work-dir {work_dir} is not a folder")
    try:
        check_foreign(work_dir)
    except WorkDirError as exc:
        raise DistributedError(str(exc)) from None
    where = placement(args)  # imports torch for a local run's devices
    chunk_frames = args.chunk_frames or default_chunk_frames(frame_rate(src))
    chunks = plan_chunks(start, end, chunk_frames)
    if args.model:
        model = Path(args.model).resolve()
    else:
        from ..loading import DEFAULT_MODEL_PATH

        model = DEFAULT_MODEL_PATH
    audio_in, audio_codec = audio_options(src, args.start, args.end)

    ray = None
    with contextlib.redirect_stdout(_StdoutToLog()):
        try:
            if where.address is not None:
                ray = join(where.address)
                if where.kind is None:
                    where.kind = "cuda" if ray.cluster_resources().get("GPU", 0) > 0 else "cpu"
                runtime = cluster_runtime(ray)
            else:
                runtime = runtime_identity()  # a local instance renders with this machine's
            job = job_identity(args, src, model, where.kind, where.threads, n_src, start, end, chunk_frames,
                               scene_cuts, runtime, job_backend(args, where.kind))
            with locked(work_dir):
                try:
                    m = open_manifest(work_dir, job, chunks)
                except WorkDirError as exc:
                    raise DistributedError(str(exc)) from None
                ray, stats, times = _run_job(ray, m, job, where, src, model, fmt, out, audio_in, audio_codec,
                                             work_dir, t_start)
                # inside the lock: a driver that takes the folder next finds a whole manifest or none
                _remove_work_dir(work_dir, m)
        finally:
            t_stop = time.perf_counter()
            if ray is not None and ray.is_initialized():
                ray.shutdown()
    _report(stats, *times, time.perf_counter() - t_stop)
    log(f"wrote {out}")
    return 0


def _run_job(ray, m: Manifest, job: dict, where: Placement, src: Path, model: Path, fmt: str, out: Path,
             audio_in: list[str], audio_codec: list[str], work_dir: Path, t_start: float):
    """With the work folder locked: resume bookkeeping, render what is missing, join. Returns the
    ray module (None if it never started), per-worker stats and the phase times."""
    from .cluster import node_problems, start_local
    from .concat import concat

    m.runs += 1
    _verify_done(m)
    m.save()
    pending = [c for c in m.chunks if not c["done"]]
    done = len(m.chunks) - len(pending)
    start, end = job["range"]
    log(f"{end - start} frames in {len(m.chunks)} chunks of {job['chunk_frames']}; "
        + (f"resuming: {done} done, rendering {_ranges([c['index'] for c in pending]) or 'none'}" if done
           else f"rendering on {where.workers or 'all'} {where.kind} worker(s)"))
    s = job["settings"]
    backend = s.get("backend", "torch")
    graph = {"src": str(src.resolve()), "model": str(model), "scale": s["scale"], "cfr": s["cfr"],
             "color_fix": s["color_fix"], "tile": s["tile"], "vae_tile": s.get("vae_tile"), "kernel": s.get("kernel"), "lq": s["lq"],
             "backend": backend, "device": s["device"] if backend == "torch" else None,
             "dtype": s["dtype"], "scene_cuts": ",".join(map(str, s["scene_cuts"])) or None,
             # OpenVINO takes a thread count (num_threads); ONNX Runtime's CPU backend picks its own
             "threads": where.threads if backend in ("torch", "ov-cpu") else None}
    spec = {"graph": {k: (None if v is None else str(v)) for k, v in graph.items()}, "codec": job["encode"],
            "chunk_dir": str(m.chunk_dir.resolve()), "threads": where.threads}
    stats: dict = {}
    t_render = time.perf_counter()
    if pending:
        if ray is None:
            ray = start_local(where.workers, where.gpu_ids)
        else:
            _check_nodes(ray, node_problems, work_dir, src, model)
        t_render = time.perf_counter()
        stats = _render(ray, m, pending, spec, where, end - start)
    t_concat = time.perf_counter()
    with atomic_path(out) as tmp_out:
        try:
            concat([(m.chunk_path(c["index"]), c["frames"], c["fps"]) for c in m.chunks], work_dir / "concat.txt",
                   src, tmp_out, fmt, job["encode"]["codec"], audio_in, audio_codec)
        except RuntimeError as exc:
            raise DistributedError(str(exc)) from None
        n = count_frames(tmp_out)
        if n != end - start:
            raise DistributedError(f"the joined video has {n} frames, expected {end - start}")
    t_end = time.perf_counter()
    return ray, stats, (t_render - t_start, t_concat - t_render, t_end - t_concat)


def cluster_runtime(ray) -> dict:
    """The runtime identity every node of the cluster shares; :class:`DistributedError` naming what
    differs when they do not (chunks rendered by different torch, ffmpeg or CPU levels would not
    join into one render's bytes)."""
    from .cluster import node_runtimes
    from .runtime import node_differences

    idents = node_runtimes(ray)
    if not idents:
        raise DistributedError("the cluster has no alive node")
    diffs = node_differences(idents)
    if diffs:
        more = f" (and {len(diffs) - 1} more)" if len(diffs) > 1 else ""
        raise DistributedError(f"the cluster's nodes differ in what changes the output's bytes: {diffs[0]}"
                               f"{more}; install the same vsdloral, torch and ffmpeg on nodes of one CPU level")
    return next(iter(idents.values()))


def _check_nodes(ray, node_problems, work_dir: Path, src: Path, model: Path) -> None:
    """Every node of the cluster must see the input, the model and the work folder (a probe file
    the driver writes there) at the driver's paths."""
    from .. import __version__

    probe = work_dir / f".probe-{secrets.token_hex(4)}"
    token = secrets.token_hex(16)
    probe.write_text(token)
    try:
        problems = node_problems(ray, {"input": (str(src.resolve()), src.stat().st_size),
                                       "model": (str(model), model.stat().st_size)},
                                 (str(probe.resolve()), token), __version__)
    finally:
        probe.unlink(missing_ok=True)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise DistributedError(f"{problems[0]}{more}; the input, the model and the work folder must be on "
                               "storage every node mounts at the same path")


def _remove_work_dir(work_dir: Path, m: Manifest) -> None:
    for c in m.chunks:
        m.chunk_path(c["index"]).unlink(missing_ok=True)
    for p in list(m.chunk_dir.glob(".chunk_*.part.*")):
        p.unlink(missing_ok=True)
    for name in ("concat.txt", MANIFEST, LOCK):
        (work_dir / name).unlink(missing_ok=True)
    for d in (m.chunk_dir, work_dir):
        try:
            d.rmdir()
        except OSError:
            pass  # something else is in there: leave it


def _report(stats: dict, setup_s: float, render_s: float, concat_s: float, stop_s: float) -> None:
    """One stderr line per worker and the phase times (read by benchmarks.distributed)."""
    for i, (worker, s) in enumerate(sorted(stats.items()), 1):
        fps = s["frames"] / s["seconds"] if s["seconds"] else 0.0
        log(f"worker {i} ({worker}): {s['chunks']} chunks, {s['frames']} frames, {fps:.2f} fps, "
            f"graph build {s['build_seconds'][0]:.1f} s first / {sum(s['build_seconds'][1:]):.1f} s rest")
    log(f"times: setup {setup_s:.1f} s, render {render_s:.1f} s, concat {concat_s:.1f} s, "
        f"Ray shutdown {stop_s:.1f} s")
