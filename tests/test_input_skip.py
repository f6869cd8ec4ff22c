"""Issue 31: a latent-grid decoder that also sees the input image (``input_skip``), and the mid-band
term. The image is the bicubic upscale the encoder was given; the decoder takes it pixel-unshuffled
into its trunk and its linear path, both zero-initialised."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from decoder_stage_setup import TINY_DECODER
from loss_checks import descend

from vsdloral.model.decoders import (build_decoder, check_decoder_config, decode_latents, decoder_config_of,
                                     needs_image, swap_decoder)
from vsdloral.model.init import init_model
from vsdloral.model.weights import DLoRALModel, read_metadata

SKIP = {**TINY_DECODER, "input_skip": True}


def _tiny_with_skip(seed: int = 0, image_weights: float = 0.1, image_path: str = "grid",
                    **extra) -> DLoRALModel:
    """The tiny model with the tiny latent-grid decoder with ``input_skip`` (on ``image_path``, plus
    ``extra`` decoder_config keys), random weights, the image paths set to ``N(0, image_weights)`` (0:
    their zero initialisation)."""
    m = init_model("tiny", seed=seed)
    cfg = check_decoder_config({**SKIP, "image_path": image_path, **extra}, latent_channels=m.meta.latent_channels, factor=m.meta.vae_factor)
    swap_decoder(m.vae, cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in m.vae.decoder.named_parameters():
            if name.startswith(("image_in.", "image_skip.", "image_refine.")):
                p.copy_(torch.randn(p.shape, generator=g) * image_weights)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    m.meta.decoder_config = decoder_config_of(m.vae)
    return m


def test_starts_as_the_plain_decoder_then_uses_the_image():
    plain_cfg = check_decoder_config(TINY_DECODER, latent_channels=4, factor=4)
    skip_cfg = check_decoder_config(SKIP, latent_channels=4, factor=4)
    assert "input_skip" not in plain_cfg and skip_cfg["input_skip"] is True
    torch.manual_seed(0)
    plain, skip = build_decoder(plain_cfg), build_decoder(skip_cfg)
    with torch.no_grad():
        plain.conv_out.weight.normal_(0, 0.1)
    missing, unexpected = skip.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and sorted(missing) == ["image_in.bias", "image_in.weight", "image_skip.bias",
                                                  "image_skip.weight"]
    z, image = torch.randn(2, 4, 5, 6), torch.rand(2, 3, 20, 24) * 2 - 1
    with torch.no_grad():
        assert torch.equal(skip(z, image=image), plain(z))  # zero-initialised: no change
        skip.image_skip.weight.normal_(0, 0.1)
        a, b = skip(z, image=image), skip(z, image=image.flip(-1))
    assert not torch.equal(a, plain(z)) and not torch.equal(a, b)
    # the image's pixels land where the output's are: a change in one 4x4 cell moves only its neighbourhood
    changed = image.clone()
    changed[:, :, 8:12, 8:12] = 0.9
    with torch.no_grad():
        d = (skip(z, image=changed) - a).abs().amax(dim=(0, 1))
    assert d[8:12, 8:12].min() > 0 and d[:4].max() == 0 and d[:, 16:].max() == 0
    with pytest.raises(ValueError, match="input_skip"):
        skip(z)
    with pytest.raises(ValueError, match="input_skip must be true or false"):
        check_decoder_config({**SKIP, "input_skip": "yes"}, latent_channels=4, factor=4)
    with pytest.raises(ValueError, match="input_skip"):
        skip(z, image=image[..., :-4])


def _image_part(decoder, z: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """What the image adds to the decoder's output (its trunk path at zero: the linear path alone)."""
    with torch.no_grad():
        return decoder(z, image=image) - decoder(z, image=torch.zeros_like(image))


@pytest.mark.parametrize("path", ["grid", "full"])
def test_full_resolution_image_path_is_the_same_filter_at_every_pixel(path):
    """``image_path: full`` adds a 3x3 conv of the image at full resolution: moving the image by one
    pixel moves its contribution by one pixel. The grid path maps each 4x4 block by per-phase weights,
    so its contribution to a one-pixel move changes shape (the beaded edges); this is what the full
    path exists for, so the check runs on both and must fail on the grid."""
    cfg = check_decoder_config({**SKIP, "image_path": path}, latent_channels=4, factor=4)
    assert cfg.get("image_path", "grid") == path
    torch.manual_seed(0)
    dec = build_decoder(cfg)
    z, image = torch.randn(1, 4, 6, 6), torch.rand(1, 3, 24, 24) * 2 - 1
    with torch.no_grad():
        assert torch.equal(dec(z, image=image), dec(z, image=torch.zeros_like(image)))  # zero-initialised
        dec.image_skip.weight.normal_(0, 0.1)
    a = _image_part(dec, z, image)
    b = _image_part(dec, z, torch.roll(image, 1, dims=-1))
    err = (torch.roll(a, 1, dims=-1) - b)[..., 2:-2, 2:-2].abs().max().item()
    if path == "full":
        assert err < 1e-5
        assert dec.config["image_path"] == "full" and dec.image_skip.weight.shape == (3, 3, 3, 3)
    else:
        assert err > 1e-2 and "image_path" not in dec.config


