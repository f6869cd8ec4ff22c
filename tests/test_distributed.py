"""Chunked rendering on Ray (``vsdloral upscale --workers/--ray``): frame-exact against the
single-process render, resumable, fault tolerant, loopback-only, and bad input as one-line errors.

The clip has real cuts: bikes, then Big Buck Bunny, then bikes again (64x36, 28 frames, AAC audio),
with ``--scene-cuts 7,17``: with ``--chunk-frames 7`` the cut at 7 is a chunk boundary and the cut
at 17 is inside chunk [14, 21). Chunks that do not start at a cut (14, 21) must still use the
previous source frame as reference. CPU renders are compared at one torch thread per process:
PyTorch's CPU results depend on the thread count (documented in the README).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vsdloral.samples import sample_video

pytestmark = pytest.mark.skipif(not (shutil.which("ffmpeg") and shutil.which("ffprobe")), reason="needs ffmpeg")
pytest.importorskip("ray", reason="the cluster extra (pip install 'vsdloral[cluster]')")
psutil = pytest.importorskip("psutil")

CUTS = "7,17"
FRAMES = 28
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _cli_argv(*args) -> list[str]:
    return [sys.executable, "-m", "vsdloral", "upscale", *map(str, args)]


def cli(*args, timeout=300, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(_cli_argv(*args), capture_output=True, text=True, timeout=timeout, env=env or ENV)


def decoded_sha(path: Path) -> list[str]:
    """sha256 of every decoded frame (raw, native pixel format)."""
    r = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-map", "0:v:0", "-f", "rawvideo", "-"],
                       capture_output=True, check=True)
    w, h = (int(v) for v in subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "stream=width,height", "-of",
         "csv=p=0", str(path)], capture_output=True, text=True, check=True).stdout.strip().split(","))
    size = w * h * 3 // 2  # yuv420p8
    assert len(r.stdout) % size == 0
    return [hashlib.sha256(r.stdout[i:i + size]).hexdigest() for i in range(0, len(r.stdout), size)]


@pytest.fixture(scope="module")
def cut_clip(tmp_path_factory) -> Path:
    """28 frames at 64x36, 25 fps, cuts at 7 and 17, with an AAC tone as audio."""
    path = tmp_path_factory.mktemp("clip") / "cuts.mkv"
    bikes, bbb = sample_video("bikes.mp4"), sample_video("bigbuckbunny.mp4")
    graph = ("[0:v]trim=start_frame=0:end_frame=7,setpts=PTS-STARTPTS,scale=64:36,setsar=1[a];"
             "[1:v]trim=start_frame=0:end_frame=10,setpts=PTS-STARTPTS,scale=64:36,setsar=1[b];"
             "[0:v]trim=start_frame=120:end_frame=131,setpts=PTS-STARTPTS,scale=64:36,setsar=1[c];"
             "[a][b][c]concat=n=3:v=1:a=0,fps=25,format=yuv420p[v]")
    subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-y", "-i", str(bikes), "-i", str(bbb),
                    "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000:duration=1.12",
                    "-filter_complex", graph, "-map", "[v]", "-map", "2:a", "-c:v", "ffv1", "-c:a", "aac",
                    str(path)], check=True, timeout=120)
    return path


def job_args(clip, model, *extra) -> list:
    return [clip, *extra[:1], "--model", model, "--scale", 2, "--scene-cuts", CUTS, "--codec", "ffv1", *extra[1:]]


@pytest.fixture(scope="module")
def single_render(cut_clip, tiny_model_path, tmp_path_factory) -> list[str]:
    """The single-process ffv1 render's decoded frames (the reference)."""
    out = tmp_path_factory.mktemp("single") / "single.mkv"
    r = cli(*job_args(cut_clip, tiny_model_path, out))
    assert r.returncode == 0, r.stderr
    frames = decoded_sha(out)
    assert len(frames) == FRAMES
    return frames


