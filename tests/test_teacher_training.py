"""The SR teacher of the dloral detail stage (training/teacher.py): detail stage only, gradients into
D-LoRA, the output cache (hits on resume, corrupt entries recomputed, atomic writes), start-up errors,
and the teacher weight's schedule (a Stable Diffusion base keeping CSD: tests/test_training.py's
test_dloral_from_sd_folder_with_csd)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from ncnn_format import random_rrdbnet, write_rrdbnet_ncnn

from training import config as config_mod
from training import teacher as teacher_mod
from training.loop import train
from training.teacher import SRTeacher, TeacherCache, lq_key
from vsdloral.realesrgan import load_x4plus

CROP = 32


def write_teacher(folder: Path, seed: int = 0) -> Path:
    """A tiny RRDBNet-shaped x4 ncnn model (1 block, 5 features) as realesrgan-x4plus.param/.bin."""
    write_rrdbnet_ncnn(random_rrdbnet(seed=seed), folder)
    return folder


@pytest.fixture
def teacher_dir(tmp_path) -> Path:
    return write_teacher(tmp_path / "teacher")


@pytest.fixture
def counts(monkeypatch):
    """``counts['frames']``: frames the SR teacher computed (cache misses), ``counts['inputs']``:
    those LQ frames, ``counts['loads']``: networks loaded."""
    out = {"frames": 0, "loads": 0, "inputs": []}
    compute, load = SRTeacher._compute, teacher_mod.load_network

    def counted_compute(self, lq):
        out["frames"] += lq.shape[0]
        out["inputs"].append(lq.detach().clone())
        return compute(self, lq)

    def counted_load(cfg):
        out["loads"] += 1
        return load(cfg)

    monkeypatch.setattr(SRTeacher, "_compute", counted_compute)
    monkeypatch.setattr(teacher_mod, "load_network", counted_load)
    return out


def dl_cfg(clip: Path, init: Path, teacher: Path, cache: Path, **sets) -> dict:
    """dloral on the tiny preset from a weights file: consistency at step 0, detail at 1-2,
    consistency at 3; the teacher on with weight 1."""
    cfg = config_mod.build_config("tiny", None, None)
    over = {
        "data.videos": [str(clip)], "data.max_frames": 24, "data.holdout": 4, "data.val_crop": 64,
        "data.val_clips": 1, "train.device": "cpu", "train.progress": False, "train.val_every": 0,
        "train.checkpoint_every": 2, "train.log_every": 1, "degradation.kind": "bicubic",
        "dloral.init": str(init), "dloral.steps": 4, "dloral.batch_size": 1, "dloral.crop": CROP,
        "dloral.switches": [1, 3], "dloral.transition": 0, "dloral.warmup": 0,
        "loss.teacher": 1.0, "teacher.kind": "realesrgan-x4plus", "teacher.path": str(teacher),
        "teacher.cache": str(cache),
    }
    over.update(sets)
    for k, v in over.items():
        config_mod.set_dotted(cfg, k, v)
    return cfg


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_teacher_loss_in_the_detail_stage_only_and_cached_for_resume(counts, teacher_dir, sample_clip, tiny_model_path, tmp_path):
    cfg = dl_cfg(sample_clip, tiny_model_path, teacher_dir, tmp_path / "cache")
    full = train("dloral", copy.deepcopy(cfg), tmp_path / "a")
    rows = _rows(tmp_path / "a")  # row "step k" logs step k-1
    assert [("teacher" in r) for r in rows] == [False, True, True, False]
    assert rows[1]["w_teacher"] == 1.0 and rows[1]["teacher"] > 0
    # batch 1 x (T-1 = 2) restored frames per detail step, 2 detail steps; none in the consistency stage
    assert counts["frames"] == 4
    # the resumed run reads the detail step's outputs from the cache and reproduces the losses
    (tmp_path / "b" / "checkpoints").mkdir(parents=True)
    ck = tmp_path / "a" / "checkpoints" / "step-00000002.pt"
    (tmp_path / "b" / "checkpoints" / ck.name).write_bytes(ck.read_bytes())
    resumed = train("dloral", copy.deepcopy(cfg), tmp_path / "b", resume=True)
    assert counts["frames"] == 4 and resumed["losses"] == full["losses"][2:]


class _Rank:
    """The real single-process accelerator reporting itself as process ``rank`` of ``world``: each
    rank of a DDP run draws its own batches (training.loop), which this shows without DDP."""

    def __init__(self, accelerator, rank: int, world: int) -> None:
        self._acc, self.process_index, self.num_processes = accelerator, rank, world

    @property
    def is_main_process(self) -> bool:
        return self.process_index == 0

    def __getattr__(self, name):
        return getattr(self._acc, name)


@pytest.mark.parametrize("accum, world, windows", [(1, 1, 2), (2, 2, 8)])
def test_precomputed_outputs_are_the_ones_training_reads(accum, world, windows, counts, teacher_dir, sample_clip,
                                                         tiny_model_path, tmp_path, capsys, monkeypatch):
    """``vsdloral-train teacher --world N`` fills the cache with exactly the LQ frames that the
    detail steps of every rank read, every micro-batch of ``train.grad_accum`` included: the run
    that follows (each rank of it) computes nothing, and together the ranks read every entry."""
    from training import loop
    from training.cli import main

    cfg = dl_cfg(sample_clip, tiny_model_path, teacher_dir, tmp_path / "cache", **{"train.grad_accum": accum})
    (tmp_path / "run.yaml").write_text(config_mod.dump(cfg))
    assert main(["teacher", "--config", str(tmp_path / "run.yaml"), "--world", str(world)]) == 0
    frames = 2 * windows  # T-1 = 2 restored frames per window
    assert (f"teacher outputs of 2 steps, {windows} windows: {frames} frames ({frames} computed, 0 already cached)"
            in capsys.readouterr().err)
    assert counts["frames"] == frames
    cached = {p.stem for p in (tmp_path / "cache").rglob("*.safetensors")}
    assert len(cached) == frames
    read, get = set(), TeacherCache.get
    monkeypatch.setattr(TeacherCache, "get", lambda self, key: read.add(key) or get(self, key))
    accelerator = loop._accelerator
    for rank in range(world):
        monkeypatch.setattr(loop, "_accelerator", lambda c, r=rank: _Rank(accelerator(c), r, world))
        train("dloral", copy.deepcopy(cfg), tmp_path / f"rank{rank}")
    assert counts["frames"] == frames and read == cached


def test_a_window_pool_is_computed_once_and_shards_split_it(counts, teacher_dir, sample_clip, tiny_model_path,
                                                            tmp_path, capsys):
    """``data.pool``: item i is item i % pool, so the detail steps 1, 2 and 3 (batch 2: windows 2-7)
    need the teacher on pool windows 0-3 only; two shards compute two windows each, and the run
    that follows computes nothing."""
    from training.cli import main
    from training.data import Sources, WindowDataset

    src = Sources([str(sample_clip)], min_size=CROP, max_frames=24)
    ds = WindowDataset(src.clips, crop=CROP, frames=3, scale=4, degradation={"kind": "bicubic"}, seed=0, holdout=4,
                       pool=4)
    assert torch.equal(ds.sample(1)["lq"], ds.sample(5)["lq"]) and not torch.equal(ds.sample(1)["lq"], ds.sample(2)["lq"])
    cfg = dl_cfg(sample_clip, tiny_model_path, teacher_dir, tmp_path / "cache", **{
        "data.pool": 4, "dloral.batch_size": 2, "dloral.switches": [1], "dloral.steps": 4})
    (tmp_path / "run.yaml").write_text(config_mod.dump(cfg))
    for shard in ("0/2", "1/2"):
        assert main(["teacher", "--config", str(tmp_path / "run.yaml"), "--shard", shard]) == 0
        assert "teacher outputs of 3 steps, 2 windows: 4 frames (4 computed, 0 already cached)" in capsys.readouterr().err
    assert counts["frames"] == 8
    train("dloral", copy.deepcopy(cfg), tmp_path / "a")
    assert counts["frames"] == 8
    assert main(["teacher", "--config", str(tmp_path / "run.yaml"), "--shard", "2/2"]) == 2
    assert "shard 2/2" in capsys.readouterr().err


def test_teacher_term_follows_the_teacher_and_trains_d_lora(counts, teacher_dir, sample_clip, tiny_model_path, tmp_path):
    from training.data import Sources, WindowDataset, step_batch
    from training.lora import lora_parameters
    from training.tasks import DLoRALTask

    cfg = dl_cfg(sample_clip, tiny_model_path, teacher_dir, tmp_path / "cache")
    task = DLoRALTask(copy.deepcopy(cfg))
    src = Sources(cfg["data"]["videos"], min_size=CROP, max_frames=24)
    ds = WindowDataset(src.clips, crop=CROP, frames=3, scale=4, degradation={"kind": "bicubic"}, seed=0, holdout=4)
    batch = step_batch(ds, 0, 2)
    params = task.trainable()
    assert task.set_step(0) == "consistency"
    loss_c, logs = task.loss(task.forward(task.net, batch), batch, 0)
    assert "teacher" not in logs and counts["frames"] == 0  # never called in the consistency stage
    assert task.set_step(1) == "detail"
    out = task.forward(task.net, batch)
    loss_d, logs = task.loss(out, batch, 1)
    assert counts["frames"] == 4 and logs["w_teacher"] == 1.0
    # exactly the LQ frames 1..T-1 of each window (the ones y restores), in order, and nothing else
    assert torch.equal(torch.cat(counts["inputs"]), batch["lq"][:, 1:].flatten(0, 1))
    # the term is the L1 distance to the teacher's output on the LQ frames 1..T-1 (in [-1,1])
    target = 2 * load_x4plus(teacher_dir)(batch["lq"][:, 1:].flatten(0, 1)).unflatten(0, (2, 2)) - 1
    assert logs["teacher"] == pytest.approx((out["y"] - target).abs().mean().item(), abs=2e-3)
    # a gradient reaches the detail-stage LoRA from the teacher term alone
    for p in params:
        p.grad = None
    teacher_mod.teacher_loss(task.sr_teacher, out["y"], batch["lq"][:, 1:]).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in lora_parameters(task.net.unet, "quality"))
    # another teacher gives another loss
    task.sr_teacher = SRTeacher(load_x4plus(write_teacher(tmp_path / "other", seed=1)), None)
    with torch.no_grad():
        _, logs2 = task.loss(task.forward(task.net, batch), batch, 1)
    assert abs(logs2["teacher"] - logs["teacher"]) > 1e-3


def test_lite_schedule_interpolates_the_teacher_weight():
    from training.schedule import from_config

    cfg = config_mod.build_config("lite", None, None)
    sched = from_config(cfg)
    s1, s2 = cfg["dloral"]["switches"]
    tr = cfg["dloral"]["transition"]
    assert sched.stage_weights("consistency")["teacher"] == 0.0 and sched.stage_weights("detail")["teacher"] == 1.0
    assert sched.weights(s1 - 1)["teacher"] == 0.0 and sched.weights(s1 + tr // 2)["teacher"] == pytest.approx(0.5)
    assert sched.weights(s2 - 1)["teacher"] == 1.0 and sched.weights(s2 + tr)["teacher"] == 0.0
    assert config_mod.build_config("tiny", None, None)["loss"]["teacher"] == 0.0
    sd = from_config(config_mod.build_config("sd21", None, None))
    assert sd.stage_weights("detail")["teacher"] == 0.0 and sd.stage_weights("detail")["csd"] == 1.0


def test_corrupt_cache_entries_are_recomputed(teacher_dir, tmp_path, caplog):
    net = load_x4plus(teacher_dir)
    lq = torch.rand(2, 3, 6, 5)
    cache = TeacherCache(tmp_path / "cache", "t" * 64)
    teacher = SRTeacher(net, cache)
    first = teacher(lq)
    assert first.shape == (2, 3, 24, 20) and teacher.computed == 2
    assert torch.equal(teacher(lq), first) and teacher.computed == 2 and cache.hits == 2  # cached
    p0, p1 = cache.path(lq_key(lq[0])), cache.path(lq_key(lq[1]))
    p0.write_bytes(p0.read_bytes()[:-7])                  # truncated
    data = bytearray(p1.read_bytes())
    data[-1] ^= 0xFF                                      # one flipped payload byte
    p1.write_bytes(bytes(data))
    with caplog.at_level("WARNING", logger="vsdloral.train.teacher"):
        again = teacher(lq)
    assert torch.equal(again, first) and teacher.computed == 4 and cache.corrupt == 2
    assert sum("corrupt" in r.message for r in caplog.records) == 1  # logged once
    assert torch.equal(teacher(lq), first) and teacher.computed == 4  # overwritten with good entries
    # another teacher identity never reads these entries
    other = SRTeacher(net, TeacherCache(tmp_path / "cache", "u" * 64))
    assert torch.equal(other(lq), first) and other.computed == 2
    assert not list(tmp_path.rglob("*.part"))


def test_a_failed_cache_write_warns_once_and_training_goes_on(teacher_dir, tmp_path, monkeypatch, caplog):
    """A full disk: the half-written file is removed, one warning, the outputs are still returned
    (the same as cached ones), and no further write is tried."""
    import errno

    tries = []

    def full_disk(self, data):
        tries.append(self)
        with open(self, "wb") as f:
            f.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    net = load_x4plus(teacher_dir)
    lq = torch.rand(3, 3, 4, 4)
    want = SRTeacher(net, None)(lq)
    monkeypatch.setattr(Path, "write_bytes", full_disk)
    cache = TeacherCache(tmp_path / "cache", "t" * 64)
    teacher = SRTeacher(net, cache)
    with caplog.at_level("WARNING", logger="vsdloral.train.teacher"):
        assert torch.equal(teacher(lq), want)
        assert torch.equal(teacher(lq[:1] + 0.5), SRTeacher(net, None)(lq[:1] + 0.5))
    assert [r.message for r in caplog.records if "cannot write" in r.message] and len(caplog.records) == 1
    assert "No space left on device" in caplog.records[0].message
    assert len(tries) == 1 and cache.write_error is not None and teacher.computed == 4
    assert [p for p in (tmp_path / "cache").rglob("*") if p.is_file()] == []


def test_precompute_stops_when_the_cache_cannot_be_written(teacher_dir, sample_clip, tiny_model_path, tmp_path,
                                                          monkeypatch, capsys):
    """``vsdloral-train teacher`` exists to fill the cache: a full disk ends it with one line."""
    import errno

    from training.cli import main

    def full_disk(self, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    cfg = dl_cfg(sample_clip, tiny_model_path, teacher_dir, tmp_path / "cache")
    (tmp_path / "run.yaml").write_text(config_mod.dump(cfg))
    monkeypatch.setattr(Path, "write_bytes", full_disk)
    assert main(["teacher", "--config", str(tmp_path / "run.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("vsdloral-train teacher: error: teacher precompute: cannot write to the cache") and \
        "No space left on device" in err


def test_an_unwritable_cache_fails_at_start_in_one_line(teacher_dir, tmp_path, monkeypatch):
    """A cache folder under a regular file (unwritable even for root), and one whose test write is
    refused: a one-line error naming teacher.cache before any step."""
    (tmp_path / "file").write_text("x")
    cfg = {"scale": 4, "loss": {"teacher": 1.0}, "teacher": {"kind": "realesrgan-x4plus", "path": str(teacher_dir),
                                                             "cache": str(tmp_path / "file" / "cache")}}
    net = load_x4plus(teacher_dir)
    with pytest.raises(ValueError, match=r"^teacher.cache: cannot write to .*file/cache/.*teacher.cache=false") as exc:
        teacher_mod.build_teacher(cfg, net)
    assert "\n" not in str(exc.value)

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied")

    cfg["teacher"]["cache"] = str(tmp_path / "cache")
    monkeypatch.setattr(teacher_mod.tempfile, "NamedTemporaryFile", refuse)
    with pytest.raises(ValueError, match=r"^teacher.cache: cannot write to .*\(Permission denied\)"):
        teacher_mod.build_teacher(cfg, net)
    cfg["teacher"]["cache"] = False
    assert teacher_mod.build_teacher(cfg, net).cache is None  # no cache: nothing to check


def test_cache_prune_deletes_least_recently_used(tmp_path):
    import os

    cache = TeacherCache(tmp_path, "t" * 64)
    keys = [f"{i:064x}" for i in range(4)]
    for i, k in enumerate(keys):
        cache.put(k, torch.zeros(3, 16, 16, dtype=torch.uint8))
        os.utime(cache.path(k), (1000 + i, 1000 + i))
    cache.get(keys[0])  # used now: kept
    size = cache.path(keys[0]).stat().st_size
    assert TeacherCache(tmp_path, "t" * 64, max_bytes=2 * size).prune(2 * size) == 0  # pruned at start-up
    assert [cache.path(k).is_file() for k in keys] == [True, False, False, True]


def test_start_up_deletes_parts_of_killed_writes_but_not_of_writes_under_way(tmp_path):
    """A write killed by SIGKILL leaves its ``.part`` beside the entries; start-up deletes it once
    it is old, but not a young one, which may be another shard's write in progress."""
    import os
    import time

    cache = TeacherCache(tmp_path, "t" * 64)
    key = f"{1:064x}"
    cache.put(key, torch.zeros(3, 16, 16, dtype=torch.uint8))
    stale = cache.path(key).parent / f".{key}.safetensors.abc.part"
    young = cache.path(key).parent / f".{key}.safetensors.def.part"
    for p in (stale, young):
        p.write_bytes(b"half a write")
    old = time.time() - 2 * TeacherCache.STALE_PART_S
    os.utime(stale, (old, old))
    TeacherCache(tmp_path, "t" * 64, max_bytes=10**9)
    assert not stale.exists() and young.exists() and cache.path(key).is_file()
    stale.write_bytes(b"another killed write")
    os.utime(stale, (old, old))
    TeacherCache(tmp_path, "t" * 64)  # an unbounded cache (teacher.cache_max_gb 0, the default) never prunes
    assert not stale.exists() and young.exists() and cache.path(key).is_file()


