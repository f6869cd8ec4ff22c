"""fp32 against float64: how far our fp32 restore is from the exact result, next to the floor.

    python -m benchmarks.fp32_floor [--sizes 1040x584,1920x1080] [--dense-size 512x512]
                                    [--vae-preset tiny] [--vae-size 1280x720] [--reps 3] [--json]

Part 1, parity (the authors'-format fixture of tests/authors_format.py, converted; frames 40 and
41 of the bikes clip at each size, colour fix off): the transcription of the authors' forward in
tests/test_parity.py (``Reference``) run in float64 is the exact result. Against it: the same
transcription in fp32 (contiguous NCHW, plain PyTorch: the fp32 floor), ours in fp32 (channels-
last, the converted weights' own tiling) and ours with torch's own channels-last GroupNorm kernel
put back (what vsdloral did before ``vsdloral.model.stable_norm``). ``--dense-size``: the same at
one size with ``tile=0`` for ours and ``tile=None`` (one piece) for the transcription.

Part 2, the VAE (``--vae-preset``, random weights; tiny is the fixture's SD-like VAE): encode and
decode of one frame at ``--vae-size`` in fp32, NCHW; channels-last with torch's GroupNorm;
channels-last with :class:`~vsdloral.model.stable_norm.StableGroupNorm`. Times (wall and this
process's CPU time, the steadier one on a shared machine with ``--threads 1``) are the minimum over
``--reps`` interleaved runs; errors are against the same module in float64 (NCHW). A decoder
other than diffusers' (the lite2 preset's ``LatentSRDecoder``, no GroupNorm) is measured as well.
"""

from __future__ import annotations

import copy
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn

from .common import emit, parse_size, parser, setup_threads
from .tiling import _fixture, _pair

ROOT = Path(__file__).resolve().parent.parent


def _native(module: nn.Module) -> nn.Module:
    """``module`` with every StableGroupNorm turned back into torch's nn.GroupNorm (in place)."""
    from vsdloral.model.stable_norm import StableGroupNorm

    for m in module.modules():
        if type(m) is StableGroupNorm:
            m.__class__ = nn.GroupNorm
    return module


def _errs(a: torch.Tensor, exact: torch.Tensor) -> dict:
    d = (a.double() - exact).abs()
    return {"max": float(d.max()), "mean": float(d.mean())}


def _reference_class():
    sys.path.insert(0, str(ROOT / "tests"))
    from test_parity import Reference  # the transcription of the authors' forward (tests only)

    return Reference


def _float64(ref) -> None:
    """Turn a test_parity.Reference into float64 in place (modules, prompt, checkpoint tensors)."""
    ref.unet.double()
    ref.vae.double()
    ref.prompt = ref.prompt.double()
    ref.bpp = {k: v.double() if v.is_floating_point() else v for k, v in ref.bpp.items()}


def _run64(ref, cur, prv, **kw) -> torch.Tensor:
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # the transcription's own zeros and weights follow it
    try:
        return ref(cur.double(), prv.double(), **kw)
    finally:
        torch.set_default_dtype(old)


def _converted() -> Path:
    """The fixture converted with the prompt the transcription encodes (tests/test_parity.py)."""
    from vsdloral.convert import convert

    root = _fixture().parent  # sd-base and model.pkl, built once by benchmarks.tiling
    out = root / "converted-hello-cat.safetensors"
    if not out.is_file():
        convert(root / "sd-base", root / "model.pkl", out, prompt="hello cat", force=True)
    return out