def test_scene_cuts_and_start_use_the_source_relation(cut_clip, tiny_model_path):
    """graph.build: a trimmed range keeps source frame start-1 as frame start's reference; the cut
    frames (7, 17) are their own reference, the others use n-1."""
    from vsdloral.scripts.graph import build

    clip = build({"src": str(cut_clip), "model": str(tiny_model_path), "scale": "2", "device": "cpu",
                  "dtype": "fp32", "scene_cuts": CUTS, "start": "5", "end": "19"})
    refs = [int(clip.get_frame(i).props["DLoRALReference"]) for i in range(clip.num_frames)]
    assert refs == [n if n in (7, 17) else n - 1 for n in range(5, 19)]


def _listeners(root: psutil.Process) -> set[tuple[str, int]]:
    found = set()
    for p in [root, *root.children(recursive=True)]:
        try:
            found |= {(c.laddr.ip, c.laddr.port) for c in p.net_connections(kind="inet")
                      if c.status == psutil.CONN_LISTEN}
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


def _procs(pred) -> list[psutil.Process]:
    out = []
    for proc in psutil.process_iter(["cmdline", "ppid"]):
        try:
            if pred(" ".join(proc.info["cmdline"] or [])):
                out.append(proc)
        except psutil.NoSuchProcess:
            pass
    return out


def _kill_a_worker_mid_chunk(work: Path) -> int | None:
    """SIGKILL the Ray worker of an encoder that is writing a chunk's temporary file (so the worker
    is in the middle of that chunk); its pid, or None when none is writing right now."""
    for enc in _procs(lambda cmd: str(work) in cmd and ".part.nut" in cmd and cmd.startswith("ffmpeg")):
        try:
            worker = psutil.Process(enc.info["ppid"])
            if "render_chunk_task" in " ".join(worker.cmdline()):
                worker.send_signal(signal.SIGKILL)
                return worker.pid
        except psutil.NoSuchProcess:
            pass
    return None


def test_chunked_equals_single_with_a_worker_killed_on_loopback(cut_clip, tiny_model_path, single_render, tmp_path):
    """``--workers 2 --chunk-frames 7``: one worker is killed (SIGKILL) mid-chunk, Ray reruns its
    chunk, and the joined output equals the single-process render bit for bit. Every listening
    socket of the run's processes (driver, GCS, raylet, workers) is on 127.0.0.1. (One run checks
    all three: each Ray start costs ~15-30 s on 2 cores.)"""
    out, work = tmp_path / "chunked.mkv", tmp_path / "work"
    p = subprocess.Popen(_cli_argv(*job_args(cut_clip, tiny_model_path, out, "--workers", 2, "--chunk-frames", 7,
                                             "--work-dir", work)),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    listening: set = set()
    killed = None
    root = psutil.Process(p.pid)
    try:
        deadline = time.monotonic() + 400
        while p.poll() is None and time.monotonic() < deadline:
            listening |= _listeners(root)
            if killed is None:
                killed = _kill_a_worker_mid_chunk(work)
            time.sleep(0.05)
        out_text, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, err
    assert out_text == ""
    assert killed is not None, f"no worker was caught mid-chunk: {err}"
    assert decoded_sha(out) == single_render
    assert "audio" in subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=codec_type", "-of", "csv=p=0",
                                      str(out)], capture_output=True, text=True).stdout
    assert listening, "no listening socket of Ray's was seen"
    assert {ip for ip, _ in listening} <= {"127.0.0.1", "::ffff:127.0.0.1"}, listening
    assert sorted(x.name for x in tmp_path.iterdir()) == ["chunked.mkv"]  # work folder removed
    assert "4 chunks of 7" in err


def _outliving(procs: list[psutil.Process], seconds: float) -> list[str]:
    """The command lines of ``procs`` still running (zombies count as gone) after ``seconds``;
    those are killed."""
    deadline = time.monotonic() + seconds
    alive = list(procs)
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        still = []
        for proc in alive:
            try:
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    still.append(proc)
            except psutil.NoSuchProcess:
                pass
        alive = still
    out = []
    for proc in alive:
        try:
            out.append(" ".join(proc.cmdline())[:80])
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    return out


