"""benchmarks.flow runs in its --smoke mode (a subprocess, as a user runs it) and reports figures
that follow from the presets' geometry; its restorer runs include self-references, whose flow
stage must be timed (it is not skipped)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_flow_benchmark_smoke():
    proc = subprocess.run([sys.executable, "-m", "benchmarks.flow", "--smoke", "--json", "--threads", "1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = {r["preset"]: r for r in json.loads(proc.stdout)["runs"]}
    assert set(runs) == {"tiny", "default"}
    # 64x64 output: the tiny VAE is x8 and SPyNet runs on its latent grid; the bundled (lite) model's
    # VAE is x4 and its SPyNet runs flow_downscale = 4 times coarser
    assert (runs["tiny"]["latent"], runs["tiny"]["spynet_input"]) == ("8x8", "8x8")
    assert (runs["default"]["latent"], runs["default"]["spynet_input"]) == ("16x16", "4x4")
    for r in runs.values():
        assert r["flow_dtype"] == "float32" and r["threads"] == 1
        for k in ("pair_s", "pair_cpu_s", "self_s", "self_cpu_s"):
            assert math.isfinite(r[k]) and 0 < r[k] < 60, (k, r[k])
    assert 0 < runs["default"]["restorer_flow_stage_s"] < 60
