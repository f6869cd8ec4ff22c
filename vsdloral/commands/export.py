"""``vsdloral export WxH``: write the ONNX graph of a model's per-frame computation for one output size.

The graph (:mod:`vsdloral.runtime.onnx_export`): input ``input`` (1, 6, H, W), the current frame's
RGB then the reference frame's, in [0,1]; output ``output`` (1, 3, H, W) in [0,1]. Without
``--output`` the graph is exported into (or found in) the cache and its path printed on stdout.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from ..cli import CLIError


def register(sub) -> None:
    p = sub.add_parser("export", help="write the ONNX graph of a model for one output size (vs-mlrt, ONNX Runtime, "
                                      "OpenVINO, TensorRT)", description=__doc__.splitlines()[0])
    p.add_argument("size", help="output size WxH, e.g. 1280x720 (the size of the frames the graph restores)")
    p.add_argument("--model", help="vsdloral weights file (default: the bundled model)")
    p.add_argument("-o", "--output", help="write the graph here (.onnx; weights over 2 GB go to OUTPUT.data); "
                                          "default: the cache ($VSDLORAL_CACHE/onnx), path printed on stdout")
    p.add_argument("--cfr", help="dense, topk or window (default: the model's own)")
    p.add_argument("--cfr-window", type=int, help="window radius for --cfr window (default: the model's own)")
    p.add_argument("--color-fix", help="adain, wavelet, lowpass or none (default: the model's own, else adain)")
    p.add_argument("--tile", type=int, help="the authors' latent tiles, side in output pixels (default: the model's "
                                            "own; 0 = one piece)")
    p.add_argument("--tile-overlap", type=int, help="latent tile overlap in output pixels (default: the model's own)")
    p.add_argument("--vae-tile", type=int, default=0, metavar="PX",
                   help="VAE tiles inside the graph, in pixels (default 0: none; the runtime plans its own memory)")
    p.add_argument("--for-precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                   help="what the runtime computes in: fp32 (default) keeps GroupNorm and colour-fix statistics at "
                        "fp32 accuracy over a whole frame; bf16/fp16 leave them to the runtime's own fused kernels "
                        "(faster, as accurate as those precisions allow)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.set_defaults(func=run)


def parse_size(text: str) -> tuple[int, int]:
    """``"1280x720"`` -> (1280, 720); ``CLIError`` for anything else."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m or int(m[1]) < 1 or int(m[2]) < 1:
        raise CLIError(f"size must be WIDTHxHEIGHT in pixels, e.g. 1280x720, got {text!r}")
    return int(m[1]), int(m[2])


def run(args) -> int:
    width, height = parse_size(args.size)
    if args.model is not None and not Path(args.model).is_file():
        raise CLIError(f"no weights file at {args.model}")
    out = None if args.output is None else Path(args.output)
    if out is not None and out.suffix != ".onnx":
        raise CLIError(f"--output must end in .onnx, got {args.output!r}")
    from ..runtime.graph_cache import cached_graph
    from ..runtime.onnx_export import OnnxUnavailable

    try:
        path = cached_graph(args.model, width, height, opset=args.opset, cfr=args.cfr, cfr_window=args.cfr_window,
                            color_fix=args.color_fix, tile=args.tile, tile_overlap=args.tile_overlap,
                            vae_tile=args.vae_tile, exact_reductions=args.for_precision == "fp32")
    except OnnxUnavailable as exc:
        raise CLIError(str(exc)) from None
    if out is None:
        print(path)
        return 0
    copy_graph(path, out)
    print(out)
    return 0


def copy_graph(src: Path, out: Path) -> None:
    """Copy the graph at ``src`` (and its external data, renamed ``<out>.data``) to ``out``, each
    file written atomically."""
    from ..runtime.onnx_export import graph_files, require_onnx
    from ..utils.atomic import atomic_path

    files = graph_files(src)
    if len(files) == 1:
        with atomic_path(out) as tmp:
            shutil.copyfile(src, tmp)
        return
    onnx = require_onnx()
    model = onnx.load(str(src), load_external_data=False)  # the graph names its data file: rename it
    for t in model.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = out.name + ".data"
    with atomic_path(out.with_name(out.name + ".data")) as tmp:
        shutil.copyfile(files[1], tmp)
    with atomic_path(out) as tmp:
        onnx.save_model(model, str(tmp))
