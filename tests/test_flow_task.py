"""``vsdloral-train flow`` (training/flow_task.py): SPyNet trained on real frame pairs with OpenCV DIS
pseudo-labels, on the model's own flow input, its run usable as ``dloral.spynet_weights``."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from training import config as config_mod
from training.loop import train


def flow_cfg(clip: Path, **sets) -> dict:
    cfg = config_mod.build_config("tiny", None, None)
    over = {"data.videos": [str(clip)], "data.max_frames": 24, "data.holdout": 4, "data.val_clips": 1,
            "train.device": "cpu", "train.progress": False, "train.val_every": 4, "train.checkpoint_every": 2,
            "train.log_every": 1, "flow.steps": 4, "flow.batch_size": 1, "flow.crop": 64, "flow.frames": 3,
            "flow.val_crop": 128, "flow.warmup": 0}
    over.update(sets)
    for k, v in over.items():
        config_mod.set_dotted(cfg, k, v)
    return cfg


def test_dis_labels_point_from_the_current_frame_to_its_predecessor(sample_clip):
    """A frame moved right by 8 HQ px: the label (SPyNet's grid, 1/4 of HQ here) is -2 px in x, the
    flow the model's warp needs (cur(x) = ref(x + f))."""
    from training.data import read_video
    from training.flow_task import dis_labels

    frame = read_video(sample_clip, 1)[0, :256, 100:356].astype(np.float32) / 255
    ref = torch.from_numpy(frame).permute(2, 0, 1)
    cur = torch.roll(ref, shifts=8, dims=2)                     # content moves 8 px to the right
    hq = torch.stack([ref, cur])[None]                          # (1, T=2, 3, 256, 256)
    f = dis_labels(hq, (64, 64), upscale_=4)[0, :, 8:-8, 8:-8]  # away from the wrapped border
    assert f[0].median().item() == pytest.approx(-2.0, abs=0.1) and f[1].abs().median().item() < 0.1


def test_flow_input_is_the_models(sample_clip):
    """FlowNet hands SPyNet exactly what DLoRALNet.forward hands it (captured with a forward
    pre-hook on each one's SPyNet): the same (current, reference) pair of the upscaled LQ in
    [-1,1] on the latent grid, ``flow_downscale`` coarser (lite: 1/16 of the output), and so the
    same flow."""
    from training.flow_task import FlowTask
    from training.nets import DLoRALNet, LatentCodec
    from vsdloral.model.init import init_model

    cfg = flow_cfg(sample_clip)
    cfg["arch"] = "lite"
    task = FlowTask(cfg)
    m = init_model("lite", seed=0)
    factor = 2 ** (len(m.meta.vae_config["block_out_channels"]) - 1)
    model = DLoRALNet(m.unet, LatentCodec(m.vae, float(m.meta.vae_config["scaling_factor"])), m.spynet, m.cfr,
                      m.prompt_embeds, 4, factor).eval()
    task.net.spynet = copy.deepcopy(m.spynet)  # the same (random, non-zero) SPyNet weights in both
    seen: dict[str, list] = {"model": [], "flow": []}
    hooks = [net.spynet.register_forward_pre_hook(lambda mod, args, k=k: seen[k].append([a.clone() for a in args]))
             for k, net in (("model", model), ("flow", task.net))]
    lq = torch.rand(2, 3, 3, 24, 32)  # B=2 windows of T=3 frames
    with torch.no_grad():
        model(lq)
        flow = task.net(lq)
    for h in hooks:
        h.remove()
    [(cur, ref)], [(f_cur, f_ref)] = seen["model"], seen["flow"]
    assert cur.shape == (4, 3, 6, 8)  # B*(T-1) pairs; 96x128 output / x4 VAE / flow_downscale 4
    assert torch.equal(f_cur, cur) and torch.equal(f_ref, ref)
    assert task.net.grid((96, 128)) == (6, 8)
    with torch.no_grad():
        assert torch.equal(flow, m.spynet(cur, ref)) and flow.abs().max() > 0


def test_epe_goes_down_on_a_panning_batch(sample_clip):
    """A real frame panning 8 HQ px per frame (1 px on the tiny preset's flow grid, 1/8 of HQ; the
    clip's own first crops barely move): the EPE against the DIS labels falls as SPyNet learns."""
    from training.data import read_video
    from training.flow_task import FlowTask
    from training.nets import upscale

    cfg = flow_cfg(sample_clip)
    task = FlowTask(cfg)
    img = torch.from_numpy(read_video(sample_clip, 1)[0].astype(np.float32) / 255).permute(2, 0, 1)
    hq = torch.stack([torch.stack([img[:, 100:164, x0 - 8 * t:x0 + 64 - 8 * t] for t in range(3)])
                      for x0 in (200, 300)])                 # (B=2, T=3, 3, 64, 64)
    lq = torch.nn.functional.interpolate(hq.flatten(0, 1), scale_factor=0.25, mode="bicubic").clamp(0, 1)
    batch = {"hq": hq, "lq": lq.unflatten(0, (2, 3))}
    assert upscale(batch["lq"][0], 4).shape == hq[0].shape
    opt = torch.optim.Adam(task.trainable(), lr=3e-4)
    losses = []
    for _ in range(20):
        loss, _ = task.loss(task.forward(task.net, batch), batch, 0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 1.0 and losses[-1] < 0.6 * losses[0], losses  # measured: 1.35 -> 0.52


def test_flow_run_resumes_and_feeds_dloral_spynet_weights(sample_clip, tiny_model_path, tmp_path, capsys):
    from training.bases import load_spynet
    from training.checkpoint import load_checkpoint
    from training.cli import main
    from training.tasks import DLoRALTask

    cfg = flow_cfg(sample_clip)
    (tmp_path / "flow.yaml").write_text(config_mod.dump(cfg))
    assert main(["flow", "--config", str(tmp_path / "flow.yaml"), "--out", str(tmp_path / "a")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["epe"]) for r in rows if "epe" in r)
    val = [r for r in rows if "val_epe" in r][-1]
    assert val["val_epe_zero"] > 0 and val["val_warp_l1_dis"] < val["val_warp_l1_zero"]  # the labels align frames
    # resume: the last two steps again, exactly
    losses = [r["epe"] for r in rows if "epe" in r]
    (tmp_path / "b" / "checkpoints").mkdir(parents=True)
    ck = tmp_path / "a" / "checkpoints" / "step-00000002.pt"
    (tmp_path / "b" / "checkpoints" / ck.name).write_bytes(ck.read_bytes())
    assert train("flow", copy.deepcopy(cfg), tmp_path / "b", resume=True)["losses"] == pytest.approx(losses[2:], abs=0)
    # the run folder (or a checkpoint) is a SPyNet for the dloral stage
    learned = load_checkpoint(tmp_path / "a")["task"]["spynet"]
    assert any(v.abs().sum() > 0 for k, v in learned.items() if k.startswith("basic_module.0.basic_module.4"))
    for source in (tmp_path / "a", tmp_path / "a" / "checkpoints" / "step-00000004.pt"):
        sd = load_spynet(str(source)).state_dict()
        assert all(torch.equal(sd[k], learned[k]) for k in learned)
    dl = config_mod.build_config("tiny", None, None)
    config_mod.set_dotted(dl, "dloral.init", str(tiny_model_path))
    config_mod.set_dotted(dl, "dloral.spynet_weights", str(tmp_path / "a"))
    task = DLoRALTask(dl)
    assert all(torch.equal(task.net.spynet.state_dict()[k], learned[k]) for k in learned)
    assert not task.flow_inert  # a trained SPyNet switches the flow loss on
    with pytest.raises(ValueError, match="not a 'flow' run"):
        load_spynet(str(_other_checkpoint(tmp_path)))


def _other_checkpoint(tmp_path: Path) -> Path:
    """A training checkpoint of another task (its SPyNet-less state)."""
    path = tmp_path / "vae-step.pt"
    torch.save({"task_name": "vae", "task": {}}, path)
    return path


def _not_weights(tmp_path: Path, kind: str) -> Path:
    import argparse

    if kind == "pickle":  # a torch file holding an object weights_only=True refuses to unpickle
        torch.save({"spynet": argparse.Namespace(a=1)}, tmp_path / "obj.pt")
        return tmp_path / "obj.pt"
    if kind == "garbage.pt":
        (tmp_path / "g.pt").write_bytes(b"not a torch file at all" * 10)
        return tmp_path / "g.pt"
    if kind == "garbage.safetensors":
        (tmp_path / "g.safetensors").write_bytes(b"\xff" * 64)
        return tmp_path / "g.safetensors"
    if kind == "tensor":
        torch.save(torch.zeros(3), tmp_path / "t.pt")
        return tmp_path / "t.pt"
    if kind == "other-dict":
        torch.save({"basic_module.0.weight": torch.zeros(2)}, tmp_path / "d.pt")
        return tmp_path / "d.pt"
    if kind == "empty-folder":
        (tmp_path / "empty").mkdir()
        return tmp_path / "empty"
    return tmp_path / "missing.pt"


@pytest.mark.parametrize("kind", ["pickle", "garbage.pt", "garbage.safetensors", "tensor", "other-dict",
                                  "empty-folder", "missing"])
@pytest.mark.parametrize("key", ["flow.init", "dloral.spynet_weights"])
def test_bad_spynet_weights_are_one_line_errors(key, kind, sample_clip, tiny_model_path, tmp_path, capsys):
    from training.cli import main

    path = _not_weights(tmp_path, kind)
    cmd = key.split(".")[0]
    argv = [cmd, "--out", str(tmp_path / "run"), "--data", str(sample_clip), "--steps", "1", "--set",
            f"{key}={path}", "--set", "train.device=cpu"]
    if cmd == "dloral":
        argv += ["--init", str(tiny_model_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"vsdloral-train {cmd}: error: {key}") and str(path) in err and "Traceback" not in err, err
    assert not (tmp_path / "run").exists()