def test_image_path_is_checked():
    with pytest.raises(ValueError, match="image_path must be one of grid, full"):
        check_decoder_config({**SKIP, "image_path": "pixel"}, latent_channels=4, factor=4)
    with pytest.raises(ValueError, match="image_path 'full' needs input_skip"):
        check_decoder_config({**TINY_DECODER, "image_path": "full"}, latent_channels=4, factor=4)
    assert "image_path" not in check_decoder_config({**SKIP, "image_path": "grid"}, latent_channels=4, factor=4)


def test_image_refine_feeds_the_image_to_the_refinement():
    """``image_refine``: zero-initialised (the decoder without it exactly, so a run can add it to a file
    that lacks it), then the refinement's output depends on the image; checked in the config."""
    base = {**SKIP, "image_path": "full", "refine": 4}
    cfg = check_decoder_config({**base, "image_refine": True}, latent_channels=4, factor=4)
    assert cfg["image_refine"] is True and "image_refine" not in check_decoder_config(base, latent_channels=4, factor=4)
    torch.manual_seed(0)
    plain, dec = build_decoder(check_decoder_config(base, latent_channels=4, factor=4)), build_decoder(cfg)
    with torch.no_grad():
        for p in plain.parameters():
            p.normal_(0, 0.1)
    missing, unexpected = dec.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and sorted(missing) == ["image_refine.bias", "image_refine.weight"]
    z, image = torch.randn(1, 4, 6, 6), torch.rand(1, 3, 24, 24) * 2 - 1
    with torch.no_grad():
        assert torch.equal(dec(z, image=image), plain(z, image=image))
        dec.image_refine.weight.normal_(0, 0.1)
        changed = dec(z, image=image) - plain(z, image=image)
    assert changed.abs().max() > 1e-3
    # the image reaches the output only through the refinement: its last conv at zero, no change
    with torch.no_grad():
        dec.refine[2].weight.zero_()
        dec.refine[2].bias.zero_()
        plain.refine[2].weight.zero_()
        plain.refine[2].bias.zero_()
        assert torch.equal(dec(z, image=image), plain(z, image=image))
    with pytest.raises(ValueError, match="image_refine needs input_skip: true and refine > 0"):
        check_decoder_config({**TINY_DECODER, "refine": 4, "image_refine": True}, latent_channels=4, factor=4)
    with pytest.raises(ValueError, match="image_refine needs input_skip: true and refine > 0"):
        check_decoder_config({**SKIP, "image_refine": True}, latent_channels=4, factor=4)
    with pytest.raises(ValueError, match="image_refine must be true or false"):
        check_decoder_config({**base, "image_refine": 1}, latent_channels=4, factor=4)


def test_recorded_in_the_file_and_decoded_through_the_vae(tmp_path):
    m = _tiny_with_skip()
    path = tmp_path / "skip.safetensors"
    m.save(path)
    assert read_metadata(path)["decoder_config"]["input_skip"] is True
    back = DLoRALModel.load(path)
    assert needs_image(back.vae) and not needs_image(init_model("tiny", seed=0).vae)
    z, image = torch.randn(1, 4, 6, 8), torch.rand(1, 3, 48, 64) * 2 - 1  # the tiny VAE's factor is 8
    with torch.no_grad():
        want = m.vae.decoder(m.vae.post_quant_conv(z), image=image)
        assert torch.equal(decode_latents(back.vae, z, image), want)
        plain = init_model("tiny", seed=0).vae
        assert torch.equal(decode_latents(plain, z, image), plain.decode(z).sample)  # others ignore the image


