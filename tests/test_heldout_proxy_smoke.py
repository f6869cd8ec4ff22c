"""benchmarks.heldout_proxy --smoke: it runs as a user runs it, on the held-out stills only."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_heldout_proxy_smoke(tmp_path, tiny_model_path, sample_clip):
    """A data folder with one held-out and one training still (a real frame each): the proxy scores
    the model on the held-out one only (a training still that is not an image would fail it), with
    finite NIQE / PSNR-Y / E*warp per LQ kind, and the bicubic upscale beside it."""
    import cv2

    from training.data import read_video

    frame = read_video(sample_clip, 1)[0]
    cv2.imwrite(str(tmp_path / "held.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    (tmp_path / "train.png").write_bytes(b"not an image: never read")
    files = [{"output": "held.png", "split": "holdout"}, {"output": "train.png", "split": "train"}]
    (tmp_path / "manifest.json").write_text(json.dumps({"stills": {"files": files}}))
    proc = subprocess.run([sys.executable, "-m", "benchmarks.heldout_proxy", str(tiny_model_path), "--data", str(tmp_path),
                           "--smoke", "--json", "--threads", "1"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout)
    assert r["frames"] == 2 and list(r["models"]) == [str(tiny_model_path)]
    rows = r["models"][str(tiny_model_path)]
    assert set(rows) == {"bicubic", "realistic", "bicubic bicubic", "realistic bicubic"}
    for deg, row in rows.items():
        assert set(row) == {"psnr_y", "niqe", "ewarp"}
        assert all(math.isfinite(v) for v in row.values()), (deg, row)
        assert row["niqe"] > 0 and row["ewarp"] >= 0
    # the random tiny model restores far worse than a bicubic upscale of the same LQ
    assert rows["bicubic"]["psnr_y"] < rows["bicubic bicubic"]["psnr_y"] - 3
