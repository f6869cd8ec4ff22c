"""End to end: vspipe -> ffmpeg through examples/encode.sh and ``vsdloral upscale``, checked with ffprobe."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from vsdloral.samples import sample_video

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(not (shutil.which("ffmpeg") and shutil.which("ffprobe")), reason="needs ffmpeg")


def probe(path: Path) -> dict:
    r = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-show_entries",
                        "stream=codec_type,width,height,nb_read_frames,duration", "-of", "json", str(path)],
                       capture_output=True, text=True, check=True)
    streams = json.loads(r.stdout)["streams"]
    return {s["codec_type"]: s for s in streams}


def cli(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vsdloral", "upscale", *map(str, args)],
                          capture_output=True, text=True, timeout=300, **kw)


def test_encode_sh_keeps_audio(tiny_model_path, tmp_path):
    src = sample_video("bigbuckbunny.mp4")
    out = tmp_path / "bbb.mkv"
    r = subprocess.run(["bash", str(ROOT / "examples" / "encode.sh"), str(src), str(out),
                        "--arg", f"model={tiny_model_path}", "--arg", "frames=6", "--arg", "lq=64x36",
                        "--arg", "scale=2"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    info = probe(out)
    assert int(info["video"]["nb_read_frames"]) == 6
    assert (info["video"]["width"], info["video"]["height"]) == (128, 72)
    assert "audio" in info
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bbb.mkv"]  # no temporary left


def test_cli_trims_video_and_audio(tiny_model_path, tmp_path):
    src = sample_video("bigbuckbunny.mp4")  # 25 fps, AAC audio
    out = tmp_path / "bbb.mp4"
    r = cli(src, out, "--model", tiny_model_path, "--scale", 2, "--lq", "64x36", "--start", 10, "--end", 20)
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""
    info = probe(out)
    assert int(info["video"]["nb_read_frames"]) == 10
    assert (info["video"]["width"], info["video"]["height"]) == (128, 72)
    assert abs(float(info["audio"]["duration"]) - 0.4) < 0.06


def test_cli_no_audio_and_refuses_overwrite(tiny_model_path, tmp_path):
    src = sample_video("bikes.mp4")  # no audio
    out = tmp_path / "bikes.mkv"
    r = cli(src, out, "--model", tiny_model_path, "--scale", 2, "--lq", "64x28", "--end", 5)
    assert r.returncode == 0, r.stderr
    info = probe(out)
    assert int(info["video"]["nb_read_frames"]) == 5 and info["video"]["width"] == 128
    assert "audio" not in info
    before = out.read_bytes()
    r = cli(src, out, "--model", tiny_model_path)
    assert r.returncode == 2
    assert "--force" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert out.read_bytes() == before


def test_cli_failure_leaves_no_file(tmp_path):
    src = sample_video("bikes.mp4")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a model")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    r = cli(src, out_dir / "x.mkv", "--model", junk, "--end", 3)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "upscale:" in lines[0], r.stderr
    assert list(out_dir.iterdir()) == []


def _procs_mentioning(text: str) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if text in (d / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(d.name))
            except OSError:
                pass
    return pids


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc")
def test_cli_interrupt_leaves_no_file(tiny_model_path, tmp_path):
    src = sample_video("bikes.mp4")
    out_dir = tmp_path / "out"
    out = out_dir / "long.mkv"
    p = subprocess.Popen([sys.executable, "-m", "vsdloral", "upscale", str(src), str(out), "--model",
                          str(tiny_model_path), "--scale", "2", "--lq", "64x28"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         # a shell without job control starts background jobs with SIGINT ignored, and
                         # Python keeps an ignored SIGINT: give the CLI the default, as a terminal does
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # interrupt once vspipe reports a few frames done (its progress goes to stderr), well before the
    # end: ffmpeg may buffer the small output, so the file's size says nothing about progress
    err_chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: err_chunks.extend(iter(lambda: p.stderr.read(64), b"")), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and p.poll() is None:
            done = [int(m) for m in re.findall(rb"Frame: (\d+)/", b"".join(err_chunks))]
            if done and max(done) >= 3:
                break
            time.sleep(0.05)
        assert p.poll() is None, "the run ended before it could be interrupted"
        p.send_signal(signal.SIGINT)
        p.wait(timeout=60)
        reader.join(timeout=10)
        err = b"".join(err_chunks)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, err
    assert list(out_dir.iterdir()) == []
    time.sleep(0.5)
    assert _procs_mentioning(str(out_dir)) == []  # ffmpeg (its command line names the output) is gone
