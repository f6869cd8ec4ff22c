"""Cost per frame of the flow stage: SPyNet plus the warp of the reference latent (SPEC 1 steps 4-5).

    python -m benchmarks.flow [--runs sd21:512x512,sd21:1920x1080,default:1280x720] [--reps 5] [--json]

Every output frame pays it, frame 0 and scene cuts included: their reference is a copy of the
frame, which takes the same path. For each (preset, output size) this times
``vsdloral.model.temporal.warp_reference``, the call ``Restorer`` times as its ``flow`` stage, on
the preset's latent grid (SPyNet at latent resolution, or ``flow_downscale`` times coarser), in
fp32 as the restorer runs it, median of ``--reps`` after a warm-up, for a pair (frame n, frame
n-1) and for a self-reference (frame n, a copy). SPyNet's cost does not depend on its weights, so
a random preset gets a randomly initialised SPyNet and no UNet or VAE is built. ``default`` is
the bundled model: its own SPyNet, and also the ``flow`` stage of whole ``restore_prepared``
calls from ``Restorer.timings`` (alternately with the previous frame and with no reference).
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

from .common import dtype_name, emit, parse_size, parser, setup_threads


def _median_s(fn, reps: int) -> tuple[float, float]:
    """Median wall seconds and median CPU seconds of this process (all its threads) per call.
    On a machine shared with other jobs the CPU time is the steadier figure."""
    fn()  # warm-up
    wall, cpu = [], []
    for _ in range(reps):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def measure(preset: str, size: str, reps: int) -> dict:
    from vsdloral.loading import default_dtype
    from vsdloral.model.presets import get_preset
    from vsdloral.model.spynet import SPyNet
    from vsdloral.model.temporal import flow_input, warp_reference

    w, h = parse_size(size)
    restorer = None
    if preset == "default":
        import vsdloral

        restorer = vsdloral.load_model(None, device="cpu")
        spynet, cfr, vae, dtype = restorer.spynet, restorer.meta.cfr, restorer.meta.vae_config, restorer.dtype
    else:
        p = get_preset(preset)
        spynet, cfr, vae = SPyNet().eval(), p.cfr, p.vae
        dtype = default_dtype(torch.device("cpu"))
    factor = 2 ** (len(vae["block_out_channels"]) - 1)
    lh, lw = -(-h // factor), -(-w // factor)
    g = torch.Generator().manual_seed(0)
    frames = [torch.rand(1, 3, lh * factor, lw * factor, generator=g) * 2 - 1 for _ in range(2)]
    small = [flow_input(x, (lh, lw), cfr.flow_downscale) for x in frames]
    z_ref = torch.randn(1, int(vae.get("latent_channels", 4)), lh, lw, generator=g).to(dtype)
    res = {"preset": preset, "size": size, "latent": f"{lw}x{lh}", "spynet_input": f"{small[0].shape[-1]}x{small[0].shape[-2]}",
           "flow_dtype": "float32", "latent_dtype": dtype_name(dtype), "threads": torch.get_num_threads()}
    with torch.inference_mode():
        res["pair_s"], res["pair_cpu_s"] = _median_s(lambda: warp_reference(spynet, small[0], small[1], z_ref), reps)
        res["self_s"], res["self_cpu_s"] = _median_s(lambda: warp_reference(spynet, small[0], small[0].clone(), z_ref), reps)
    if restorer is not None:
        imgs = [(x + 1) / 2 for x in frames]
        prev, cur = restorer.prepare(imgs[0][..., :h, :w]), restorer.prepare(imgs[1][..., :h, :w])
        restorer.restore_prepared(cur, prev)  # warm-up
        stage = []
        for i in range(reps):
            restorer.timings = {}
            restorer.restore_prepared(cur, prev if i % 2 else None)
            stage.append(restorer.timings["flow"])
        restorer.timings = None
        res["restorer_flow_stage_s"] = statistics.median(stage)
    return res


def table(res: dict) -> str:
    head = (f"{'preset':8} {'output':>10} {'latent':>8} {'SPyNet in':>9} {'pair ms':>8} {'(CPU ms)':>8} "
            f"{'self ms':>8} {'(CPU ms)':>8} {'stage ms':>9}")
    lines = [head, "-" * len(head)]
    for r in res["runs"]:
        stage = r.get("restorer_flow_stage_s")
        lines.append(f"{r['preset']:8} {r['size']:>10} {r['latent']:>8} {r['spynet_input']:>9} {1e3 * r['pair_s']:8.1f} "
                     f"{1e3 * r['pair_cpu_s']:8.1f} {1e3 * r['self_s']:8.1f} {1e3 * r['self_cpu_s']:8.1f} "
                     f"{'' if stage is None else f'{1e3 * stage:9.1f}'}")
    lines.append(f"(wall and process CPU time, medians; flow in fp32; {res['runs'][0]['threads']} torch threads)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--runs", default="sd21:512x512,sd21:1920x1080,default:1280x720",
                   help="comma-separated preset:WxH (preset: a vsdloral preset or 'default', the bundled model)")
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args(argv)
    setup_threads(args.threads)
    if args.device not in (None, "cpu"):
        print("benchmarks.flow: CPU only (the restorer's timings cover CUDA)", file=sys.stderr)
        return 2
    runs = "tiny:64x64,default:64x64" if args.smoke else args.runs
    reps = 1 if args.smoke else args.reps
    out = [measure(*spec.split(":"), reps) for spec in runs.split(",")]
    emit({"runs": out}, args.json, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
