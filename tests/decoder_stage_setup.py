"""What the decoder- and joint-stage tests share: the tiny latent-SR decoder, a tiny ncnn teacher
and a held-out still, and the config overrides that point a stage at them (tests only)."""

from __future__ import annotations

from pathlib import Path

import cv2
from ncnn_format import random_rrdbnet, write_rrdbnet_ncnn

from training import config as config_mod

#: the smallest latent-grid decoder (one residual block of 8 channels)
TINY_DECODER = {"kind": "latent-sr", "channels": 8, "blocks": 1}


def teacher_and_stills(tmp_path: Path, sample_clip: Path) -> tuple[Path, Path]:
    """A tiny random Real-ESRGAN teacher in ncnn format and a folder with one held-out still (the
    clip's first frame, mirrored) under ``tmp_path``."""
    from training.data import read_video

    teacher = tmp_path / "teacher"
    write_rrdbnet_ncnn(random_rrdbnet(seed=0), teacher)
    stills = tmp_path / "held-out"
    stills.mkdir()
    cv2.imwrite(str(stills / "still.png"), read_video(sample_clip, 1)[0, :, ::-1, ::-1])
    return teacher, stills


def point_at_tiny_setup(cfg: dict, sample_clip: Path, teacher: Path, tmp_path: Path) -> dict:
    """``cfg`` (in place) on the clip, the tiny decoder and teacher, on the CPU, without progress
    bars, validating every 2 steps and checkpointing every 2; returns it."""
    over = {"data.videos": [str(sample_clip)], "data.max_frames": 12, "data.holdout": 4,
            "degradation.kind": "bicubic", "model.decoder": TINY_DECODER, "train.device": "cpu",
            "train.progress": False, "train.val_every": 2, "train.checkpoint_every": 2, "train.log_every": 1,
            "teacher.kind": "realesrgan-x4plus", "teacher.path": str(teacher), "teacher.cache": str(tmp_path / "cache")}
    for k, v in over.items():
        config_mod.set_dotted(cfg, k, v)
    return cfg
