"""``vsdloral upscale INPUT OUTPUT``: DLoRAL-upscale a video file and encode it (vspipe -> ffmpeg).

Runs :mod:`vsdloral.scripts.graph` under ``vspipe`` (progress on stderr) and pipes y4m into
``ffmpeg`` (``--codec`` x264, x265 or ffv1: :mod:`vsdloral.encoding`), copying the source's audio
(trimmed to ``--start``/``--end``). The output is written under a temporary name and renamed at the
end: a failed or interrupted run leaves nothing under OUTPUT. ``--workers``/``--ray`` render in
chunks on Ray instead (:mod:`vsdloral.distributed`), frame for frame the same.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections import deque
from pathlib import Path

from ..cli import CLIError
from ..distributed.options import add_arguments as add_distributed_arguments
from ..distributed.options import is_distributed
from ..encoding import CODECS, video_args
from ..encoding import check as check_codec
from ..media import audio_options

_FORMATS = {".mkv": "matroska", ".mp4": "mp4", ".m4v": "mp4", ".mov": "mov"}


def register(sub) -> None:
    p = sub.add_parser("upscale", help="upscale a video file with DLoRAL and encode it (x264/x265/ffv1, audio copied)",
                       description=__doc__.splitlines()[0])
    p.add_argument("input", help="source video")
    p.add_argument("output", help="output video (.mkv, .mp4, .mov)")
    p.add_argument("--model", help="vsdloral weights file (default: the bundled model)")
    p.add_argument("--scale", type=float, default=4, help="output size = scale x input (default 4)")
    p.add_argument("--codec", default="x264", choices=sorted(CODECS),
                   help="video encoder: x264, x265 or ffv1 (lossless, .mkv/.mov) (default x264)")
    p.add_argument("--crf", type=int, help="x264/x265 quality, 0-51, lower is better (default 18 x264, 23 x265)")
    p.add_argument("--preset", help="x264/x265 preset, ultrafast ... placebo (default medium)")
    p.add_argument("--start", type=int, default=0, help="first frame to keep (default 0)")
    p.add_argument("--end", type=int, help="frame to stop at, exclusive (default: the end)")
    p.add_argument("--cfr", default=None,
                   help="cross-frame retrieval: dense (exact), topk, window (default: the mode the model was trained with)")
    p.add_argument("--color-fix", default=None,
                   help="adain, wavelet, lowpass or none (default: the model's own, else adain)")
    p.add_argument("--tile", type=int, help="the authors' latent tiles, side in output pixels (a multiple of 8): flow, "
                   "CFR and UNet per tile, blended (default: the model's own: 768 for converted released weights as "
                   "the authors, dense for models trained here; 0 = dense over the whole frame)")
    p.add_argument("--vae-tile", type=int, metavar="PX",
                   help="VAE tiles in pixels, GroupNorm statistics over the whole frame (same output up to float "
                   "rounding, bounded memory) (default: the model's own: for converted weights the authors' rule, "
                   "encoder above 1088 px, decoder above 1968 px; never for models trained here; 0 = never)")
    p.add_argument("--kernel", choices=("pil", "torch"),
                   help="LQ upscaling kernel: pil (bicubic a=-0.5, the authors' inference) or torch (a=-0.75, "
                   "their training and ours) (default: the model's own)")
    p.add_argument("--backend", help="what runs the model: torch, auto, or a vs-mlrt backend: ov-cpu, ort-cpu, trt, "
                                     "ort-cuda, ov-gpu, ort-dml, ort-coreml, trt-rtx, migx (pip install "
                                     "'vsdloral[mlrt,onnx]'; default: $VSDLORAL_BACKEND, else auto: OpenVINO on a CPU "
                                     "where installed, else torch; docs/backends.md)")
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: CUDA when available)")
    p.add_argument("--dtype", help="fp32, fp16, bf16 (default: fp16 on CUDA; on a CPU bf16 where it computes bf16 "
                                   "natively (AVX-512 BF16 or AMX), else fp32)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="torch threads per process (default: OMP_NUM_THREADS, else torch's own; chunked on a CPU: "
                        "cores / workers); CPU output is bit-identical for the same device, dtype and thread count")
    p.add_argument("--lq", metavar="WxH", help="shrink the source to WxH first (quick previews)")
    p.add_argument("--scene-cuts", metavar="N,M,...",
                   help="source frames that start a new shot: restored with themselves as reference")
    p.add_argument("--force", action="store_true", help="overwrite OUTPUT if it exists")
    add_distributed_arguments(p)
    p.set_defaults(func=run)


def _vspipe() -> list[str]:
    """The vspipe binary of this Python's VapourSynth (the launcher script spawns it as a child,
    which would not die with it), else ``vspipe`` beside this Python or on PATH."""
    try:
        import vapoursynth

        exe = Path(vapoursynth.__file__).with_name("vspipe")
        if exe.is_file() and os.access(exe, os.X_OK):
            return [str(exe)]
    except ImportError:
        pass
    for cand in (Path(sys.executable).parent / "vspipe", shutil.which("vspipe")):
        if cand and Path(cand).is_file():
            return [str(cand)]
    raise CLIError("vspipe not found; install VapourSynth (pip install vapoursynth)")


def _error_line(text: str) -> str:
    """The most useful line of a vspipe / ffmpeg error output."""
    lines = [ln.strip() for ln in text.replace("\r", "\n").splitlines() if ln.strip()]
    for ln in lines:
        if "upscale:" in ln:
            return ln[ln.index("upscale:"):]
    for i, ln in enumerate(lines):
        if ln.startswith("Python exception:"):
            return ln.removeprefix("Python exception:").strip()
    errs = [ln for ln in lines if "rror" in ln]
    return (errs or lines or ["unknown error"])[-1]


def _pump(stream, sink, tail: deque, hold_until: bytes | None = None) -> None:
    """Copy a child's stderr to ``sink`` (progress) and keep its last bytes for error messages.
    With ``hold_until``, nothing is copied before that marker appears (vspipe's traceback of a
    failed script is replaced by our one-line error)."""
    buf = b""
    held = hold_until is not None
    while chunk := stream.read1(4096):
        buf = (buf + chunk)[-65536:]
        if sink is None:
            continue
        if held:
            if hold_until not in buf:
                continue
            held = False
            chunk = buf
        sink.write(chunk.decode(errors="replace"))
        sink.flush()
    tail.append(buf.decode(errors="replace"))


def _check_args(args) -> tuple[Path, Path, str]:
    src, out = Path(args.input), Path(args.output)
    if not src.is_file():
        raise CLIError(f"no such input file: {src}")
    fmt = _FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise CLIError(f"unsupported output extension {out.suffix!r}; use one of {', '.join(_FORMATS)}")
    if out.exists() and not args.force:
        raise CLIError(f"{out} exists; pass --force to overwrite it")
    if out.exists() and out.is_dir():
        raise CLIError(f"{out} is a directory")
    if src.resolve() == out.resolve():
        raise CLIError("input and output are the same file")
    if args.model is not None and not Path(args.model).is_file():
        raise CLIError(f"no such model file: {args.model}")
    try:
        check_codec(args.codec, args.crf, args.preset, fmt)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    if args.backend is not None:
        from ..mlrt.select import BACKEND_NAMES

        if args.backend not in ("torch", "auto", *BACKEND_NAMES):
            raise CLIError(f"unknown --backend {args.backend!r}; choose torch, auto or one of {', '.join(BACKEND_NAMES)}")
    if args.threads is not None and args.threads < 1:
        raise CLIError(f"--threads must be >= 1, got {args.threads}")
    if args.start < 0 or (args.end is not None and args.end <= args.start):
        raise CLIError("--start must be >= 0 and --end greater than --start")
    if not shutil.which("ffmpeg"):
        raise CLIError("ffmpeg not found on PATH")
    return src, out, fmt


def vspipe_command(args, script: Path) -> list[str]:
    """The vspipe argv that renders ``script`` (:data:`vsdloral.scripts.graph.VPY_TEXT`) as y4m on
    stdout, with one ``--arg name=value`` for each option the user set (graph.build's names)."""
    vs_args = {"src": str(Path(args.input).resolve()), "model": args.model and str(Path(args.model).resolve()),
               "scale": args.scale, "start": args.start, "end": args.end, "cfr": args.cfr,
               "color_fix": args.color_fix, "tile": args.tile, "vae_tile": args.vae_tile, "kernel": args.kernel, "backend": args.backend, "device": args.device, "dtype": args.dtype,
               "lq": args.lq, "scene_cuts": args.scene_cuts, "threads": args.threads}
    cmd = _vspipe() + ["-p", "-c", "y4m", str(script), "-"]
    for k, v in vs_args.items():
        if v is not None:
            cmd += ["--arg", f"{k}={v}"]
    return cmd


def ffmpeg_command(args, src: Path, fmt: str, out: Path, audio_in: list[str], audio_codec: list[str]) -> list[str]:
    """The ffmpeg argv that encodes y4m from stdin into ``out`` (container ``fmt``), taking the audio
    of ``src`` (``audio_in``: input options such as -ss/-t; ``audio_codec``: -c:a ...)."""
    return ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
            "-f", "yuv4mpegpipe", "-i", "-", *audio_in, "-i", str(src),
            "-map", "0:v:0", "-map", "1:a?", *audio_codec,
            *video_args(args.codec, args.crf, args.preset, fmt), "-f", fmt, str(out)]