# The driver as `python -m vsdloral`, with storage that shows chunk 0 one count late and chunk 1 later
# than the driver's re-counts, and a check, where the work folder is removed, that the lock is held.
_LAGGING_DRIVER = r"""
import fcntl, os, sys
import vsdloral.distributed.driver as d
from vsdloral.cli import main

d.RECOUNT_PAUSES = (0.01, 0.01, 0.01)
real_count, counts = d.count_frames, {}

def lagging(path):
    name = os.path.basename(str(path))
    counts[name] = counts.get(name, 0) + 1
    if (name, counts[name]) in {("chunk_00000.nut", 1), *(("chunk_00001.nut", i) for i in range(1, 5))}:
        return None
    return real_count(path)

real_remove = d._remove_work_dir

def remove(work_dir, m):
    fd = os.open(work_dir / "lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        print("TEST: work folder removed outside the lock", file=sys.stderr)
    except BlockingIOError:
        print("TEST: work folder removed inside the lock", file=sys.stderr)
    finally:
        os.close(fd)
    real_remove(work_dir, m)

d.count_frames, d._remove_work_dir = lagging, remove
sys.exit(main(sys.argv[1:]))
"""


def test_chunks_storage_shows_late_are_recounted_then_rendered_again(cut_clip, tiny_model_path, single_render,
                                                                       tmp_path):
    """A finished chunk the driver cannot count yet (shared storage catching up) is counted again
    (chunk 0: found on the second count) and, still missing after the re-counts, rendered again
    (chunk 1), not fatal; the output is the single-process render's. The work folder is removed
    while the driver still holds its lock."""
    out, work = tmp_path / "lag.mkv", tmp_path / "work"
    argv = _cli_argv(*job_args(cut_clip, tiny_model_path, out, "--workers", 1, "--chunk-frames", 14,
                               "--work-dir", work))
    r = subprocess.run([sys.executable, "-c", _LAGGING_DRIVER, *argv[3:]], capture_output=True, text=True,
                       timeout=400, env=ENV)
    assert r.returncode == 0, r.stderr
    again = re.findall(r"chunk (\d+): the driver counts no frames in .*; rendering it again", r.stderr)
    assert again == ["1"], r.stderr
    assert "TEST: work folder removed inside the lock" in r.stderr
    assert not work.exists()
    assert decoded_sha(out) == single_render


