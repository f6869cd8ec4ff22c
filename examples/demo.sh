#!/usr/bin/env bash
# DLoRAL demo: upscale the first ~3 seconds of Big Buck Bunny, shrunk to a small LQ first,
# x4 through vspipe into ffmpeg. The result lands in out/.
#
#   bash examples/demo.sh          (or: make demo)
#
# Environment:
#   VSDLORAL_MODEL  weights file (default: the bundled model, vsdloral/data/default.safetensors)
#   DEMO_SECONDS    seconds of video (default 3)
#   DEMO_LQ         LQ size WxH (default 320x180 -> 1280x720: about 1 s/frame with the bundled model on 2 CPU cores)
#   DEMO_SCALE      upscaling factor (default 4)
#   DEMO_OUT        output file (default out/demo_xSCALE.mkv)
#   DEMO_BACKEND    torch, ov-cpu, ort-cpu, trt, ... (default: $VSDLORAL_BACKEND, else the fastest
#                   installed, vsdloral's backend "auto": OpenVINO on a CPU with the mlrt extra, else
#                   torch; docs/backends.md). Which one runs is said on stderr.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
PY="$ROOT/.venv/bin/python"
[ -x "$PY" ] || PY=$(command -v python3)

SRC=$("$PY" -c 'from vsdloral.samples import sample_video; print(sample_video("bigbuckbunny.mp4"))')
SECONDS_=${DEMO_SECONDS:-3}
LQ=${DEMO_LQ:-320x180}
SCALE=${DEMO_SCALE:-4}
FPS=25  # bigbuckbunny.mp4
FRAMES=$(( SECONDS_ * FPS ))
mkdir -p "$ROOT/out"

MODEL_ARGS=()
if [ -n "${VSDLORAL_MODEL:-}" ]; then
  MODEL_ARGS=(--arg "model=$VSDLORAL_MODEL")
fi

if [ -n "${DEMO_BACKEND:-}" ]; then
  BACKEND=$DEMO_BACKEND
  BACKEND_SAYS="set by DEMO_BACKEND"
elif [ -n "${VSDLORAL_BACKEND:-}" ]; then
  BACKEND=$VSDLORAL_BACKEND
  BACKEND_SAYS="set by VSDLORAL_BACKEND"
else
  # the fastest backend installed: what upscale(backend="auto") runs here
  { read -r BACKEND; read -r BACKEND_SAYS; } < <("$PY" -c \
    'from vsdloral.mlrt.select import auto_backend; print(*auto_backend(), sep="\n")')
fi
MODEL_ARGS+=(--arg "backend=$BACKEND")

OUT=${DEMO_OUT:-"$ROOT/out/demo_x${SCALE}.mkv"}
mkdir -p "$(dirname "$OUT")"
echo "demo: $FRAMES frames of $(basename "$SRC"), LQ $LQ -> x$SCALE" >&2
echo "demo: backend $BACKEND: $BACKEND_SAYS" >&2
CRF=${CRF:-16} bash "$HERE/encode.sh" "$SRC" "$OUT" --arg "frames=$FRAMES" --arg "lq=$LQ" --arg "scale=$SCALE" \
  "${MODEL_ARGS[@]}"
echo "demo: result written to $OUT"
