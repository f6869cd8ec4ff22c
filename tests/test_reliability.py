"""Reliability: hard kills during training, tiny and one-frame clips through the filter."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import vapoursynth as vs

from training.checkpoint import list_checkpoints, load_checkpoint

core = vs.core
ROOT = Path(__file__).resolve().parents[1]


def _train_cmd(clip: Path, out: Path, steps: int, resume: bool = False) -> list[str]:
    cmd = [sys.executable, "-m", "training", "vae", "--preset", "tiny", "--out", str(out), "--data", str(clip),
           "--steps", str(steps), "--batch-size", "2", "--crop", "32", "--device", "cpu",
           "--set", "data.max_frames=16", "--set", "data.holdout=2", "--set", "train.checkpoint_every=3",
           "--set", "train.val_every=0", "--set", "train.progress=false", "--set", "train.keep=2"]
    return cmd + (["--resume"] if resume else [])


def test_kill9_mid_run_then_resume_completes(tmp_path, sample_clip):
    """SIGKILL (no chance to clean up) mid-run: every checkpoint on disk loads, and --resume
    finishes the run from the last complete one. A leftover half-written temp file is ignored."""
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(_train_cmd(sample_clip, out, 400), cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    try:
        while time.time() < deadline and len(list_checkpoints(out / "checkpoints")) < 2:
            time.sleep(0.2)
        assert list_checkpoints(out / "checkpoints"), "no checkpoint was written before the deadline"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # what a kill during a checkpoint write leaves behind: a temp file, never a final name
    (out / "checkpoints" / ".step-99999999.pt.abcd.part").write_bytes(b"\x80\x02 half a pickle")
    kept = list_checkpoints(out / "checkpoints")
    assert kept and all(p.name.startswith("step-") for p in kept)
    for p in kept:
        assert load_checkpoint(p)["task_name"] == "vae"
    last_step = load_checkpoint(kept[-1])["step"]
    target = last_step + 3
    r = subprocess.run(_train_cmd(sample_clip, out, target, resume=True), cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    final = list_checkpoints(out / "checkpoints")[-1]
    assert load_checkpoint(final)["step"] == target


def _rgbs(w: int, h: int, n: int) -> vs.VideoNode:
    clip = core.std.BlankClip(width=w, height=h, format=vs.RGBS, length=n, color=[0.2, 0.5, 0.7])
    return core.std.AddBorders(core.std.Crop(clip, left=1), left=1, color=[0.9, 0.1, 0.3])


@pytest.mark.parametrize("size, scale", [((4, 4), 4), ((2, 2), 4), ((16, 16), 1)])
def test_tiny_frames_are_padded_not_rejected(tiny_restorer, size, scale):
    import vsdloral

    out = vsdloral.upscale(_rgbs(*size, 3), scale, model=tiny_restorer)
    assert (out.width, out.height) == (size[0] * scale, size[1] * scale)
    for f in out.frames():
        assert f.props["DLoRALReference"] in (0, 1)


def test_one_frame_clip(tiny_restorer):
    import vsdloral

    out = vsdloral.upscale(_rgbs(8, 8, 1), 2, model=tiny_restorer)
    assert out.num_frames == 1
    f = out.get_frame(0)
    assert f.props["DLoRALReference"] == 0 and (f.width, f.height) == (16, 16)