def parity(sizes: list[tuple[int, int]], dense: tuple[int, int] | None) -> list[dict]:
    """Part 1: max/mean abs distance from float64 of the fp32 transcription and of ours."""
    import vsdloral

    conv = _converted()
    root = conv.parent
    Reference = _reference_class()
    with torch.no_grad():
        r32, r64 = Reference(root / "sd-base", root / "model.pkl"), Reference(root / "sd-base", root / "model.pkl")
    _float64(r64)
    ours = vsdloral.load_model(conv, device="cpu", dtype="fp32")
    native = vsdloral.load_model(conv, device="cpu", dtype="fp32")
    _native(native.vae), _native(native.unet)
    runs = [(w, h, False) for w, h in sizes] + ([(*dense, True)] if dense else [])
    rows = []
    for w, h, is_dense in runs:
        cur, prv = _pair(w, h)
        kw_ref = {"tile": None} if is_dense else {}
        kw_ours = {"tile": 0} if is_dense else {}
        t0 = time.perf_counter()
        exact = _run64(r64, cur, prv, **kw_ref)
        t64 = time.perf_counter() - t0
        tiles = r64.last["tiles"]
        with torch.no_grad():
            floor = _errs(r32(cur, prv, **kw_ref), exact)
        row = {"size": f"{w}x{h}", "dense": is_dense, "latent_tiles": len(tiles) if tiles else 0,
               "rows_of_tiles": len({y for y, _ in tiles}) if tiles else 0, "float64_s": round(t64, 1),
               "transcription_fp32": floor}
        for name, r in (("ours_fp32", ours), ("ours_fp32_torch_groupnorm", native)):
            e = _errs(r.restore(cur, prv, color_fix="none", cfr="dense", **kw_ours), exact)
            e["max_over_floor"] = round(e["max"] / floor["max"], 2)
            e["mean_over_floor"] = round(e["mean"] / floor["mean"], 2)
            row[name] = e
        rows.append(row)
        print(f"fp32_floor: {w}x{h}{' dense' if is_dense else ''}: floor max {floor['max']:.2e}, ours "
              f"{row['ours_fp32']['max']:.2e} ({row['ours_fp32']['max_over_floor']}x), torch's GroupNorm "
              f"{row['ours_fp32_torch_groupnorm']['max']:.2e}", file=sys.stderr)
    return rows


def _vae(preset: str):
    from diffusers import AutoencoderKL

    from vsdloral.model.presets import get_preset

    torch.manual_seed(0)
    return AutoencoderKL.from_config(dict(get_preset(preset).vae)).eval().requires_grad_(False)


