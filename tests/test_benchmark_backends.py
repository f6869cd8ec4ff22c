"""benchmarks.backends runs in its --smoke mode (a subprocess, as a user runs it): three vspipe
processes (torch, OpenVINO bf16, ONNX Runtime fp32) on the tiny model, the fp32 parity check and
the encode-share check, with figures that hold whatever the machine's load."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _pos(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_backends_benchmark_smoke(tmp_path):
    env = {**os.environ, "VSDLORAL_CACHE": str(tmp_path)}  # the graph export goes to a private cache
    proc = subprocess.run([sys.executable, "-m", "benchmarks.backends", "--smoke", "--json", "--threads", "1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout)
    assert (r["out"], r["frames"]) == ("64x48", 3)
    assert set(r["runs"]) == {"torch", "ov-bf16", "ort-fp32"}
    for name, run in r["runs"].items():
        assert _pos(run["fps_steady"]) and _pos(run["s_per_frame"]) and _pos(run["ratio_vs_torch"]), name
        assert run["peak_rss_mb"] > 100, name  # the vspipe process with torch loaded, not a launcher
        assert run["fps_whole"] < run["fps_steady"], name  # the whole run pays for start-up and load
    assert r["runs"]["torch"]["ratio_vs_torch"] == 1.0
    assert r["runs"]["ort-fp32"]["dtype"] == "fp32" and r["runs"]["ov-bf16"]["dtype"] == "bf16"
    # the backends restored the torch default's frames (bf16 against the torch default: coarse)
    assert r["runs"]["ort-fp32"]["fingerprint_max_diff_vs_torch"] < 0.5
    p = r["parity"]
    assert p["ort-fp32"]["max_abs"] < 1e-3 and p["ov-fp32"]["max_abs"] < 1e-3  # fp32 runtimes: parity
    assert p["ov-bf16"]["max_abs"] > p["ov-fp32"]["max_abs"]  # bf16 really ran
    e = r["encode_share"]
    for k in ("openvino_bf16", "openvino_fp32", "torch_fp32"):
        assert 0 < e[k]["share"] < 1 and _pos(e[k]["encode_s"]), k
    assert list(tmp_path.glob("onnx/*/model.onnx"))
