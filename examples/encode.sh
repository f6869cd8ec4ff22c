#!/usr/bin/env bash
# Upscale a video with DLoRAL and encode it with x264, keeping the source's audio.
#
#   examples/encode.sh SRC OUT [extra vspipe args, e.g. --arg model=w.safetensors --arg frames=100]
#
# The --arg options are upscale.vpy's (model, scale, frames, lq, cfr, color_fix, tile, device, dtype,
# matrix_in); left out, vsdloral.upscale uses the model's own cfr, colour fix and tiling.
# OUT's extension picks the container (.mkv, .mp4). Progress (vspipe -p) goes to stderr.
# Environment: CRF (default 18), PRESET (default medium).
set -euo pipefail

if [ $# -lt 2 ]; then
  echo "usage: $0 SRC OUT [extra vspipe args]" >&2
  exit 2
fi
SRC=$1
OUT=$2
shift 2
HERE=$(cd "$(dirname "$0")" && pwd)
VENV_BIN="$HERE/../.venv/bin"
if [ -x "$VENV_BIN/vspipe" ]; then
  # VapourSynth's first-run configuration looks for the `vapoursynth` tool on PATH
  export PATH="$VENV_BIN:$PATH"
fi
command -v vspipe >/dev/null || { echo "$0: vspipe not found (make setup, or pip install vapoursynth)" >&2; exit 2; }
command -v ffmpeg >/dev/null || { echo "$0: ffmpeg not found" >&2; exit 2; }
[ -f "$SRC" ] || { echo "$0: no such file: $SRC" >&2; exit 2; }
mkdir -p "$(dirname "$OUT")"

# Write to a temporary name and rename on success: OUT never holds a half-written video.
TMP="$(dirname "$OUT")/.$(basename "$OUT").part.${OUT##*.}"
trap 'rm -f "$TMP"' EXIT
trap 'exit 130' INT TERM

vspipe -p -c y4m "$HERE/upscale.vpy" - --arg "src=$SRC" "$@" \
  | ffmpeg -hide_banner -loglevel error -nostdin -y \
      -f yuv4mpegpipe -i - -i "$SRC" \
      -map 0:v:0 -map '1:a?' -c:a copy \
      -c:v libx264 -preset "${PRESET:-medium}" -crf "${CRF:-18}" \
      "$TMP"
mv -f "$TMP" "$OUT"
echo "wrote $OUT" >&2