def _start_head(env: dict) -> tuple[subprocess.Popen, int]:
    """``ray start --head --block`` on the loopback (token auth from ``env``); returns it and its port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    head = subprocess.Popen([str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", "--port",
                             str(port), "--num-cpus", "2", "--node-ip-address", "127.0.0.1", "--include-dashboard",
                             "false", "--disable-usage-stats"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env, start_new_session=True)
    return head, port


def _stop_head(head: subprocess.Popen, port: int) -> None:
    current = Path("/tmp/ray/ray_current_cluster")  # `ray start` leaves its address there
    try:
        if current.read_text().strip() == f"127.0.0.1:{port}":
            current.unlink()
    except OSError:
        pass
    try:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait(timeout=30)
    except ProcessLookupError:
        pass


def test_driver_killed_then_resumed_on_a_cluster(cut_clip, tiny_model_path, single_render, tmp_path):
    """A local run (1 worker, 7 chunks of 4) loses its driver to SIGKILL after two chunks; one done
    chunk is then damaged. Another job in that work folder is refused; the same job, resumed by
    joining a running cluster (``--ray 127.0.0.1:PORT``, token auth), renders exactly the chunks not
    done plus the damaged one, and the output equals the single-process render."""
    out, work = tmp_path / "resumed.mkv", tmp_path / "work"
    args = job_args(cut_clip, tiny_model_path, out, "--chunk-frames", 4, "--work-dir", work)
    p = subprocess.Popen(_cli_argv(*args, "--workers", 1), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         env=ENV, start_new_session=True)
    manifest = work / "manifest.json"
    tree: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 300
        while p.poll() is None and time.monotonic() < deadline:
            try:
                tree = [psutil.Process(p.pid), *psutil.Process(p.pid).children(recursive=True)]
                done = [c for c in json.loads(manifest.read_text())["chunks"] if c["done"]]
            except (OSError, ValueError, psutil.NoSuchProcess):
                done = []
            if len(done) >= 2:
                break
            time.sleep(0.05)
        assert p.poll() is None, f"the run ended before the driver could be killed: {p.stderr.read()}"
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
        # every process of the run (GCS, raylet, workers, encoders and Ray's agents, which alone
        # would linger for minutes) is gone within a few seconds of the driver
        survivors = _outliving(tree, 5.0)
    assert not survivors, f"processes outlived the killed driver by 5 s: {survivors}"
    assert not out.exists()
    state = json.loads(manifest.read_text())
    done = {c["index"] for c in state["chunks"] if c["done"]}
    assert 2 <= len(done) < 7, done
    # a done chunk damaged after the fact (cut to 2 frames) must be found and rendered again
    damaged = min(done)
    chunk = work / "chunks" / state["chunks"][damaged]["file"]
    short = chunk.with_name("short.nut")
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(chunk), "-frames:v", "2", "-c", "copy", str(short)],
                   check=True)
    short.replace(chunk)

    # another job (another model) in the same work folder is refused before anything runs
    other = tmp_path / "other.safetensors"
    from vsdloral.model.init import init_model

    init_model("tiny", seed=1).save(other)
    r = cli(*job_args(cut_clip, other, tmp_path / "other.mkv", "--chunk-frames", 4, "--work-dir", work,
                      "--workers", 1))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "different job" in r.stderr and "model_sha256" in r.stderr
    assert json.loads(manifest.read_text()) == state
    # chunks rendered by another torch (or vsdloral, ffmpeg, CPU level) are not joined with this one's
    other_torch = json.loads(manifest.read_text())
    other_torch["job"]["runtime"]["torch"] = "0.0.0+elsewhere"
    manifest.write_text(json.dumps(other_torch))
    r = cli(*args, "--workers", 1)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "different job" in r.stderr and "runtime.torch '0.0.0+elsewhere'" in r.stderr, r.stderr
    manifest.write_text(json.dumps(state))

    env = {**ENV, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": os.urandom(16).hex(), "RAY_USAGE_STATS_ENABLED": "0"}
    head, port = _start_head(env)
    try:
        for _ in range(90):  # the head takes a while to come up
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(1)
        r = cli(*args, "--ray", f"127.0.0.1:{port}", "--workers", 2, env=env)
    finally:
        _stop_head(head, port)
    assert r.returncode == 0, r.stderr
    m = re.search(r"resuming: (\d+) done, rendering ([\d,-]+)", r.stderr)
    assert m, r.stderr
    rendered = set()
    for part in m.group(2).split(","):
        a, _, b = part.partition("-")
        rendered |= set(range(int(a), int(b or a) + 1))
    assert rendered == (set(range(7)) - done) | {damaged}
    assert f"chunk {damaged}: 2 frames instead of 4" in r.stderr
    assert decoded_sha(out) == single_render
    assert not work.exists()


@pytest.mark.parametrize("case", ["missing input", "unreadable input", "zero frames", "workers 0", "unknown device",
                                  "absent cuda device", "unreachable ray", "not a work folder", "ffv1 in mp4",
                                  "ray not installed"])
def test_bad_input_is_one_line(case, cut_clip, tiny_model_path, tmp_path):
    out = tmp_path / "o.mkv"
    base = ["--model", tiny_model_path, "--scale", 2]
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00not a video" * 100)
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "notes.txt").write_text("mine")
    runs = {
        "missing input": ([tmp_path / "nope.mkv", out, "--workers", 2], "no such input file"),
        "unreadable input": ([junk, out, "--workers", 2], "cannot read"),
        "zero frames": ([cut_clip, out, "--workers", 2, "--start", 40], "no frames in range"),
        "workers 0": ([cut_clip, out, "--workers", 0], "--workers must be >= 1"),
        "unknown device": ([cut_clip, out, "--workers", 2, "--device", "tpu"], "unknown device"),
        "absent cuda device": ([cut_clip, out, "--devices", "cuda:7"], "cuda:7"),
        "unreachable ray": ([cut_clip, out, "--ray", "127.0.0.1:9"], "cannot reach a Ray cluster"),
        "not a work folder": ([cut_clip, out, "--workers", 1, "--work-dir", stray], "no manifest.json"),
        "ffv1 in mp4": ([cut_clip, tmp_path / "o.mp4", "--codec", "ffv1"], "use a .mkv output"),
        "ray not installed": ([cut_clip, out, "--workers", 2], "vsdloral[cluster]"),
    }
    argv, expected = runs[case]
    cmd = _cli_argv(*argv, *base)
    if case == "ray not installed":  # Ray missing: the import fails as it would without the extra
        cmd = [sys.executable, "-c", "import sys; sys.modules['ray'] = None; from vsdloral.cli import main; "
               "sys.exit(main(sys.argv[1:]))", *cmd[3:]]
    t0 = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=ENV)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], r.stderr
    assert time.monotonic() - t0 < 60
    assert not out.exists()
    assert (stray / "notes.txt").read_text() == "mine" and sorted(x.name for x in stray.iterdir()) == ["notes.txt"]


def test_chunk_encodes_join_without_reencoding(cut_clip, tiny_model_path, tmp_path):
    """x264 and x265 chunks (closed GOPs, B-frames) joined by stream copy into MP4 and Matroska: every
    frame is there, decodes cleanly and equals the chunks' own frames; timestamps are exact."""
    from vsdloral.distributed.concat import concat
    from vsdloral.distributed.render import render_chunk
    from vsdloral.encoding import resolved

    graph = {"src": str(cut_clip), "model": str(tiny_model_path), "scale": "2", "device": "cpu", "dtype": "fp32"}
    for codec in ("x264", "x265"):
        d = tmp_path / codec
        d.mkdir()
        spec = {"graph": graph, "codec": resolved(codec, None, "ultrafast"), "chunk_dir": str(d), "threads": 1}
        infos = [render_chunk(spec, i, a, b) for i, (a, b) in enumerate([(0, 9), (9, 16)])]
        chunks = [(d / f"chunk_{i['index']:05d}.nut", i["frames"], i["fps"]) for i in infos]
        assert [i["frames"] for i in infos] == [9, 7] and infos[0]["fps"] == [25, 1]
        own = decoded_sha(chunks[0][0]) + decoded_sha(chunks[1][0])
        for fmt, ext in (("mp4", "mp4"), ("matroska", "mkv")):
            out = d / f"joined.{ext}"
            concat(chunks, d / "list.txt", cut_clip, out, fmt, codec, [], ["-c:a", "copy"])
            assert decoded_sha(out) == own
            errors = subprocess.run(["ffmpeg", "-v", "error", "-i", str(out), "-f", "null", "-"],
                                    capture_output=True, text=True).stderr
            assert errors == ""
            pts = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
                                  "packet=pts_time", "-of", "csv=p=0", str(out)], capture_output=True,
                                 text=True).stdout.split()
            assert [round(float(t) - float(min(pts, key=float)), 3) for t in sorted(pts, key=float)] == \
                [round(n / 25, 3) for n in range(16)]
        if codec == "x265":
            tag = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=codec_tag_string", "-of",
                                  "csv=p=0", str(d / "joined.mp4")], capture_output=True, text=True).stdout
            assert "hvc1" in tag


