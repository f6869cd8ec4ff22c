"""Issue 31's training side: the colour term (training/losses.py colour_loss) and the joint stage
(training/joint_task.py: the UNet's D-LoRA with the decoder on a store holding the UNet's inputs)."""

from __future__ import annotations

import copy
import json

import cv2
import numpy as np
import pytest
import torch
from decoder_stage_setup import TINY_DECODER, point_at_tiny_setup, teacher_and_stills
from loss_checks import descend

from training import config as config_mod
from training.checkpoint import load_checkpoint
from training.loop import train
from training.losses import colour_loss
from vsdloral.model.weights import DLoRALModel, read_metadata


def _photo(sample_clip) -> torch.Tensor:
    from training.data import read_video

    f = read_video(sample_clip, 1)[0][40:168, 100:228].astype(np.float32) / 255
    return torch.from_numpy(f).permute(2, 0, 1)[None]


def _hue_rotate(x: torch.Tensor, degrees: float) -> torch.Tensor:
    img = x[0].permute(1, 2, 0).numpy()
    ycc = cv2.cvtColor(img, cv2.COLOR_RGB2YCrCb)
    cr, cb = ycc[..., 1] - 0.5, ycc[..., 2] - 0.5
    t = np.radians(degrees)
    ycc[..., 1], ycc[..., 2] = 0.5 + np.cos(t) * cr - np.sin(t) * cb, 0.5 + np.sin(t) * cr + np.cos(t) * cb
    return torch.from_numpy(np.clip(cv2.cvtColor(ycc, cv2.COLOR_YCrCb2RGB), 0, 1)).permute(2, 0, 1)[None]


def test_colour_loss_sees_tints_not_texture_and_its_gradient_removes_a_tint(sample_clip):
    gt = _photo(sample_clip)
    assert colour_loss(gt, gt).item() == 0.0
    errs = [colour_loss(_hue_rotate(gt, d), gt).item() for d in (5, 15, 45)]
    assert 0 < errs[0] < errs[1] < errs[2]
    # zero-mean luma texture and a brightness change cost far less than a 15-degree hue shift
    base = gt * 0.8 + 0.1
    noise = torch.randn(1, 1, *gt.shape[-2:], generator=torch.Generator().manual_seed(0)) * 0.05
    assert colour_loss(base + noise, base).item() < 0.1 * errs[1]
    assert colour_loss(base + 0.05, base).item() < 1e-6
    # per-pixel chroma noise that averages out over the low-pass costs little; the same as a tint costs
    chroma = torch.randn(1, 3, *gt.shape[-2:], generator=torch.Generator().manual_seed(1)) * 0.03
    tint = torch.tensor([0.03, -0.03, 0.03]).view(1, 3, 1, 1)
    assert colour_loss(base + chroma, base).item() < 0.3 * colour_loss(base + tint, base).item()
    # its gradient removes a tint
    y = descend(lambda x: colour_loss(x, base), base + tint, lr=2e-3, steps=30)
    assert colour_loss(y, base).item() < 0.2 * colour_loss(base + tint, base).item()


@pytest.fixture
def joint_cfg(tmp_path, sample_clip, tiny_model_path):
    """A joint-stage config on the tiny preset: a tiny ncnn teacher, 4 windows of 3 frames (64 px) in 2
    chunks with the UNet's inputs, batch 2 (one pair) of 4x4 latent crops, every term on."""
    teacher, stills = teacher_and_stills(tmp_path, sample_clip)
    cfg = config_mod.build_config("tiny", None, None)
    cfg["decoder"] = {"init": str(tiny_model_path), "store": str(tmp_path / "store"), "windows": 4, "chunk": 2,
                      "frames": 3, "crop": 64, "teacher_runtime": "torch", "unet_inputs": True,
                      "val_images": [str(stills)], "val_windows": 1, "val_crop": 64}
    cfg["joint"] = {"steps": 4, "lr": 1e-3, "warmup": 0, "batch_size": 2, "train_crop": 4, "lora_rank": 2,
                    "lora_alpha": 4, "teacher": 1.0, "gt": 0.5, "temporal": 1.0, "colour": 2.0, "texture": 0.1,
                    "adversarial": 0.1, "adversarial_start": 1, "d_channels": 4, "autocast": "none"}
    return point_at_tiny_setup(cfg, sample_clip, teacher, tmp_path)


def _tiny_init_with_decoder(cfg, tmp_path):
    """The tiny model with the tiny latent-SR decoder (what the joint stage warm-starts from)."""
    from vsdloral.model.decoders import check_decoder_config, swap_decoder

    m = DLoRALModel.load(cfg["decoder"]["init"])
    swap_decoder(m.vae, check_decoder_config(TINY_DECODER, latent_channels=m.meta.latent_channels,
                                             factor=m.meta.vae_factor))
    with torch.no_grad():
        for p in m.vae.decoder.parameters():
            p.normal_(0, 0.05)
    from vsdloral.model.decoders import decoder_config_of

    m.meta.decoder_config = decoder_config_of(m.vae)
    path = tmp_path / "init-lite2ish.safetensors"
    m.save(path)
    cfg["decoder"]["init"] = str(path)
    return path