def test_frame_net_hands_the_decoder_the_current_frames_image(tmp_path):
    """The decoder gets the current frame's padded input in [-1,1], not the reference's, through
    restore() and FrameNet.forward alike, and the result depends on it."""
    import vsdloral

    m = _tiny_with_skip()
    path = tmp_path / "skip.safetensors"
    m.save(path)
    r = vsdloral.load_model(path, device="cpu", dtype=torch.float32)
    seen = []
    r.net.vae.decoder.register_forward_pre_hook(lambda mod, args, kw: seen.append(kw["image"].clone()),
                                                with_kwargs=True)
    g = torch.Generator().manual_seed(1)
    cur, ref = torch.rand(1, 3, 30, 44, generator=g), torch.rand(1, 3, 30, 44, generator=g)
    with torch.no_grad():
        a = r.restore(cur, ref, color_fix="none")
        b = r.net(cur, ref, color_fix="none", tile=None, vae_tile=0)
    padded = r.net.pad_input(cur)
    assert padded.shape[-2:] == (32, 48) and len(seen) == 2  # padded to the factor 8
    assert all(torch.equal(s, padded) for s in seen)
    assert torch.allclose(a, b, atol=1e-6)
    zero = _tiny_with_skip(image_weights=0.0)
    zero.save(tmp_path / "zero.safetensors")
    rz = vsdloral.load_model(tmp_path / "zero.safetensors", device="cpu", dtype=torch.float32)
    with torch.no_grad():
        assert (rz.restore(cur, ref, color_fix="none") - a).abs().max() > 1e-3


@pytest.mark.parametrize("image_path,extra", [("grid", {}), ("full", {"refine": 4, "image_refine": True})])
def test_exported_graph_matches_torch(tmp_path, image_path, extra):
    """The ONNX graph takes the image into the decoder as FrameNet does (fp32, ONNX Runtime), on
    either image path (and into the refinement)."""
    ort = pytest.importorskip("onnxruntime")
    import vsdloral
    from vsdloral.runtime import cached_graph
    from vsdloral.runtime.onnx_export import resolve_options

    m = _tiny_with_skip(seed=2, image_path=image_path, **extra)
    assert (m.meta.decoder_config.get("image_path", "grid")) == image_path
    path = tmp_path / "skip.safetensors"
    m.save(path)
    r = vsdloral.load_model(path, device="cpu", dtype=torch.float32)
    graph = cached_graph(path, 48, 32, cache_dir=tmp_path / "cache")
    g = torch.Generator().manual_seed(3)
    x = torch.rand(1, 6, 32, 48, generator=g)
    opts = resolve_options(r)
    with torch.no_grad():
        want = r.net(x[:, :3], x[:, 3:], color_fix=opts.color_fix,
                     cfr={"mode": opts.cfr, "window": opts.cfr_window, "topk": opts.cfr_topk},
                     tile=opts.tile, tile_overlap=opts.tile_overlap, vae_tile=opts.vae_tile).numpy()
    got = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"]).run(["output"], {"input": x.numpy()})[0]
    assert np.abs(got - want).max() < 2e-4


def test_mid_band_loss_sees_the_band_not_brightness_or_colour(sample_clip):
    from training.data import read_video
    from training.losses import mid_band_loss
    from vsdloral.model.filters import gaussian_blur

    img = torch.from_numpy(read_video(sample_clip, 1)[0, :96, :128].copy()).permute(2, 0, 1)[None].float() / 255
    assert mid_band_loss(img, img).item() == 0
    smooth = gaussian_blur(img, 2.5)
    blurred = mid_band_loss(smooth, img).item()
    assert blurred > 4 * mid_band_loss(img + 0.05, img).item()  # a brightness shift: only the border's padding
    # a chroma tint with the same luma (BT.709) is not mid-band detail
    tint = img + torch.tensor([0.0722, 0.0, -0.2126]).view(1, 3, 1, 1) * 0.3
    assert mid_band_loss(tint, img).item() < 1e-6
    # its gradient brings the band back
    x = descend(lambda y: mid_band_loss(y, img), smooth, lr=0.01, steps=60)
    assert mid_band_loss(x, img).item() < 0.3 * blurred


