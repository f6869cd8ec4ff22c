"""lite2's latent-grid decoder (vsdloral/model/decoders.py) in the weights file, and the stand-alone
decoder stage (training/decoder_data.py, training/decoder_task.py): the store, exact resume, export."""

from __future__ import annotations

import copy
import json

import cv2
import pytest
import torch
from decoder_stage_setup import TINY_DECODER, point_at_tiny_setup, teacher_and_stills
from ncnn_format import random_rrdbnet, write_rrdbnet_ncnn

from training import config as config_mod
from training.checkpoint import load_checkpoint
from training.loop import train
from vsdloral.model.decoders import LatentSRDecoder, check_decoder_config
from vsdloral.model.errors import WeightsError
from vsdloral.model.init import init_model
from vsdloral.model.presets import get_preset
from vsdloral.model.weights import DLoRALModel, read_metadata


def test_lite2_preset_shapes():
    """lite2 is lite with a latent-grid decoder: same encoder, UNet and CFR; the decoder maps the
    8-channel latent to x4 RGB, and starts as its linear path (zero trunk output)."""
    lite, lite2 = get_preset("lite"), get_preset("lite2")
    assert lite2.unet == lite.unet and lite2.vae == lite.vae and lite2.cfr == lite.cfr
    m = init_model("lite2", seed=0)
    dec = m.vae.decoder
    assert isinstance(dec, LatentSRDecoder)
    assert m.meta.decoder_config == check_decoder_config(lite2.decoder, latent_channels=8, factor=4)
    assert dec.conv_in.in_channels == 8 and dec.conv_in.out_channels == 64 and len(dec.blocks) == 6
    assert dec.conv_out.out_channels == 3 * 16 and dec.skip.out_channels == 3 * 16
    assert dec.refine[0].out_channels == 16 and not dec.refine[2].weight.any()  # refinement: starts at zero
    z = torch.randn(2, 8, 5, 7)
    with torch.no_grad():
        y = dec(z)
        linear = torch.nn.functional.pixel_shuffle(dec.skip(z), 4)
    assert y.shape == (2, 3, 20, 28)
    assert torch.equal(y, linear)  # the trunk's output conv and the refinement's start at zero
    # what AutoencoderKL.decode passes it (post_quant_conv output), and the image path end to end
    with torch.no_grad():
        assert m.vae.decode(z).sample.shape == (2, 3, 20, 28)
        x = torch.rand(1, 3, 32, 48) * 2 - 1
        assert m.vae.decode(m.vae.encode(x).latent_dist.mode()).sample.shape == x.shape


def test_save_load_with_the_new_decoder_and_old_files_still_load(tmp_path):
    m = init_model("lite2", seed=1)
    with torch.no_grad():  # a trained-looking trunk (it starts at zero)
        m.vae.decoder.conv_out.weight.normal_(0, 0.01)
    path = tmp_path / "lite2.safetensors"
    m.save(path)
    md = read_metadata(path)
    assert md["decoder_config"] == m.meta.decoder_config and md["preset"] == "lite2"
    back = DLoRALModel.load(path)
    assert isinstance(back.vae.decoder, LatentSRDecoder)
    for k, v in m.vae.decoder.state_dict().items():
        assert torch.equal(back.vae.decoder.state_dict()[k], v), k
    z = torch.randn(1, 8, 4, 6)
    with torch.no_grad():
        assert torch.equal(back.vae.decode(z).sample, m.vae.decode(z).sample)
    # a file without decoder_config (every file before decoders existed) keeps diffusers' Decoder
    old = tmp_path / "lite.safetensors"
    init_model("lite", seed=0).save(old)
    assert "decoder_config" not in read_metadata(old)
    assert type(DLoRALModel.load(old).vae.decoder).__name__ == "Decoder"


