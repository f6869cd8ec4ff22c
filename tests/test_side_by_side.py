"""benchmarks.side_by_side: the crops PNG and the 3-frame strip (one window for every row), and its one-line errors."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from benchmarks.quality import _content, _detailed_window
from benchmarks.side_by_side import QUALITY_CONTENT, main, save_strip

ROOT = Path(__file__).resolve().parent.parent


def _zoomed(img: np.ndarray, y: int, x: int, size: int) -> np.ndarray:
    """What a panel shows of a uint8 RGB frame: the window, 2x nearest."""
    return img[y:y + size, x:x + size].repeat(2, axis=0).repeat(2, axis=1)


def _strip_cell(strip: np.ndarray, row: int, col: int, side: int) -> np.ndarray:
    """Row ``row``, column ``col`` (0 = the first method) of a strip of ``side`` px crops (shown 2x)."""
    top = 28 + row * (2 * side + 4)
    left = 84 + col * (2 * side + 4)
    return strip[top:top + 2 * side, left:left + 2 * side]


def _read_rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def test_side_by_side_smoke(tmp_path, tiny_model_path):
    """Two models (the same file under two labels), the smoke still, the realistic LQ: both PNGs have a column per
    method, the strip a row per frame 1-3, and its ground-truth column is each frame's GT at the one window chosen
    on frame 2's GT."""
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.side_by_side", "--smoke", "--json", "--threads", "1",
                           "--model", f"old={tiny_model_path}", "--model", f"new={tiny_model_path}",
                           "--degradation", "realistic", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout)
    assert r["content"] == "bikes frame 0 (still)"
    assert r["columns"] == ["bicubic", "RRDBNet x4 peer", "old", "new", "ground truth"]
    assert sorted(p.name for p in out.iterdir()) == ["bikes-frame-0--still-realistic-strip.png",
                                                     "bikes-frame-0--still-realistic.png"]
    assert f"wrote {out / 'bikes-frame-0--still-realistic.png'}" in proc.stderr

    # the GT exactly as the benchmark built it (quality's smoke still: lossless, deterministic)
    from training.data import read_video

    a = argparse.Namespace(smoke=True, data=None, seed=0, **QUALITY_CONTENT)
    gt = read_video(Path(_content(a, tmp_path)[-1]["gt"]), 4)
    assert gt.shape == (4, 208, 256, 3)

    # the crops: five 160 px panels shown 2x, 4 px apart, under a 28 px label bar; GT = frame 1 at its detailed window
    crops = _read_rgb(out / "bikes-frame-0--still-realistic.png")
    assert crops.shape == (28 + 320, 5 * 320 + 4 * 4, 3)
    y, x = _detailed_window(gt[1].astype(np.float32) / 255, 160)
    assert np.array_equal(crops[28:, 4 * 324:], _zoomed(gt[1], y, x, 160))

    # the strip: a label column, five 128 px columns shown 2x, three rows 4 px apart under one label bar
    strip = _read_rgb(out / "bikes-frame-0--still-realistic-strip.png")
    assert strip.shape == (28 + 3 * 256 + 2 * 4, 84 + 5 * 256 + 4 * 4, 3)
    y, x = _detailed_window(gt[2].astype(np.float32) / 255, 128)
    assert r["images"][0]["strip_window"] == [y, x] and r["images"][0]["strip_frames"] == [1, 2, 3]
    for row, k in enumerate((1, 2, 3)):
        assert np.array_equal(_strip_cell(strip, row, 4, 128), _zoomed(gt[k], y, x, 128)), f"frame {k}"
        # the two labels of one file restore alike; the rows are different frames (the pan moves)
        assert np.array_equal(_strip_cell(strip, row, 2, 128), _strip_cell(strip, row, 3, 128))
    assert not np.array_equal(_strip_cell(strip, 0, 4, 128), _strip_cell(strip, 2, 4, 128))
    # detail over the GT's flat regions, per column: none for the GT itself, the same for one file's two labels
    ex = r["images"][0]["flat_excess"]
    assert list(ex) == r["columns"] and ex["ground truth"] == 0 and ex["old"] == ex["new"]
    assert all(v >= 0 for v in ex.values()) and "flat_excess" in subprocess.run(
        [sys.executable, "-m", "benchmarks.side_by_side", "--smoke", "--threads", "1", "--model", f"m={tiny_model_path}",
         "--degradation", "realistic", "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300).stdout


def test_strip_keeps_the_middle_frames_window(tmp_path):
    """The most detailed window moves from frame to frame here; every row still shows the middle frame's."""
    rng = np.random.default_rng(0)
    frames = np.full((4, 192, 256, 3), 0.5, np.float32)
    for k, (y, x) in enumerate([(0, 0), (0, 128), (64, 64), (128, 192)]):
        frames[k, y:y + 64, x:x + 64] = rng.random((64, 64, 3))
    path, window, size = save_strip(tmp_path / "s.png", [("a", frames * 0.5), ("ground truth", frames)], size=64)
    assert (window, size) == ((64, 64), 64)
    strip = _read_rgb(path)
    assert strip.shape == (28 + 3 * 128 + 2 * 4, 84 + 2 * 128 + 4, 3)
    q = np.rint(frames * 255).astype(np.uint8)
    for row, k in enumerate((1, 2, 3)):
        assert np.array_equal(_strip_cell(strip, row, 1, 64), _zoomed(q[k], 64, 64, 64)), f"frame {k}"


@pytest.mark.parametrize("args, message", [
    (["--model", "no-equals-sign"], "--model expects LABEL=PATH"),
    (["--model", "=x.safetensors"], "--model expects LABEL=PATH"),
    (["--model", "new=/nonexistent/x.safetensors"], "--model new: no such file /nonexistent/x.safetensors"),
    (["--content", "nowhere"], "unknown --content 'nowhere'; known: 'carphone_pristine', 'bikes frame 0 (still)'"),
])
def test_side_by_side_errors(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as e:
        main(["--smoke", "--threads", "1", "--out", str(tmp_path), *args])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"side_by_side: {message}") and "\n" not in err, err
    assert not any(tmp_path.iterdir())