@pytest.fixture
def skip_joint_cfg(tmp_path, sample_clip, tiny_model_path):
    """test_joint_stage's tiny joint config, with ``decoder.input_skip`` on the full-resolution image path
    and the mid-band terms (the mid-energy window from the input, as issue 31's run 6)."""
    from decoder_stage_setup import point_at_tiny_setup, teacher_and_stills

    from training import config as config_mod

    teacher, stills = teacher_and_stills(tmp_path, sample_clip)
    cfg = config_mod.build_config("tiny", None, None)
    cfg["decoder"] = {"init": str(tiny_model_path), "store": str(tmp_path / "store"), "windows": 2, "chunk": 2,
                      "frames": 3, "crop": 64, "teacher_runtime": "torch", "unet_inputs": True, "input_skip": True,
                      "val_images": [str(stills)], "val_windows": 1, "val_crop": 64}
    cfg["joint"] = {"steps": 3, "lr": 1e-2, "warmup": 0, "batch_size": 2, "train_crop": 4, "lora_rank": 2,
                    "lora_alpha": 4, "teacher": 1.0, "gt": 0.5, "temporal": 1.0, "colour": 2.0, "mid": 2.0,
                    "mid_energy": 0.5, "mid_energy_target": "input", "flat": 1.0, "edge": 0.5,
                    "autocast": "none"}
    point_at_tiny_setup(cfg, sample_clip, teacher, tmp_path)
    cfg["model"]["decoder"] = {**TINY_DECODER, "image_path": "full"}
    init = _tiny_with_skip(image_weights=0.0)
    plain_cfg = check_decoder_config(TINY_DECODER, latent_channels=init.meta.latent_channels,
                                     factor=init.meta.vae_factor)
    d = build_decoder(plain_cfg)
    d.load_state_dict({k: v for k, v in init.vae.decoder.state_dict().items() if not k.startswith("image_")})
    init.vae.decoder, init.meta.decoder_config = d, plain_cfg  # the init has the plain decoder
    init.save(tmp_path / "init.safetensors")
    cfg["decoder"]["init"] = str(tmp_path / "init.safetensors")
    return cfg


def test_store_holds_the_image_and_the_joint_stage_trains_and_exports_it(skip_joint_cfg, tmp_path):
    from training.decoder_data import Store, load_sources, precompute
    from training.export import export
    from training.joint_task import JointTask
    from training.loop import train

    cfg = skip_joint_cfg
    precompute(copy.deepcopy(cfg), tmp_path / "store")
    s = Store(cfg, tmp_path / "store", load_sources(cfg))
    assert s.up.shape == (4, 3, 64, 64) and s.up.dtype == torch.uint8
    # the stored image is the restored frame's bicubic upscale: its x4 box average is close to the LQ's
    # (the HQ's x4 downscale), far from another frame's
    down = torch.nn.functional.avg_pool2d(s.up[:1].float() / 255, 4)
    hq_down = torch.nn.functional.avg_pool2d(s.hq[:2].float() / 255, 4)
    assert (down - hq_down[:1]).abs().mean() < 0.03
    b = s.pair_batch(0, 1, 4, seed=0)
    assert b["up"].shape == b["hq"].shape == (2, 3, 32, 32)
    task = JointTask(copy.deepcopy(cfg))
    assert task.net.decoder.input_skip and task.warm_start["file"] == "init.safetensors"
    init = DLoRALModel.load(cfg["decoder"]["init"])
    from training.decoder_data import pipeline_net

    net = pipeline_net(init, 4)
    with torch.no_grad():  # step 0: the init's plain decoder exactly (the image paths start at zero)
        y0 = task.net(b["u"], b["cur"], b["pos"], (4, 4), 2 * b["up"] - 1).clamp(-1, 1)
        ref = net.codec.decode(b["z"])
    assert torch.allclose(y0, ref, atol=0.05)
    train("joint", copy.deepcopy(cfg), tmp_path / "run")
    out = tmp_path / "skip.safetensors"
    export(tmp_path / "run", out)
    assert read_metadata(out)["decoder_config"]["input_skip"] is True
    assert read_metadata(out)["decoder_config"]["image_path"] == "full"
    m = DLoRALModel.load(out)
    assert m.vae.decoder.image_skip.weight.abs().sum() > 0  # the image path learned
    rows = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert all(f'"{k}"' in rows for k in ("mid", "mid_energy", "flat", "edge"))
    # a run on the grid path cannot start from this decoder's full-resolution one
    grid = copy.deepcopy(cfg)
    grid["model"]["decoder"] = dict(TINY_DECODER)
    grid["joint"]["warm_start"] = str(out)
    with pytest.raises(ValueError, match="decoder_config"):
        JointTask(grid)
    # the window from the input needs the input's stored upscale
    plain = copy.deepcopy(cfg)
    plain["decoder"]["input_skip"] = False
    plain["model"]["decoder"] = dict(TINY_DECODER)
    with pytest.raises(ValueError, match="mid_energy_target: input needs decoder.input_skip"):
        JointTask(plain)