def _truncate_bin(folder: Path) -> None:
    b = folder / "realesrgan-x4plus.bin"
    b.write_bytes(b.read_bytes()[:-10])


@pytest.mark.parametrize("sets, damage, key", [
    (["teacher.kind=esrgan"], None, "teacher.kind"),
    (["teacher.kind=none"], None, "teacher.kind"),
    (["teacher.path=/nonexistent/x4plus.param"], None, "teacher.path"),
    (["loss.teacher_distance=l3"], None, "loss.teacher_distance"),
    (["teacher.tile=-1"], None, "teacher.tile"),
    (["teacher.cache=true"], None, "teacher.cache"),
    (["teacher.cache=[a]"], None, "teacher.cache"),
    (["teacher.cache_max_gb=lots"], None, "teacher.cache_max_gb"),
    (["teacher.cache_max_gb=-1"], None, "teacher.cache_max_gb"),
    (["teacher.cache=FILE/cache"], None, "teacher.cache"),                                   # unwritable
    ([], _truncate_bin, "realesrgan-x4plus.bin"),                                        # corrupt .bin
    ([], lambda d: (d / "realesrgan-x4plus.bin").unlink(), "realesrgan-x4plus.bin"),     # missing .bin
    ([], lambda d: (d / "realesrgan-x4plus.param").write_text("garbage"), "realesrgan-x4plus.param"),
])
def test_bad_teacher_settings_fail_at_start_in_one_line(sets, damage, key, teacher_dir, sample_clip, tiny_model_path,
                                                        tmp_path, capsys):
    from training.cli import main

    if damage is not None:
        damage(teacher_dir)
    argv = ["dloral", "--out", str(tmp_path / "run"), "--data", str(sample_clip), "--init", str(tiny_model_path),
            "--steps", "1", "--set", "loss.teacher=1", "--set", "teacher.kind=realesrgan-x4plus", "--set", f"teacher.path={teacher_dir}",
            "--set", f"teacher.cache={tmp_path / 'cache'}", "--set", "train.device=cpu"]
    (tmp_path / "file").write_text("x")
    for s in sets:
        argv += ["--set", s.replace("FILE", str(tmp_path / "file"))]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("vsdloral-train dloral: error: ") and key in err and "Traceback" not in err, err
    assert not (tmp_path / "run").exists()  # nothing ran


