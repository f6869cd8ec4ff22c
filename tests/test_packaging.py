"""The wheel carries every data file the code reads at run time (not only the editable checkout)."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_ships_the_default_model_and_training_configs(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
                           "-q", "-w", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = tmp_path.glob("vsdloral-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    needed = {p.relative_to(ROOT).as_posix() for p in (ROOT / "training" / "configs").rglob("*.yaml")}
    needed.add("vsdloral/data/default.safetensors")
    # the SD 2.1-base configs that let `vsdloral convert` read a single file offline
    needed |= {p.relative_to(ROOT).as_posix() for p in (ROOT / "vsdloral" / "sd21_base").rglob("*.json")}
    assert "vsdloral/sd21_base/unet/config.json" in needed
    assert {"training/configs/lite.yaml", "training/configs/overlays/full-degradation.yaml"} <= needed
    assert needed <= names, sorted(needed - names)