def test_joint_stage_trains_d_lora_and_decoder_resumes_exactly_and_exports(joint_cfg, tmp_path):
    from training.decoder_data import Store, load_sources, pipeline_net, precompute
    from training.export import export
    from training.joint_task import JointTask

    init_path = _tiny_init_with_decoder(joint_cfg, tmp_path)
    precompute(copy.deepcopy(joint_cfg), tmp_path / "store")
    s = Store(joint_cfg, tmp_path / "store", load_sources(joint_cfg))
    assert s.u.shape == (8, 8, 8, 8) and s.cur.shape == (8, 4, 8, 8) and s.pairs == 4
    # the stored latent is the UNet's step on the stored input (fp16 storage)
    net = pipeline_net(DLoRALModel.load(init_path), 4)
    with torch.no_grad():
        z = s.cur[:2].float() - net.eps(s.u[:2].float())
    assert torch.allclose(z, s.z[:2].float(), atol=2e-2)
    b = s.pair_batch(0, 2, 4, seed=0)
    assert b["u"].shape == (4, 8, 8, 8) and b["pos"].shape == (4, 2) and torch.equal(b["pos"][:2], b["pos"][2:])
    task = JointTask(copy.deepcopy(joint_cfg))
    names = {n for n, p in task.net.named_parameters() if p.requires_grad}
    assert names and all(("lora_" in n and "_quality" in n) or n.startswith("decoder_net.decoder.") for n in names)
    assert any("lora_" in n for n in names)
    # step 0 is the init model: D-LoRA starts at zero, the decoder is the init's
    with torch.no_grad():
        y0 = task.net(b["u"], b["cur"]).clamp(-1, 1)  # the pipeline's decode clamps
        ref = net.codec.decode(b["cur"] - net.eps(b["u"]))
    assert torch.allclose(y0, ref, atol=1e-5)
    # the UNet runs on whole windows, the decoder on the batch's crops: the stored latent crop's decoding
    with torch.no_grad():
        crops = task.forward(task.net, b)["y"]
        stored = task.net.decoder_net(b["z"])
    assert crops.shape == (4, 3, 32, 32) and torch.allclose(crops, stored, atol=0.05)

    full = train("joint", copy.deepcopy(joint_cfg), tmp_path / "a")
    assert len(full["losses"]) == 4 and all(x > 0 for x in full["losses"])
    rows = [json.loads(r) for r in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert all(k in rows[0] for k in ("teacher", "gt", "temporal", "colour", "texture", "d_hinge"))
    val = [r for r in rows if "val_psnr" in r]
    assert [r["step"] for r in val] == [2, 4]
    assert all(k in val[0] for k in ("val_colour", "val_recall_mid", "val_recall_fine", "val_colour_bicubic",
                                     "val_recall_mid_bicubic", "val_colour_init", "val_ewarp",
                                     "val_flat_excess", "val_flat_excess_bicubic", "val_edge", "val_edge_bicubic"))
    (tmp_path / "b" / "checkpoints").mkdir(parents=True)
    ck = tmp_path / "a" / "checkpoints" / "step-00000002.pt"
    (tmp_path / "b" / "checkpoints" / ck.name).write_bytes(ck.read_bytes())
    resumed = train("joint", copy.deepcopy(joint_cfg), tmp_path / "b", resume=True)
    assert resumed["losses"] == full["losses"][2:]  # D-LoRA, decoder, discriminator and optimiser resume
    state = load_checkpoint(tmp_path / "a")
    assert any(v.abs().sum() > 0 for k, v in state["task"]["unet_lora"].items() if "lora_B" in k)  # D-LoRA learned

    out = tmp_path / "joint.safetensors"
    export(tmp_path / "a", out)
    prov = read_metadata(out)["provenance"]
    assert prov["stage"] == "joint" and prov["steps"] == 4 and prov["settings"]["joint"]["lora_rank"] == 2
    m, init = DLoRALModel.load(out), DLoRALModel.load(init_path)
    assert any(not torch.equal(v, init.unet.state_dict()[k]) for k, v in m.unet.state_dict().items())
    assert torch.equal(m.cfr.state_dict()["proj_out.weight"], init.cfr.state_dict()["proj_out.weight"])
    # the file restores what the trained network restores: D-LoRA merged, decoder in place
    task = JointTask(copy.deepcopy(joint_cfg))
    task.load_state(state["task"])
    exported = pipeline_net(m, 4)
    with torch.no_grad():
        want = task.net(b["u"], b["cur"]).clamp(-1, 1)
        got = exported.codec.decode(b["cur"] - exported.eps(b["u"]))
    assert torch.allclose(got, want, atol=1e-4)


def test_joint_stage_errors_are_one_line(joint_cfg, tmp_path):
    from training.joint_task import JointTask

    _tiny_init_with_decoder(joint_cfg, tmp_path)
    bad = copy.deepcopy(joint_cfg)
    config_mod.set_dotted(bad, "decoder.unet_inputs", False)
    with pytest.raises(ValueError, match="unet_inputs=true") as err:
        JointTask(bad)
    assert "\n" not in str(err.value)
    bad = copy.deepcopy(joint_cfg)
    del bad["joint"]
    with pytest.raises(ValueError, match="no 'joint' section"):
        JointTask(bad)