def test_gpu_placement_without_a_gpu(monkeypatch):
    """--devices/--workers -> Ray resources, with CUDA faked: ids go through CUDA_VISIBLE_DEVICES,
    workers share GPUs evenly, a GPU listed twice or an uneven split is a one-line error. The local
    instance is started (Ray faked) with the physical ids in CUDA_VISIBLE_DEVICES and asks Ray for
    exactly those GPUs and one CPU slot per worker."""
    import argparse

    import torch

    from vsdloral.distributed import cluster

    from vsdloral.distributed.driver import placement
    from vsdloral.distributed.errors import DistributedError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6,7")

    def where(**kw):
        base = {"workers": None, "devices": None, "device": None, "ray": None, "chunk_frames": None}
        return placement(argparse.Namespace(**{**base, **kw}))

    inits = []

    class FakeRay:
        def init(self, **kw):
            inits.append({**kw, "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES")})

    for key in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_USAGE_STATS_ENABLED",
                "PATH"):  # start_local sets these in the environment: restored after the test
        monkeypatch.setenv(key, os.environ.get(key, ""))
    monkeypatch.setattr(cluster, "_import_ray", FakeRay)
    monkeypatch.setattr(cluster, "start_reaper", lambda: None)

    def started(w) -> tuple:
        cluster.start_local(w.workers, w.gpu_ids)
        kw = inits.pop()
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6,7")  # as before the start, for the next placement
        return kw["CUDA_VISIBLE_DEVICES"], kw["num_gpus"], kw["num_cpus"]

    w = where(devices="cuda:0,cuda:2")
    assert (w.kind, w.gpu_ids, w.workers, w.task_resources()) == ("cuda", ["4", "7"], 2, {"num_cpus": 1, "num_gpus": 1})
    assert started(w) == ("4,7", 2, 2)
    w = where(devices="cuda:1", workers=2)
    assert w.gpu_ids == ["6"] and w.task_resources()["num_gpus"] == 0.5
    assert started(w) == ("6", 1, 2)
    w = where(workers=3)  # no device given: every visible GPU
    assert w.gpu_ids == ["4", "6", "7"] and w.task_resources()["num_gpus"] == 1
    assert started(w) == ("4,6,7", 3, 3)
    w = where(device="cpu", workers=2)  # CPU workers: no GPU asked for, the visible ones left alone
    assert w.gpu_ids is None and w.task_resources()["num_gpus"] == 0
    assert started(w) == ("4,6,7", 0, 2)
    assert where(device="cpu", workers=2, threads=3).threads == 3  # --threads: each CPU worker's count
    w = where(ray="auto")
    assert w.address == "auto" and w.kind is None
    assert where(ray="auto", device="cuda").task_resources() == {"num_cpus": 1, "num_gpus": 1}
    for kw, msg in [({"devices": "cuda:0,cuda:0"}, "twice"), ({"devices": "cuda:0,cuda:1", "workers": 3}, "multiple"),
                    ({"devices": "cuda:5"}, "does not exist"), ({"devices": "cpu"}, "CUDA devices"),
                    ({"ray": "auto", "devices": "cuda:0"}, "local run"), ({"ray": "auto", "device": "cuda:1"}, "cpu or cuda"),
                    ({"devices": "cuda:0", "device": "cuda"}, "not both")]:
        with pytest.raises(DistributedError, match=msg):
            where(**kw)