def run(args) -> int:
    from ..scripts.graph import VPY_TEXT
    from ..utils.atomic import atomic_path

    src, out, fmt = _check_args(args)
    if is_distributed(args):
        from ..distributed.driver import run_distributed
        from ..distributed.errors import DistributedError

        try:
            return run_distributed(args, src, out, fmt)
        except DistributedError as exc:
            raise CLIError(str(exc)) from None
    env = dict(os.environ)
    # VapourSynth's first-run configuration runs the `vapoursynth` tool found on PATH
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])

    audio_in, audio_codec = audio_options(src, args.start, args.end)

    def on_term(signum, frame):
        raise KeyboardInterrupt

    old_term = signal.signal(signal.SIGTERM, on_term)
    procs: list[subprocess.Popen] = []
    try:
        with tempfile.TemporaryDirectory(prefix="vsdloral-") as tmpdir, atomic_path(out) as tmp_out:
            script = Path(tmpdir) / "upscale.vpy"
            script.write_text(VPY_TEXT)
            vspipe = vspipe_command(args, script)
            ffmpeg = ffmpeg_command(args, src, fmt, tmp_out, audio_in, audio_codec)
            # own sessions: a terminal's Ctrl-C reaches only us, and we stop the children in order
            p_vs = subprocess.Popen(vspipe, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                    start_new_session=True)
            procs.append(p_vs)
            p_ff = subprocess.Popen(ffmpeg, stdin=p_vs.stdout, stderr=subprocess.PIPE, start_new_session=True)
            procs.append(p_ff)
            p_vs.stdout.close()
            vs_tail: deque = deque(maxlen=1)
            ff_tail: deque = deque(maxlen=1)
            pumps = [threading.Thread(target=_pump, args=(p_vs.stderr, sys.stderr, vs_tail, b"Script evaluation done"),
                                      daemon=True),
                     threading.Thread(target=_pump, args=(p_ff.stderr, None, ff_tail), daemon=True)]
            for t in pumps:
                t.start()
            rc_ff = p_ff.wait()
            rc_vs = p_vs.wait()
            for t in pumps:
                t.join()
            vs_err = vs_tail[0] if vs_tail else ""
            ff_err = ff_tail[0] if ff_tail else ""
            if rc_vs != 0 and ("Script evaluation failed" in vs_err or rc_ff == 0):
                raise CLIError(_error_line(vs_err))
            if rc_ff != 0:
                raise CLIError(f"ffmpeg failed: {_error_line(ff_err)}")
            if rc_vs != 0:
                raise CLIError(_error_line(vs_err))
            sys.stderr.write("\n")
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp_out, 0o666 & ~umask)  # the temporary file was created private
    except BaseException:
        for p in reversed(procs):
            if p.poll() is None:
                p.kill()
                p.wait()
        raise
    finally:
        signal.signal(signal.SIGTERM, old_term)
    print(f"vsdloral upscale: wrote {out}", file=sys.stderr)
    return 0