def test_vae_decoder_d_lora_trains_in_detail_only_and_export_merges_it(teacher_dir, sample_clip, tiny_model_path,
                                                                       tmp_path):
    """``dloral.vae_lora_rank``: a D-LoRA adapter on every VAE decoder convolution, trained in the
    detail stage only; export merges it (the file decodes as the trained network does) and
    ``--consistency-only`` drops it (the file's decoder is the init model's)."""
    from training.checkpoint import load_checkpoint
    from training.export import export
    from training.lora import vae_lora_parameters
    from training.tasks import DLoRALTask
    from vsdloral.model.weights import DLoRALModel

    cfg = dl_cfg(sample_clip, tiny_model_path, teacher_dir, tmp_path / "cache", **{"dloral.vae_lora_rank": 2})
    task = DLoRALTask(copy.deepcopy(cfg), load_teacher=False)
    vae_params = vae_lora_parameters(task.start.vae)
    ids = {k: {id(p) for p in v} for k, v in task.sets.items()}
    assert vae_params and all(id(p) in ids["detail"] and id(p) not in ids["consistency"] for p in vae_params)
    train("dloral", copy.deepcopy(cfg), tmp_path / "run")
    state = load_checkpoint(tmp_path / "run")
    assert any(v.abs().sum() > 0 for k, v in state["task"]["vae_lora"].items() if "lora_B" in k)
    trained = DLoRALTask(copy.deepcopy(cfg), load_teacher=False)
    trained.load_state(state["task"])
    full = export(tmp_path / "run", tmp_path / "full.safetensors")
    alone = export(tmp_path / "run", tmp_path / "c.safetensors", branches=("consistency",))
    init = DLoRALModel.load(tiny_model_path)
    z = torch.randn(1, init.meta.vae_config["latent_channels"], 8, 8)
    with torch.no_grad():
        want = trained.start.vae.decode(z).sample
        assert torch.allclose(DLoRALModel.load(tmp_path / "full.safetensors").vae.decode(z).sample, want, atol=1e-5)
        assert not torch.allclose(init.vae.decode(z).sample, want, atol=1e-4)
    for k, v in init.vae.state_dict().items():
        assert torch.equal(alone.vae.state_dict()[k], v), k
    # the metadata names the training files by name and sha256, and says which branches were merged
    from vsdloral.model.weights import read_metadata
    from vsdloral.utils.hashing import sha256_file

    for name, branches in (("full", ["quality", "consistency"]), ("c", ["consistency"])):
        prov = read_metadata(tmp_path / f"{name}.safetensors")["provenance"]
        assert prov["data_files"] == [{"name": sample_clip.name, "kind": "video", "sha256": sha256_file(sample_clip)}]
        assert prov["branches"] == branches
    with pytest.raises(ValueError, match="vae_lora_rank differs"):
        DLoRALTask(copy.deepcopy(cfg) | {"dloral": {**cfg["dloral"], "vae_lora_rank": 0}},
                   load_teacher=False).load_state(state["task"])