def test_a_bad_decoder_config_is_a_one_line_error(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = tmp_path / "m.safetensors"
    init_model("lite2", seed=0).save(path)
    with safe_open(str(path), framework="pt") as f:
        md, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    for bad, words in (({**json.loads(md["decoder_config"]), "scale": 8}, "scale 8"),
                       ({**json.loads(md["decoder_config"]), "kind": "nope"}, "kind 'nope'")):
        save_file(tensors, str(path), metadata={**md, "decoder_config": json.dumps(bad)})
        with pytest.raises(WeightsError, match=words) as err:
            DLoRALModel.load(path)
        assert "\n" not in str(err.value)


# -- the stand-alone decoder stage ----------------------------------------------------------


@pytest.fixture
def stage(tmp_path, sample_clip, tiny_model_path):
    """A decoder-stage config on the tiny preset (x8 VAE, x4 SR): a tiny ncnn teacher, 6 windows
    of 64 px in 3 chunks, batch 2 of 4x4 latent windows, checkpoints every 2 steps."""
    teacher, stills = teacher_and_stills(tmp_path, sample_clip)
    cfg = config_mod.build_config("tiny", None, None)
    cfg["decoder"] = {"init": str(tiny_model_path), "store": str(tmp_path / "store"), "windows": 6, "chunk": 2,
                      "frames": 2, "crop": 64, "teacher_runtime": "torch", "steps": 4, "lr": 1e-3, "warmup": 0,
                      "batch_size": 2, "train_crop": 4, "teacher": 1.0, "gt": 0.5, "autocast": "none",
                      "val_images": [str(stills)], "val_windows": 1, "val_crop": 64}
    return point_at_tiny_setup(cfg, sample_clip, teacher, tmp_path)


def test_store_is_sharded_and_resumable(stage, tmp_path):
    from training.decoder_data import precompute

    a = precompute(copy.deepcopy(stage), tmp_path / "store", shard=(0, 2))
    assert (a["chunks"], a["computed"], a["teacher_frames"]) == (2, 2, 4)  # chunks 0 and 2, 2 windows each
    b = precompute(copy.deepcopy(stage), tmp_path / "store", shard=(1, 2))
    assert (b["chunks"], b["computed"]) == (1, 1)
    again = precompute(copy.deepcopy(stage), tmp_path / "store", shard=(0, 1))
    assert again["computed"] == 0 and again["teacher_frames"] == 0
    from training.decoder_data import Store, load_sources

    s = Store(stage, tmp_path / "store", load_sources(stage))
    assert s.z.shape == (6, 4, 8, 8) and s.teacher.shape == (6, 3, 64, 64) and s.hq.shape == (6, 3, 64, 64)
    batch = s.batch(3, 2, 4, seed=0)
    assert batch["z"].shape == (2, 4, 4, 4) and batch["teacher"].shape == (2, 3, 32, 32)
    # another degradation makes another store: refused in one line
    other = copy.deepcopy(stage)
    config_mod.set_dotted(other, "degradation.kind", "realistic")
    with pytest.raises(ValueError, match="other settings"):
        Store(other, tmp_path / "store", load_sources(other))


def test_decoder_stage_resumes_exactly_and_exports(stage, tmp_path):
    from training.decoder_data import precompute

    precompute(copy.deepcopy(stage), tmp_path / "store")
    full = train("decoder", copy.deepcopy(stage), tmp_path / "a")
    assert len(full["losses"]) == 4 and all(x > 0 for x in full["losses"])
    (tmp_path / "b" / "checkpoints").mkdir(parents=True)
    ck = tmp_path / "a" / "checkpoints" / "step-00000002.pt"
    (tmp_path / "b" / "checkpoints" / ck.name).write_bytes(ck.read_bytes())
    resumed = train("decoder", copy.deepcopy(stage), tmp_path / "b", resume=True)
    assert resumed["losses"] == full["losses"][2:]
    val = [[r for r in map(json.loads, (tmp_path / run / "metrics.jsonl").read_text().splitlines())
            if "val_psnr" in r] for run in ("a", "b")]
    assert [r["step"] for r in val[0]] == [2, 4] and val[1] == val[0][1:]  # held-out figures of the same weights
    assert val[0][0]["val_psnr_init"] == val[0][1]["val_psnr_init"] and val[0][0]["val_l1_teacher"] > 0
    # the export is the init model with the trained decoder, recorded in its metadata
    from training.export import export

    out = tmp_path / "m.safetensors"
    export(tmp_path / "a", out)
    md = read_metadata(out)
    assert md["decoder_config"]["kind"] == "latent-sr" and md["decoder_config"]["scale"] == 8
    assert md["provenance"]["stage"] == "decoder" and md["provenance"]["steps"] == 4
    m, init = DLoRALModel.load(out), DLoRALModel.load(stage["decoder"]["init"])
    trained = load_checkpoint(tmp_path / "a")["task"]["decoder"]
    for k, v in m.vae.decoder.state_dict().items():
        assert torch.equal(v, trained[k]), k
    for k, v in init.unet.state_dict().items():  # everything but the decoder is the init model's
        assert torch.equal(m.unet.state_dict()[k], v), k


def test_ncnn_runtime_is_the_same_teacher(tmp_path):
    """decoder.teacher_runtime: ncnn runs the same .param/.bin as the PyTorch port (float input,
    fp32), with an identity of its own in the teacher cache."""
    pytest.importorskip("ncnn")
    from training.teacher import weights_identity
    from vsdloral.realesrgan import load_x4plus
    from vsdloral.realesrgan.ncnn_runtime import NcnnX4

    net = random_rrdbnet(seed=3)
    with torch.no_grad():  # outputs inside [0,1] (a random net's are mostly clamped away)
        net.conv_last.weight.mul_(0.5)
        net.conv_last.bias.fill_(0.5)
    write_rrdbnet_ncnn(net, tmp_path)
    param, bin_path = tmp_path / "realesrgan-x4plus.param", tmp_path / "realesrgan-x4plus.bin"
    lq = torch.rand(2, 3, 9, 7, generator=torch.Generator().manual_seed(0))
    port = load_x4plus(tmp_path)(lq)
    ours = NcnnX4(param, bin_path)(lq)
    assert ours.shape == (2, 3, 36, 28) and (ours - port).abs().max().item() < 1e-4
    assert port.std() > 0.02 and 0 < port.mean() < 1  # a real comparison, not two constant images
    other = tmp_path / "other"
    write_rrdbnet_ncnn(random_rrdbnet(seed=4), other)
    assert weights_identity(NcnnX4(param, bin_path)) != weights_identity(
        NcnnX4(other / "realesrgan-x4plus.param", other / "realesrgan-x4plus.bin"))


# -- the temporal term (3-frame stores) and warm starts ---------------------------------------


def test_torch_warp_is_the_measures_warp():
    """backward_warp (training) samples where vsdloral.evaluation.flow.backward_warp (E*warp) does."""
    from training.decoder_task import backward_warp
    from vsdloral.evaluation.flow import backward_warp as cv_warp

    g = torch.Generator().manual_seed(0)
    img = torch.rand(1, 3, 20, 24, generator=g)
    flow = torch.randn(1, 2, 20, 24, generator=g) * 3
    ours = backward_warp(img, flow)[0].permute(1, 2, 0).numpy()
    ref = cv_warp(img[0].permute(1, 2, 0).numpy(), flow[0].permute(1, 2, 0).numpy())
    assert abs(ours - ref).max() < 1e-3  # cv2.remap's bilinear weights are fixed-point (1/32)


def _moving(texture: torch.Tensor, dx: int, dy: int, size: int) -> torch.Tensor:
    """Frames t and t+1 of ``texture`` seen through a window that moves by (dx, dy): (2,3,size,size)."""
    return torch.stack([texture[:, 8:8 + size, 8:8 + size], texture[:, 8 + dy:8 + dy + size, 8 + dx:8 + dx + size]])


def test_ground_truth_flow_and_the_warped_temporal_loss():
    """gt_flow finds a known motion; the loss is ~0 for an output whose error moves with the content
    (and for a perfect one), and large for one that flickers or whose detail stands still."""
    from training.decoder_data import gt_flow
    from training.decoder_task import warped_temporal_loss

    g = torch.Generator().manual_seed(1)
    scene = torch.nn.functional.interpolate(torch.rand(1, 3, 40, 40, generator=g), size=(96, 96), mode="bicubic",
                                            align_corners=False)[0].clamp(0, 1)
    detail = torch.rand(3, 96, 96, generator=g) * 0.2  # the output's own texture
    hq = _moving(scene, 3, -2, 64)
    flow, mask = gt_flow(hq)
    inner = mask[0, 0].float()
    assert inner.mean() > 0.5
    # the window moves by (3, -2), so the content moves by (-3, 2): a[y, x] ~ b[y + 2, x - 3]
    assert abs(flow[0, 0][inner > 0].median().item() + 3) < 0.25 and abs(flow[0, 1][inner > 0].median().item() - 2) < 0.25
    gt = 2 * hq - 1
    f, m = flow.float(), mask.float()
    assert warped_temporal_loss(gt, gt, f, m).item() < 1e-6
    moving_detail = gt + _moving(detail, 3, -2, 64)  # texture that moves with the content: steady
    standing = gt + detail[:, 8:72, 8:72]  # texture stuck to the screen while the content moves
    flicker = gt + torch.stack([detail[:, :64, :64], detail[:, 32:, 32:]])  # new texture each frame
    steady = warped_temporal_loss(moving_detail, gt, f, m).item()
    assert steady < 0.02
    assert warped_temporal_loss(standing, gt, f, m).item() > 4 * steady
    assert warped_temporal_loss(flicker, gt, f, m).item() > 4 * steady


def test_temporal_store_pairs_and_training_with_a_warm_start(stage, tmp_path):
    from training.decoder_data import Store, load_sources, precompute
    from training.decoder_task import DecoderTask
    from training.export import export

    cfg = copy.deepcopy(stage)
    config_mod.set_dotted(cfg, "decoder.frames", 3)
    config_mod.set_dotted(cfg, "decoder.windows", 4)
    config_mod.set_dotted(cfg, "decoder.temporal", 1.0)
    config_mod.set_dotted(cfg, "decoder.steps", 2)
    precompute(copy.deepcopy(cfg), tmp_path / "store")
    s = Store(cfg, tmp_path / "store", load_sources(cfg))
    assert s.z.shape[0] == 8 and s.pairs == 4 and s.flow.shape == (4, 2, 64, 64) and s.mask.shape == (4, 1, 64, 64)
    b = s.pair_batch(0, 3, 4, seed=0)
    assert b["z"].shape == (6, 4, 4, 4) and b["hq"].shape == (6, 3, 32, 32) and b["flow"].shape == (3, 2, 32, 32)
    # frame t+1 of a pair is the next restored frame of the same window, at the same crop
    assert torch.equal(b["z"][3:], s.pair_batch(0, 3, 4, seed=0)["z"][3:])
    # valid pixels never point outside the crop
    gy, gx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    tx, ty = gx + b["flow"][:, 0], gy + b["flow"][:, 1]
    outside = (tx < 0) | (tx > 31) | (ty < 0) | (ty > 31)
    assert not (b["mask"][:, 0].bool() & outside).any()
    run = train("decoder", copy.deepcopy(cfg), tmp_path / "a")
    rows = [json.loads(r) for r in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert any("temporal" in r for r in rows) and any("val_ewarp" in r and "val_ewarp_init" in r for r in rows)
    assert len(run["losses"]) == 2
    first = tmp_path / "first.safetensors"
    export(tmp_path / "a", first)
    # a warm start begins at that decoder, and the export records it
    warm = copy.deepcopy(cfg)
    config_mod.set_dotted(warm, "decoder.warm_start", str(first))
    task = DecoderTask(warm)
    for k, v in DLoRALModel.load(first).vae.decoder.float().state_dict().items():
        assert torch.equal(task.net.decoder.state_dict()[k], v), k
    train("decoder", copy.deepcopy(warm), tmp_path / "b")
    second = tmp_path / "second.safetensors"
    export(tmp_path / "b", second)
    prov = read_metadata(second)["provenance"]
    assert prov["warm_start"]["file"] == "first.safetensors" and prov["warm_start"]["provenance"]["steps"] == 2


def test_temporal_and_warm_start_errors_are_one_line(stage, tmp_path):
    from training.decoder_task import DecoderTask

    bad = copy.deepcopy(stage)
    config_mod.set_dotted(bad, "decoder.temporal", 1.0)  # frames: 2 has no consecutive restored frames
    with pytest.raises(ValueError, match="frames: 3"):
        DecoderTask(bad)
    other = tmp_path / "other.safetensors"
    init_model("lite2", seed=0).save(other)  # a 64-channel decoder, not the tiny one
    bad = copy.deepcopy(stage)
    config_mod.set_dotted(bad, "decoder.warm_start", str(other))
    with pytest.raises(ValueError, match="decoder_config"):
        DecoderTask(bad)
    config_mod.set_dotted(bad, "decoder.warm_start", str(tmp_path / "missing.safetensors"))
    with pytest.raises(ValueError, match="no weights file"):
        DecoderTask(bad)
    # the discriminator steps on its own, with no gradient scaler: fp16 is refused, bf16 is not
    adv = copy.deepcopy(stage)
    config_mod.set_dotted(adv, "decoder.adversarial", 0.1)
    config_mod.set_dotted(adv, "train.mixed_precision", "fp16")
    with pytest.raises(ValueError, match="mixed_precision=fp16") as err:
        DecoderTask(adv)
    assert "\n" not in str(err.value)
    config_mod.set_dotted(adv, "train.mixed_precision", "bf16")
    assert DecoderTask(adv).adversary is not None


def test_texture_loss_wants_texture_wherever_its_strands_lie():
    """L1 to a texture prefers a blur to the same texture shifted by a few pixels; the texture term
    prefers the shifted texture (same amount of detail per cell) and is ~0 for it."""
    from training.decoder_task import texture_energy, texture_loss

    g = torch.Generator().manual_seed(2)
    scene = torch.rand(1, 3, 72, 72, generator=g) * 2 - 1
    target = scene[..., 4:68, 4:68]
    shifted = scene[..., 7:71, 4:68]  # the same texture, strands 3 px off
    blurred = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(target, (2, 2, 2, 2), mode="replicate"), 5, 1)
    assert (blurred - target).abs().mean() < (shifted - target).abs().mean()
    assert texture_loss(shifted, target) < 0.1 < 1.0 < texture_loss(blurred, target)
    assert texture_energy(target).shape == (1, 1, 8, 8)


def test_grid_ratio_finds_a_latent_grid_pattern_not_texture(sample_clip):
    """grid_ratio: low for a real frame and for noise, high for the same frame with a faint period-4
    dither (what a sub-pixel decoder's phases make), and its gradient removes the dither."""
    from training.data import read_video
    from vsdloral.evaluation.grid import grid_ratio

    frame = torch.from_numpy(read_video(sample_clip, 1)[0].copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
    g = torch.Generator().manual_seed(3)
    noise = torch.rand(1, 3, 128, 128, generator=g) * 2 - 1
    dither = torch.tensor([[1.0, -1, 0.5, -0.5], [-1, 1, -0.5, 0.5], [0.5, -0.5, 1, -1], [-0.5, 0.5, -1, 1]])
    pattern = dither.repeat(frame.shape[-2] // 4 + 1, frame.shape[-1] // 4 + 1)[: frame.shape[-2], : frame.shape[-1]]
    dithered = frame + 0.05 * pattern
    assert grid_ratio(frame) < 0.05 and grid_ratio(noise) < 0.05
    assert grid_ratio(dithered) > 0.2
    x = dithered.clone().requires_grad_(True)
    grid_ratio(x).backward()
    step = x - 0.5 * x.grad / x.grad.abs().max() * 0.05
    assert grid_ratio(step.detach()) < grid_ratio(dithered)
    with pytest.raises(ValueError, match="at least 32x32"):
        grid_ratio(torch.zeros(1, 3, 16, 64))


def test_refinement_starts_as_no_change_saves_and_warm_starts(stage, tmp_path):
    """decoder_config refine=N adds a full-resolution residual refinement that starts at zero: the
    output equals the decoder's without it, it is recorded and reloaded, and a run with it can
    warm-start from a file without it (not the other way round)."""
    from training.decoder_task import DecoderTask
    from vsdloral.model.decoders import build_decoder, swap_decoder

    plain_cfg = check_decoder_config({"kind": "latent-sr", "channels": 8, "blocks": 1}, latent_channels=8, factor=4)
    refine_cfg = check_decoder_config({**plain_cfg, "refine": 4}, latent_channels=8, factor=4)
    assert "refine" not in plain_cfg and refine_cfg["refine"] == 4
    torch.manual_seed(0)
    plain = build_decoder(plain_cfg)
    refined = build_decoder(refine_cfg)
    missing, unexpected = refined.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("refine.") for k in missing)
    z = torch.randn(1, 8, 5, 6)
    with torch.no_grad():
        plain.conv_out.weight.normal_(0, 0.1)
        refined.conv_out.weight.copy_(plain.conv_out.weight)
        assert torch.equal(refined(z), plain(z))
        refined.refine[2].weight.normal_(0, 0.1)
        assert not torch.equal(refined(z), plain(z))
    m = init_model("lite2", seed=0)
    swap_decoder(m.vae, refine_cfg)
    m.vae.decoder.load_state_dict(refined.state_dict())
    m.meta.decoder_config = refine_cfg
    path = tmp_path / "refined.safetensors"
    m.save(path)
    back = DLoRALModel.load(path)
    assert read_metadata(path)["decoder_config"]["refine"] == 4
    with torch.no_grad():
        assert torch.equal(back.vae.decoder(z), refined(z))
    # warm starts: plain -> refined works (refinement at zero); refined -> plain is refused
    first = tmp_path / "plain.safetensors"
    p = init_model("tiny", seed=0)
    base_cfg = check_decoder_config(TINY_DECODER, latent_channels=p.meta.latent_channels, factor=p.meta.vae_factor)
    swap_decoder(p.vae, base_cfg)
    p.meta.decoder_config = base_cfg
    p.save(first)
    warm = copy.deepcopy(stage)
    config_mod.set_dotted(warm, "model.decoder", {**TINY_DECODER, "refine": 4})
    config_mod.set_dotted(warm, "decoder.warm_start", str(first))
    task = DecoderTask(warm)
    assert task.net.decoder.refine is not None and task.warm_start["file"] == "plain.safetensors"
    refined_file = tmp_path / "tiny-refined.safetensors"
    swap_decoder(p.vae, {**base_cfg, "refine": 4})
    p.meta.decoder_config = {**base_cfg, "refine": 4}
    p.save(refined_file)
    back_cfg = copy.deepcopy(stage)
    config_mod.set_dotted(back_cfg, "decoder.warm_start", str(refined_file))
    with pytest.raises(ValueError, match="decoder_config"):
        DecoderTask(back_cfg)


def test_patch_discriminator_scores_cells_and_the_term_counts_only_texture_cells():
    from training.adversarial import Adversary, PatchDiscriminator, texture_cells

    assert PatchDiscriminator(8)(torch.zeros(2, 3, 96, 64)).shape == (2, 1, 12, 8)
    g = torch.Generator().manual_seed(0)
    gt = torch.zeros(1, 3, 64, 64)
    gt[..., :, 32:] = torch.rand(1, 3, 64, 32, generator=g) * 2 - 1  # texture on the right half only
    cells = texture_cells(gt)
    assert cells[0, 0, :, 4:].all() and not cells[0, 0, :, :4].any()
    torch.manual_seed(0)
    adv = Adversary(channels=8, cells="texture")
    fake = torch.zeros(1, 3, 64, 64, requires_grad=True)
    adv.generator_loss(fake, gt).backward()
    assert all(p.grad is None for p in adv.net.parameters())  # the discriminator is a constant there
    # only pixels a texture cell's logit sees get a gradient (38-px receptive field): none at the far left
    assert fake.grad[..., :8].abs().sum() == 0 and fake.grad[..., 32:].abs().sum() > 0
    every = Adversary(channels=8, cells="all")
    every.net.load_state_dict(adv.net.state_dict())
    fake.grad = None
    every.generator_loss(fake, gt).backward()
    assert fake.grad[..., :8].abs().sum() > 0
    # a discriminator step moves the discriminator only, and its hinge falls on separable data
    real, flat = gt.repeat(4, 1, 1, 1), torch.zeros(4, 3, 64, 64)
    first = adv.update(real, flat)
    for _ in range(20):
        last = adv.update(real, flat)
    assert last < first
    with pytest.raises(ValueError, match="adversarial_cells"):
        Adversary(cells="edges")


def test_adversarial_decoder_stage_resumes_exactly(stage, tmp_path):
    from training.decoder_data import precompute

    cfg = copy.deepcopy(stage)
    for k, v in {"decoder.adversarial": 0.1, "decoder.adversarial_start": 1, "decoder.d_channels": 4,
                 "decoder.train_crop": 8}.items():
        config_mod.set_dotted(cfg, k, v)
    precompute(copy.deepcopy(cfg), tmp_path / "store")
    full = train("decoder", copy.deepcopy(cfg), tmp_path / "a")
    rows = [json.loads(r) for r in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [("adversarial" in r) for r in rows if "d_hinge" in r] == [False, True, True, True]
    (tmp_path / "b" / "checkpoints").mkdir(parents=True)
    ck = tmp_path / "a" / "checkpoints" / "step-00000002.pt"
    (tmp_path / "b" / "checkpoints" / ck.name).write_bytes(ck.read_bytes())
    resumed = train("decoder", copy.deepcopy(cfg), tmp_path / "b", resume=True)
    assert resumed["losses"] == full["losses"][2:]  # the discriminator and its optimiser resume too
    # a checkpoint without a discriminator is refused in one line
    plain = copy.deepcopy(stage)
    config_mod.set_dotted(plain, "decoder.steps", 2)
    train("decoder", plain, tmp_path / "c")
    with pytest.raises(ValueError, match="no discriminator"):
        train("decoder", copy.deepcopy(cfg), tmp_path / "c", resume=True)


def test_excess_texture_term_removes_a_mesh_on_flat_regions_and_leaves_texture_alone():
    from training.decoder_task import excess_texture_loss

    g = torch.Generator().manual_seed(0)
    gt = torch.zeros(1, 3, 32, 32)
    gt[..., 16:] = torch.rand(1, 3, 32, 16, generator=g) - 0.5  # texture right, flat (bokeh) left
    blur = torch.nn.functional.avg_pool2d(gt, 3, 1, 1, count_include_pad=False)
    assert excess_texture_loss(blur, gt) == 0  # less detail than the ground truth everywhere: no cost
    mesh = torch.zeros_like(gt)
    mesh[..., ::2, :16:2] = 0.05  # a faint mesh over the flat half
    y = (gt + mesh).requires_grad_(True)
    excess_texture_loss(y, gt).backward()
    assert y.grad[..., :16].abs().sum() > 0  # the mesh on the flat half costs
    assert y.grad[..., 24:].abs().sum() == 0  # texture cells with their own detail are left alone


def test_flat_excess_sees_a_mesh_over_flat_regions_not_texture(sample_clip):
    from training.data import read_video
    from vsdloral.evaluation.texture import flat_excess

    gt = read_video(sample_clip, 2).astype("float32") / 255  # real frames: flat and textured regions
    assert flat_excess(gt, gt) == 0
    blur = cv2.blur(gt[0], (5, 5))[None].repeat(2, 0)
    assert flat_excess(blur, gt) < 0.05  # less detail than the GT: (almost) nothing beyond it
    mesh = gt.copy()
    mesh[:, ::2, ::2] += 0.03  # a faint mesh everywhere
    assert flat_excess(mesh, gt) > 0.5
    with pytest.raises(ValueError, match="differ in shape"):
        flat_excess(gt[:1], gt)