def test_runtime_identity_and_nodes_that_differ(monkeypatch):
    """The job records vsdloral, torch and ffmpeg versions and the CPU level; a cluster whose nodes
    differ in any of them is one line naming what differs and where, before anything is written."""
    import torch

    import vsdloral
    from vsdloral.distributed import cluster, driver
    from vsdloral.distributed.errors import DistributedError
    from vsdloral.distributed.runtime import ffmpeg_version, runtime_identity

    rt = runtime_identity()
    assert rt == {"vsdloral": vsdloral.__version__, "torch": torch.__version__, "ffmpeg": ffmpeg_version(),
                  "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    assert rt["ffmpeg"] and rt["ffmpeg"][0].isalnum() and " " not in rt["ffmpeg"]
    nodes = {"10.0.0.1": rt, "10.0.0.2": dict(rt), "10.0.0.3": {**rt, "cpu_capability": "AVX2"}}
    monkeypatch.setattr(cluster, "node_runtimes", lambda ray: nodes)
    with pytest.raises(DistributedError) as err:
        driver.cluster_runtime(None)
    line = str(err.value)
    assert "\n" not in line and "cpu_capability differs" in line and "AVX2 on 10.0.0.3" in line
    assert f"{rt['cpu_capability']} on 10.0.0.1, 10.0.0.2" in line
    nodes["10.0.0.3"] = dict(rt)
    assert driver.cluster_runtime(None) == rt
