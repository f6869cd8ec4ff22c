"""Training package: the tiny vae -> base -> dloral -> export pipeline on a real clip, with tiny crops."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from training import config as config_mod
from training.checkpoint import latest_checkpoint, load_checkpoint
from training.loop import train

CROP = 32


def tiny_cfg(clip: Path, **sets) -> dict:
    cfg = config_mod.build_config("tiny", None, None)
    over = {
        "data.videos": [str(clip)], "data.max_frames": 24, "data.holdout": 4, "data.val_crop": 64,
        "data.val_clips": 1, "train.device": "cpu", "train.progress": False, "train.val_every": 0,
        "train.checkpoint_every": 2, "train.log_every": 1,
        "vae.steps": 2, "vae.batch_size": 2, "vae.crop": CROP,
        "base.steps": 2, "base.batch_size": 2, "base.crop": CROP,
        "dloral.steps": 4, "dloral.batch_size": 1, "dloral.crop": CROP, "dloral.switches": [1, 3],
        "dloral.transition": 1, "dloral.warmup": 0,
    }
    over.update(sets)
    for k, v in over.items():
        config_mod.set_dotted(cfg, k, v)
    return cfg


def _resume_from(checkpoint: Path, run: Path, task: str, cfg: dict) -> dict:
    """Start a fresh run folder holding only ``checkpoint`` and resume ``task`` from it."""
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / checkpoint.name).write_bytes(checkpoint.read_bytes())
    return train(task, copy.deepcopy(cfg), run, resume=True)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, sample_clip):
    """vae -> base -> dloral, a few steps each; returns (cfg, run folders)."""
    root = tmp_path_factory.mktemp("train")
    cfg = tiny_cfg(sample_clip)
    train("vae", cfg, root / "vae")
    config_mod.set_dotted(cfg, "base.vae", str(root / "vae"))
    train("base", cfg, root / "base")
    config_mod.set_dotted(cfg, "dloral.base", str(root / "base"))
    summary = train("dloral", cfg, root / "dloral")
    return cfg, root, summary


def test_pipeline_checkpoints_and_metrics(pipeline):
    cfg, root, summary = pipeline
    assert summary["steps"] == 4 and len(summary["losses"]) == 4
    assert all(np.isfinite(summary["losses"]))
    for name in ("vae", "base", "dloral"):
        ck = latest_checkpoint(root / name / "checkpoints")
        assert ck is not None and load_checkpoint(ck)["task_name"] == name
        assert (root / name / "metrics.jsonl").stat().st_size > 0
    # keep the checkpoint of every 2nd step: steps 2 and 4 of dloral
    assert [p.name for p in (root / "dloral" / "checkpoints").iterdir()] == ["step-00000002.pt", "step-00000004.pt"] or \
        sorted(p.name for p in (root / "dloral" / "checkpoints").iterdir()) == ["step-00000002.pt", "step-00000004.pt"]


def _perturbed_checkpoint(root: Path, tmp_path: Path) -> Path:
    """The dloral checkpoint with every learned tensor randomised, so LoRA/CFR/flow all matter."""
    state = load_checkpoint(root / "dloral")
    g = torch.Generator().manual_seed(0)
    for part in ("unet", "cfr", "spynet"):
        for k, v in state["task"][part].items():
            state["task"][part][k] = v + 0.05 * torch.randn(v.shape, generator=g)
    path = tmp_path / "step-00000004.pt"
    torch.save(state, path)
    return path


def test_export_loads_and_matches_training_forward(pipeline, tmp_path):
    """The exported file loads in vsdloral.load_model and the Restorer computes exactly what
    the differentiable training forward computes (LoRA merged vs. unmerged)."""
    import vsdloral
    from training.export import export
    from training.nets import upscale
    from training.tasks import DLoRALTask

    cfg, root, _ = pipeline
    ck = _perturbed_checkpoint(root, tmp_path)
    out = tmp_path / "model.safetensors"
    export(ck, out)
    restorer = vsdloral.load_model(out, device="cpu", dtype="fp32")
    assert restorer.meta.provenance["steps"] == 4 and restorer.meta.provenance["base_kind"] == "base"
    base_stage = restorer.meta.provenance["base_stage"]
    assert base_stage["steps"] == 2 and base_stage["crop"] == CROP and base_stage["train_vae"] == "none"
    assert restorer.meta.tile == 0 and restorer.meta.color_fix is None  # dense, recorded explicitly
    assert restorer.meta.kernel == "torch" and restorer.meta.inference_tiling()[0] == 0

    task = DLoRALTask(load_checkpoint(ck)["config"])
    task.load_state(load_checkpoint(ck)["task"])
    torch.manual_seed(1)
    lq = torch.rand(1, 2, 3, 16, 24)
    with torch.no_grad():
        y_train = (task.net.eval()(lq)["y"][0, 0] + 1) / 2
    up = upscale(lq[0], 4)
    y_inf = restorer.restore(up[1:2], up[0:1], color_fix="none", cfr="dense")[0]
    assert y_inf.shape == (3, 64, 96)
    assert torch.isfinite(y_inf).all()
    assert (y_inf - y_train).abs().max().item() < 1e-3
    # the reference matters (CFR, warp and conv_in are live), so this is not a trivial match
    y_self = restorer.restore(up[1:2], None, color_fix="none")[0]
    assert (y_self - y_inf).abs().max().item() > 1e-4


def test_trainable_sets_exact(pipeline):
    from training.lora import ALL_ADAPTERS
    from training.tasks import DLoRALTask

    cfg, root, _ = pipeline
    task = DLoRALTask(copy.deepcopy(cfg))
    net = task.net
    names = {n for n, _ in net.named_parameters()}
    for a in ALL_ADAPTERS:
        assert any(f".{a}." in n for n in names), a

    def trainable():
        return {n for n, p in net.named_parameters() if p.requires_grad}

    lora_c = {n for n in names if "lora_" in n and n.split(".lora_")[1].split(".")[1].endswith("_consistency")}
    lora_q = {n for n in names if "lora_" in n and n.split(".lora_")[1].split(".")[1].endswith("_quality")}
    conv_in = {n for n in names if n.startswith("unet.conv_in.")}
    cfr = {n for n in names if n.startswith("cfr.")}
    spy = {n for n in names if n.startswith("spynet.")}
    assert lora_c and lora_q and conv_in and cfr and spy
    task.set_stage("consistency")
    assert trainable() == cfr | spy | lora_c | conv_in
    task.set_stage("detail")
    assert trainable() == lora_q | conv_in
    # the schedule drives the stage: switches at 1 and 3
    assert task.set_step(0) == "consistency" and trainable() == cfr | spy | lora_c | conv_in
    assert task.set_step(1) == "detail" and trainable() == lora_q | conv_in
    assert task.set_step(3) == "consistency"
    assert not any(p.requires_grad for p in net.codec.parameters())


def test_loss_goes_down_on_fixed_batch(pipeline):
    from training.data import Sources, WindowDataset, step_batch
    from training.tasks import DLoRALTask

    cfg, root, _ = pipeline
    cfg = copy.deepcopy(cfg)
    task = DLoRALTask(cfg)
    src = Sources(cfg["data"]["videos"], min_size=CROP, max_frames=24)
    ds = WindowDataset(src.clips, crop=CROP, frames=3, scale=4, degradation={"kind": "bicubic"}, seed=0, holdout=4)
    batch = step_batch(ds, 0, 2)
    params = task.trainable()
    task.set_stage("detail")
    opt = torch.optim.Adam(params, lr=3e-3)
    losses = []
    for _ in range(12):
        loss, _ = task.loss(task.forward(task.net.train(), batch), batch, 10 ** 6)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses


def test_resume_reproduces_next_losses(pipeline, tmp_path):
    """Resuming from the step-2 checkpoint gives exactly the losses of steps 3 and 4 of the
    uninterrupted run (schedule, optimiser, RNG and data order all restored)."""
    cfg, root, summary = pipeline
    resumed = _resume_from(root / "dloral" / "checkpoints" / "step-00000002.pt", tmp_path / "resumed", "dloral", cfg)
    assert resumed["losses"] == summary["losses"][2:]


def test_keyboard_interrupt_saves_checkpoint(pipeline, tmp_path, monkeypatch):
    from training import tasks

    cfg, root, _ = pipeline
    calls = {"n": 0}
    orig = tasks.BaseTask.loss

    def flaky(self, out, batch, step):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return orig(self, out, batch, step)

    monkeypatch.setattr(tasks.BaseTask, "loss", flaky)
    cfg = copy.deepcopy(cfg)
    config_mod.set_dotted(cfg, "train.checkpoint_every", 100)
    with pytest.raises(KeyboardInterrupt):
        train("base", cfg, tmp_path / "run")
    ck = latest_checkpoint(tmp_path / "run" / "checkpoints")
    assert ck is not None and ck.name == "step-00000001.pt"
    assert load_checkpoint(ck)["step"] == 1


def test_interrupted_checkpoint_write_keeps_previous(tmp_path, monkeypatch):
    from training import checkpoint as ckmod

    ckmod.save_checkpoint(tmp_path, 1, {"x": torch.ones(3)})

    def broken_save(obj, path):
        Path(path).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(ckmod.torch, "save", broken_save)
    with pytest.raises(OSError):
        ckmod.save_checkpoint(tmp_path, 2, {"x": torch.zeros(3)})
    assert [p.name for p in tmp_path.iterdir()] == ["step-00000001.pt"]
    assert torch.equal(ckmod.load_checkpoint(tmp_path)["x"], torch.ones(3))


def test_broken_inputs_are_skipped_and_counted(tmp_path, sample_clip):
    from training.data import Sources

    data = tmp_path / "data"
    data.mkdir()
    (data / "good.mp4").write_bytes(sample_clip.read_bytes())
    blob = sample_clip.read_bytes()
    (data / "corrupt.mp4").write_bytes(blob[:200] + bytes(range(256)) * 50)  # truncated, garbage
    (data / "notes.mp4").write_text("this is not a video")
    frames = tmp_path / "frames"
    frames.mkdir()
    (frames / "0001.png").write_bytes(b"\x89PNG broken")
    src = Sources([str(data), str(frames), str(tmp_path / "missing.mkv")], min_size=CROP, max_frames=12)
    assert len(src.clips) == 1 and src.clips[0].name.endswith("good.mp4")
    assert len(src.skipped) == 4
    cfg = tiny_cfg(data, **{"data.videos": [str(data), str(frames)], "vae.steps": 2, "data.holdout": 0})
    summary = train("vae", cfg, tmp_path / "run")
    assert summary["steps"] == 2 and summary["skipped"] == 3


def test_schedule_boundaries_and_transitions():
    from training.schedule import Schedule

    s = Schedule([10, 20], 4, {"l2": 1, "lpips": 2, "flow": 10, "csd": 1},
                 {"consistency": {"lpips": 0.02, "csd": 0, "flow": 2}})
    cons = {"l2": 1, "lpips": 0.04, "flow": 20, "temporal": 0, "csd": 0, "teacher": 0}
    det = {"l2": 1, "lpips": 2, "flow": 10, "temporal": 0, "csd": 1, "teacher": 0}
    assert [s.stage(i) for i in (0, 9, 10, 19, 20, 100)] == ["consistency", "consistency", "detail", "detail",
                                                               "consistency", "consistency"]
    assert s.weights(0) == pytest.approx(cons) and s.weights(9) == pytest.approx(cons)
    assert s.weights(10) == pytest.approx(cons)  # s = 0: all old
    assert s.weights(11) == pytest.approx({k: 0.75 * cons[k] + 0.25 * det[k] for k in det})
    assert s.weights(12) == pytest.approx({k: 0.5 * cons[k] + 0.5 * det[k] for k in det})
    assert s.weights(14) == pytest.approx(det) and s.weights(19) == pytest.approx(det)
    assert s.weights(22) == pytest.approx({k: 0.5 * det[k] + 0.5 * cons[k] for k in det})
    assert s.weights(24) == pytest.approx(cons)
    with pytest.raises(ValueError):
        Schedule([5, 3], 1, {})


def test_degradation_is_per_clip_and_reproducible():
    from training.degrade import degrade_clip, sample_params

    hq = np.random.default_rng(0).random((3, 64, 64, 3), dtype=np.float32)
    p = sample_params(np.random.default_rng(3), {"codec_prob": 1.0})
    assert p["kind"] == "realistic" and p["crf"] is not None
    a, b = degrade_clip(hq, p, 4, 11), degrade_clip(hq, p, 4, 11)
    assert a.shape == (3, 16, 16, 3) and np.array_equal(a, b)
    assert a.min() >= 0 and a.max() <= 1
    assert sample_params(np.random.default_rng(1), {"kind": "bicubic"}) == {"kind": "bicubic"}


def test_degrade_command_writes_video(tmp_path):
    import av

    from training.cli import main
    from vsdloral.samples import sample_video

    src = sample_video("carphone_pristine.mp4")  # 176x144, 120 frames
    for preset in ("bicubic", "realistic"):
        out = tmp_path / f"{preset}.mp4"
        assert main(["degrade", str(src), str(out), "--preset", preset, "--scale", "4", "--seed", "3"]) == 0
        with av.open(str(out)) as c:
            frames = [f for f in c.decode(video=0)]
        assert len(frames) == 120 and (frames[0].width, frames[0].height) == (44, 36)


def test_lpips_needs_local_weights(tmp_path):
    import lpips

    from training.losses import build_lpips, lpips_loss

    with pytest.raises(ValueError, match="lpips_weights"):
        build_lpips(None)
    ref = lpips.LPIPS(pretrained=False, net="alex", pnet_rand=True, verbose=False)
    torch.save(ref.state_dict(), tmp_path / "lpips.pt")
    model = build_lpips(str(tmp_path / "lpips.pt"))
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    assert lpips_loss(model, x, x).item() == pytest.approx(0.0, abs=1e-6)
    torch.save({"lin0.model.1.weight": torch.zeros(1, 64, 1, 1)}, tmp_path / "partial.pt")
    with pytest.raises(ValueError, match="lacks"):
        build_lpips(str(tmp_path / "partial.pt"))


def test_csd_loss_gives_finite_gradient():
    from diffusers import UNet2DConditionModel

    from training.losses import csd_loss
    from vsdloral.model.presets import get_preset

    torch.manual_seed(0)
    teacher = UNet2DConditionModel.from_config(dict(get_preset("tiny").unet, in_channels=4)).eval().requires_grad_(False)
    alphas = torch.cumprod(1 - torch.linspace(1e-4, 2e-2, 1000), 0)
    z = torch.randn(2, 4, 8, 8, requires_grad=True)
    emb = torch.randn(1, 77, 32)
    loss = csd_loss(teacher, alphas, z, emb, -emb, 7.5)
    loss.backward()
    assert torch.isfinite(loss) and z.grad.abs().sum() > 0


def test_config_layers_and_cli_errors(tmp_path, capsys):
    from training.cli import main

    user = tmp_path / "c.yaml"
    user.write_text("loss:\n  l2: 0.5\ndloral:\n  steps: 7\n")
    cfg = config_mod.build_config(None, str(user), ["dloral.steps=9", "loss.stage_scale.detail.flow=0"],
                                  {"seed": 5, "dloral.lr": None})
    assert cfg["loss"]["l2"] == 0.5 and cfg["dloral"]["steps"] == 9 and cfg["seed"] == 5
    assert cfg["loss"]["stage_scale"]["detail"] == {"flow": 0} and cfg["dloral"]["lr"] == 2e-4
    assert main(["dloral", "--out", str(tmp_path / "r"), "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "effective config" in err and "dloral needs --base" in err
    assert main(["vae", "--preset", "nope", "--out", str(tmp_path / "r")]) == 2
    assert "unknown training preset" in capsys.readouterr().err


def test_image_folder_pseudo_video(tmp_path):
    import cv2

    from training.data import Sources, WindowDataset

    rng = np.random.default_rng(0)
    folder = tmp_path / "stills"
    folder.mkdir()
    for i in range(2):
        cv2.imwrite(str(folder / f"{i}.png"), (rng.random((80, 90, 3)) * 255).astype(np.uint8))
    (folder / "bad.jpg").write_bytes(b"nope")
    src = Sources(None, [str(folder)], min_size=CROP)
    assert len(src.clips) == 2 and all(c.pseudo for c in src.clips) and len(src.skipped) == 1
    ds = WindowDataset(src.clips, crop=CROP, frames=3, scale=4, degradation={"kind": "bicubic"}, seed=0, shift=4)
    moved = 0
    for i in range(6):
        item = ds[i]
        assert item["hq"].shape == (3, 3, CROP, CROP) and item["lq"].shape == (3, 3, CROP // 4, CROP // 4)
        assert torch.equal(ds[i]["hq"], item["hq"])  # deterministic per index
        moved += int(not torch.equal(item["hq"][0], item["hq"][2]))
    assert moved > 0  # the pseudo-video pans


@pytest.fixture(scope="module")
def fake_sd_folder(tmp_path_factory):
    """A Stable-Diffusion-layout folder with tiny random parts (unet, vae, text encoder, tokenizer, scheduler)."""
    import json

    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from vsdloral.model.presets import get_preset

    root = tmp_path_factory.mktemp("sd")
    torch.manual_seed(0)
    p = get_preset("tiny")
    UNet2DConditionModel.from_config(dict(p.unet, in_channels=4)).save_pretrained(root / "unet")
    AutoencoderKL.from_config(p.vae).save_pretrained(root / "vae")
    DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).save_pretrained(root / "scheduler")
    tok_dir = root / "tokenizer"
    tok_dir.mkdir()
    chars = "abcdefghijklmnopqrstuvwxyz"
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    (tok_dir / "vocab.json").write_text(json.dumps(vocab))
    (tok_dir / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), model_max_length=77).save_pretrained(tok_dir)
    CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                                 num_attention_heads=4, max_position_embeddings=77,
                                 bos_token_id=0, eos_token_id=1, pad_token_id=1)).save_pretrained(root / "text_encoder")
    return root


def test_dloral_from_sd_folder_with_csd(fake_sd_folder, sample_clip, tmp_path, monkeypatch):
    """The Stable Diffusion start: prompt from the text encoder, CSD with the frozen base UNet
    as teacher (the SR teacher, configured too, is not loaded: CSD is SD's detail loss), export loadable."""
    import vsdloral
    from training import teacher
    from training.export import export

    def no_load(cfg):
        raise AssertionError("the SR teacher must not be loaded for a Stable Diffusion base")

    monkeypatch.setattr(teacher, "load_network", no_load)
    cfg = tiny_cfg(sample_clip, **{"dloral.base": str(fake_sd_folder), "dloral.steps": 2, "dloral.switches": [1], "dloral.transition": 0,
                                   "dloral.prompt": "a bike", "dloral.negative_prompt": "blur", "model.cfr": {"heads": 2, "head_dim": 16},
                                   "loss.teacher": 1.0, "teacher.kind": "realesrgan-x4plus"})
    cfg["arch"] = "tiny"
    summary = train("dloral", cfg, tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert "csd" not in rows[0] and rows[1]["csd"] > 0 and rows[1]["w_csd"] == 1.0  # consistency: CSD off
    assert not any("teacher" in r for r in rows)
    assert all(np.isfinite(summary["losses"]))
    export(tmp_path / "run", tmp_path / "sd.safetensors")
    r = vsdloral.load_model(tmp_path / "sd.safetensors", device="cpu", dtype="fp32")
    assert r.meta.provenance["base_kind"] == "sd" and r.meta.prompt == "a bike"
    assert r.restore(torch.rand(1, 3, 32, 32)).shape == (1, 3, 32, 32)


def test_vae_resume_restores_rng(tmp_path, sample_clip):
    """The VAE samples its posterior (torch RNG): resuming must restore the RNG state too."""
    cfg = tiny_cfg(sample_clip, **{"vae.steps": 4})
    full = train("vae", copy.deepcopy(cfg), tmp_path / "a")
    src = tmp_path / "a" / "checkpoints" / "step-00000002.pt"
    assert _resume_from(src, tmp_path / "b", "vae", cfg)["losses"] == full["losses"][2:]
    torch.manual_seed(123)  # a different global RNG state at resume time must not matter
    assert _resume_from(src, tmp_path / "c", "vae", cfg)["losses"] == full["losses"][2:]


@pytest.mark.parametrize("parts", ["none", "decoder", "all"])
def test_base_train_vae_sets_and_carries_the_learned_vae(pipeline, tmp_path, parts):
    """``base.train_vae`` makes exactly that part of the VAE learn; the learned VAE is what the
    base checkpoint holds and what the dloral stage (frozen) starts from."""
    from training.bases import load_start
    from training.tasks import BaseTask

    cfg, root, _ = pipeline
    cfg = copy.deepcopy(cfg)
    config_mod.set_dotted(cfg, "base.train_vae", parts)
    task = BaseTask(cfg)
    learn = {n.split(".")[2] for n, p in task.net.named_parameters() if p.requires_grad and n.startswith("codec.")}
    assert learn == {"none": set(), "decoder": {"decoder", "post_quant_conv"},
                     "all": {"decoder", "post_quant_conv", "encoder", "quant_conv"}}[parts]
    assert all(p.requires_grad for p in task.net.unet.parameters())
    task.net.train()
    assert task.net.codec.vae.decoder.training == (parts != "none")
    assert task.net.codec.vae.encoder.training == (parts == "all")

    run = tmp_path / "base"
    train("base", cfg, run)
    before = load_checkpoint(latest_checkpoint(root / "vae" / "checkpoints"))["task"]["vae"]
    after = load_checkpoint(latest_checkpoint(run / "checkpoints"))["task"]["vae"]
    changed = {k.split(".")[0] for k in after if not torch.equal(after[k], before[k])}
    assert changed == {"none": set(), "decoder": {"decoder", "post_quant_conv"},
                       "all": {"decoder", "post_quant_conv", "encoder", "quant_conv"}}[parts]
    config_mod.set_dotted(cfg, "dloral.base", str(run))
    start = load_start(cfg)
    assert all(torch.equal(start.vae.state_dict()[k], after[k]) for k in after)


def test_base_train_vae_rejects_unknown_part(pipeline):
    from training.tasks import BaseTask

    cfg = copy.deepcopy(pipeline[0])
    config_mod.set_dotted(cfg, "base.train_vae", "encoder")
    with pytest.raises(ValueError, match="train_vae must be one of"):
        BaseTask(cfg)


def test_learning_rate_warmup_and_cosine():
    from training.loop import learning_rate

    c = {"lr": 1e-3, "warmup": 10}
    assert learning_rate(c, 0, 100) == pytest.approx(1e-4)
    assert learning_rate(c, 9, 100) == pytest.approx(1e-3)
    assert learning_rate(c, 99, 100) == pytest.approx(1e-3)          # decay: none (default)
    c = {"lr": 1e-3, "warmup": 10, "decay": "cosine", "lr_min_ratio": 0.1}
    assert learning_rate(c, 10, 100) == pytest.approx(1e-3)
    assert learning_rate(c, 99, 100) == pytest.approx(1e-4)
    mid = learning_rate(c, 10 + 89 // 2, 100)
    assert 1e-4 < mid < 1e-3 and mid == pytest.approx(5.5e-4, rel=0.02)
    lrs = [learning_rate(c, s, 100) for s in range(10, 100)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    with pytest.raises(ValueError, match="decay"):
        learning_rate({"lr": 1e-3, "decay": "step"}, 5, 10)


def test_base_init_continues_an_earlier_base_run(pipeline):
    from training.tasks import BaseTask

    cfg, root, _ = pipeline
    cfg = copy.deepcopy(cfg)
    config_mod.set_dotted(cfg, "base.vae", None)
    config_mod.set_dotted(cfg, "base.init", str(root / "base"))
    task = BaseTask(cfg)
    saved = load_checkpoint(root / "base")["task"]
    for k, v in task.net.unet.state_dict().items():
        assert torch.equal(v, saved["unet"][k]), k
    for k, v in task.net.codec.vae.state_dict().items():
        assert torch.equal(v, saved["vae"][k]), k
    config_mod.set_dotted(cfg, "base.init", str(root / "vae"))
    with pytest.raises(ValueError, match="not a 'base' training checkpoint"):
        BaseTask(cfg)


def test_temporal_loss_values_and_stage():
    from training.losses import temporal_loss
    from training.schedule import from_config

    gt = torch.rand(2, 3, 3, 8, 8)
    assert temporal_loss(gt, gt).item() == 0.0
    assert temporal_loss(gt + 0.3, gt).item() == pytest.approx(0.0, abs=1e-6)  # a constant offset does not flicker
    flicker = gt.clone()
    flicker[:, 1] += 0.1                                                        # one frame brighter
    assert temporal_loss(flicker, gt).item() == pytest.approx(0.1, rel=1e-4)   # |+0.1| and |-0.1| per pixel
    cfg = config_mod.build_config("lite", None, None)
    sched = from_config(cfg)
    assert sched.stage_weights("consistency")["temporal"] == pytest.approx(0.2)
    assert sched.stage_weights("detail")["temporal"] == 0.0
    assert from_config(config_mod.build_config("tiny", None, None)).stage_weights("consistency")["temporal"] == 0.0


def test_dloral_can_keep_spynet_frozen(pipeline):
    from training.tasks import DLoRALTask

    cfg = copy.deepcopy(pipeline[0])
    config_mod.set_dotted(cfg, "dloral.train_spynet", False)
    task = DLoRALTask(cfg)
    task.set_stage("consistency")
    learn = {n.split(".")[0] for n, p in task.net.named_parameters() if p.requires_grad}
    assert learn == {"cfr", "unet"}
    assert not any(p.requires_grad for p in task.net.spynet.parameters())


def test_dloral_init_continues_a_weights_file_and_keeps_its_lineage(pipeline, tmp_path):
    """``dloral.init``: training continues from an exported model (its weights are the start)
    and the new file records the old file's provenance and this stage's overrides."""
    import vsdloral
    from training.bases import load_start
    from training.export import export
    from vsdloral.model.weights import read_metadata

    cfg, root, _ = pipeline
    first = tmp_path / "first.safetensors"
    export(root / "dloral", first)
    cfg = copy.deepcopy(cfg)
    config_mod.set_dotted(cfg, "dloral.base", None)
    config_mod.set_dotted(cfg, "dloral.init", str(first))
    config_mod.set_dotted(cfg, "degradation.jpeg_range", [31, 94])
    start = load_start(cfg)
    loaded = vsdloral.load_model(first, device="cpu", dtype="fp32")
    for k, v in start.unet.state_dict().items():
        assert torch.equal(v, loaded.unet.state_dict()[k]), k
    assert start.kind == "weights"
    train("dloral", cfg, tmp_path / "continued")
    second = tmp_path / "second.safetensors"
    export(tmp_path / "continued", second)
    prov = read_metadata(second)["provenance"]
    assert prov["init"] == str(first) and prov["base_kind"] == "weights"
    assert prov["init_provenance"] == read_metadata(first)["provenance"]
    assert prov["settings"]["degradation"]["jpeg_range"] == [31, 94]
    assert prov["settings"]["dloral"]["steps"] == 4 and "init" not in prov["settings"]["dloral"]


def test_base_init_from_a_weights_file_takes_its_single_frame_path(pipeline, tmp_path):
    """``base.init`` may be an exported model: its VAE, and its UNet with ``conv_in``'s
    reference channels dropped; a UNet of another arch is a clear error."""
    from training.export import export
    from training.tasks import BaseTask
    from vsdloral.model.weights import DLoRALModel

    cfg, root, _ = pipeline
    model_file = tmp_path / "model.safetensors"
    export(_perturbed_checkpoint(root, tmp_path), model_file)
    cfg = copy.deepcopy(cfg)
    config_mod.set_dotted(cfg, "base.vae", None)
    config_mod.set_dotted(cfg, "base.init", str(model_file))
    task = BaseTask(cfg)
    saved = DLoRALModel.load(model_file)
    c = saved.meta.unet_config["in_channels"] // 2
    for k, v in task.net.unet.state_dict().items():
        want = saved.unet.state_dict()[k]
        assert torch.equal(v, want[:, c:] if k == "conv_in.weight" else want), k
    for k, v in task.net.codec.vae.state_dict().items():
        assert torch.equal(v, saved.vae.state_dict()[k]), k
    config_mod.set_dotted(cfg, "model.unet", {"block_out_channels": [16, 64]})
    with pytest.raises(ValueError, match="another shape than arch"):
        BaseTask(cfg)


def test_full_degradation_overlay_matches_the_degrade_defaults():
    """The overlay restores exactly the ranges ``degrade --preset realistic`` samples from."""
    from training.degrade import DEFAULTS

    overlay = config_mod.load_yaml(config_mod.CONFIG_DIR / "overlays" / "full-degradation.yaml")["degradation"]
    assert overlay == {k: DEFAULTS[k] for k in overlay}
    cfg = config_mod.build_config("lite", str(config_mod.CONFIG_DIR / "overlays" / "full-degradation.yaml"), None)
    assert all(cfg["degradation"][k] == DEFAULTS[k] for k in overlay)
    lite = config_mod.build_config("lite", None, None)["degradation"]
    assert any(lite[k] != DEFAULTS[k] for k in overlay)  # lite itself narrows them


def test_base_vae_from_a_weights_file_under_a_new_unet(pipeline, tmp_path):
    """``base.vae`` may be an exported model: its trained VAE starts a base run whose UNet is new
    (here wider than the preset's)."""
    from training.export import export
    from training.tasks import BaseTask
    from vsdloral.model.weights import DLoRALModel, read_metadata

    cfg, root, _ = pipeline
    model_file = tmp_path / "model.safetensors"
    export(_perturbed_checkpoint(root, tmp_path), model_file)
    cfg = copy.deepcopy(cfg)
    config_mod.set_dotted(cfg, "base.vae", str(model_file))
    config_mod.set_dotted(cfg, "model.unet", {"block_out_channels": [16, 64]})
    task = BaseTask(cfg)
    saved = DLoRALModel.load(model_file)
    for k, v in task.net.codec.vae.state_dict().items():
        assert torch.equal(v, saved.vae.state_dict()[k]), k
    assert task.unet_config["block_out_channels"] == [16, 64]
    assert task.net.unet.conv_out.weight.abs().sum() == 0  # a fresh UNet: starts as the identity

    # the whole chain on it: base -> dloral -> export, which keeps the new UNet and records the VAE's origin
    train("base", cfg, tmp_path / "base")
    config_mod.set_dotted(cfg, "dloral.base", str(tmp_path / "base"))
    train("dloral", cfg, tmp_path / "dloral")
    export(tmp_path / "dloral", tmp_path / "wide.safetensors")
    md = read_metadata(tmp_path / "wide.safetensors")
    assert md["unet_config"]["block_out_channels"] == [16, 64]
    base_stage = md["provenance"]["base_stage"]
    assert base_stage["vae"] == str(model_file)
    assert base_stage["vae_provenance"] == read_metadata(model_file)["provenance"]


def test_load_checkpoint_refuses_unsafe_and_junk_files_in_one_line(tmp_path):
    """Junk and pickles of arbitrary objects give a one-line ValueError, never torch's advice to
    retry with weights_only=False (which would run the file's code)."""
    import argparse

    import torch

    from training.checkpoint import load_checkpoint

    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"x": argparse.Namespace(a=1)}, unsafe)  # a class weights_only loading refuses
    truncated = tmp_path / "truncated.pt"
    torch.save({"w": torch.zeros(1000)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    for path in (junk, unsafe, truncated):
        with pytest.raises(ValueError) as err:
            load_checkpoint(path)
        msg = str(err.value)
        assert str(path) in msg and "\n" not in msg and "weights_only" not in msg, msg