def vae(preset: str, size: tuple[int, int], reps: int) -> dict:
    """Part 2: VAE encode / decode times and errors from float64 per memory format and GroupNorm."""
    from vsdloral.model.decoders import build_decoder
    from vsdloral.model.presets import LITE2_DECODER, get_preset
    from vsdloral.model.stable_norm import patch_group_norms

    w, h = size
    cur, _ = _pair(w, h)
    x = cur * 2 - 1
    base = _vae(preset)
    f = 2 ** (len(get_preset(preset).vae["down_block_types"]) - 1)
    with torch.no_grad():
        v64 = copy.deepcopy(base).double()
        z64 = v64.encode(x.double()).latent_dist.mode()
        y64 = v64.decode(z64).sample
    cl = torch.channels_last
    variants = {"nchw": (copy.deepcopy(base), torch.contiguous_format),
                "channels_last_torch_groupnorm": (copy.deepcopy(base).to(memory_format=cl), cl),
                "channels_last_stable": (copy.deepcopy(base).to(memory_format=cl), cl)}
    patch_group_norms(variants["channels_last_stable"][0])
    out = {"preset": preset, "size": f"{w}x{h}", "latent": list(z64.shape[-2:]), "factor": f,
           "threads": torch.get_num_threads(), "load_avg_before": [round(v, 2) for v in os.getloadavg()],
           "variants": {k: dict.fromkeys(("encode_s", "decode_s", "encode_cpu_s", "decode_cpu_s"), float("inf"))
                        for k in variants}}
    z_in = z64.float()
    with torch.no_grad():
        for _ in range(reps):  # interleaved, so that load changes hit every variant alike
            for name, (m, mf) in variants.items():
                row = out["variants"][name]
                xi, zi = x.contiguous(memory_format=mf), z_in.contiguous(memory_format=mf)
                t0, c0 = time.perf_counter(), time.process_time()
                z = m.encode(xi).latent_dist.mode()
                t1, c1 = time.perf_counter(), time.process_time()
                y = m.decode(zi).sample
                t2, c2 = time.perf_counter(), time.process_time()
                for k, v in (("encode_s", t1 - t0), ("decode_s", t2 - t1), ("encode_cpu_s", c1 - c0),
                             ("decode_cpu_s", c2 - c1)):
                    row[k] = min(row[k], v)
                row["encode_err"], row["decode_err"] = _errs(z, z64), _errs(y, y64)
    v = out["variants"]
    for k in ("encode_s", "decode_s", "encode_cpu_s", "decode_cpu_s"):
        out[f"stable_over_torch_{k}"] = round(v["channels_last_stable"][k] / v["channels_last_torch_groupnorm"][k], 3)
        out[f"nchw_over_stable_{k}"] = round(v["nchw"][k] / v["channels_last_stable"][k], 3)
    # our own decoder (no GroupNorm): channels-last vs float64 on a latent of the lite2 shape
    torch.manual_seed(0)
    dec = build_decoder(dict(LITE2_DECODER)).eval().requires_grad_(False)
    zl = torch.randn(1, LITE2_DECODER["latent_channels"], h // 4, w // 4)
    with torch.no_grad():
        y64 = copy.deepcopy(dec).double()(zl.double())
        out["latent_sr_decoder"] = {
            "nchw": _errs(dec(zl), y64),
            "channels_last": _errs(copy.deepcopy(dec).to(memory_format=cl)(zl.contiguous(memory_format=cl)), y64)}
    out["load_avg_after"] = [round(v, 2) for v in os.getloadavg()]
    return out


def _table(res: dict) -> str:
    lines = []
    if res.get("parity"):
        lines += ["fp32 vs float64 (the transcription in float64 is exact), fixture, colour fix off:",
                  f"{'size':>16} {'tiles':>7} {'floor max':>10} {'floor mean':>10} {'ours max':>9} {'ours mean':>9}"
                  f" {'x floor':>8} {'torch GN max':>12} {'x floor':>8}"]
        for r in res["parity"]:
            fl, o, n = r["transcription_fp32"], r["ours_fp32"], r["ours_fp32_torch_groupnorm"]
            name = r["size"] + (" dense" if r["dense"] else "")
            tiles = f"{r['latent_tiles']}/{r['rows_of_tiles']}r"
            lines.append(f"{name:>16} {tiles:>7} {fl['max']:10.2e} {fl['mean']:10.2e} {o['max']:9.2e} {o['mean']:9.2e}"
                         f" {o['max_over_floor']:8.2f} {n['max']:12.2e} {n['max_over_floor']:8.2f}")
    v = res.get("vae")
    if v:
        lines += [f"VAE {v['preset']} at {v['size']} ({v['threads']} threads, load {v['load_avg_before'][0]} -> "
                  f"{v['load_avg_after'][0]}), fp32:",
                  f"{'variant':>30} {'enc s':>7} {'dec s':>7} {'enc cpu':>7} {'dec cpu':>7} {'enc max':>9} {'enc mean':>9}"
                  f" {'dec max':>9} {'dec mean':>9}"]
        for k, r in v["variants"].items():
            lines.append(f"{k:>30} {r['encode_s']:7.3f} {r['decode_s']:7.3f} {r['encode_cpu_s']:7.3f} "
                         f"{r['decode_cpu_s']:7.3f} {r['encode_err']['max']:9.2e} "
                         f"{r['encode_err']['mean']:9.2e} {r['decode_err']['max']:9.2e} {r['decode_err']['mean']:9.2e}")
        for t in ("s", "cpu_s"):
            lines.append(f"stable / torch GroupNorm ({t}): encode {v[f'stable_over_torch_encode_{t}']}, decode "
                         f"{v[f'stable_over_torch_decode_{t}']}; NCHW / stable: encode "
                         f"{v[f'nchw_over_stable_encode_{t}']}, decode {v[f'nchw_over_stable_decode_{t}']}")
        d = v["latent_sr_decoder"]
        lines.append(f"LatentSRDecoder vs float64: NCHW max {d['nchw']['max']:.2e}, channels-last max "
                     f"{d['channels_last']['max']:.2e}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1040x584,1920x1080")
    p.add_argument("--dense-size", default="512x512", help="one size run densely ('' to skip)")
    p.add_argument("--vae-preset", default="tiny")
    p.add_argument("--vae-size", default="1280x720")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--skip-parity", action="store_true")
    p.add_argument("--skip-vae", action="store_true")
    a = p.parse_args(argv)
    setup_threads(a.threads)
    if a.smoke:
        a.sizes, a.dense_size, a.vae_size, a.reps = "136x72", "64x64", "128x96", 1
    res: dict = {}
    if not a.skip_parity:
        sizes = [parse_size(s) for s in a.sizes.split(",") if s]
        res["parity"] = parity(sizes, parse_size(a.dense_size) if a.dense_size else None)
    if not a.skip_vae:
        res["vae"] = vae(a.vae_preset, parse_size(a.vae_size), a.reps)
    emit(res, a.json, _table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
